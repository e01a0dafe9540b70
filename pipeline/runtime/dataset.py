"""What both training loaders need to know about a prepared dataset: its manifest (a directory or a streamed
location), whether it suits the model, how many batches a rank gets, and each epoch's order."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from data_prep.atomic import atomic_write_bytes
from pipeline.config import ModelConfig, is_remote
from pipeline.runtime.urls import FetchError, fetch, resolve


class DataError(ValueError):
    """The prepared data cannot be used as configured; the message names the file and the mismatch."""


def read_dataset_manifest(directory: str | os.PathLike, retries: int = 3) -> dict:
    """The manifest of a prepared dataset: a directory, or a location that streaming reads (``urls``)."""
    if is_remote(str(directory)):
        url = resolve(str(directory), "manifest.json")
        try:
            text = fetch(url, retries).decode()
        except (FetchError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read the dataset's manifest: {err}") from None
    else:
        url = Path(directory) / "manifest.json"
        try:
            text = url.read_text()
        except FileNotFoundError:
            raise DataError(f"{url} not found: prepare the data first (python -m data_prep prepare ... --out "
                            f"{directory})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{url} is not valid JSON: {err}") from None


_FETCHED: set[Path] = set()  # remote tokenizers already copied by this process


def dataset_tokenizer_dir(location: str, retries: int = 3) -> Path:
    """The dataset's tokenizer directory: the local one, or for a streamed dataset a local copy of its files
    (in the temporary directory, one folder per location), fetched once per process: every checkpoint copies
    it, and a save should not depend on the network."""
    if not is_remote(location):
        return Path(location) / "tokenizer"
    folder = Path(tempfile.gettempdir()) / "didi-tokenizers" / hashlib.sha256(location.encode()).hexdigest()[:16]
    if folder in _FETCHED and (folder / "tokenizer.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    try:
        meta = fetch(resolve(location, "tokenizer/tokenizer.json"), retries)
        if model_file := json.loads(meta).get("model_file"):
            atomic_write_bytes(folder / model_file, fetch(resolve(location, f"tokenizer/{model_file}"), retries))
    except (FetchError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the dataset's tokenizer: {err}") from None
    atomic_write_bytes(folder / "tokenizer.json", meta)
    _FETCHED.add(folder)
    return folder


def check_compatible(manifest: dict, model: ModelConfig, where: str) -> None:
    """Refuse shards whose tokenizer, sequence length or vocabulary differ from what the model expects."""
    have = manifest["tokenizer"]["fingerprint"]
    if model.tokenizer_fingerprint is not None and model.tokenizer_fingerprint != have:
        raise DataError(f"{where}: tokenizer fingerprint {have} differs from model.tokenizer_fingerprint "
                        f"{model.tokenizer_fingerprint} (the data were tokenised with another tokenizer)")
    if manifest["seq_len"] != model.seq_len:
        raise DataError(f"{where}: seq_len {manifest['seq_len']} differs from model.seq_len {model.seq_len}")
    if manifest["vocab_size"] != model.vocab_size:
        raise DataError(f"{where}: vocab_size {manifest['vocab_size']} differs from model.vocab_size "
                        f"{model.vocab_size}")


def first_out_of_vocabulary(tokens: np.ndarray, vocab_size: int) -> tuple[int, int] | None:
    """(row, id) of the first row of ``tokens`` holding an id outside [0, vocab_size), or None: a damaged shard
    must stop with its name, not as an index error inside the embedding."""
    bad = (tokens < 0) | (tokens >= vocab_size)
    if not bad.any():
        return None
    row = int(bad.any(axis=1).argmax())
    return row, int(tokens[row][bad[row]][0])


def batches_per_rank(num_samples: int, batch_size: int, data_ranks: int) -> int:
    """Batches each data-parallel rank gets per epoch (every rank the same; the remainder is dropped)."""
    return num_samples // (data_ranks * batch_size)


def check_data_ranks(manifest: dict, batch_size: int, tensor_parallel: int, world_size: int, where: str) -> None:
    """Every data-parallel rank needs at least one batch per epoch of each split, or the job stops after
    set-up; a hostfile with more slots than the data allow is refused before launch."""
    data_ranks = world_size // tensor_parallel
    for split, info in manifest["splits"].items():
        if batches_per_rank(info["num_samples"], batch_size, data_ranks) == 0:
            most = batches_per_rank(info["num_samples"], batch_size, 1)
            raise DataError(f"{where}: split '{split}' has {info['num_samples']} sequences, one batch of "
                            f"{batch_size} for at most {most} data-parallel ranks, but the job has {world_size} "
                            f"ranks = {tensor_parallel} tensor-parallel x {data_ranks} data-parallel: launch at most "
                            f"{most * tensor_parallel} ranks (hostfile slots / --num_gpus) or lower data.batch_size")


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The sample order of one epoch, a function of (seed, epoch) only."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def as_is(item):
    """DataLoader collate that keeps numpy: a small int32 array crosses the worker pipe faster than a tensor."""
    return item
