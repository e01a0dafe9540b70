"""Webdataset tar shards of int32 token arrays: one sample per sequence, ``KEY.tokens.npy``, no pickle.

Shards are written byte-for-byte deterministically (fixed mtime, owner and mode), so a restarted job
reproduces an uninterrupted one exactly; any webdataset pipeline can stream them.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np
import webdataset as wds

from data_prep.atomic import atomic_path

MEMBER_SUFFIX = "tokens.npy"


def encode_tokens(seq: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(seq, dtype="<i4"), allow_pickle=False)
    return buf.getvalue()


def decode_tokens(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def write_shard(path: str | os.PathLike, sequences: np.ndarray) -> None:
    """Write an (N, L) int32 array as a tar shard, atomically."""
    stem = Path(path).name.removesuffix(".tar")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            writer = wds.TarWriter(f, user="", group="", mode=0o644, encoder=False, mtime=0, format=tarfile.USTAR_FORMAT)
            for i, seq in enumerate(sequences):
                writer.write({"__key__": f"{stem}-{i:07d}", MEMBER_SUFFIX: encode_tokens(seq)})
            writer.close()


def iter_shard(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Stream (key, tokens) pairs with webdataset's tar reader; raises on a truncated or malformed tar."""
    with open(path, "rb") as f:
        for sample in wds.tariterators.tar_file_iterator(f, handler=wds.reraise_exception):
            name = sample["fname"]
            key, _, suffix = name.partition(".")
            if suffix != MEMBER_SUFFIX:
                raise ValueError(f"{path}: unexpected member {name!r}")
            yield key, decode_tokens(sample["data"])


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
