"""``python -m data_prep merge DIR``: the last step of an array job, after every task of ``prepare`` finished.

The tasks' records (``.parts/task-I-of-N.json``) must be one complete set from one job: the same N, every index
once, the same inputs read, the same tokenizer, and each unit of the job built by its task (unit k by task
k mod N) with its shard intact. Anything else is refused with the task or shard named and nothing written; otherwise the
manifest is written exactly as a single-process job would have written it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from data_prep.atomic import atomic_write_bytes
from data_prep.config import PrepareConfig, load_yaml
from data_prep.documents import ReadStats
from data_prep.prepare import CONFIG_NAME, MANIFEST, PrepareError, _finished, _manifest
from data_prep.tokenizers import load_tokenizer

RECORD = re.compile(r"task-(\d{5})-of-(\d{5})\.json")


def merge(directory: str | Path) -> dict:
    """Check the tasks' records and shards, write ``manifest.json`` and return it."""
    out = Path(directory)
    if not (out / CONFIG_NAME).exists():
        raise PrepareError(f"{out} holds no {CONFIG_NAME}: not a prepared or preparing dataset directory")
    cfg = load_yaml(out / CONFIG_NAME, PrepareConfig)
    tok = load_tokenizer(out / "tokenizer")
    records = _records(out)
    first = records[0]
    for rec in records[1:]:
        for key in ("units", "files", "sources"):
            if rec[key] != first[key]:
                raise PrepareError(f"task {rec['task']} read other inputs than task 0 ({key} differ): the inputs "
                                   f"changed while the job ran; rerun every task")
    stale = [r["task"] for r in records if r["fingerprint"] != tok.fingerprint]
    if stale:
        raise PrepareError(f"tasks {stale} used another tokenizer than {out / 'tokenizer'} "
                           f"(fingerprint {tok.fingerprint}); rerun them")
    parts = []
    for k, name in enumerate(first["units"]):
        task = k % first["tasks"]
        part = _finished(out, name) if name in records[task]["built"] else None
        if part is None:
            raise PrepareError(f"{name} is missing or damaged: rerun task {task} (the same command), then merge again")
        parts.append(part)
    manifest = _manifest(cfg, tok, ReadStats(**first["sources"]), parts, first["files"])
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    for tmp in out.glob(".*.tmp*"):  # left by killed tasks; every task has finished now
        tmp.unlink()
    return manifest


def _records(out: Path) -> list[dict]:
    """The task records of one job, sorted by index; a missing index or records of two jobs are refused."""
    found = sorted((int(m[2]), int(m[1]), p) for p in (out / ".parts").glob("task-*.json")
                   if (m := RECORD.fullmatch(p.name)))
    if not found:
        raise PrepareError(f"{out / '.parts'} holds no task records: run the tasks (prepare --num-tasks N "
                           f"--task-index I) first")
    counts = sorted({n for n, _, _ in found})
    if len(counts) > 1:
        raise PrepareError(f"{out} holds the records of jobs with {' and '.join(map(str, counts))} tasks: remove "
                           f"the stale ones (.parts/task-*-of-*.json) and rerun that job's tasks")
    n = counts[0]
    missing = sorted(set(range(n)) - {i for _, i, _ in found})
    if missing:
        raise PrepareError(f"tasks {missing} of {n} have not finished: run them (the same command with "
                           f"--task-index I), then merge again")
    return [json.loads(p.read_text()) for _, _, p in found]
