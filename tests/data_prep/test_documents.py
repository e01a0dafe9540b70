import gzip
import json

import pytest

from data_prep.documents import (InputError, ReadStats, content_split, iter_documents, list_input_files,
                                 text_documents)


def docs_of(paths, strict=False, min_doc_chars=1, field="text"):
    stats = ReadStats()
    return list(iter_documents(list_input_files([str(p) for p in paths]), stats, min_doc_chars, field, strict)), stats


def test_text_blocks_by_hand():
    text = "\n\nA1\nA2\n\n\nB1\n  \nC1\nC2\n\nD\n"
    lines = text.splitlines(keepends=True)
    assert list(text_documents(lines, 1)) == ["A1\nA2", "B1", "C1\nC2", "D"]
    # blocks merge up to the minimum; the short tail joins the block before it, blank lines kept exactly
    assert list(text_documents(lines, 3)) == ["A1\nA2", "B1", "C1\nC2\n\nD"]
    assert list(text_documents(lines, 5)) == ["A1\nA2", "B1\n  \nC1\nC2\n\nD"]
    assert list(text_documents(lines, 100)) == ["A1\nA2\n\n\nB1\n  \nC1\nC2\n\nD"]
    assert list(text_documents(["\n", "  \n"], 1)) == []


def test_text_crlf_is_normalised_and_gzip_read(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one\r\ntwo\r\n\r\nthree\r\n")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("zipped\n\nparagraphs\n")
    docs, stats = docs_of([tmp_path])
    assert docs == ["one\ntwo", "three", "zipped", "paragraphs"] and stats.files == 2


def test_jsonl_field_gzip_and_malformed_lines(tmp_path):
    lines = [json.dumps({"text": "first doc"}), "{broken", json.dumps({"body": "no text field"}),
             json.dumps({"text": ""}), "", json.dumps({"text": "second\n\ndoc"})]
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    docs, stats = docs_of([tmp_path / "c.jsonl.gz"])
    assert docs == ["first doc", "second\n\ndoc"]
    assert stats.skipped_records == 3 and "c.jsonl.gz:2" in stats.first_skipped_record
    with pytest.raises(InputError, match=r"c.jsonl.gz:2: not a JSON object.*strict"):
        docs_of([tmp_path / "c.jsonl.gz"], strict=True)
    (tmp_path / "d.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    assert docs_of([tmp_path / "d.jsonl"], field="content")[0] == ["x"]


def test_fasta_records(tmp_path):
    (tmp_path / "p.fasta").write_text(">sp|1 first\nMKT\nayi*\n>empty\n>two\nGGG\n")
    docs, stats = docs_of([tmp_path / "p.fasta"])
    assert docs == ["MKTAYI", "GGG"] and stats.skipped_records == 1
    (tmp_path / "q.fa").write_text("MKT\n>x\nA\n")
    with pytest.raises(InputError, match="before the first '>'"):
        docs_of([tmp_path / "q.fa"])


def test_non_utf8_file_is_skipped_whole_and_counted(tmp_path):
    (tmp_path / "good.txt").write_text("fine text\n")
    (tmp_path / "bad.txt").write_bytes(b"valid start\n\n" + b"x" * 10 + b"\xff\xfe broken\n")
    docs, stats = docs_of([tmp_path])
    assert docs == ["fine text"]
    assert len(stats.skipped_files) == 1 and "bad.txt: not valid UTF-8" in stats.skipped_files[0]
    with pytest.raises(InputError, match="bad.txt: not valid UTF-8"):
        docs_of([tmp_path], strict=True)


def test_input_listing(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.txt").write_text("z")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / ".hidden").write_text("h")
    files = list_input_files([str(tmp_path), str(tmp_path / "a.txt")])
    assert [f.name for f in files] == ["a.txt", "z.txt"]
    with pytest.raises(InputError, match="input not found: .*nope"):
        list_input_files([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no input files"):
        list_input_files([str(tmp_path / "empty")])


def test_content_split_is_deterministic_and_proportional():
    docs = [f"document number {i}" for i in range(4000)]
    first = [content_split(d, 0.1) for d in docs]
    assert first == [content_split(d, 0.1) for d in docs]
    share = first.count("val") / len(docs)
    assert 0.08 < share < 0.12  # binomial sd is 0.005
    assert all(content_split(d, 0.0) == "train" for d in docs[:100])
