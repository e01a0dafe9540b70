"""Training-side data: prepared token shards to per-rank batches, deterministic and exactly resumable.

Each epoch is one permutation of the split, drawn from (seed, epoch). Global batch ``s`` is the slice
``[s*W*B, (s+1)*W*B)`` of it and rank ``r`` takes rows ``[r*B, (r+1)*B)`` of that slice, so every rank gets
the same number of batches (the remainder of the epoch, fewer than W*B sequences, is dropped) and a run on W
ranks sees exactly the batches of a single process with batch W*B. Shards are read by random access: every
sample of a shard written by ``data_prep`` has the same size, so its tar offset is arithmetic (checked
against the tar headers). The position (epoch, batches consumed) is the whole state: resuming replays the
rest of the epoch exactly, whatever the number of DataLoader workers.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from data_prep.shards import MEMBER_SUFFIX, encode_tokens
from pipeline.config import Config, ModelConfig
from pipeline.runtime.dataset import (DataError, as_is, batches_per_rank, check_compatible, epoch_order,
                                      first_out_of_vocabulary, read_dataset_manifest)
from pipeline.runtime.preemption import ignore_in_workers
from pipeline.runtime.stream import stream_from_config

TAR_BLOCK = 512


class TokenShards(torch.utils.data.Dataset):
    """Random access to the sequences of one split of a prepared dataset."""

    def __init__(self, directory: str | os.PathLike, split: str):
        self.directory = Path(directory)
        manifest = read_dataset_manifest(directory)
        if split not in manifest["splits"]:
            raise DataError(f"{self.directory}: no split '{split}' (have {', '.join(manifest['splits'])})")
        self.seq_len, self.vocab_size = manifest["seq_len"], manifest["vocab_size"]
        self.member_bytes = len(encode_tokens(np.zeros(self.seq_len, np.int32)))
        self.header_bytes = self.member_bytes - 4 * self.seq_len  # the .npy header, the same for every sample
        self.stride = TAR_BLOCK + -(-self.member_bytes // TAR_BLOCK) * TAR_BLOCK
        shards = manifest["splits"][split]["shards"]
        self.paths = [self.directory / s["name"] for s in shards]
        for path, shard in zip(self.paths, shards):
            self._check_layout(path, shard["num_samples"])
        counts = np.array([s["num_samples"] for s in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _check_layout(self, path: Path, count: int) -> None:
        """The shard exists, has the size the manifest implies, and its first and last headers agree."""
        if not path.exists():
            raise DataError(f"shard missing: {path}")
        expected = count * self.stride
        size = path.stat().st_size
        if size < expected + 2 * TAR_BLOCK:
            raise DataError(f"{path}: {size} bytes, too short for {count} samples (truncated? run "
                            f"`python -m data_prep verify {self.directory}`)")
        with open(path, "rb") as f:
            for i in (0, count - 1):
                f.seek(i * self.stride)
                try:
                    info = tarfile.TarInfo.frombuf(f.read(TAR_BLOCK), "utf-8", "surrogateescape")
                except tarfile.TarError as err:
                    raise DataError(f"{path}: bad tar header for sample {i} ({err}); run data_prep verify") from None
                if info.size != self.member_bytes or not info.name.endswith(f"-{i:07d}.{MEMBER_SUFFIX}"):
                    raise DataError(f"{path}: sample {i} is not where the manifest layout puts it "
                                    f"(found {info.name!r}); run data_prep verify")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _fd(self, shard: int) -> int:
        if os.getpid() != self._pid:  # a forked DataLoader worker opens its own files
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        return self._fds[shard]

    def __getitem__(self, index: int) -> np.ndarray:
        return self.read([index])[0]

    def read(self, indices: list[int]) -> np.ndarray:
        """The (len(indices), L) int32 sequences at these sample indices (one pread each)."""
        shard_of = np.searchsorted(self.starts, indices, side="right") - 1
        out = np.empty((len(indices), self.seq_len), dtype=np.int32)
        for row, (index, shard) in enumerate(zip(indices, shard_of)):
            offset = int((index - self.starts[shard]) * self.stride + TAR_BLOCK)
            data = os.pread(self._fd(int(shard)), self.member_bytes, offset)
            out[row] = np.frombuffer(data, dtype="<i4", offset=self.header_bytes)
        if (bad := first_out_of_vocabulary(out, self.vocab_size)) is not None:
            row, token = bad
            shard = int(shard_of[row])
            raise DataError(f"{self.paths[shard]}: sample {indices[row] - self.starts[shard]} holds token id {token}, "
                            f"outside the vocabulary (V = {self.vocab_size}): the shard is damaged (run "
                            f"`python -m data_prep verify {self.directory}`)")
        return out


class _Batches(torch.utils.data.Dataset):
    """Item ``j`` is the whole batch ``j``, so a DataLoader worker reads a batch with one call."""

    def __init__(self, shards: TokenShards, batches: list[list[int]]):
        self.shards, self.batches = shards, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int) -> tuple[list[int], np.ndarray]:
        return self.batches[j], self.shards.read(self.batches[j])


class TokenLoader:
    """Per-rank batches ``{"input_ids": (B, L) long, "index": (B,) long}`` of one split (see module doc)."""

    def __init__(self, directory: str | os.PathLike, split: str, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_workers: int = 0, shuffle: bool = True,
                 model: ModelConfig | None = None):
        manifest = read_dataset_manifest(directory)
        if model is not None:
            check_compatible(manifest, model, f"{Path(directory) / 'manifest.json'}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.shards = TokenShards(directory, split)
        self.split, self.batch_size, self.rank, self.world_size = split, batch_size, rank, world_size
        self.seed, self.num_workers, self.shuffle = seed, num_workers, shuffle
        self.steps_per_epoch = batches_per_rank(len(self.shards), batch_size, world_size)
        if self.steps_per_epoch == 0:
            raise DataError(f"{directory}: split '{split}' has {len(self.shards)} sequences, fewer than one "
                            f"global batch ({world_size} ranks x {batch_size})")
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def rank_batches(self, epoch: int) -> np.ndarray:
        """(steps_per_epoch, B) sample indices of this rank in ``epoch``."""
        global_batch = self.world_size * self.batch_size
        order = epoch_order(len(self.shards), self.seed, epoch, self.shuffle)
        order = order[: self.steps_per_epoch * global_batch].reshape(self.steps_per_epoch, global_batch)
        return order[:, self.rank * self.batch_size: (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch; the next iteration starts the next epoch."""
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        batches = self.rank_batches(self.epoch)[self.position:].tolist()
        loader = torch.utils.data.DataLoader(_Batches(self.shards, batches), batch_size=None,
                                             num_workers=self.num_workers, collate_fn=as_is,
                                             worker_init_fn=ignore_in_workers)
        for index, tokens in loader:
            self.position += 1
            yield {"input_ids": torch.from_numpy(tokens).long(), "index": torch.tensor(index, dtype=torch.long)}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "split": self.split,
                "world_size": self.world_size, "batch_size": self.batch_size, "num_samples": len(self.shards),
                "shuffle": self.shuffle, "source": "local"}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        state = {"source": "local", **state}  # states saved before streaming existed are local ones
        changed = [k for k in ("source", "seed", "split", "world_size", "batch_size", "num_samples", "shuffle")
                   if state[k] != mine[k]]
        if changed:
            detail = ", ".join(f"{k} {state[k]} -> {mine[k]}" for k in changed)
            raise DataError(f"cannot resume the data stream exactly: {detail} since the checkpoint")
        self.epoch, self.position = state["epoch"], state["position"]


def loader_from_config(cfg: Config, split: str, rank: int, world_size: int, shuffle: bool = True):
    """``data.source``'s loader: ``TokenLoader`` (random access to a directory) or ``StreamLoader``."""
    if cfg.data.streaming:
        return stream_from_config(cfg, split, rank, world_size, shuffle)
    return TokenLoader(cfg.data.path, split, cfg.data.batch_size, rank, world_size, cfg.run.seed,
                       cfg.data.num_workers, shuffle, cfg.model)
