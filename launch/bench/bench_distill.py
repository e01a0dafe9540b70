"""Distillation iteration benchmark: DeepSpeed ZeRO-0 / ZeRO-3 (x tensor parallelism) on N ranks against plain
PyTorch, in one process and on the same N ranks.

``python launch/bench/bench_distill.py [--size tiny] [--rows 32] [--group 4] [--stages 0 3] [--tensor-parallel 1 2]
[--steps 5] [--repeats 3] [--json PATH]``

Every configuration runs the same DiDi-Instruct iteration (``pipeline.stages.distill.Distiller.iteration``: rollout,
teacher, discriminator step, reward, student step, EMA) on the same global rollout (``--rows`` student samples in
groups of ``--group``) from the same randomly initialised teacher weights; the data rows are synthetic tokens;
under tensor parallelism T the N ranks form N / T data-parallel ranks. The references run the iteration on plain
modules (student, discriminator and teacher) stepped by ``torch.optim.AdamW`` (with the same non-finite guard) and
gradient clipping: one process with as many threads as the DeepSpeed run has ranks, and the N ranks as plain
``torch.distributed`` data parallelism (each rank's rollout rows, the gradients averaged over the ranks before the
clip, as DDP does), so that the time against it is what the engines cost and the time against the one process what
data parallelism gains over threads. A repeat times ``--steps`` iterations after two warm-up iterations; the table
gives the median over ``--repeats`` (the slowest rank's time on several ranks).
Memory per process: the tensors each co-hosted model holds on that rank (parameters or their ZeRO-3 partitions,
optimizer state, the EMA shadow) and the peak resident set size (VmHWM, including the Python runtime), or the peak
CUDA allocation; also the iterations' own peak above what the rank held once built (activations, ZeRO-3 gathers:
the peak is restarted after the build).

``python launch/bench/bench_distill.py --compare offload checkpointing [--size tiny] [--seq-len 128] [--rows 32]
[--steps 2] [--repeats 3] [--json PATH] [--markdown PATH]``

compares, on ZeRO-3 without tensor parallelism, the baseline iteration with the frozen teacher offloaded to host
memory (``distill.teacher_offload``), with per-block activation checkpointing (``model.activation_checkpointing``)
with the latent-conditioned student (``distill.latent: 16``), and with it as the latent ablation's
``positions_every`` arm (``latent_match``: a ξ_i per position, the mixture match at every step), each as a ratio to
the baseline of the same run. Every variant runs in its own rank processes (a peak resident set is per process), in
interleaved rounds (baseline, offload, checkpointing, baseline, ...) so that a change in the machine's load falls on
all of them alike; a round is one repeat and the table gives medians (the one-process reference runs once, before
the rounds). On a CPU, offloading moves the teacher from one region of host memory to another: its saving shows as
the teacher's device-resident tensor bytes, not necessarily in the resident set. Beside each variant: what the
memory planner (``pipeline.measure.memory``) predicts per rank, to hold against the measured peak (on a GPU, ranks
that each have one run there over NCCL).
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
from importlib.metadata import version
from pathlib import Path

import torch
import torch.distributed as dist

from data_prep.config import from_dict
from pipeline.config import Config
from pipeline.runtime.benchmark import (average_gradients, device_sync, peak_memory_mb, process_group_rank, run_label,
                                        state_mb, time_ratios)
from pipeline.runtime.distributed import Dist, run_ranks
from pipeline.runtime.engine import optimizer_for

VOCAB = 4000
PHASES = ("rollout", "teacher", "discriminator", "reward", "student")
# bench_config's options; latent_match: the latent arm of launch/recipes/latent/ablation.yaml's positions_every
VARIANTS = {"baseline": {}, "offload": {"offload": True}, "checkpointing": {"checkpointing": True},
            "latent": {"latent": {"latent": 16}},
            "latent_match": {"latent": {"latent": 16, "latent_input": "positions", "latent_redraw": "step",
                                        "latent_match": 10.0, "latent_match_at": "every", "latent_match_draws": 8}}}
OFFLOAD_NOTE = ("On a CPU, offloading moves the teacher from one region of host memory to another: the saving a GPU "
                "would see shows only as the teacher's device-resident tensor bytes (its ZeRO-3 partitions: the "
                "parameters DeepSpeed keeps persistent stay whole on the compute device either way), not "
                "necessarily in peak RSS.")
LATENT_NOTE = ("The latent-conditioned student's all-[MASK] rows differ by their ξ, so its first rollout step computes "
               "every row instead of one shared row, and keeps their activations for the backward; the memory planner "
               "does not model that.")
MATCH_NOTE = ("The match at every step adds a student forward and backward of M rows per rollout row (each at its "
              "own state) and the teacher's sub-step fill of one state per row; the memory planner does not model "
              "those rows either.")


def bench_config(size: str, seq_len: int, rows_per_rank: int, group: int, zero_stage: int,
                 tensor_parallel: int = 1, offload: bool = False, checkpointing: bool = False,
                 latent: dict | None = None) -> Config:
    """``latent``: the latent-conditioned student's ``distill`` settings (None: the factorised student)."""
    from models.sizes import SIZES

    return from_dict(Config, {
        "stage": "distill",
        "data": {"path": "synthetic"},
        "model": {"size": size, "seq_len": seq_len, "vocab_size": VOCAB, "tensor_parallel": tensor_parallel,
                  "activation_checkpointing": checkpointing},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "discriminator_optim": {"warmup_steps": 0},
        "distill": {"teacher": "synthetic", "rollout_rows": rows_per_rank, "group_size": group,
                    "unfreeze_blocks": min(4, SIZES[size].num_layers), "teacher_offload": offload,
                    **(latent or {})},
        "train": {"zero_stage": zero_stage, "max_steps": 10**6},
        "tracking": {"backend": "none"},
    })


def teacher_weights(cfg: Config) -> dict[str, torch.Tensor]:
    from pipeline.runtime.engine import build_model

    torch.manual_seed(0)
    return build_model(dataclasses.replace(cfg.model, tensor_parallel=1)).state_dict()  # dense, split later


class PlainEngine:
    """The references' stand-in for a DeepSpeed engine: a module, AdamW with the LR schedule, clipping, and with
    ``data_parallel`` the gradients averaged over the ranks before the clip."""

    def __init__(self, module: torch.nn.Module, optim=None, grad_clip: float = 0.0, max_steps: int = 1,
                 data_parallel: bool = False):
        self.module, self.grad_clip, self.data_parallel = module, grad_clip, data_parallel
        # named as DeepSpeed names the optimizer it was given (``step_skipped`` reads its flag)
        self.basic_optimizer, self.scheduler = optimizer_for(module, optim, max_steps) if optim else (None, None)

    def __call__(self, *args):
        return self.module(*args)

    def train(self, mode: bool = True):
        self.module.train(mode)

    def eval(self):
        self.module.eval()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.data_parallel:
            average_gradients(self.module)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.basic_optimizer.step()
        self.scheduler.step()
        self.basic_optimizer.zero_grad(set_to_none=True)

    def was_step_applied(self) -> bool:  # no overflow detection of its own: GuardedAdamW decides
        return True

    def get_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()


def footprint(run) -> dict[str, float]:
    """MB this rank holds per co-hosted model. With DeepSpeed's ``offload_param`` every teacher partition lives
    in host memory (DeepSpeed places them before it marks the small parameters persistent), counted as
    ``teacher_offloaded`` instead of the device-resident ``teacher``; on a CPU both are host memory."""
    teacher = sum(t.numel() * t.element_size() for t in (
        p.ds_tensor if hasattr(p, "ds_tensor") else p for p in run.teacher.module.parameters())) / 2**20
    offloaded = bool(getattr(run.teacher, "zero_offload_param", lambda: None)())
    return {"student": state_mb(run.student.module.parameters(), run.student.basic_optimizer),
            "ema": sum(s.numel() * s.element_size() for s in run.ema.shadow) / 2**20,
            "discriminator": state_mb(run.disc.module.parameters(), run.disc.basic_optimizer),
            "teacher": 0.0 if offloaded else teacher, "teacher_offloaded": teacher if offloaded else 0.0}


def restart_peak() -> tuple[float, float]:
    """(peak so far, held now) in MB, then restart the peak from now, so that a later ``peak_memory_mb`` is
    what the iterations themselves reach (Linux's ``clear_refs`` 5 resets VmHWM to the current VmRSS)."""
    peak = peak_memory_mb()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return peak, torch.cuda.memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text().splitlines()
    Path("/proc/self/clear_refs").write_text("5")
    return peak, int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024


def time_iterations(run, d: Dist, steps: int, repeats: int, sync) -> dict:
    from pipeline.stages.distill import PhaseTimer

    g = torch.Generator().manual_seed(d.data_rank)  # a tensor-parallel group shares its rows
    cfg = run.cfg
    data = [torch.randint(0, VOCAB, (cfg.data.batch_size, cfg.model.seq_len), generator=g) for _ in range(4)]
    build_peak, held = restart_peak()
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
    peak = peak_memory_mb()
    return {"iteration_s": times, "phase_s": {p: timer.seconds[p] / (steps * repeats) for p in PHASES},
            "footprint_mb": footprint(run), "peak_mb": max(build_peak, peak), "iteration_peak_mb": peak - held}


def plain_distiller(cfg: Config, d: Dist):
    """The references' ``Distiller``: plain modules and optimizers, the gradients averaged over ``d``'s ranks."""
    from pipeline.stages.distill import Distiller, initial_models

    student, disc, teacher = (m.to(d.device) for m in initial_models(cfg, teacher_weights(cfg)))
    teacher.requires_grad_(False)
    teacher.eval()
    data_parallel = d.world_size > 1
    s = PlainEngine(student, cfg.optim, cfg.optim.grad_clip, cfg.train.max_steps, data_parallel)
    dsc = PlainEngine(disc, cfg.discriminator_optim, cfg.discriminator_optim.grad_clip, cfg.train.max_steps,
                      data_parallel)
    return Distiller(cfg, d, s, dsc, PlainEngine(teacher))


def plain_pytorch(size: str, seq_len: int, rows: int, group: int, steps: int, repeats: int, threads: int) -> dict:
    """The one-process reference: the whole global rollout on ``threads`` threads."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    d = Dist(0, 1, 0, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    run = plain_distiller(bench_config(size, seq_len, rows, group, 0), d)
    result = time_iterations(run, d, steps, repeats, device_sync(d))
    torch.set_num_threads(previous_threads)
    return result


def _torch_distributed_rank(rank: int, world_size: int, size: str, seq_len: int, rows: int, group: int, steps: int,
                            repeats: int) -> dict:
    """The data-parallel reference on one of the ranks: its rollout rows, plain modules, no DeepSpeed."""
    d = process_group_rank()
    sync = device_sync(d)
    run = plain_distiller(bench_config(size, seq_len, rows, group, 0), d)
    return time_iterations(run, d, steps, repeats, lambda: (sync(), dist.barrier()))


def _deepspeed_rank(rank: int, world_size: int, size: str, seq_len: int, rows: int, group: int, stage: int,
                    steps: int, repeats: int, tensor_parallel: int, variant: str = "baseline") -> dict:
    from pipeline.stages.distill import build_distiller
    from pipeline.runtime.distributed import setup

    d = setup(tensor_parallel)
    cfg = bench_config(size, seq_len, rows, group, stage, tensor_parallel, **VARIANTS[variant])
    run = build_distiller(cfg, d, teacher_weights(cfg))
    sync = device_sync(d)
    return time_iterations(run, d, steps, repeats, lambda: (sync(), dist.barrier()))


def summarise(runs: list[dict], tokens: int) -> dict:
    per_iteration = [max(r["iteration_s"][i] for r in runs) for i in range(len(runs[0]["iteration_s"]))]
    median = statistics.median(per_iteration)
    return {"iteration_s": median, "spread": (min(per_iteration), max(per_iteration)),
            "rollout_tokens_per_s": tokens / median,
            "phase_s": {p: max(r["phase_s"][p] for r in runs) for p in PHASES},
            "footprint_mb": [r["footprint_mb"] for r in runs], "peak_mb": [r["peak_mb"] for r in runs],
            "iteration_peak_mb": [r["iteration_peak_mb"] for r in runs]}


def table(results: dict, ranks: int) -> list[str]:
    lines = ["| run | iteration (min–max) | rollout tokens/s | time vs plain | time vs torch.distributed | "
             + " | ".join(PHASES) + " |", "|---|---|---|---|---|" + "---|" * len(PHASES)]
    for name, r in results.items():
        label = run_label(name, ranks)
        phases = " | ".join(f"{r['phase_s'][p] * 1000:.0f} ms" for p in PHASES)
        lines.append(f"| {label} | {r['iteration_s'] * 1000:.0f} ms ({r['spread'][0] * 1000:.0f}–"
                     f"{r['spread'][1] * 1000:.0f}) | {r['rollout_tokens_per_s']:,.0f} | "
                     f"{r['time_vs']['plain']:.2f}× | {r['time_vs']['torch_distributed']:.2f}× | {phases} |")
    lines += ["", "| run | student + AdamW | EMA student | discriminator + AdamW | teacher | all four | peak RSS |",
              "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        label = run_label(name, ranks, per_rank=True)
        f = r["footprint_mb"][0]  # every rank holds the same amount (equal partitions)
        peak = ", ".join(f"{m:,.0f} MB" for m in r["peak_mb"])
        lines.append(f"| {label} | {f['student']:.1f} MB | {f['ema']:.1f} MB | {f['discriminator']:.1f} MB | "
                     f"{f['teacher']:.1f} MB | {sum(f.values()):.1f} MB | {peak} |")
    return lines


def stages_and_tensor_parallel(args: argparse.Namespace, tokens: int) -> dict:
    """The torch.distributed reference and every ``--stages`` x ``--tensor-parallel`` configuration, each in one
    set of rank processes."""
    results = {"torch_distributed": summarise(run_ranks(
        _torch_distributed_rank, args.ranks, args.size, args.seq_len, args.rows // args.ranks, args.group,
        args.steps, args.repeats), tokens)}
    for tp in args.tensor_parallel:
        for stage in args.stages:
            ranks = run_ranks(_deepspeed_rank, args.ranks, args.size, args.seq_len, args.rows * tp // args.ranks,
                              args.group, stage, args.steps, args.repeats, tp)
            results[f"tp{tp}_zero{stage}"] = summarise(ranks, tokens)
    return results


def merge_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Per rank, one result from its results in every round, for ``summarise``: the rounds' times in order,
    mean phase times, median peaks (each round's rank processes are fresh, so each peak is its own)."""
    return [{"iteration_s": [t for r in rank for t in r["iteration_s"]],
             "phase_s": {p: statistics.mean(r["phase_s"][p] for r in rank) for p in PHASES},
             "footprint_mb": rank[0]["footprint_mb"],
             **{k: statistics.median(r[k] for r in rank) for k in ("peak_mb", "iteration_peak_mb")}}
            for rank in zip(*rounds)]


def compare_variants(args: argparse.Namespace, tokens: int) -> dict:
    """The baseline and the ``--compare`` variants on ZeRO-3, in interleaved rounds of fresh rank processes: a
    drift in the machine's load falls on every variant alike."""
    rounds: dict[str, list] = {name: [] for name in ["baseline", *args.compare]}
    for _ in range(args.repeats):
        for name, runs in rounds.items():
            runs.append(run_ranks(_deepspeed_rank, args.ranks, args.size, args.seq_len, args.rows // args.ranks,
                                  args.group, 3, args.steps, 1, 1, name))
    return {name: {**summarise(merge_rounds(runs), tokens), "planned_mb": planned_mb(args, name)}
            for name, runs in rounds.items()}


def planned_mb(args: argparse.Namespace, variant: str) -> dict[str, float]:
    """What ``pipeline.measure.memory`` plans per rank for the variant: its total and its activations, in MB."""
    from pipeline.measure.memory import plan

    cfg = bench_config(args.size, args.seq_len, args.rows // args.ranks, args.group, 3, 1, **VARIANTS[variant])
    p = plan(cfg, args.ranks, on_gpu=torch.cuda.is_available())
    return {"total": p.total / 2**20, "activations": p.activations / 2**20}


def ratios(r: dict, base: dict) -> dict:
    """``r`` against the baseline: time, each rank's peaks, and each model's device-resident tensors on rank 0
    (a model the baseline holds none of has no ratio)."""
    f, b = r["footprint_mb"][0], base["footprint_mb"][0]
    return {"iteration_s": r["iteration_s"] / base["iteration_s"],
            **{k: [v / w for v, w in zip(r[k], base[k])] for k in ("peak_mb", "iteration_peak_mb")},
            "footprint_mb": {model: f[model] / b[model] for model in b if b[model]}}


def per_rank_mb(values: list[float], factors: list[float]) -> str:
    """Each rank's value and its ratio to the baseline's, e.g. ``1,460 / 1,443 MB (1.00× / 0.98×)``."""
    return " / ".join(f"{v:,.0f}" for v in values) + " MB (" + " / ".join(f"{x:.2f}×" for x in factors) + ")"


def variant_table(results: dict, ranks: int) -> list[str]:
    """``--compare``'s time table and per-rank memory table, each figure beside its ratio to the baseline."""
    labels = {"plain": run_label("plain", ranks), "baseline": f"ZeRO-3, {ranks} ranks",
              "offload": "+ teacher offload", "checkpointing": "+ activation checkpointing",
              "latent": "+ latent-conditioned student (ξ ∈ R^16, our extension)",
              "latent_match": "+ ξ_i ∈ R^16 per position, redrawn per step, the match at every step (M = 8)"}
    lines = ["| run | iteration (min–max) | vs baseline | vs plain | " + " | ".join(PHASES) + " |",
             "|---|---|---|---|" + "---|" * len(PHASES)]
    for name, r in results.items():
        phases = " | ".join(f"{r['phase_s'][p] * 1000:.0f} ms" for p in PHASES)
        lines.append(f"| {labels[name]} | {r['iteration_s'] * 1000:.0f} ms ({r['spread'][0] * 1000:.0f}–"
                     f"{r['spread'][1] * 1000:.0f}) | {r['ratios']['iteration_s']:.2f}× | "
                     f"{r['iteration_s'] / results['plain']['iteration_s']:.2f}× | {phases} |")
    peak = "peak CUDA allocation" if torch.cuda.is_available() else "peak RSS"
    lines += ["", f"| run, per rank | {peak} | iteration peak above built state | student + AdamW | EMA student | "
              "discriminator + AdamW | teacher (device) | teacher offloaded (host) | planned total | "
              "planned activations |", "|---" * 10 + "|"]
    for name, r in results.items():
        peaks = [per_rank_mb(r[k], r["ratios"][k]) for k in ("peak_mb", "iteration_peak_mb")]
        f, x = r["footprint_mb"][0], r["ratios"]["footprint_mb"]
        tensors = [f"{f[m]:.1f} MB ({x[m]:.2f}×)" for m in ("student", "ema", "discriminator", "teacher")]
        planned = (f"{r['planned_mb']['total']:,.0f} MB | {r['planned_mb']['activations']:,.0f} MB"
                   if "planned_mb" in r else "– | –")  # the plain reference is not a planned configuration
        lines.append(f"| {labels[name]} | {' | '.join(peaks + tensors)} | {f['teacher_offloaded']:.1f} MB | "
                     f"{planned} |")
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
    parser.add_argument("--compare", nargs="+", choices=[v for v in VARIANTS if v != "baseline"],
                        help="instead: ZeRO-3 against these variants of it (ignores --stages, --tensor-parallel)")
    parser.add_argument("--steps", type=int, default=5, help="iterations per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats (with --compare: interleaved rounds)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--markdown", help="also write the printed report here, below the command that made it")
    args = parser.parse_args(argv)
    for tp in {1, *([] if args.compare else args.tensor_parallel)}:  # 1: the torch.distributed reference
        if args.ranks % tp or args.rows % (args.ranks // tp * args.group):
            parser.error(f"--rows {args.rows} does not split into {args.ranks} ranks / --tensor-parallel {tp} "
                         f"data-parallel ranks of whole groups of {args.group}")
    tokens = args.rows * args.seq_len
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    results = {"plain": summarise([plain_pytorch(args.size, args.seq_len, args.rows, args.group, args.steps,
                                                 args.repeats, args.ranks)], tokens)}
    if args.compare:
        results.update(compare_variants(args, tokens))
        results = {name: {**r, "ratios": ratios(r, results["baseline"])} for name, r in results.items()}
        lines = variant_table(results, args.ranks)
        notes = [note for name, note in (("offload", OFFLOAD_NOTE), ("latent", LATENT_NOTE),
                                     ("latent_match", MATCH_NOTE)) if name in args.compare]
    else:
        results = time_ratios({**results, **stages_and_tensor_parallel(args, tokens)}, "iteration_s")
        lines, notes = table(results, args.ranks), []
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.machine())
    repeats = f"{args.repeats} interleaved rounds" if args.compare else str(args.repeats)
    header = (f"{args.size} DiT, L = {args.seq_len}, V = {VOCAB}, {args.rows} rollout rows per iteration "
              f"(G = {args.group}), {args.ranks} ranks; median of {repeats} x {args.steps} iterations; {device}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, deepspeed {version('deepspeed')}, "
              f"{datetime.now(timezone.utc):%Y-%m-%d}")
    report = "\n".join([header, "", *lines, *("\n" + note for note in notes)])
    print(report)
    if args.markdown:
        command = " ".join(["python launch/bench/bench_distill.py", *(sys.argv[1:] if argv is None else argv)])
        Path(args.markdown).write_text(f"Written by `{command}`.\n\n{report}\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": header, "notes": notes, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
