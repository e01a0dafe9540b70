import gzip
import json

import pytest

from data_prep.documents import (InputError, ReadStats, content_split, iter_documents, list_input_files,
                                 text_documents)


def docs_of(paths, strict=False, min_doc_chars=1, field="text", column="text"):
    stats = ReadStats()
    files = list_input_files([str(p) for p in paths])
    return list(iter_documents(files, stats, min_doc_chars, field, column, strict)), stats


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


def write_zstd(path, data: bytes):
    import pyarrow

    with pyarrow.output_stream(str(path), compression="zstd") as f:
        f.write(data)


def test_zstd_text_jsonl_and_fasta_and_a_truncated_zstd_file_is_skipped(tmp_path):
    write_zstd(tmp_path / "a.txt.zst", b"one\r\ntwo\r\n\r\nthree\r\n")
    write_zstd(tmp_path / "b.jsonl.zst", (json.dumps({"text": "from jsonl"}) + "\n").encode())
    write_zstd(tmp_path / "c.fasta.zst", b">p\nmkt\n")
    docs, stats = docs_of([tmp_path])
    assert docs == ["one\ntwo", "three", "from jsonl", "MKT"] and stats.files == 3
    whole = (tmp_path / "b.jsonl.zst").read_bytes()
    (tmp_path / "d.txt.zst").write_bytes(whole[:-4])
    docs, stats = docs_of([tmp_path])
    assert len(docs) == 4 and stats.skipped_files == [f"{tmp_path / 'd.txt.zst'}: unreadable (OSError: Truncated "
                                                      f"compressed stream)"]


def test_parquet_rows_from_the_configured_column(tmp_path):
    import pyarrow
    import pyarrow.parquet

    table = pyarrow.table({"id": [1, 2, 3, 4], "body": ["first\r\nrow", None, "  ", "last"]})
    pyarrow.parquet.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    docs, stats = docs_of([tmp_path / "t.parquet"], column="body")
    assert docs == ["first\nrow", "last"] and stats.skipped_records == 2
    assert "t.parquet: row 1: column 'body' is empty or null" in stats.first_skipped_record
    docs, stats = docs_of([tmp_path / "t.parquet"])
    assert docs == [] and "no column 'text' (columns: id, body); set parquet_column" in stats.skipped_files[0]
    with pytest.raises(InputError, match="column 'id' holds int64, not strings"):
        docs_of([tmp_path / "t.parquet"], column="id", strict=True)
    (tmp_path / "u.parquet").write_bytes(b"PAR1 not really")
    docs, stats = docs_of([tmp_path / "u.parquet"])
    assert "u.parquet: unreadable (ArrowInvalid" in stats.skipped_files[0]


def test_large_compressed_and_parquet_inputs_are_streamed(tmp_path):
    """About 24 MB of text in each format; reading it holds a few MB (Arrow: one 2 MB row group's column and its
    decoded batches), not the file."""
    import tracemalloc

    import pyarrow
    import pyarrow.parquet

    rows = [f"document {i} " + "word " * 200 for i in range(24_000)]
    write_zstd(tmp_path / "big.jsonl.zst", "".join(json.dumps({"text": r}) + "\n" for r in rows).encode())
    pyarrow.parquet.write_table(pyarrow.table({"text": rows}), tmp_path / "big.parquet", row_group_size=2000)
    for name in ("big.jsonl.zst", "big.parquet"):
        stats, arrow_peak = ReadStats(), 0
        tracemalloc.start()
        for n, doc in enumerate(iter_documents([tmp_path / name], stats, 1, "text", "text", True)):
            if n % 1000 == 0:
                arrow_peak = max(arrow_peak, pyarrow.total_allocated_bytes())
        python_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert stats.documents == len(rows) and stats.chars == sum(map(len, rows))
        assert python_peak < 8e6 and arrow_peak < 12e6, (name, python_peak, arrow_peak)
