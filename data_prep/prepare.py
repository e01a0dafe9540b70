"""The preparation job: inputs -> tokenizer -> document split -> wrapped sequences -> tar shards + manifest.

Restartable: documents are grouped into shard units by text size in one deterministic pass, so unit k is
always the same documents; each finished shard gets a side file (``.parts/NAME.json``) written after the
shard itself, and a rerun skips every shard whose side file and checksum agree. Workers tokenise and write
units in parallel; the result does not depend on their number. ``manifest.json`` is written last.

As an array job, task I of N builds the units whose ordinal k (in input order, both splits counted together)
has k mod N = I and records what it read in ``.parts/task-I-of-N.json``; ``data_prep.merge`` then writes the
manifest. Every task reads all inputs (reading is cheap next to tokenising) so the units, and therefore the
bytes, are the same whatever N is.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import multiprocessing
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator


from data_prep import logs
from data_prep.atomic import atomic_write_bytes
from data_prep.config import PrepareConfig, load_yaml, save_resolved, to_dict
from data_prep.documents import ReadStats, content_split, iter_documents, list_input_files
from data_prep.shards import sha256_file, write_shard
from data_prep.tokenizers import Tokenizer, TokenizerError, build_tokenizer, load_tokenizer
from data_prep.wrapping import wrap_documents

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CONFIG_NAME = "prepare_config.yaml"
FORMAT = "token-shards/1"
SPLITS = ("train", "val")


class PrepareError(ValueError):
    """The job cannot produce a dataset from this input; the message says why."""


@dataclasses.dataclass(frozen=True)
class Task:
    """Task ``index`` of an array job of ``count`` tasks; the default is the whole job in one process."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise PrepareError(f"--task-index {self.index} with --num-tasks {self.count}: the index must be in "
                               f"[0, {self.count - 1}] (SLURM: an array from 0, e.g. --array=0-{self.count - 1})")

    @property
    def record(self) -> str:
        return f"task-{self.index:05d}-of-{self.count:05d}.json"


@dataclasses.dataclass
class Unit:
    """The documents of one shard."""

    split: str
    index: int
    docs: list[str]
    text_bytes: int = 0

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}.tar"


def prepare(cfg: PrepareConfig, log: Callable[[str], None] = log.info, task: Task = Task()) -> dict:
    """Run the whole job (or finish an interrupted one) and return the manifest; as one task of an array job,
    build that task's units and return its record (the tokenizer must exist: ``train_tokenizer`` first)."""
    cfg = resolved(cfg)
    out = Path(cfg.out)
    files = _input_files(cfg)
    if task.count == 1:
        tok = _first_step(out, cfg, files, log)
    else:
        tok = _join_output_dir(out, cfg)
    (out / ".parts").mkdir(exist_ok=True)
    stats = ReadStats()
    results, names = [], []
    units = _units(_documents(files, stats, cfg), cfg)
    sequences = 0
    with logs.progress(None, desc="shards") as bar:
        for part in _run_units(_owned(units, task, names), out, cfg.seq_len, cfg.workers):
            results.append(part)
            sequences += part["num_samples"]
            bar.update(1)
            bar.set_postfix(docs=stats.documents, seqs=sequences)
    if task.count > 1:
        record = {"task": task.index, "tasks": task.count, "units": names, "built": [p["name"] for p in results],
                  "files": len(files[0]) + len(files[1]), "sources": dataclasses.asdict(stats), "fingerprint": tok.fingerprint}
        atomic_write_bytes(out / ".parts" / task.record, json.dumps(record).encode())
        return record
    manifest = _manifest(cfg, tok, stats, results, len(files[0]) + len(files[1]))
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def train_tokenizer(cfg: PrepareConfig, log: Callable[[str], None] = log.info) -> Tokenizer:
    """Claim the output directory and train (or load) its tokenizer: the first step of an array job."""
    cfg = resolved(cfg)
    return _first_step(Path(cfg.out), cfg, _input_files(cfg), log)


def _first_step(out: Path, cfg: PrepareConfig, files: tuple[list[Path], list[Path]],
                log: Callable[[str], None]) -> Tokenizer:
    """Claim the output directory and train (or load) the tokenizer; a directory this job created is removed
    again if that fails, so a failed job leaves nothing behind."""
    existed = out.exists()
    fresh = not existed or not any(out.iterdir())
    try:
        _claim_output_dir(out, cfg)
        return _tokenizer(out, cfg, files, log)
    except BaseException:
        if fresh:  # back to how it was: absent, or the empty folder the user made
            shutil.rmtree(out, ignore_errors=True)
            if existed:
                out.mkdir()
        raise


def resolved(cfg: PrepareConfig) -> PrepareConfig:
    """The config with absolute input paths, as saved next to the output."""
    cfg = dataclasses.replace(cfg, inputs=[str(Path(p).resolve()) for p in cfg.inputs],
                              val_inputs=[str(Path(p).resolve()) for p in cfg.val_inputs])
    if cfg.tokenizer.startswith("gpt2:"):
        cfg.tokenizer = "gpt2:" + str(Path(cfg.tokenizer[5:]).resolve())
    return cfg


def _claim_output_dir(out: Path, cfg: PrepareConfig) -> None:
    """Refuse a directory that holds something else; record this job's config in it."""
    saved = out / CONFIG_NAME
    if saved.exists():
        if detail := _differences(out, cfg, "now"):
            raise PrepareError(f"{out} holds a different dataset ({detail}); use another --out or remove it")
    elif out.exists() and any(out.iterdir()):
        raise PrepareError(f"{out} is not empty and holds no {CONFIG_NAME}: choose an empty or new directory")
    for stale in out.glob(".*.tmp*") if out.exists() else ():
        stale.unlink()
    save_resolved(cfg, out, CONFIG_NAME)


def _join_output_dir(out: Path, cfg: PrepareConfig) -> Tokenizer:
    """A task's check that the directory was claimed by this job's config and holds its tokenizer."""
    first = f"python -m data_prep tokenizer with the same settings and --out {out}"
    if not (out / CONFIG_NAME).exists() or not (out / "tokenizer" / "tokenizer.json").exists():
        raise PrepareError(f"{out} has no {CONFIG_NAME} and tokenizer yet: run {first} before the tasks")
    if detail := _differences(out, cfg, "in this task"):
        raise PrepareError(f"{out} was set up for other settings ({detail}); give every task the same settings")
    return load_tokenizer(out / "tokenizer")


def _differences(out: Path, cfg: PrepareConfig, now: str) -> str:
    """The settings (all but out and workers) in which ``cfg`` differs from the config saved in ``out``."""
    old, new = to_dict(load_yaml(out / CONFIG_NAME, PrepareConfig)), to_dict(cfg)
    return "; ".join(f"{k}: {old.get(k)!r} there, {new[k]!r} {now}"
                     for k in new if k not in ("out", "workers") and old.get(k) != new[k])


def _tokenizer(out: Path, cfg: PrepareConfig, files: tuple[list[Path], list[Path]], log: Callable[[str], None]) -> Tokenizer:
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        return load_tokenizer(tok_dir)
    if cfg.tokenizer.startswith("spm:"):
        log(f"training SentencePiece ({cfg.spm_model_type}, {cfg.tokenizer[4:]} pieces) on the train split")
    stats, used = ReadStats(), []
    lines = (used.append(1) or line for split, doc in _documents(files, stats, cfg) if split == "train"
             for line in doc.split("\n") if line)
    try:
        tok = build_tokenizer(cfg.tokenizer, lines, cfg.spm_model_type, cfg.spm_max_sentences)
    except TokenizerError as err:
        if used:
            raise
        skipped = (f"; {len(stats.skipped_files)} of {len(files[0])} input files skipped, the first "
                   f"{stats.skipped_files[0]}" if stats.skipped_files else "")
        raise PrepareError(f"no input line was usable to train the tokenizer: the train split holds no text "
                           f"({stats.documents} documents read{skipped})") from err
    tok.save(tok_dir)
    return tok


def _input_files(cfg: PrepareConfig) -> tuple[list[Path], list[Path]]:
    """(the inputs' files, the validation inputs' files); a file in both is refused."""
    files, val_files = list_input_files(cfg.inputs), list_input_files(cfg.val_inputs) if cfg.val_inputs else []
    if both := sorted(set(files) & set(val_files)):
        raise PrepareError(f"{both[0]} is among both inputs and val_inputs: a document belongs to one split")
    return files, val_files


def _documents(files: tuple[list[Path], list[Path]], stats: ReadStats, cfg: PrepareConfig) -> Iterator[tuple[str, str]]:
    """(split, document) of every input document: split by content hash, and every validation input's as 'val'."""
    read = lambda paths: iter_documents(paths, stats, cfg.min_doc_chars, cfg.jsonl_field,  # noqa: E731
                                        cfg.parquet_column, cfg.strict)
    yield from ((content_split(doc, cfg.val_fraction), doc) for doc in read(files[0]))
    yield from (("val", doc) for doc in read(files[1]))


def _units(docs: Iterator[tuple[str, str]], cfg: PrepareConfig) -> Iterator[Unit]:
    """Group documents per split into units of about ``shard_mb``; a small last unit joins the one before."""
    limit = int(cfg.shard_mb * 1e6)
    current = {s: Unit(s, 0, []) for s in SPLITS}
    pending: dict[str, Unit | None] = {s: None for s in SPLITS}
    for split, doc in docs:
        unit = current[split]
        unit.docs.append(doc)
        unit.text_bytes += len(doc.encode("utf-8"))
        if unit.text_bytes >= limit:
            if pending[unit.split]:
                yield pending[unit.split]
            pending[unit.split] = unit
            current[unit.split] = Unit(unit.split, unit.index + 1, [])
    for split in SPLITS:
        last, tail = pending[split], current[split]
        if last and tail.docs and tail.text_bytes < limit / 2:
            last.docs += tail.docs
            last.text_bytes += tail.text_bytes
            tail = Unit(split, 0, [])
        for unit in (last, tail):
            if unit and unit.docs:
                yield unit


def _owned(units: Iterator[Unit], task: Task, names: list[str]) -> Iterator[Unit]:
    """The task's units; every unit's name is appended to ``names`` (the whole job's units, in order)."""
    for k, unit in enumerate(units):
        names.append(unit.name)
        if k % task.count == task.index:
            yield unit


def _part_path(out: Path, name: str) -> Path:
    return out / ".parts" / (name + ".json")


def _finished(out: Path, name: str) -> dict | None:
    """The side file of a shard that is complete and intact, else None."""
    try:
        part = json.loads(_part_path(out, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if part["num_samples"] == 0 or ((out / name).exists() and sha256_file(out / name) == part["sha256"]):
        return part
    return None


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tok_dir: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tok_dir)


def _build_shard(unit: Unit, out: Path, seq_len: int) -> dict:
    """Tokenise, wrap and write one unit; the side file is written after the shard."""
    tok = _worker_tokenizer
    token_docs = tok.encode_batch(unit.docs)
    seqs = wrap_documents(token_docs, seq_len, tok.bos_id, tok.eos_id)
    part = {
        "name": unit.name, "split": unit.split, "num_samples": len(seqs), "num_documents": len(unit.docs),
        "text_bytes": unit.text_bytes, "document_tokens": sum(len(d) + 1 for d in token_docs),
        "sha256": None, "bytes": 0,
    }
    if len(seqs):
        write_shard(out / unit.name, seqs)
        part["sha256"], part["bytes"] = sha256_file(out / unit.name), (out / unit.name).stat().st_size
    atomic_write_bytes(_part_path(out, unit.name), json.dumps(part).encode())
    return part


def _run_units(units: Iterator[Unit], out: Path, seq_len: int, workers: int) -> Iterator[dict]:
    """Build every unfinished unit, ``workers`` at a time, yielding side files in unit order."""
    tok_dir = str(out / "tokenizer")
    if workers == 1:
        _init_worker(tok_dir)
        for unit in units:
            yield _finished(out, unit.name) or _build_shard(unit, out, seq_len)
        return
    # fork (Linux) starts workers without re-importing torch (webdataset imports it); spawn elsewhere
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tok_dir,)) as pool:
        in_flight: collections.deque = collections.deque()
        for unit in units:
            done = _finished(out, unit.name)
            in_flight.append(done or pool.apply_async(_build_shard, (unit, out, seq_len)))
            while len(in_flight) > 2 * workers:
                yield _result(in_flight.popleft())
        while in_flight:
            yield _result(in_flight.popleft())


def _result(item):
    return item if isinstance(item, dict) else item.get()


def _manifest(cfg: PrepareConfig, tok: Tokenizer, stats: ReadStats, parts: list[dict], n_files: int) -> dict:
    if stats.documents == 0:
        skipped = "; ".join(stats.skipped_files[:3])
        raise PrepareError(f"no documents in the inputs ({n_files} files, {len(stats.skipped_files)} skipped"
                           f"{': ' + skipped if skipped else ''})")
    splits = {}
    for split in SPLITS:
        mine = [p for p in parts if p["split"] == split]
        n = sum(p["num_samples"] for p in mine)
        expected = cfg.val_fraction > 0 or bool(cfg.val_inputs) if split == "val" else True
        if n == 0 and expected:
            tokens = sum(p["document_tokens"] for p in mine)
            raise PrepareError(
                f"the {split} split has no complete sequence: {sum(p['num_documents'] for p in mine)} documents, "
                f"{tokens} tokens, fewer than seq_len - 2 = {cfg.seq_len - 2} per shard; add text, lower --seq-len"
                + (" or raise --val-fraction" if split == "val" else ""))
        splits[split] = {
            "num_samples": n, "num_tokens": n * cfg.seq_len,
            "num_documents": sum(p["num_documents"] for p in mine),
            "document_tokens": sum(p["document_tokens"] for p in mine),
            "text_bytes": sum(p["text_bytes"] for p in mine),
            "shards": [{k: p[k] for k in ("name", "num_samples", "sha256", "bytes")} for p in mine if p["num_samples"]],
        }
    return {
        "format": FORMAT, "seq_len": cfg.seq_len, "dtype": "int32",
        "vocab_size": tok.vocab_size, "mask_id": tok.mask_id, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
        "pad_id": tok.pad_id, "tokenizer": {**tok.describe(), "dir": "tokenizer"},
        "sources": {
            "inputs": cfg.inputs, "files_read": stats.files, "documents": stats.documents, "chars": stats.chars,
            "skipped_files": stats.skipped_files, "skipped_records": stats.skipped_records,
            "first_skipped_record": stats.first_skipped_record,
        },
        "splits": splits,
    }
