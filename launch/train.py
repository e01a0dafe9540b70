"""The training entry point: ``deepspeed [--num_gpus N] launch/train.py --config FILE [--set k=v ...] [--dry-run]``.

Also runs as ``python launch/train.py`` (one process), under torchrun and as ``launch/slurm/rank.sh``.
``--dry-run`` validates the config and the data, prints the resolved config and the parallel layout, and exits
without training; ``--plan-memory [--world N] [--tp T] [--device-gib G]`` prints each co-hosted model's per-rank
memory (``pipeline.measure.memory``) and exits. Restarting the same command resumes from the run's latest checkpoint;
a preempted run (SIGTERM / SIGUSR1) exits with ``pipeline.runtime.preemption.EXIT_CODE`` after checkpointing.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.runtime import logs  # noqa: E402
from pipeline.runtime.checkpoint import CheckpointError, checkpoint_root, latest_tag  # noqa: E402
from data_prep.config import ConfigError, to_yaml  # noqa: E402
from pipeline.config import Config, bf16_compute, check_world, load_config  # noqa: E402
from pipeline.runtime.dataset import DataError, check_compatible, check_data_ranks, read_dataset_manifest  # noqa: E402
from pipeline.runtime.preemption import EXIT_CODE, Preempted  # noqa: E402


def layout(cfg: Config, world_size: int) -> str:
    """The parallel layout and the model's size, computed without allocating the model."""
    import dataclasses

    import torch

    from pipeline.runtime.distributed import uses_cuda
    from pipeline.runtime.engine import build_model

    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(dataclasses.replace(cfg.model, tensor_parallel=1)).parameters())
    micro, accum, tp = cfg.data.batch_size, cfg.train.grad_accum, cfg.model.tensor_parallel
    data_ranks = world_size // tp
    device = "cuda" if uses_cuda() else "cpu"
    precision = "bf16" if bf16_compute(cfg, device) else "fp32"
    lines = [
        f"stage: {cfg.stage}; model: {params:,} parameters ({cfg.model.num_layers} x {cfg.model.hidden_size}, "
        f"{cfg.model.num_heads} heads), V = {cfg.model.vocab_size} + [MASK], L = {cfg.model.seq_len}",
        f"layout: {world_size} ranks on {device} = {tp} tensor-parallel x {data_ranks} data-parallel, "
        f"ZeRO stage {cfg.train.zero_stage} over the data-parallel ranks, {precision}",
        f"batch: {micro} sequences per data-parallel rank x {accum} accumulation x {data_ranks} ranks = "
        f"{micro * accum * data_ranks} sequences ({micro * accum * data_ranks * cfg.model.seq_len:,} tokens) per step",
    ]
    if cfg.stage == "distill":
        c = cfg.distill
        teacher_zero = "ZeRO-3" + (" offloaded to CPU" if c.teacher_offload else "") if cfg.train.zero_stage == 3 \
            else "replicated"
        lines += [f"rollout: {c.rollout_rows} student samples per rank in groups of G = {c.group_size} "
                  f"({c.rollout_rows * data_ranks} per iteration); real side: {c.real_side}",
                  f"models: student + EMA student, discriminator ({c.unfreeze_blocks} of {cfg.model.num_layers} blocks "
                  f"trainable, sigma to {c.sigma_to} blocks), teacher {teacher_zero}, from {c.teacher}"]
    return "\n".join(lines + [f"steps: {cfg.train.max_steps}; outputs: {cfg.run.out_dir}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dry-run", action="store_true", help="validate and print, do not train")
    parser.add_argument("--plan-memory", action="store_true", help="print each model's per-rank memory and exit")
    parser.add_argument("--world", type=int, help="ranks to plan for (default: this job's WORLD_SIZE)")
    parser.add_argument("--tp", type=int, help="tensor parallelism to plan for (sets model.tensor_parallel)")
    parser.add_argument("--device-gib", type=float, help="device memory per rank to check the plan against")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed
    args = parser.parse_args(argv)
    logs.setup()
    rank, cfg = os.environ.get("RANK", "0"), None
    try:
        cfg = load_config(args.config, args.overrides + ([f"model.tensor_parallel={args.tp}"] if args.tp else []))
        if args.plan_memory:  # before the data checks: a plan needs only the config
            from pipeline.measure.memory import plan_text

            print(plan_text(cfg, args.world or int(os.environ.get("WORLD_SIZE", "1")), args.device_gib), end="")
            return 0
        manifest, where = read_dataset_manifest(cfg.data.path), f"{cfg.data.path}/manifest.json"
        check_compatible(manifest, cfg.model, where)
        if cfg.stage == "distill":
            from pipeline.stages.distill import check_teacher

            check_teacher(cfg)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        check_world(cfg, world_size)
        check_data_ranks(manifest, cfg.data.batch_size, cfg.model.tensor_parallel, world_size, where)
        if args.dry_run:
            print(to_yaml(cfg) + layout(cfg, world_size))
            return 0
        from pipeline.stages.distill import distill
        from pipeline.runtime.distributed import setup, shutdown
        from pipeline.stages.pretrain import pretrain

        d = setup(cfg.model.tensor_parallel)
        if d.is_main:
            print(to_yaml(cfg) + layout(cfg, d.world_size), flush=True)
        try:
            result = (distill if cfg.stage == "distill" else pretrain)(cfg, d)
        except Preempted as stop:
            if d.is_main:
                print(f"\n{stop}", flush=True)
            return EXIT_CODE
        shutdown()
        if d.is_main:
            print("done: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in result.items()), flush=True)
        return 0
    except (ConfigError, DataError, CheckpointError, OSError) as err:  # OSError: e.g. a full disk at start
        print(f"rank {rank}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if type(err).__name__ == "NonFiniteError":
            print(f"rank {rank}: error: {err}", file=sys.stderr)
            return 3
        if cfg is None:
            raise
        # e.g. a collective failing because another rank died: say what survives before the traceback
        latest = latest_tag(checkpoint_root(cfg))
        print(f"\nrank {rank}: error: {err.__class__.__name__}: {str(err)[:300]}\nrank {rank}: the run stopped; "
              + (f"its last complete checkpoint is {latest}: run the same command to resume from it" if latest else
                 "it has no checkpoint yet"), file=sys.stderr, flush=True)
        raise


def exit_with(code: int) -> NoReturn:
    """Exit with ``code``. While a process group is up (a rank that stopped on an error), skip the interpreter's
    shutdown: gloo's and DeepSpeed's threads can abort it there ("terminate called without an active
    exception", exit 250), hiding the code a scheduler or a retry loop acts on. An MLflow run still open is
    ended as FAILED first, so what it logged asynchronously is sent."""
    dist, mlflow = sys.modules.get("torch.distributed"), sys.modules.get("mlflow")
    if not (dist and dist.is_available() and dist.is_initialized()):
        sys.exit(code)
    if mlflow and mlflow.active_run():
        mlflow.end_run(status="FAILED")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        status = main()
    except Exception:  # noqa: BLE001 - the traceback is printed, the exit code kept
        traceback.print_exc()
        status = 1
    exit_with(status)
