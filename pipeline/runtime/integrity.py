"""Checkpoint integrity: the size and sha256 of every file a checkpoint holds, in its ``files.json``.

The ranks share the hashing (file k of the sorted list is rank k mod W's) when they save and when they resume;
``files.json`` is written after every other file and before ``latest`` moves, so a checkpoint that has one is
complete. ``python -m pipeline verify-checkpoints RUN_DIR`` checks every checkpoint of a run without loading a
model (exit 1 when one is damaged).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from data_prep.atomic import atomic_write_bytes

MANIFEST = "files.json"


def listing(directory: Path) -> list[str]:
    """The checkpoint's files (relative, sorted), without the manifest and temporary files."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and p.name != MANIFEST and ".tmp" not in p.name)


def describe(directory: Path, names: list[str]) -> dict[str, list]:
    """``{name: [size, sha256]}`` of these files."""
    found = {}
    for name in names:
        h = hashlib.sha256()
        with open(directory / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        found[name] = [(directory / name).stat().st_size, h.hexdigest()]
    return found


def write_manifest(directory: Path, files: dict[str, list]) -> None:
    atomic_write_bytes(directory / MANIFEST, json.dumps(dict(sorted(files.items())), indent=1).encode())


def read_checkpoint_manifest(directory: Path) -> dict[str, list] | None:
    """The checkpoint's manifest, or None if it has none (incomplete, or written before checksums)."""
    try:
        return json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return {}


def predates_checksums(directory: Path) -> bool:
    """A checkpoint written before checkpoints carried checksums: no files.json, and a meta.json without the
    ``checksums`` entry that every later one has. Any other checkpoint without files.json is incomplete or
    damaged."""
    if read_checkpoint_manifest(directory) is not None:
        return False
    try:
        return "checksums" not in json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return False


def problems(directory: Path, rank: int = 0, world_size: int = 1) -> list[str]:
    """What is wrong with this rank's share of the checkpoint's files (every file for one process)."""
    files = read_checkpoint_manifest(directory)
    if files is None:
        return [f"{directory / MANIFEST}: missing (" + ("the checkpoint predates checksums)" if predates_checksums(directory)
                                                        else "the save did not finish, or it was deleted)")]
    if not files:
        return [f"{directory / MANIFEST}: unreadable"]
    found = []
    for name in sorted(files)[rank::world_size]:
        size, digest = files[name]
        path = directory / name
        if not path.is_file():
            found.append(f"{path}: missing")
        elif path.stat().st_size != size:
            found.append(f"{path}: {path.stat().st_size:,} bytes, {size:,} when it was written (truncated?)")
        elif describe(directory, [name])[name][1] != digest:
            found.append(f"{path}: sha256 differs from when it was written (damaged)")
    return found


def step_dirs(root: Path) -> list[Path]:
    """The checkpoint folders under ``root`` (``step_NNNNNNNN``), newest first."""
    return sorted((p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()), reverse=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline verify-checkpoints", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory (its checkpoints/ folder) or a checkpoints/ folder")
    args = parser.parse_args(argv)
    run = Path(args.run_dir)
    root = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    dirs = step_dirs(root)
    if not dirs:
        print(f"error: no checkpoints under {root}", file=sys.stderr)
        return 2
    bad = 0
    for directory in dirs:
        found = problems(directory)
        bad += bool(found)
        print(f"{'FAIL' if found else 'OK  '} {directory.name}" + "".join(f"\n     {p}" for p in found))
    print(f"{len(dirs) - bad} of {len(dirs)} checkpoints intact")
    return 1 if bad else 0
