"""Distillation iteration benchmark: DeepSpeed ZeRO-0 / ZeRO-3 (x tensor parallelism) on N ranks against plain
PyTorch in one process.

``python launch/bench_distill.py [--size tiny] [--rows 32] [--group 4] [--stages 0 3] [--tensor-parallel 1 2]
[--steps 5] [--repeats 3] [--json PATH]``

Every configuration runs the same DiDi-Instruct iteration (``pipeline.distill.Distiller.iteration``: rollout,
teacher, discriminator step, reward, student step, EMA) on the same global rollout (``--rows`` student samples
in groups of ``--group``) from the same randomly initialised teacher weights; the data rows are synthetic
tokens; under tensor parallelism T the N ranks form N / T data-parallel ranks. The reference is one process whose student, discriminator and teacher are plain modules stepped by
``torch.optim.AdamW`` (with the same non-finite guard) and gradient clipping, with as many threads as the
DeepSpeed run has ranks. A repeat times ``--steps`` iterations after two warm-up iterations; the table gives the
median over ``--repeats`` (the slowest rank's time for DeepSpeed). Memory per process: the tensors each
co-hosted model holds on that rank (parameters or their ZeRO-3 partitions, optimizer state, the EMA shadow)
and the peak resident set size (VmHWM, including the Python runtime), or the peak CUDA allocation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from launch.bench_pretrain import peak_memory_mb, run_label, state_mb  # noqa: E402
from pipeline.config import Config, from_dict  # noqa: E402
from pipeline.distributed import Dist, run_ranks  # noqa: E402
from pipeline.engine import GuardedAdamW, lr_factor  # noqa: E402

VOCAB = 4000
PHASES = ("rollout", "teacher", "discriminator", "reward", "student")


def bench_config(size: str, seq_len: int, rows_per_rank: int, group: int, zero_stage: int,
                 tensor_parallel: int = 1) -> Config:
    from models.sizes import SIZES

    return from_dict(Config, {
        "stage": "distill",
        "data": {"path": "synthetic"},
        "model": {"size": size, "seq_len": seq_len, "vocab_size": VOCAB, "tensor_parallel": tensor_parallel},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "discriminator_optim": {"warmup_steps": 0},
        "distill": {"teacher": "synthetic", "rollout_rows": rows_per_rank, "group_size": group,
                    "unfreeze_blocks": min(4, SIZES[size].num_layers)},
        "train": {"zero_stage": zero_stage, "max_steps": 10**6},
        "tracking": {"backend": "none"},
    })


def teacher_weights(cfg: Config) -> dict[str, torch.Tensor]:
    from pipeline.engine import build_model

    torch.manual_seed(0)
    return build_model(dataclasses.replace(cfg.model, tensor_parallel=1)).state_dict()  # dense, split later


class PlainEngine:
    """The reference's stand-in for a DeepSpeed engine: a module, AdamW with the LR schedule, clipping."""

    def __init__(self, module: torch.nn.Module, optim=None, grad_clip: float = 0.0, max_steps: int = 1):
        self.module, self.grad_clip = module, grad_clip
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = optim and GuardedAdamW(params, lr=optim.lr, betas=tuple(optim.betas),
                                                weight_decay=optim.weight_decay)
        self.scheduler = optim and torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, optim, max_steps))

    def __call__(self, *args):
        return self.module(*args)

    def train(self, mode: bool = True):
        self.module.train(mode)

    def eval(self):
        self.module.eval()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()


def footprint(run) -> dict[str, float]:
    """MB this rank holds per co-hosted model."""
    return {"student": state_mb(run.student.module.parameters(), run.student_opt),
            "ema": sum(s.numel() * s.element_size() for s in run.ema.shadow) / 2**20,
            "discriminator": state_mb(run.disc.module.parameters(), run.disc_opt),
            "teacher": sum(t.numel() * t.element_size() for t in (
                p.ds_tensor if hasattr(p, "ds_tensor") else p for p in run.teacher.module.parameters())) / 2**20}


def time_iterations(run, d: Dist, steps: int, repeats: int, sync) -> dict:
    from pipeline.distill import PhaseTimer

    g = torch.Generator().manual_seed(d.data_rank)  # a tensor-parallel group shares its rows
    cfg = run.cfg
    data = [torch.randint(0, VOCAB, (cfg.data.batch_size, cfg.model.seq_len), generator=g) for _ in range(4)]
    for i in range(2):  # warm-up
        run.iteration(i, data[i].to(d.device), PhaseTimer(d.device))
    sync()
    timer, times = PhaseTimer(d.device), []
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            run.iteration(2 + r * steps + i, data[i % len(data)].to(d.device), timer)
        sync()
        times.append((time.perf_counter() - start) / steps)
    return {"iteration_s": times, "phase_s": {p: timer.seconds[p] / (steps * repeats) for p in PHASES},
            "footprint_mb": footprint(run), "peak_mb": peak_memory_mb()}


def plain_pytorch(size: str, seq_len: int, rows: int, group: int, steps: int, repeats: int, threads: int) -> dict:
    """The reference: one process, the whole global rollout, plain modules and optimizers."""
    from pipeline.distill import Distiller, initial_models

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    cfg = bench_config(size, seq_len, rows, group, 0)
    d = Dist(0, 1, 0, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    student, disc, teacher = (m.to(d.device) for m in initial_models(cfg, teacher_weights(cfg)))
    teacher.requires_grad_(False)
    teacher.eval()
    s = PlainEngine(student, cfg.optim, cfg.optim.grad_clip, cfg.train.max_steps)
    dsc = PlainEngine(disc, cfg.discriminator_optim, cfg.discriminator_optim.grad_clip, cfg.train.max_steps)
    run = Distiller(cfg, d, s, s.optimizer, dsc, dsc.optimizer, PlainEngine(teacher))
    sync = torch.cuda.synchronize if d.device.type == "cuda" else (lambda: None)
    result = time_iterations(run, d, steps, repeats, sync)
    torch.set_num_threads(previous_threads)
    return result


def _deepspeed_rank(rank: int, world_size: int, size: str, seq_len: int, rows: int, group: int, stage: int,
                    steps: int, repeats: int, tensor_parallel: int) -> dict:
    import torch.distributed as dist

    from pipeline.distill import build_distiller
    from pipeline.distributed import setup

    d = setup(tensor_parallel)
    cfg = bench_config(size, seq_len, rows, group, stage, tensor_parallel)
    run = build_distiller(cfg, d, teacher_weights(cfg))
    return time_iterations(run, d, steps, repeats, dist.barrier)


def summarise(runs: list[dict], tokens: int) -> dict:
    per_iteration = [max(r["iteration_s"][i] for r in runs) for i in range(len(runs[0]["iteration_s"]))]
    median = statistics.median(per_iteration)
    return {"iteration_s": median, "spread": (min(per_iteration), max(per_iteration)),
            "rollout_tokens_per_s": tokens / median,
            "phase_s": {p: max(r["phase_s"][p] for r in runs) for p in PHASES},
            "footprint_mb": [r["footprint_mb"] for r in runs], "peak_mb": [r["peak_mb"] for r in runs]}


def table(results: dict, ranks: int) -> list[str]:
    base = results["plain"]["iteration_s"]
    lines = ["| run | iteration (min–max) | rollout tokens/s | time vs plain | " + " | ".join(PHASES) + " |",
             "|---|---|---|---|" + "---|" * len(PHASES)]
    for name, r in results.items():
        label = run_label(name, ranks)
        phases = " | ".join(f"{r['phase_s'][p] * 1000:.0f} ms" for p in PHASES)
        lines.append(f"| {label} | {r['iteration_s'] * 1000:.0f} ms ({r['spread'][0] * 1000:.0f}–"
                     f"{r['spread'][1] * 1000:.0f}) | {r['rollout_tokens_per_s']:,.0f} | {r['iteration_s'] / base:.2f}× "
                     f"| {phases} |")
    lines += ["", "| run | student + AdamW | EMA student | discriminator + AdamW | teacher | all four | peak RSS |",
              "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        label = run_label(name, ranks, per_rank=True)
        f = r["footprint_mb"][0]  # every rank holds the same amount (equal partitions)
        peak = ", ".join(f"{m:,.0f} MB" for m in r["peak_mb"])
        lines.append(f"| {label} | {f['student']:.1f} MB | {f['ema']:.1f} MB | {f['discriminator']:.1f} MB | "
                     f"{f['teacher']:.1f} MB | {sum(f.values()):.1f} MB | {peak} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rows", type=int, default=32, help="global rollout rows per iteration (B·G)")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--tensor-parallel", type=int, nargs="+", default=[1], help="sizes to run each stage with")
    parser.add_argument("--steps", type=int, default=5, help="iterations per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    for tp in args.tensor_parallel:
        if args.ranks % tp or args.rows % (args.ranks // tp * args.group):
            parser.error(f"--rows {args.rows} does not split into {args.ranks} ranks / --tensor-parallel {tp} "
                         f"data-parallel ranks of whole groups of {args.group}")
    tokens = args.rows * args.seq_len
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    results = {"plain": summarise([plain_pytorch(args.size, args.seq_len, args.rows, args.group, args.steps,
                                                 args.repeats, args.ranks)], tokens)}
    for tp in args.tensor_parallel:
        for stage in args.stages:
            ranks = run_ranks(_deepspeed_rank, args.ranks, args.size, args.seq_len, args.rows * tp // args.ranks,
                              args.group, stage, args.steps, args.repeats, tp)
            results[f"tp{tp}_zero{stage}"] = summarise(ranks, tokens)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.machine())
    header = (f"{args.size} DiT, L = {args.seq_len}, V = {VOCAB}, {args.rows} rollout rows per iteration "
              f"(G = {args.group}), {args.ranks} ranks; median of {args.repeats} x {args.steps} iterations; {device}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, {datetime.now(timezone.utc):%Y-%m-%d}")
    print("\n".join([header, ""] + table(results, args.ranks)))
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": header, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
