"""Corpus readers: input paths to a deterministic stream of documents.

A document is what the train/validation split assigns as a whole:
- plain text: the file cut at blank lines, consecutive blocks merged until at least ``min_doc_chars``
  (a trailing block shorter than that joins the previous one), so a corpus of a few large files still gives a
  meaningful document-level split; line endings are normalised to ``\\n``;
- JSONL (``.jsonl``, ``.ndjson``): one document per line, from a configurable string field;
- FASTA (``.fa``, ``.fasta``, ``.faa``, ``.fna``, ``.fas``): one document per record, the sequence in
  upper case with line breaks and a trailing ``*`` removed.
Any of them may be gzip-compressed (``.gz``). Files that are not valid UTF-8 (or cannot be read) are skipped
and counted, as are malformed or empty records; ``strict`` turns both into errors.
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


def list_input_files(paths: list[str]) -> list[Path]:
    """Expand files and directories (recursively, hidden entries skipped) into a sorted, de-duplicated list."""
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found.update(Path(root, f).resolve() for f in files if not f.startswith("."))
        elif path.is_file():
            found.add(path.resolve())
        else:
            raise InputError(f"input not found: {raw}")
    if not found:
        raise InputError(f"no input files under {', '.join(paths)}")
    return sorted(found)


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last in FASTA_SUFFIXES:
        return "fasta"
    if last in JSONL_SUFFIXES:
        return "jsonl"
    return "text"


def _open_text(path: Path) -> IO[str]:
    """UTF-8 (strict) with universal newlines: ``\r\n`` and ``\r`` become ``\n``."""
    raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline=None)


def _unreadable_reason(path: Path) -> str | None:
    """Decode the whole file once, so that a bad file is skipped before any of its documents is used."""
    try:
        with _open_text(path) as f:
            while f.read(1 << 20):
                pass
    except UnicodeDecodeError as err:
        return f"not valid UTF-8 (byte {err.start} of a chunk)"
    except (OSError, EOFError) as err:
        return f"unreadable ({err.__class__.__name__}: {err})"
    return None


def iter_documents(paths: list[Path], stats: ReadStats, min_doc_chars: int, jsonl_field: str,
                   strict: bool) -> Iterator[str]:
    """Yield every document of every input file, in a deterministic order."""
    for path in paths:
        reason = _unreadable_reason(path)
        if reason:
            if strict:
                raise InputError(f"{path}: {reason}")
            stats.skipped_files.append(f"{path}: {reason}")
            continue
        stats.files += 1
        fmt = file_format(path)
        with _open_text(path) as f:
            if fmt == "text":
                docs = text_documents(f, min_doc_chars)
            elif fmt == "jsonl":
                docs = jsonl_documents(f, path, jsonl_field, stats, strict)
            else:
                docs = fasta_documents(f, path, stats, strict)
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
