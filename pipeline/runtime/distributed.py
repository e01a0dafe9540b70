"""Process-group set-up and the few collectives the stages need.

Works the same under the ``deepspeed`` launcher (env RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR), under
torchrun, inside tests that created the gloo group themselves, and as a plain single process.
``run_ranks`` starts N ranks on one machine without a launcher (a ``file://`` store, no TCP listener), for tests
and benchmarks that compare them with a single-process reference: CPU ranks over gloo, or one GPU per rank over
NCCL where the machine has that many.
"""
from __future__ import annotations

import gc
import os
import pickle
import socket
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class Dist:
    """This rank's place in the job. Ranks r·T … r·T + T − 1 form data-parallel rank r's tensor-parallel group
    (megatron-core's order): they see the same data and the same random draws."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    tensor_parallel: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def data_rank(self) -> int:
        return self.rank // self.tensor_parallel

    @property
    def data_size(self) -> int:
        return self.world_size // self.tensor_parallel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def import_deepspeed():
    """``deepspeed``, first imported with MLflow hidden: DeepSpeed's autotuner imports MLflow as the package
    loads (about 2 s a process on 2 CPU cores, on every rank of every job) only for autotuning runs, which this
    pipeline never starts. MLflow stays importable for the tracker afterwards."""
    if "deepspeed" not in sys.modules and "mlflow" not in sys.modules:
        sys.modules["mlflow"] = None  # ``import mlflow`` raises ImportError while DeepSpeed loads
        try:
            import deepspeed
        finally:
            del sys.modules["mlflow"]
    import deepspeed

    return deepspeed


def quiet_deepspeed() -> None:
    """Readable logs: DeepSpeed's INFO lines and torch's per-collective FutureWarnings off."""
    import logging

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"deepspeed.*")


def uses_cuda() -> bool:
    """Whether this process's rank runs on a GPU: one is present and ``DS_ACCELERATOR`` does not ask for CPU ranks."""
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda"


def setup(tensor_parallel: int = 1) -> Dist:
    """Join (or create) the process group: NCCL on GPUs, gloo on CPU; with ``tensor_parallel`` > 1 also
    megatron-core's tensor- and data-parallel groups."""
    use_cuda = uses_cuda()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_cuda else "cpu")
    deepspeed = import_deepspeed()

    quiet_deepspeed()
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # one plain process (python -m pipeline train): a group of one
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(_free_port()))
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if tensor_parallel > 1:
        from models.tensor_parallel import initialize

        initialize(tensor_parallel)
    return Dist(rank, world, local_rank, device, tensor_parallel)


def shutdown() -> None:
    """Leave the process group once every rank is done, with the stage's communication objects freed first, so
    that no gloo worker thread still holds a tensor when the interpreter exits (freeing one then aborts the
    process with SIGABRT, pytorch/pytorch#179291) and NCCL has nothing to warn about."""
    if dist.is_initialized():
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()
        remove_shm_buffer()


def remove_shm_buffer() -> None:
    """Unlink this rank's shared-memory all-reduce buffer (DeepSpeed's CPU communication op creates one per
    rank, about 66 MB in /dev/shm, and never removes it, so every CPU job on a new port would leave its buffers
    in memory). The other ranks mapped it at start-up, so removing the name after the last barrier is safe."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if addr and port:
        name = f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{os.environ.get('LOCAL_RANK', '0')}"
        Path("/dev/shm", name).unlink(missing_ok=True)


def all_reduce_sum(*values: float, device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ---- N ranks on one machine without a launcher (tests and benchmarks): gloo over a file:// store ----

def _rank_main(rank: int, fn: Callable, world_size: int, workdir: str, args: tuple) -> None:
    use_cuda = torch.cuda.device_count() >= world_size  # one GPU per rank (benchmarks on a GPU machine)
    os.environ.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", DS_ACCELERATOR="cuda" if use_cuda else "cpu",
                      RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    init = f"file://{Path(workdir, 'rendezvous').resolve()}"
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
    except BaseException:
        dist.destroy_process_group()
        raise
    shutdown()
    Path(workdir, f"result{rank}.pkl").write_bytes(pickle.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the result is written: skip the interpreter's shutdown, where library threads can still abort


def run_ranks(fn: Callable, world_size: int, *args: Any) -> list[Any]:
    """``fn(rank, world_size, *args)`` on every rank (``fn`` must be importable); results in rank order."""
    with tempfile.TemporaryDirectory() as workdir:
        mp.start_processes(_rank_main, args=(fn, world_size, workdir, args), nprocs=world_size,
                           join=True, start_method="spawn")
        return [pickle.loads(Path(workdir, f"result{r}.pkl").read_bytes()) for r in range(world_size)]
