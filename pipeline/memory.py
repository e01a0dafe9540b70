"""Per-rank bytes of a trainable DiT's parameters and AdamW state under tensor parallelism x ZeRO.

``python -m pipeline.memory [--sizes small medium large] [--vocab 50257] [--world 8] [--out FILE.md]``

The parameter count of one tensor-parallel rank comes from the real sharded module (megatron-core's layers,
built on the meta device for that rank's shapes), not from a formula. What ZeRO keeps per rank on top of it
(fp32 weights, as this pipeline trains; bf16 is autocast only), as measured with ``launch/bench_pretrain.py``:
- stage 0: the parameters and AdamW's two moments, 12 bytes per parameter;
- stages 1 and 2: the parameters (4 bytes), plus an fp32 partition of the parameters and the moments
  (12 bytes) divided over the D data-parallel ranks;
- stage 3: the parameters, their fp32 partition and the moments all divided over D (12 / D bytes).
Gradients, activations and communication buffers come on top (the memory planner of ``launch/train.py``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from models.dit import DiT
from models.sizes import SIZES

OPTIMISER_BYTES = 12  # fp32 parameters (or their fp32 partition) + AdamW's exp_avg and exp_avg_sq


class RankShapes:
    """Stands in for a tensor-parallel process group of ``size`` ranks: enough to build rank ``rank``'s shards."""

    def __init__(self, size: int, rank: int = 0):
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


def shard_parameters(size: str, vocab_size: int, tensor_parallel: int) -> int:
    """Parameters held by one tensor-parallel rank (every rank holds the same count; the vocabulary is padded)."""
    dims = SIZES[size]
    if tensor_parallel == 1:
        layers = None
    else:
        from models.tensor_parallel import MegatronLayers

        if not dist.is_initialized():  # megatron's layers read the group's size only inside a process group
            store = Path(tempfile.mkdtemp()) / "rendezvous"
            dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        layers = MegatronLayers(RankShapes(tensor_parallel))
    with torch.device("meta"):
        model = DiT(vocab_size, dims.hidden_size, dims.num_layers, dims.num_heads, dims.cond_dim, layers=layers)
    return sum(p.numel() for p in model.parameters())


def state_bytes(parameters: int, zero_stage: int, data_parallel: int) -> float:
    """Bytes per rank of the parameters and AdamW state of a model with ``parameters`` per tensor-parallel rank."""
    if zero_stage == 0:
        return float(OPTIMISER_BYTES * parameters)  # the parameters themselves are the fp32 weights
    if zero_stage in (1, 2):
        return 4.0 * parameters + OPTIMISER_BYTES * parameters / data_parallel
    return OPTIMISER_BYTES * parameters / data_parallel


def table(sizes: list[str], vocab_size: int, world: int) -> str:
    lines = [f"Per-rank parameters + AdamW state (GiB) of one trainable DiT on {world} ranks, V = {vocab_size}, "
             "fp32 weights; tensor-parallel shards counted from megatron-core modules built on the meta device.", "",
             "| size | tensor-parallel x data-parallel | parameters per rank | ZeRO-0 | ZeRO-1/2 | ZeRO-3 |",
             "|---|---|---|---|---|---|"]
    for size in sizes:
        for tp in (1, 2, 4, 8):
            if world % tp or SIZES[size].num_heads % tp:
                continue
            params, dp = shard_parameters(size, vocab_size, tp), world // tp
            cells = " | ".join(f"{state_bytes(params, stage, dp) / 2**30:.2f}" for stage in (0, 1, 3))
            lines.append(f"| {size} | {tp} x {dp} | {params / 1e6:,.1f}M | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["small", "medium", "large"], choices=sorted(SIZES))
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args(argv)
    text = table(args.sizes, args.vocab, args.world)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
