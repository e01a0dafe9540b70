"""Pre-training step benchmark: DeepSpeed ZeRO 0 / 2 / 3 (x tensor parallelism) on N CPU ranks against a
plain-PyTorch loop, in one process and on the same N ranks.

``python launch/bench/bench_pretrain.py [--size tiny] [--batch 32] [--stages 0 2 3] [--tensor-parallel 1 2]
[--steps 10] [--repeats 5] [--json PATH]``

Every configuration trains the same model on the same global batch (synthetic tokens; the loader is
benchmarked in ``launch/bench/bench_data.py``) with the same NELBO step; under tensor parallelism T the N ranks form
N / T data-parallel ranks, each with N / T of the global batch. Two references run the same loop without
DeepSpeed (the engines' AdamW, schedule and clipping): one process with as many threads as the DeepSpeed run has
ranks, so both use the same cores, and the N ranks as plain ``torch.distributed`` data parallelism (each rank's
rows, the gradients averaged over the ranks before the clip, as DDP does), so that the time against it is what
the engines cost and the time against the one process what data parallelism gains over threads. A repeat times
``--steps`` optimizer steps after warm-up; the table gives the median over ``--repeats`` (the slowest rank's
time on several ranks). Peak memory is the peak resident set size of each process (VmHWM: it includes the Python
runtime and libraries, the same for every configuration), or the peak CUDA allocation on a GPU, where every run
(the references too) uses the GPU with bf16 autocast and ``--ranks`` must not exceed the GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

from data_prep.config import from_dict
from models.diffusion import LogLinearSchedule, nelbo_per_token, subs_log_probs
from pipeline.config import Config
from pipeline.runtime.benchmark import (average_gradients, device_sync, peak_memory_mb, process_group_rank,
                                        run_label, state_mb, time_ratios)
from pipeline.runtime.distributed import Dist, run_ranks
from pipeline.runtime.objective import corrupt

VOCAB = 4000

def bench_config(size: str, seq_len: int, per_rank_batch: int, zero_stage: int, tensor_parallel: int = 1) -> Config:
    return from_dict(Config, {
        "data": {"path": "synthetic", "batch_size": per_rank_batch},
        "model": {"size": size, "dropout": 0.0, "seq_len": seq_len, "vocab_size": VOCAB,
                  "tensor_parallel": tensor_parallel},
        "optim": {"lr": 1e-4, "warmup_steps": 0},
        "train": {"zero_stage": zero_stage},
        "tracking": {"backend": "none"},
    })


def batches(cfg: Config, d: Dist, count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(d.data_rank)  # a tensor-parallel group shares its rows
    return [torch.randint(0, VOCAB, (cfg.data.batch_size, cfg.model.seq_len), generator=g).to(d.device)
            for _ in range(count)]


def time_steps(step, data: list[torch.Tensor], steps: int, repeats: int, sync) -> list[float]:
    """Seconds per optimizer step for each repeat, after two warm-up steps."""
    for i in range(2):
        step(data[i % len(data)], i)
    sync()
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            step(data[i % len(data)], 2 + r * steps + i)
        sync()
        times.append((time.perf_counter() - start) / steps)
    return times


def plain_loop(cfg: Config, d: Dist):
    """``(step, model, optimizer)`` of the references: ``step(x, i)`` is one NELBO step with the engines'
    optimizer, schedule and clipping (the gradients averaged over the ranks first when there are several) and
    returns its loss."""
    from pipeline.runtime.engine import build_model, optimizer_for
    from pipeline.runtime.loop import autocast_for

    torch.manual_seed(0)
    model = build_model(cfg.model).to(d.device)
    autocast = autocast_for(cfg, d)
    optimizer, scheduler = optimizer_for(model, cfg.optim, cfg.train.max_steps)
    mask_id = cfg.model.vocab_size

    def step(x, i):
        t, z = corrupt(x, cfg, d, LogLinearSchedule(), 1, i)
        with autocast():
            logits = model(z, torch.zeros(x.shape[0], device=d.device))
        loss = nelbo_per_token(subs_log_probs(logits, z, mask_id), x, z, t, mask_id, LogLinearSchedule()).mean()
        loss.backward()
        if d.world_size > 1:
            average_gradients(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, model, optimizer


def timed_plain_loop(cfg: Config, d: Dist, steps: int, repeats: int, sync) -> dict:
    step, model, optimizer = plain_loop(cfg, d)
    times = time_steps(step, batches(cfg, d, 4), steps, repeats, sync)
    return {"step_s": times, "peak_mb": peak_memory_mb(), "state_mb": state_mb(model.parameters(), optimizer)}


def plain_pytorch(size: str, seq_len: int, global_batch: int, steps: int, repeats: int, threads: int) -> dict:
    """The one-process reference: the whole global batch on ``threads`` threads."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    d = Dist(0, 1, 0, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    result = timed_plain_loop(bench_config(size, seq_len, global_batch, 0), d, steps, repeats, device_sync(d))
    torch.set_num_threads(previous_threads)
    return result


def _torch_distributed_rank(rank: int, world_size: int, size: str, seq_len: int, batch: int, steps: int,
                            repeats: int) -> dict:
    """The data-parallel reference on one of the ranks: its rows, the plain loop, no DeepSpeed."""
    d = process_group_rank()
    sync = device_sync(d)
    return timed_plain_loop(bench_config(size, seq_len, batch, 0), d, steps, repeats, lambda: (sync(), dist.barrier()))


def _deepspeed_rank(rank: int, world_size: int, size: str, seq_len: int, batch: int, stage: int, steps: int,
                    repeats: int, tensor_parallel: int) -> dict:
    from pipeline.runtime.distributed import setup
    from pipeline.runtime.engine import build_engine, build_model, ds_config
    from pipeline.runtime.loop import autocast_for
    from pipeline.runtime.objective import loss_terms

    d = setup(tensor_parallel)
    cfg = bench_config(size, seq_len, batch, stage, tensor_parallel)
    config = ds_config(cfg)
    torch.manual_seed(0)
    engine = build_engine(build_model(cfg.model, stage, config), cfg.optim, cfg.train.max_steps, config)
    autocast = autocast_for(cfg, d)

    def step(x, i):
        engine.backward(loss_terms(engine, x, cfg, d, autocast, 1, i).mean())
        engine.step()

    sync = device_sync(d)
    times = time_steps(step, batches(cfg, d, 4), steps, repeats, lambda: (sync(), dist.barrier()))
    return {"step_s": times, "peak_mb": peak_memory_mb(),
            "state_mb": state_mb(engine.module.parameters(), engine.basic_optimizer)}


def summarise(times: list[float], tokens_per_step: int) -> dict:
    median = statistics.median(times)
    return {"step_s": median, "tokens_per_s": tokens_per_step / median, "spread": (min(times), max(times))}


def summarise_ranks(ranks: list[dict], tokens_per_step: int) -> dict:
    """One row from every rank's results: each repeat's time is the slowest rank's."""
    per_step = [max(r["step_s"][i] for r in ranks) for i in range(len(ranks[0]["step_s"]))]
    return {**summarise(per_step, tokens_per_step), "peak_mb": [r["peak_mb"] for r in ranks],
            "state_mb": [r["state_mb"] for r in ranks]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="global batch (sequences per optimizer step)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    parser.add_argument("--tensor-parallel", type=int, nargs="+", default=[1], help="sizes to run each stage with")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    for tp in {1, *args.tensor_parallel}:  # 1: the torch.distributed reference
        if args.ranks % tp or args.batch % (args.ranks // tp):
            parser.error(f"--tensor-parallel {tp} does not divide --ranks {args.ranks}, or the {args.ranks // tp} "
                         f"data-parallel ranks do not divide --batch {args.batch}")
    tokens = args.batch * args.seq_len
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    plain = plain_pytorch(args.size, args.seq_len, args.batch, args.steps, args.repeats, args.ranks)
    results = {"plain": summarise_ranks([plain], tokens),
               "torch_distributed": summarise_ranks(run_ranks(
                   _torch_distributed_rank, args.ranks, args.size, args.seq_len, args.batch // args.ranks,
                   args.steps, args.repeats), tokens)}
    for tp in args.tensor_parallel:
        for stage in args.stages:
            ranks = run_ranks(_deepspeed_rank, args.ranks, args.size, args.seq_len, args.batch * tp // args.ranks,
                              stage, args.steps, args.repeats, tp)
            results[f"tp{tp}_zero{stage}"] = summarise_ranks(ranks, tokens)
    results = time_ratios(results, "step_s")
    cpu = torch.cuda.get_device_name() if torch.cuda.is_available() else next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.machine())
    header = (f"{args.size} DiT, L = {args.seq_len}, V = {VOCAB}, global batch {args.batch} ({tokens:,} tokens), "
              f"{args.ranks} ranks; median of {args.repeats} x {args.steps} steps; {cpu}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {datetime.now(timezone.utc):%Y-%m-%d}")
    lines = [header, "", "| run | step time (min–max) | tokens/s | time vs plain | time vs torch.distributed | "
             "model + optimizer tensors per process | peak memory per process |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        label = run_label(name, args.ranks)
        peak = ", ".join(f"{m:,.0f} MB" for m in r["peak_mb"])
        state = ", ".join(f"{m:,.1f} MB" for m in r["state_mb"])
        lines.append(f"| {label} | {r['step_s'] * 1000:.0f} ms ({r['spread'][0] * 1000:.0f}–{r['spread'][1] * 1000:.0f}) "
                     f"| {r['tokens_per_s']:,.0f} | {r['time_vs']['plain']:.2f}× | "
                     f"{r['time_vs']['torch_distributed']:.2f}× | {state} | {peak} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": header, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
