"""Streaming training data: whole shards read through webdataset's ``gopen`` (paths, ``file://``, ``http(s)://``,
``pipe:`` commands), each checked against its sha256 in the manifest before any of its sequences is used.

Each epoch's shard order is a permutation drawn from (seed, epoch); shards go to the data-parallel ranks in that
order, each to the rank holding the fewest sequences so far, and every rank takes the batches of the smallest
rank's share, so all ranks step together. A split with fewer shards than ranks (a small validation split) is
read whole by every rank, each keeping every W-th sequence. Within a rank the shards' sequences pass through a shuffle buffer of
K sequences seeded by (seed, epoch, rank): the next sequence replaces a random one of the K, which is emitted;
the last K are emitted in a random order. The buffer's choices depend on positions only, never on content, so
the whole epoch's order is computed from the manifest before anything is read (``plan``). That makes resuming
exact from (epoch, batches consumed) alone: the loader re-reads only the shards that still hold sequences to
come. DataLoader workers fetch and verify whole shards in order, so the stream does not depend on their number.
Memory per rank: the buffer, plus the shards in flight (up to two queued per worker, and the one being read).
"""
from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import torch
import webdataset as wds

from data_prep.shards import MEMBER_SUFFIX, decode_tokens
from pipeline.config import Config, ModelConfig
from pipeline.runtime.dataset import (DataError, as_is, batches_per_rank, check_compatible, epoch_order,
                                      first_out_of_vocabulary, read_dataset_manifest)
from pipeline.runtime.preemption import ignore_in_workers
from pipeline.runtime.urls import FetchError, fetch, resolve


def assign(counts: np.ndarray, order: np.ndarray, ranks: int) -> list[list[int]]:
    """Shards (in ``order``) to ranks, each to the rank with the fewest sequences so far (ties: the lowest)."""
    shards: list[list[int]] = [[] for _ in range(ranks)]
    held = np.zeros(ranks, dtype=np.int64)
    for shard in order.tolist():
        rank = int(np.argmin(held))
        shards[rank].append(shard)
        held[rank] += counts[shard]
    return shards


def buffer_order(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a shuffle buffer of ``buffer`` slots emits a stream of ``n`` items (positions 0 … n-1).

    Item q >= K replaces the item in a uniformly drawn slot, which is emitted; at the end the K left are emitted
    in a random order. Output i is always an item read before position K + i, so a reader needs at most K items
    held back."""
    k = min(buffer, n)
    if k == 0:
        return np.arange(n)
    slots = list(range(k))
    draws = rng.integers(0, k, size=n - k).tolist()
    out = np.empty(n, dtype=np.int64)
    for i, (q, j) in enumerate(zip(range(k, n), draws)):
        out[i] = slots[j]
        slots[j] = q
    out[n - k:] = rng.permutation(np.array(slots, dtype=np.int64))
    return out


class _Shards(torch.utils.data.Dataset):
    """Item j: the j-th shard to read, fetched, checked and decoded to an (N, L) int32 array."""

    def __init__(self, loader: "StreamLoader", shards: list[int]):
        self.loader, self.shards = loader, shards

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, j: int) -> np.ndarray:
        return self.loader.read_shard(self.shards[j])


class StreamLoader:
    """Per-rank batches ``{"input_ids": (B, L) long, "index": (B,) long}`` streamed from shard URLs (module doc);
    ``index`` is the sequence's position in the split, as for ``TokenLoader``."""

    def __init__(self, location: str, split: str, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, num_workers: int = 0, shuffle: bool = True, model: ModelConfig | None = None,
                 buffer: int = 10000, retries: int = 3):
        manifest = read_dataset_manifest(location, retries)
        if model is not None:
            check_compatible(manifest, model, resolve(location, "manifest.json"))
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if split not in manifest["splits"]:
            raise DataError(f"{location}: no split '{split}' (have {', '.join(manifest['splits'])})")
        self.location, self.split, self.batch_size = location, split, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_workers, self.shuffle, self.retries = num_workers, shuffle, retries
        self.buffer = buffer if shuffle else 0
        self.seq_len, self.vocab_size = manifest["seq_len"], manifest["vocab_size"]
        self.entries = manifest["splits"][split]["shards"]
        self.counts = np.array([e["num_samples"] for e in self.entries], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        self.shared = len(self.entries) < world_size  # every rank reads every shard and keeps its W-th part
        self.steps_per_epoch = self._steps(0)
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _rank_shards(self, epoch: int) -> list[list[int]]:
        """Each rank's shards in ``epoch``; with fewer shards than ranks (a small validation split), all of them."""
        order = epoch_order(len(self.entries), self.seed, epoch, self.shuffle)
        if self.shared:
            return [order.tolist()] * self.world_size
        return assign(self.counts, order, self.world_size)

    def _stream(self, epoch: int, rank: int) -> tuple[list[int], np.ndarray]:
        """A rank's shards and the split indices of its sequences in reading order: its shards' sequences, or
        with shared shards every W-th sequence of them all."""
        shards = self._rank_shards(epoch)[rank]
        stream = np.concatenate([np.arange(self.starts[s], self.starts[s + 1]) for s in shards])
        return shards, stream[rank::self.world_size] if self.shared else stream

    def _steps(self, epoch: int) -> int:
        smallest = min(len(self._stream(epoch, rank)[1]) for rank in range(self.world_size))
        steps = batches_per_rank(smallest, self.batch_size, 1)
        if steps == 0:
            raise DataError(f"{self.location}: split '{self.split}' gives the smallest of {self.world_size} ranks "
                            f"{smallest} sequences, fewer than one batch of {self.batch_size}")
        return steps

    def plan(self, epoch: int) -> tuple[list[int], np.ndarray]:
        """This rank's shards in ``epoch`` and the split indices of its sequences in stream order, one row per
        batch: (shards, (steps, B) indices)."""
        shards, stream = self._stream(epoch, self.rank)
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        order = stream[buffer_order(len(stream), self.buffer, rng)]
        steps = self._steps(epoch)
        return shards, order[: steps * self.batch_size].reshape(steps, self.batch_size)

    def read_shard(self, shard: int) -> np.ndarray:
        """Fetch one shard, check its sha256 and layout, and decode it (retried for remote URLs)."""
        entry = self.entries[shard]
        url = resolve(self.location, entry["name"])
        try:
            data = fetch(url, self.retries, expect_sha256=entry["sha256"])
        except FetchError as err:
            raise DataError(f"shard {entry['name']} of split '{self.split}': {err}") from None
        stem = entry["name"].removesuffix(".tar")
        rows = []
        samples = wds.tariterators.tar_file_iterator(io.BytesIO(data), handler=wds.reraise_exception)
        for i, sample in enumerate(samples):
            if sample["fname"] != f"{stem}-{i:07d}.{MEMBER_SUFFIX}":
                raise DataError(f"{url}: member {i} is {sample['fname']!r}, not the manifest's layout")
            rows.append(decode_tokens(sample["data"]))
        if len(rows) != entry["num_samples"]:
            raise DataError(f"{url}: {len(rows)} sequences, the manifest says {entry['num_samples']}")
        tokens = np.stack(rows).astype(np.int32, copy=False)
        if (bad := first_out_of_vocabulary(tokens, self.vocab_size)) is not None:
            raise DataError(f"{url}: sample {bad[0]} holds token id {bad[1]}, outside the manifest's vocabulary "
                            f"(V = {self.vocab_size})")
        return tokens

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch; the next iteration starts the next epoch."""
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self.steps_per_epoch = self._steps(self.epoch)
        shards, batches = self.plan(self.epoch)
        wanted = batches[self.position:]
        shard_of = np.searchsorted(self.starts, wanted, side="right") - 1
        present = set(shard_of.reshape(-1).tolist())
        needed = [s for s in shards if s in present]  # in stream order: shards before the resume point may hold none
        read_at = np.zeros(len(self.entries), dtype=np.int64)
        read_at[needed] = np.arange(len(needed))
        batch_ready = read_at[shard_of].max(axis=1)  # batch b can go once the shard read at batch_ready[b] is in
        flat, flat_shard = wanted.reshape(-1), shard_of.reshape(-1)
        loader = torch.utils.data.DataLoader(_Shards(self, needed), batch_size=None, num_workers=self.num_workers,
                                             collate_fn=as_is, worker_init_fn=ignore_in_workers)
        held: dict[int, np.ndarray] = {}
        b = 0
        for k, tokens in enumerate(loader):
            mine = flat[flat_shard == needed[k]]  # the sequences still to come from this shard
            held.update(zip(mine.tolist(), tokens[mine - self.starts[needed[k]]]))
            while b < len(wanted) and batch_ready[b] <= k:
                rows = wanted[b].tolist()
                b += 1
                self.position += 1
                yield {"input_ids": torch.from_numpy(np.stack([held.pop(i) for i in rows])).long(),
                       "index": torch.tensor(rows, dtype=torch.long)}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "split": self.split,
                "world_size": self.world_size, "batch_size": self.batch_size, "num_samples": int(self.starts[-1]),
                "shuffle": self.shuffle, "source": "stream", "buffer": self.buffer}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        state = {"source": "local", "buffer": None, **state}
        changed = [k for k in ("source", "seed", "split", "world_size", "batch_size", "num_samples", "shuffle",
                               "buffer") if state[k] != mine[k]]
        if changed:
            detail = ", ".join(f"{k} {state[k]} -> {mine[k]}" for k in changed)
            raise DataError(f"cannot resume the data stream exactly: {detail} since the checkpoint")
        self.epoch, self.position = state["epoch"], state["position"]
        self.steps_per_epoch = self._steps(self.epoch)


def stream_from_config(cfg: Config, split: str, rank: int, world_size: int, shuffle: bool = True) -> StreamLoader:
    return StreamLoader(cfg.data.path, split, cfg.data.batch_size, rank, world_size, cfg.run.seed,
                        cfg.data.num_workers, shuffle, cfg.model, cfg.data.shuffle_buffer, cfg.data.retries)
