"""The protein split (``python -m data_prep proteins``): BLAST databases decoded like blastdbcmd, the filters
counted, whole identity clusters on one side, the leak check, reruns, the K largest families, and bad input refused
with nothing written."""
from __future__ import annotations

import json
import math
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from data_prep.__main__ import main
from data_prep.documents import InputError
from data_prep.prepare import PrepareError, prepare
from data_prep.proteins import (ProteinCounts, ProteinError, cluster, composition_entropy, content_key, filtered,
                                keep_largest_families, largest_clusters, read_blast_db, similar_to, split_proteins,
                                validation_clusters)
from pipeline.runtime.data import TokenShards
from tests.conftest import tiny_prepare_config
from tests.proteins import STANDARD, write_families

BLASTDB = Path(__file__).parent / "blastdb" / "families"  # makeblastdb -dbtype prot -blastdb_version 4
needs_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs2 is not installed "
                                  "(launch/test.sh installs it)")


def fasta_sequences(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if not line.startswith(">")]


def test_composition_entropy_counts_one_eos_per_protein(tmp_path, capsys):
    # A: 3, B: 1, [EOS]: 2 of 6 tokens
    expected = -(0.5 * math.log(0.5) + math.log(1 / 6) / 6 + math.log(1 / 3) / 3)
    assert composition_entropy(iter(["AAB", "A"])) == (2, 4, pytest.approx(expected))
    (tmp_path / "x.fasta").write_text(">a\nAAB\n>b\nA\n")
    assert main(["composition", str(tmp_path / "x.fasta")]) == 0
    assert f"2 proteins, 4 residues, composition entropy {expected:.4f} nats" in capsys.readouterr().out
    assert main(["composition", str(tmp_path / "missing.fasta")]) == 2
    assert "missing.fasta" in capsys.readouterr().err


def test_blast_database_decodes_to_the_sequences_it_was_made_from():
    assert list(read_blast_db(BLASTDB)) == fasta_sequences(BLASTDB.with_suffix(".fasta"))


def test_damaged_or_foreign_blast_databases_are_refused(tmp_path):
    for suffix in (".pin", ".psq"):
        shutil.copy(BLASTDB.with_suffix(suffix), tmp_path / f"cut{suffix}")
    (tmp_path / "cut.psq").write_bytes((tmp_path / "cut.psq").read_bytes()[:100])
    with pytest.raises(InputError, match="truncated"):
        list(read_blast_db(tmp_path / "cut"))
    (tmp_path / "cut.pin").write_bytes((tmp_path / "cut.pin").read_bytes()[:30])
    with pytest.raises(InputError, match="truncated BLAST index"):
        list(read_blast_db(tmp_path / "cut"))
    index = bytearray(BLASTDB.with_suffix(".pin").read_bytes())
    index[3] = 5  # format version 5
    (tmp_path / "cut.pin").write_bytes(bytes(index))
    with pytest.raises(InputError, match="version 5.*blastdbcmd"):
        list(read_blast_db(tmp_path / "cut"))
    with pytest.raises(InputError, match="not found"):
        list(read_blast_db(tmp_path / "nothing"))


def test_filters_count_what_they_skip_and_the_cut_ignores_input_order():
    seqs = ["ACDEFGHIK", "ACDEFGHIK", "ACJDE", "AC", "A" * 30, "MKVLA", "WYWYW", "PQRST"]
    counts = ProteinCounts()
    kept = filtered(iter(seqs), counts, min_length=3, max_length=20, strict=False, max_sequences=0)
    assert sorted(kept.values()) == ["ACDEFGHIK", "MKVLA", "PQRST", "WYWYW"]
    assert (counts.read, counts.outside_alphabet, counts.too_short, counts.too_long, counts.duplicates,
            counts.kept) == (8, 1, 1, 1, 1, 4)
    assert counts.first_outside_alphabet == "ACJDE"
    first = filtered(iter(seqs), ProteinCounts(), 3, 20, False, max_sequences=2)
    again = filtered(reversed(seqs), ProteinCounts(), 3, 20, False, max_sequences=2)
    assert len(first) == 2 and first == dict(sorted(again.items()))
    with pytest.raises(ProteinError, match=r"sequence 3 .*\['J'\].*strict"):
        filtered(iter(seqs), ProteinCounts(), 3, 20, True, 0)


def test_validation_takes_whole_clusters_in_hash_order_up_to_its_share():
    representative = {"m1": "a", "m2": "a", "m3": "a", "m4": "b", "m5": "c", "m6": "c", "m7": "d", "m8": "e",
                      "m9": "e", "m10": "e"}  # clusters a: 3, b: 1, c: 2, d: 1, e: 3
    assert validation_clusters(representative, 0.3) == {"a"}  # 3 places: a fills them
    assert validation_clusters(representative, 0.25) == {"b", "d"}  # 2 places: a does not fit, b, c not, d
    assert validation_clusters(representative, 0.5) == {"a", "b", "d"}  # 5: a, b; c does not fit 1 place; d does
    assert validation_clusters(representative, 0.05) == set()


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("families") / "families.fasta"
    return path, write_families(path, families=40, members=6, seed=1)


@needs_mmseqs
def test_no_family_is_on_both_sides_and_a_rerun_reuses_the_split(families, tmp_path):
    path, family_of = families
    record = split_proteins([], [str(path)], tmp_path / "split", val_fraction=0.2, log=lambda _: None)
    train, val = (fasta_sequences(tmp_path / "split" / f"{s}.fasta") for s in ("train", "val"))
    assert {family_of[s] for s in train}.isdisjoint(family_of[s] for s in val)
    counts = record["counts"]
    assert counts["clusters"] == 40 and counts["kept"] == len(family_of) == 240
    assert (counts["train"], counts["val"]) == (len(train), len(val)) and 0 < len(val) <= 0.2 * 240
    assert json.loads((tmp_path / "split" / "split.json").read_text()) == record
    assert split_proteins([], [str(path)], tmp_path / "split", val_fraction=0.2, log=lambda _: None) == record
    with pytest.raises(ProteinError, match="holds another split.*identity: 0.3 there, 0.5 now"):
        split_proteins([], [str(path)], tmp_path / "split", identity=0.5, val_fraction=0.2, log=lambda _: None)
    assert record["settings"]["families"] == 0 and record["counts"]["family_sizes"] == []
    old = {**record, "settings": {k: v for k, v in record["settings"].items()  # written before --families
                                  if k not in ("families", "family_identity")}}
    (tmp_path / "split" / "split.json").write_text(json.dumps(old))
    assert split_proteins([], [str(path)], tmp_path / "split", val_fraction=0.2, log=lambda _: None) == old
    with pytest.raises(ProteinError, match="holds another split.*families: 0 there, 2 now"):
        split_proteins([], [str(path)], tmp_path / "split", identity=0.5, val_fraction=0.2, families=2,
                       log=lambda _: None)


@needs_mmseqs
def test_the_search_finds_a_homologue_and_not_an_unrelated_sequence(tmp_path):
    family = list(write_families(tmp_path / "f.fasta", families=2, members=2, seed=3))  # 80 % kept per member
    hits = similar_to({"near": family[0], "far": family[2]}, {"t": family[1]}, 0.3, tmp_path, threads=1)
    assert hits == {"near"}


@needs_mmseqs
def test_the_leak_check_drops_what_the_clustering_missed(tmp_path, monkeypatch):
    """With every sequence its own cluster, validation would hold relatives of training sequences: the search
    against the training split must find and drop them, and keep the proteins without relatives."""
    family_of = write_families(tmp_path / "related.fasta", families=30, members=4, seed=7)
    lone = write_families(tmp_path / "lone.fasta", families=30, members=1, seed=8)
    family_of.update({s: 100 + f for s, f in lone.items()})
    calls = []
    monkeypatch.setattr("data_prep.proteins.cluster", lambda records, *args: calls.append(args) or
                        {k: k for k in records})
    record = split_proteins([], [str(tmp_path)], tmp_path / "split", val_fraction=0.3, log=lambda _: None)
    assert [identity for identity, *_ in calls] == [0.3]  # without --families, no family clustering
    train, val = (fasta_sequences(tmp_path / "split" / f"{s}.fasta") for s in ("train", "val"))
    assert val and {family_of[s] for s in train}.isdisjoint(family_of[s] for s in val)
    assert record["counts"]["val_dropped_similar_to_train"] >= 10


@needs_mmseqs
def test_an_empty_split_is_refused_with_nothing_written(tmp_path):
    write_families(tmp_path / "one.fasta", families=1, members=5)
    with pytest.raises(ProteinError, match="validation split is empty after clustering.*nothing written"):
        split_proteins([], [str(tmp_path / "one.fasta")], tmp_path / "split", log=lambda _: None)
    assert not any(p.name in ("train.fasta", "val.fasta", "split.json") for p in (tmp_path / "split").iterdir())


def nested_families(sizes: list[int], subfamilies: int, seed: int) -> dict[str, int]:
    """sequence -> family: random ancestors, ``subfamilies`` sub-ancestors keeping 70 % of each, members keeping
    92 % of a sub-ancestor's residues, so 30 % identity recovers the families and 60 % the subfamilies."""
    rng = random.Random(seed)

    def mutated(seq: str, keep: float) -> str:
        return "".join(c if rng.random() < keep else rng.choice(STANDARD) for c in seq)

    out = {}
    for family, members in enumerate(sizes):
        ancestor = "".join(rng.choice(STANDARD) for _ in range(rng.randint(60, 200)))
        subs = [mutated(ancestor, 0.7) for _ in range(subfamilies)]
        out.update({mutated(subs[m % subfamilies], 0.92): family for m in range(members)})
    return out


def test_the_largest_clusters_are_chosen_by_size_then_representative():
    representative = {"m1": "c", "m2": "c", "m3": "b", "m4": "b", "m5": "a", "m6": "d", "m7": "d", "m8": "d"}
    assert largest_clusters(representative, 1) == {"d": 3}
    assert largest_clusters(representative, 2) == {"d": 3, "b": 2}  # b and c tie: the smaller key
    assert largest_clusters(dict(reversed(representative.items())), 3) == {"d": 3, "b": 2, "c": 2}
    assert largest_clusters(representative, 9) == {"d": 3, "b": 2, "c": 2, "a": 1}


@needs_mmseqs
def test_families_keep_exactly_the_largest_cluster_split_by_subfamily(tmp_path, monkeypatch):
    family_of = nested_families([16, 6, 6, 6, 6], subfamilies=4, seed=5)
    fasta = tmp_path / "families.fasta"
    fasta.write_text("".join(f">{k}\n{s}\n" for k, s in enumerate(family_of)))
    mappings = []  # cluster()'s own member -> representative, at 30 % then at 60 %
    monkeypatch.setattr("data_prep.proteins.cluster", lambda *args: mappings.append(cluster(*args)) or mappings[-1])
    record = split_proteins([], [str(fasta)], tmp_path / "split", identity=0.6, val_fraction=0.25, families=1,
                            family_identity=0.3, log=lambda _: None)
    (largest, size), (_, second) = Counter(mappings[0].values()).most_common(2)
    sequence = {content_key(s): s for s in family_of}
    expected = {sequence[k] for k, rep in mappings[0].items() if rep == largest}
    assert len(mappings[0]) == 40 and size == len(expected) == 16 > second
    assert {family_of[s] for s in expected} == {0}
    train, val = (fasta_sequences(tmp_path / "split" / f"{s}.fasta") for s in ("train", "val"))
    counts = record["counts"]
    assert train and val and set(train) | set(val) <= expected
    assert len(train) + len(val) + counts["val_dropped_similar_to_train"] == len(expected)
    assert (counts["families"], counts["family_sizes"], counts["kept"]) == (1, [16], 40)
    assert counts["clusters"] == 4  # the subfamilies, at 60 %: validation holds one whole


def test_the_families_kept_do_not_depend_on_input_order(tmp_path, monkeypatch):
    """A clustering whose representatives follow the input order (mmseqs2's do, among equal lengths) sees the
    records in key order, so which of two equal families is kept does not change with the input order."""
    family_of = {"k00": 0, "k04": 0, "k08": 0, "k01": 1, "k09": 1, "k02": 2, "k06": 2}

    def first_member(records, *_):
        first = {}
        return {k: first.setdefault(family_of[k], k) for k in records}

    monkeypatch.setattr("data_prep.proteins.cluster", first_member)
    kept, counts = [], []
    for name, keys in (("forward", sorted(family_of)), ("reversed", sorted(family_of, reverse=True))):
        counts.append(ProteinCounts())
        kept.append(keep_largest_families({k: "MKV" for k in keys}, 2, 0.3, tmp_path / name, 2, counts[-1],
                                          lambda _: None))
    assert list(kept[0]) == list(kept[1]) == ["k00", "k01", "k04", "k08", "k09"]  # the tie: k01 before k02
    assert counts[0] == counts[1] and (counts[0].families, counts[0].family_sizes) == (2, [3, 2])


def test_bad_family_flags_are_refused_by_name(families, tmp_path, capsys):
    path, _ = families
    for flags, message in ((["--families", "-1"], "--families -1: must be >= 0"),
                           (["--families", "2", "--family-identity", "1.5"],
                            "--family-identity 1.5: must be in (0, 1)"),
                           (["--families", "2", "--identity", "0.3"],
                            "--identity 0.3 with --families: the split's --identity must be above --family-identity "
                            "0.3, else a family would go whole to one side")):
        assert main(["proteins", "--fasta", str(path), "--out", str(tmp_path / "s"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_missing_mmseqs_and_bad_flags_are_named_before_any_reading(families, tmp_path, monkeypatch, capsys):
    path, _ = families
    assert main(["proteins", "--fasta", str(path), "--out", str(tmp_path / "s"), "--identity", "30"]) == 2
    assert "--identity 30.0: must be in (0, 1)" in capsys.readouterr().err
    assert main(["proteins", "--out", str(tmp_path / "s")]) == 2
    assert "no input" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["proteins", "--fasta", str(path), "--out", str(tmp_path / "s")]) == 2
    assert "mmseqs not found: install Debian's mmseqs2" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_validation_inputs_go_to_validation_whole(tmp_path):
    write_families(tmp_path / "train.fasta", families=20, members=4, seed=2)
    write_families(tmp_path / "val.fasta", families=4, members=4, seed=3)
    manifest = prepare(tiny_prepare_config(tmp_path / "data", inputs=[str(tmp_path / "train.fasta")],
                                           val_inputs=[str(tmp_path / "val.fasta")], tokenizer="protein",
                                           val_fraction=0.0, seq_len=64), log=lambda _: None)
    val_letters = sum(len(s) + 1 for s in fasta_sequences(tmp_path / "val.fasta"))  # + [EOS] each
    assert manifest["splits"]["val"]["num_documents"] == 16
    assert manifest["splits"]["val"]["num_samples"] == val_letters // 62 == len(TokenShards(tmp_path / "data", "val"))
    assert manifest["splits"]["train"]["num_documents"] == 80
    with pytest.raises(PrepareError, match="among both inputs and val_inputs"):
        prepare(tiny_prepare_config(tmp_path / "both", inputs=[str(tmp_path)], tokenizer="protein",
                                    val_inputs=[str(tmp_path / "val.fasta")]), log=lambda _: None)
