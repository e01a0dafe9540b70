"""What the CPU and GPU benchmarks (``launch/bench/``) share: the plain references' process-group rank and
gradient averaging, honest timings on a device that queues work, the memory a process peaks at and the bytes a
rank holds, and every time as a ratio to each reference."""
from __future__ import annotations

import resource
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.runtime.distributed import Dist, uses_cuda

REFERENCES = ("plain", "torch_distributed")  # the rows that every time is also a ratio to


def peak_memory_mb() -> float:
    """Peak CUDA allocation, or this process's peak resident set (VmHWM: unlike ``ru_maxrss``, not inherited
    from the parent of a spawned rank)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def state_mb(params, optimizer: torch.optim.Optimizer) -> float:
    """Bytes this rank holds for the model's parameters (its partitions under ZeRO-3), the optimizer's
    parameters (ZeRO's fp32 partitions; the same tensors in a plain loop) and the optimizer's state."""
    tensors = {id(t): t for t in (p.ds_tensor if hasattr(p, "ds_tensor") else p for p in params)}
    for group in optimizer.param_groups:
        tensors.update({id(p): p for p in group["params"]})
    for state in optimizer.state.values():
        tensors.update({id(v): v for v in state.values() if torch.is_tensor(v) and v.dim() > 0})
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def device_sync(d: Dist):
    """Waits for the device's queued work (a GPU's kernels run asynchronously), for honest timings."""
    return torch.cuda.synchronize if d.device.type == "cuda" else (lambda: None)


def process_group_rank() -> Dist:
    """This ``run_ranks`` rank without DeepSpeed: on its own GPU where ``run_ranks`` gave it one, else the CPU."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank) if uses_cuda() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(rank, world, rank, device)


def average_gradients(module: torch.nn.Module) -> None:
    """DDP's gradient all-reduce, once after the backward pass: the gradients summed over the ranks in one flat
    buffer and divided by their number (what DeepSpeed's engines do before clipping)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, averaged in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(averaged.view_as(g))


def run_label(name: str, ranks: int, per_rank: bool = False) -> str:
    """``plain``, ``torch_distributed`` or ``tp{T}_zero{S}`` as a table's row label."""
    if name == "plain":
        return "plain PyTorch, 1 process"
    if name == "torch_distributed":
        return "plain torch.distributed, per rank" if per_rank else f"plain torch.distributed, {ranks} ranks"
    tp, stage = (int(v) for v in name[2:].split("_zero"))
    layout = f" = TP {tp} x DP {ranks // tp}" if tp > 1 else ""
    return f"ZeRO-{stage}{layout}, per rank" if per_rank else f"DeepSpeed ZeRO-{stage}, {ranks} ranks{layout}"


def time_ratios(results: dict, key: str) -> dict:
    """Every row with ``time_vs``: its ``key`` (a time) as a ratio to each of the ``REFERENCES``."""
    return {name: {**r, "time_vs": {ref: r[key] / results[ref][key] for ref in REFERENCES}}
            for name, r in results.items()}
