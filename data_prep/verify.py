"""Re-check a prepared dataset against its manifest: every shard present, intact, counted and well-formed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_prep.prepare import FORMAT, MANIFEST
from data_prep.shards import iter_shard, sha256_file
from data_prep.tokenizers import TokenizerError, load_tokenizer


def verify_dataset(directory: str | Path) -> tuple[list[str], dict]:
    """Return (problems, totals); no problems means every count and checksum agrees with the manifest."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return [f"{directory}: no {MANIFEST} (preparation did not finish)"], {}
    except json.JSONDecodeError as err:
        return [f"{directory / MANIFEST}: not valid JSON ({err})"], {}
    if manifest.get("format") != FORMAT:
        return [f"{directory / MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}"], {}
    problems: list[str] = []
    try:
        tok = load_tokenizer(directory / manifest["tokenizer"]["dir"])
        if tok.fingerprint != manifest["tokenizer"]["fingerprint"]:
            problems.append(f"tokenizer fingerprint {tok.fingerprint} differs from the manifest's")
    except TokenizerError as err:
        problems.append(str(err))
    listed = set()
    totals = {"shards": 0, "samples": 0}
    for split, info in manifest["splits"].items():
        if sum(s["num_samples"] for s in info["shards"]) != info["num_samples"]:
            problems.append(f"{split}: shard counts do not add up to num_samples={info['num_samples']}")
        for shard in info["shards"]:
            listed.add(shard["name"])
            problems += _check_shard(directory / shard["name"], shard, manifest)
            totals["shards"] += 1
            totals["samples"] += shard["num_samples"]
    for path in sorted(directory.glob("*.tar")):
        if path.name not in listed:
            problems.append(f"{path.name}: shard not listed in the manifest")
    return problems, totals


def _check_shard(path: Path, entry: dict, manifest: dict) -> list[str]:
    name = path.name
    if not path.exists():
        return [f"{name}: missing"]
    if path.stat().st_size != entry["bytes"]:
        return [f"{name}: corrupt or truncated ({path.stat().st_size} bytes, manifest says {entry['bytes']})"]
    if sha256_file(path) != entry["sha256"]:
        return [f"{name}: corrupt (sha256 differs from the manifest)"]
    seq_len, vocab = manifest["seq_len"], manifest["vocab_size"]
    count = 0
    try:
        for key, seq in iter_shard(path):
            if seq.dtype != np.int32 or seq.shape != (seq_len,):
                return [f"{name}: sample {key} is {seq.dtype} {seq.shape}, expected int32 ({seq_len},)"]
            if seq[0] != manifest["bos_id"] or seq[-1] != manifest["eos_id"]:
                return [f"{name}: sample {key} is not framed as [BOS] ... [EOS]"]
            if seq.min() < 0 or seq.max() >= vocab:
                return [f"{name}: sample {key} has token ids outside [0, {vocab})"]
            count += 1
    except Exception as err:  # any reader failure is a corrupt shard, named as such
        return [f"{name}: unreadable ({err.__class__.__name__}: {err})"]
    if count != entry["num_samples"]:
        return [f"{name}: {count} samples, manifest says {entry['num_samples']}"]
    return []
