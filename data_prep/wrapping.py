"""MDLM sequence wrapping: documents joined with EOS, cut into chunks of L - 2, each framed as [BOS] chunk [EOS]."""
from __future__ import annotations

import numpy as np


def wrap_documents(docs: list[list[int]], seq_len: int, bos_id: int, eos_id: int) -> np.ndarray:
    """Return an int32 array (N, seq_len); the tail shorter than a chunk is dropped (as in MDLM's wrapping)."""
    if seq_len < 3:
        raise ValueError(f"seq_len {seq_len} is too small: a sequence is [BOS] + chunk + [EOS]")
    chunk = seq_len - 2
    stream = np.fromiter((t for doc in docs for t in (*doc, eos_id)), dtype=np.int32)
    n = len(stream) // chunk
    out = np.empty((n, seq_len), dtype=np.int32)
    out[:, 0] = bos_id
    out[:, 1:-1] = stream[: n * chunk].reshape(n, chunk)
    out[:, -1] = eos_id
    return out
