import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_prep.__main__ import main as cli
from data_prep.documents import InputError
from data_prep.prepare import PrepareError, prepare
from data_prep.shards import iter_shard
from data_prep.tokenizers import load_tokenizer
from data_prep.verify import verify_dataset
from tests.conftest import CORPUS, ROOT, tiny_prepare_config, write_tiny_gpt2_ranks

QUIET = dict(log=lambda _: None)


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.tar"))}


def test_manifest_describes_the_shards(tiny_data):
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    tok = load_tokenizer(tiny_data / "tokenizer")
    assert manifest["seq_len"] == 64 and manifest["vocab_size"] == 500 == tok.vocab_size
    assert manifest["mask_id"] == 500 and manifest["tokenizer"]["fingerprint"] == tok.fingerprint
    assert manifest["sources"]["files_read"] == 2 and manifest["sources"]["skipped_files"] == []
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert len(train["shards"]) >= 4 and len(val["shards"]) >= 1
    for split in (train, val):
        assert split["num_samples"] == sum(s["num_samples"] for s in split["shards"])
        assert split["num_tokens"] == 64 * split["num_samples"]
        # per shard at most one partial chunk is dropped
        assert 0 <= split["document_tokens"] - 62 * split["num_samples"] < 62 * len(split["shards"])
    assert verify_dataset(tiny_data)[0] == []


def test_sequences_are_framed_corpus_text(tiny_data):
    tok = load_tokenizer(tiny_data / "tokenizer")
    corpus = (CORPUS / "macbeth.txt").read_text() + (CORPUS / "tempest.txt").read_text()
    seqs = [s for _, s in iter_shard(tiny_data / "train-00000.tar")]
    checked = 0
    for seq in seqs:
        assert seq[0] == tok.bos_id and seq[-1] == tok.eos_id and seq.dtype == np.int32
        body = seq[1:-1]
        if tok.eos_id not in body:  # a chunk inside one document is a verbatim piece of the corpus
            assert tok.decode(body) in corpus
            checked += 1
    assert checked > len(seqs) // 2


def test_train_and_validation_documents_are_disjoint(tiny_data):
    tok = load_tokenizer(tiny_data / "tokenizer")

    def documents(split):
        ids = np.concatenate([s[1:-1] for p in sorted(tiny_data.glob(f"{split}-*.tar")) for _, s in iter_shard(p)])
        cuts = np.flatnonzero(ids == tok.eos_id)
        return {tok.decode(ids[a + 1:b]) for a, b in zip(cuts[:-1], cuts[1:])}  # whole documents only

    train, val = documents("train"), documents("val")
    assert len(val) >= 3 and not train & val


def test_workers_do_not_change_the_result(tiny_data, tmp_path):
    prepare(tiny_prepare_config(tmp_path / "w2", workers=2), **QUIET)
    assert shard_bytes(tmp_path / "w2") == shard_bytes(tiny_data)
    assert (tmp_path / "w2" / "manifest.json").read_text() == (tiny_data / "manifest.json").read_text()


def test_killed_and_restarted_job_is_byte_identical(tmp_path):
    args = [sys.executable, "-m", "data_prep", "prepare", "--input", str(CORPUS / "hamlet.txt"),
            str(CORPUS / "lear.txt"), "--tokenizer", "spm:400", "--seq-len", "32", "--shard-mb", "0.004",
            "--min-doc-chars", "500"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(args + ["--out", str(tmp_path / "ref")], env=env, check=True, capture_output=True)
    n_ref = len(list((tmp_path / "ref").glob("*.tar")))
    assert n_ref > 40
    out = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(out), "--workers", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(list(out.glob(".parts/*.json"))) < 5 and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob(".parts/*.json")))
    assert 5 <= done < n_ref and not (out / "manifest.json").exists()
    subprocess.run(args + ["--out", str(out)], env=env, check=True, capture_output=True)
    assert shard_bytes(out) == shard_bytes(tmp_path / "ref")
    assert (out / "manifest.json").read_text().replace(str(out), "") == \
        (tmp_path / "ref" / "manifest.json").read_text().replace(str(tmp_path / "ref"), "")
    assert not list(out.glob(".*.tmp*")) and verify_dataset(out)[0] == []


def test_rerun_redoes_a_damaged_shard(tiny_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    (copy / "train-00001.tar").write_bytes(b"garbage")
    prepare(tiny_prepare_config(copy), **QUIET)
    assert shard_bytes(copy) == shard_bytes(tiny_data)


def corrupted_copy(tiny_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    return copy


def test_verify_names_flipped_byte_truncation_missing_and_stray_shards(tiny_data, tmp_path, capsys):
    copy = corrupted_copy(tiny_data, tmp_path)
    data = bytearray((copy / "train-00000.tar").read_bytes())
    data[2000] ^= 0x01
    (copy / "train-00000.tar").write_bytes(bytes(data))
    (copy / "train-00001.tar").write_bytes((tiny_data / "train-00001.tar").read_bytes()[:5000])
    (copy / "train-00002.tar").unlink()
    shutil.copy(tiny_data / "val-00000.tar", copy / "train-09999.tar")
    problems, _ = verify_dataset(copy)
    assert any("train-00000.tar: corrupt (sha256" in p for p in problems)
    assert any("train-00001.tar: corrupt or truncated" in p for p in problems)
    assert any("train-00002.tar: missing" in p for p in problems)
    assert any("train-09999.tar: shard not listed" in p for p in problems)
    assert len(problems) == 4
    assert cli(["verify", str(copy)]) == 1
    assert "FAIL train-00002.tar: missing" in capsys.readouterr().out
    assert cli(["verify", str(tiny_data)]) == 0


def test_verify_finds_a_manifest_that_does_not_match(tiny_data, tmp_path):
    copy = corrupted_copy(tiny_data, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["num_samples"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems, _ = verify_dataset(copy)
    assert any("shard counts do not add up" in p for p in problems)
    assert any("train-00000.tar: " in p and "manifest says" in p for p in problems)
    (copy / "manifest.json").write_text("{")
    assert "not valid JSON" in verify_dataset(copy)[0][0]
    (copy / "manifest.json").unlink()
    assert "no manifest.json" in verify_dataset(copy)[0][0]


def test_unseen_english_text_directory(tmp_path):
    src = tmp_path / "texts" / "nested"
    src.mkdir(parents=True)
    licence = Path(sys.base_prefix, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}", "LICENSE.txt")
    (src / "licence.txt").write_text(licence.read_text())
    (tmp_path / "texts" / "notes.md").write_text("# Notes\n\nSome *markdown* text.\n\n" * 40)
    cfg = tiny_prepare_config(tmp_path / "out", inputs=[str(tmp_path / "texts")], tokenizer="spm:400",
                              seq_len=32, val_fraction=0.2, min_doc_chars=300)
    manifest = prepare(cfg, **QUIET)
    assert manifest["sources"]["files_read"] == 2 and manifest["splits"]["train"]["num_samples"] > 50
    assert verify_dataset(tmp_path / "out")[0] == []


def test_gpt2_ranks_file_dataset(tmp_path):
    ranks = write_tiny_gpt2_ranks(tmp_path / "gpt2.tiktoken")
    manifest = prepare(tiny_prepare_config(tmp_path / "o", tokenizer=f"gpt2:{tmp_path / 'gpt2.tiktoken'}"), **QUIET)
    eot = len(ranks)
    assert manifest["vocab_size"] == eot + 1 and manifest["bos_id"] == manifest["eos_id"] == eot
    assert manifest["tokenizer"]["kind"] == "gpt2" and verify_dataset(tmp_path / "o")[0] == []
    seq = next(iter_shard(tmp_path / "o" / "train-00000.tar"))[1]
    text = load_tokenizer(tmp_path / "o" / "tokenizer").decode(seq[1:-1])
    assert text in (CORPUS / "macbeth.txt").read_text() + (CORPUS / "tempest.txt").read_text()


def test_empty_and_unreadable_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no input files"):
        prepare(tiny_prepare_config(tmp_path / "o1", inputs=[str(tmp_path / "empty")]), **QUIET)
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(PrepareError, match="no documents in the inputs"):
        prepare(tiny_prepare_config(tmp_path / "o2", inputs=[str(tmp_path / "blank.txt")], tokenizer="protein"),
                **QUIET)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(PrepareError, match=r"1 skipped: .*latin1.txt: not valid UTF-8"):
        prepare(tiny_prepare_config(tmp_path / "o3", inputs=[str(tmp_path / "latin1.txt")], tokenizer="protein"),
                **QUIET)


def test_no_usable_line_for_the_tokenizer_is_named_and_leaves_nothing(tmp_path):
    (tmp_path / "bin").mkdir()
    for k in range(3):
        (tmp_path / "bin" / f"blob{k}.dat").write_bytes(bytes(range(256)) * 40)  # not UTF-8
    with pytest.raises(PrepareError, match=r"no input line was usable to train the tokenizer: the train split holds "
                                           r"no text \(0 documents read; 3 of 3 input files skipped, the first "
                                           r".*blob0.dat: not valid UTF-8"):
        prepare(tiny_prepare_config(tmp_path / "out", inputs=[str(tmp_path / "bin")]), **QUIET)
    assert not (tmp_path / "out").exists()  # nothing half-written
    (tmp_path / "empty_out").mkdir()
    with pytest.raises(PrepareError, match="no input line was usable"):
        prepare(tiny_prepare_config(tmp_path / "empty_out", inputs=[str(tmp_path / "bin")]), **QUIET)
    assert (tmp_path / "empty_out").is_dir() and not any((tmp_path / "empty_out").iterdir())


def test_a_text_on_one_long_line_trains_the_tokenizer(tmp_path):
    """SentencePiece drops lines above 4,192 bytes: one 300 kB line is given to it in pieces."""
    words = (CORPUS / "macbeth.txt").read_text().split()
    (tmp_path / "one_line.txt").write_text(" ".join(words * 4)[:300_000] + "\n")
    manifest = prepare(tiny_prepare_config(tmp_path / "o", inputs=[str(tmp_path / "one_line.txt")],
                                           val_fraction=0.0), **QUIET)
    assert manifest["vocab_size"] == 500 and manifest["splits"]["train"]["num_samples"] > 0


def test_a_symbolic_link_loop_among_the_inputs_is_named(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").symlink_to(tmp_path / "in" / "b.txt")
    (tmp_path / "in" / "b.txt").symlink_to(tmp_path / "in" / "a.txt")
    with pytest.raises(InputError, match=r"in/[ab].txt: a symbolic link that leads to no file"):
        prepare(tiny_prepare_config(tmp_path / "o", inputs=[str(tmp_path / "in")]), **QUIET)
    assert not (tmp_path / "o").exists()


def test_document_shorter_than_a_sequence(tmp_path):
    (tmp_path / "tiny.fasta").write_text(">a\nMKT\n>b\nGG\n")
    with pytest.raises(PrepareError, match=r"train split has no complete sequence: .* seq_len - 2 = 62"):
        prepare(tiny_prepare_config(tmp_path / "o", inputs=[str(tmp_path / "tiny.fasta")], tokenizer="protein",
                                    val_fraction=0.0), **QUIET)


def test_protein_fasta_dataset(tmp_path):
    rng = np.random.default_rng(0)
    records = [f">p{i}\n" + "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 120)) for i in range(60)]
    (tmp_path / "prot.fa").write_text("\n".join(records) + "\n")
    manifest = prepare(tiny_prepare_config(tmp_path / "o", inputs=[str(tmp_path / "prot.fa")], tokenizer="protein",
                                           seq_len=64, val_fraction=0.2), **QUIET)
    assert manifest["vocab_size"] == 28 and manifest["splits"]["train"]["num_documents"] > 30
    assert verify_dataset(tmp_path / "o")[0] == []


def test_output_directory_holding_another_dataset_is_refused(tiny_data, tmp_path):
    copy = corrupted_copy(tiny_data, tmp_path)
    before = shard_bytes(copy)
    with pytest.raises(PrepareError, match=r"different dataset \(seq_len: 64 there, 128 now\)"):
        prepare(tiny_prepare_config(copy, seq_len=128), **QUIET)
    assert shard_bytes(copy) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("precious")
    with pytest.raises(PrepareError, match="not empty and holds no prepare_config.yaml"):
        prepare(tiny_prepare_config(tmp_path / "other"), **QUIET)
    assert (tmp_path / "other" / "keep.txt").read_text() == "precious"


def test_cli_errors_exit_2_with_message(tmp_path, capsys):
    assert cli(["prepare", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "input not found" in capsys.readouterr().err
    assert cli(["prepare", "--input", str(CORPUS), "--out", str(tmp_path / "o"), "--seq-len", "2"]) == 2
    assert "seq_len: 2 is too small" in capsys.readouterr().err
    assert cli(["prepare", "--input", str(CORPUS), "--out", str(tmp_path / "o"), "--set", "seq_lenn=3"]) == 2
    assert "unknown key 'seq_lenn'" in capsys.readouterr().err


def test_cli_prepare_with_config_file(tmp_path, capsys):
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(f"inputs: ['{CORPUS / 'macbeth.txt'}']\ntokenizer: spm:400\nseq_len: 128\nval_fraction: 0.2\n")
    assert cli(["prepare", "--config", str(cfg), "--out", str(tmp_path / "o"), "--set", "min_doc_chars=1000"]) == 0
    out = capsys.readouterr().out
    assert "min_doc_chars: 1000" in out and "train:" in out
    assert "min_doc_chars: 1000" in (tmp_path / "o" / "prepare_config.yaml").read_text()


def test_the_same_documents_as_jsonl_zst_and_parquet_make_the_same_dataset(tmp_path):
    import pyarrow
    import pyarrow.parquet

    from tests.data_prep.test_documents import write_zstd

    plays = [(CORPUS / name).read_text() for name in ("macbeth.txt", "tempest.txt")]
    docs = [block for play in plays for block in play.split("\n\n\n") if block.strip()]
    write_zstd(tmp_path / "docs.jsonl.zst", "".join(json.dumps({"text": d}) + "\n" for d in docs).encode())
    pyarrow.parquet.write_table(pyarrow.table({"content": docs}), tmp_path / "docs.parquet", row_group_size=50)
    common = ["--tokenizer", "spm:400", "--seq-len", "64", "--shard-mb", "0.05"]
    assert cli(["prepare", "--input", str(tmp_path / "docs.jsonl.zst"), "--out", str(tmp_path / "a"), *common]) == 0
    assert cli(["prepare", "--input", str(tmp_path / "docs.parquet"), "--out", str(tmp_path / "b"),
                "--parquet-column", "content", *common]) == 0
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab")
    assert a["sources"]["documents"] == b["sources"]["documents"] == len(docs)
    assert a["splits"] == b["splits"] and shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
