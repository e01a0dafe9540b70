"""Corpus readers: input paths to a deterministic stream of documents.

A document is what the train/validation split assigns as a whole:
- plain text: the file cut at blank lines, consecutive blocks merged until at least ``min_doc_chars``
  (a trailing block shorter than that joins the previous one), so a corpus of a few large files still gives a
  meaningful document-level split; line endings are normalised to ``\\n``;
- JSONL (``.jsonl``, ``.ndjson``): one document per line, from a configurable string field;
- FASTA (``.fa``, ``.fasta``, ``.faa``, ``.fna``, ``.fas``): one document per record, the sequence in
  upper case with line breaks and a trailing ``*`` removed;
- Parquet (``.parquet``): one document per row, from a configurable string column, read a row group at a time.
Text, JSONL and FASTA may be gzip- or zstd-compressed (``.gz``, ``.zst``; zstd through pyarrow, which also reads
Parquet). Every file is streamed, so memory does not grow with its size. Files that are not valid UTF-8 (or
cannot be read) are skipped and counted, as are malformed or empty records; ``strict`` turns both into errors.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

FASTA_SUFFIXES = {".fa", ".fasta", ".faa", ".fna", ".fas"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
COMPRESSED_SUFFIXES = {".gz", ".zst"}
PARQUET_ROWS = 1024  # rows decoded at a time


class InputError(ValueError):
    """Input that cannot be used; the message names the file and the problem."""


@dataclass
class ReadStats:
    """What reading found, reported on stdout and in the manifest."""

    files: int = 0
    documents: int = 0
    chars: int = 0
    skipped_files: list[str] = field(default_factory=list)  # "path: reason"
    skipped_records: int = 0
    first_skipped_record: str = ""

    def skip_record(self, where: str, strict: bool) -> None:
        if strict:
            raise InputError(f"{where} (strict mode)")
        self.skipped_records += 1
        self.first_skipped_record = self.first_skipped_record or where


def _resolved(path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError) as err:  # a link to nowhere, or links that point at each other
        raise InputError(f"{path}: a symbolic link that leads to no file ({err.__class__.__name__}: {err}); "
                         "remove it or point it at the file") from None


def list_input_files(paths: list[str]) -> list[Path]:
    """Expand files and directories (recursively, hidden entries skipped) into a sorted, de-duplicated list."""
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found.update(_resolved(Path(root, f)) for f in files if not f.startswith("."))
        elif path.is_file():
            found.add(path.resolve())
        else:
            raise InputError(f"input not found: {raw}")
    if not found:
        raise InputError(f"no input files under {', '.join(paths)}")
    return sorted(found)


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last == ".parquet" and len(suffixes) == len(path.suffixes):
        return "parquet"
    if last in FASTA_SUFFIXES:
        return "fasta"
    if last in JSONL_SUFFIXES:
        return "jsonl"
    return "text"


def _open_text(path: Path) -> IO[str]:
    """UTF-8 (strict) with universal newlines: ``\r\n`` and ``\r`` become ``\n``."""
    suffix = path.suffix.lower()
    if suffix == ".zst":
        import pyarrow  # only where a zstd file is read: it takes a while to import

        raw = pyarrow.input_stream(str(path), compression="zstd")
    else:
        raw = gzip.open(path, "rb") if suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline=None)


def _unreadable_reason(path: Path, parquet_column: str) -> str | None:
    """Decode the whole file once, so that a bad file is skipped before any of its documents is used."""
    try:
        if file_format(path) == "parquet":
            for _ in _parquet_values(path, parquet_column):
                pass
        else:
            with _open_text(path) as f:
                while f.read(1 << 20):
                    pass
    except UnicodeDecodeError as err:
        return f"not valid UTF-8 (byte {err.start} of a chunk)"
    except InputError as err:
        return str(err)
    except (OSError, EOFError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        return f"unreadable ({err.__class__.__name__}: {err})"
    return None


def iter_documents(paths: list[Path], stats: ReadStats, min_doc_chars: int, jsonl_field: str,
                   parquet_column: str, strict: bool) -> Iterator[str]:
    """Yield every document of every input file, in a deterministic order."""
    for path in paths:
        reason = _unreadable_reason(path, parquet_column)
        if reason:
            if strict:
                raise InputError(f"{path}: {reason}")
            stats.skipped_files.append(f"{path}: {reason}")
            continue
        stats.files += 1
        fmt = file_format(path)
        if fmt == "parquet":
            docs = parquet_documents(path, parquet_column, stats, strict)
            yield from _counted(docs, stats)
            continue
        with _open_text(path) as f:
            if fmt == "text":
                docs = text_documents(f, min_doc_chars)
            elif fmt == "jsonl":
                docs = jsonl_documents(f, path, jsonl_field, stats, strict)
            else:
                docs = fasta_documents(f, path, stats, strict)
            yield from _counted(docs, stats)


def _counted(docs: Iterator[str], stats: ReadStats) -> Iterator[str]:
    for doc in docs:
        stats.documents += 1
        stats.chars += len(doc)
        yield doc


def text_documents(lines: Iterable[str], min_doc_chars: int) -> Iterator[str]:
    """Cut text at blank lines into blocks of at least ``min_doc_chars`` characters (see module docstring)."""
    previous: str | None = None  # a finished block, held back in case the tail must join it
    separator = ""  # blank lines after ``previous``
    block: list[str] = []
    size = 0
    blank_run: list[str] = []
    for line in lines:
        if line.strip():
            if blank_run and size >= min_doc_chars:
                if previous is not None:
                    yield previous
                previous, separator = "".join(block).rstrip("\n"), "".join(blank_run)
                block, size = [], 0
            elif blank_run and block:
                block.extend(blank_run)
            blank_run = []
            block.append(line)
            size += len(line)
        else:
            blank_run.append(line)
    tail = "".join(block).rstrip("\n")
    if previous is not None and tail and size < min_doc_chars:
        previous, tail = previous + "\n" + separator + tail, ""
    for doc in (previous, tail):
        if doc and doc.strip():
            yield doc


def jsonl_documents(f: IO[str], path: Path, field_name: str, stats: ReadStats, strict: bool) -> Iterator[str]:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)[field_name]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError):
            stats.skip_record(f"{path}:{n}: not a JSON object with a string field '{field_name}'", strict)
            continue
        if not isinstance(value, str) or not value.strip():
            stats.skip_record(f"{path}:{n}: field '{field_name}' is empty or not a string", strict)
            continue
        yield value


def _parquet_values(path: Path, column: str) -> Iterator[str | None]:
    """The column's values row by row, decoded ``PARQUET_ROWS`` at a time; a missing or non-string column is an
    InputError naming the columns there are."""
    import pyarrow
    import pyarrow.parquet

    source = pyarrow.parquet.ParquetFile(path)
    schema = source.schema_arrow
    if column not in schema.names:
        raise InputError(f"no column '{column}' (columns: {', '.join(schema.names)}); set parquet_column")
    kind = schema.field(column).type
    if not (pyarrow.types.is_string(kind) or pyarrow.types.is_large_string(kind)):
        raise InputError(f"column '{column}' holds {kind}, not strings")
    for batch in source.iter_batches(batch_size=PARQUET_ROWS, columns=[column]):
        yield from batch.column(0).to_pylist()


def parquet_documents(path: Path, column: str, stats: ReadStats, strict: bool) -> Iterator[str]:
    for n, value in enumerate(_parquet_values(path, column)):
        if not value or not value.strip():
            stats.skip_record(f"{path}: row {n}: column '{column}' is empty or null", strict)
            continue
        yield value.replace("\r\n", "\n").replace("\r", "\n")


def fasta_documents(f: IO[str], path: Path, stats: ReadStats, strict: bool) -> Iterator[str]:
    header, parts = None, []
    for line in itertools.chain(f, [">"]):
        line = line.strip()
        if line.startswith(">"):
            if header is not None:
                seq = "".join(parts).upper().rstrip("*")
                if seq:
                    yield seq
                else:
                    stats.skip_record(f"{path}: record '{header[:40]}' has no sequence", strict)
            header, parts = line[1:], []
        elif line:
            if header is None:
                raise InputError(f"{path}: FASTA sequence before the first '>' header")
            parts.append(line)


def content_split(doc: str, val_fraction: float) -> str:
    """'val' or 'train', decided by a hash of the document's content (identical documents go together)."""
    h = int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big")
    return "val" if h < val_fraction * 2**64 else "train"
