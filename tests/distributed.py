"""Run a function on N CPU ranks over gloo on loopback and return each rank's result to the test.

Ranks are spawned with torch.multiprocessing and meet through a ``file://`` store (absolute path, no TCP
listener); each rank ends with ``barrier()`` + ``destroy_process_group()``.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, fn: Callable, world_size: int, workdir: str, args: tuple) -> None:
    os.environ.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    init = f"file://{Path(workdir, 'rendezvous').resolve()}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(workdir, f"result{rank}.pkl").write_bytes(pickle.dumps(result))


def run_ranks(fn: Callable, world_size: int, *args: Any) -> list[Any]:
    """``fn(rank, world_size, *args)`` on every rank (``fn`` must be importable); results in rank order."""
    with tempfile.TemporaryDirectory() as workdir:
        mp.start_processes(_rank_main, args=(fn, world_size, workdir, args), nprocs=world_size,
                           join=True, start_method="spawn")
        return [pickle.loads(Path(workdir, f"result{r}.pkl").read_bytes()) for r in range(world_size)]
