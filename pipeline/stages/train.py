"""Pre-training or distillation (the config's ``stage:``), one process or one rank of a job.

``python -m pipeline train --config FILE [--set k=v ...] [--dry-run] [--log-all-ranks]`` runs one process;
``deepspeed [--num_gpus N] launch/train.py ...`` (the thin launcher, the same function) runs it on every rank, as
do torchrun and ``launch/slurm/rank.sh``. ``--log-all-ranks`` shows every rank's lines, prefixed with its rank.
``--dry-run`` validates the config and the data, prints the resolved config and the parallel layout, and exits
without training; ``--plan-memory [--world N] [--tp T] [--device-gib G]`` prints each co-hosted model's per-rank
memory (``pipeline.measure.memory``) and exits. Restarting the same command resumes from the run's latest checkpoint;
a preempted run (SIGTERM / SIGUSR1) exits with ``pipeline.runtime.preemption.EXIT_CODE`` after checkpointing.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from data_prep import logs
from data_prep.config import ConfigError, to_yaml
from pipeline.config import Config, bf16_compute, check_world, load_config
from pipeline.runtime.checkpoint import CheckpointError, checkpoint_root, latest_tag
from pipeline.runtime.dataset import DataError, check_compatible, check_data_ranks, read_dataset_manifest
from pipeline.runtime.preemption import EXIT_CODE, Preempted

log = logging.getLogger(__name__)


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
    parser = argparse.ArgumentParser(prog="python -m pipeline train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dry-run", action="store_true", help="validate and print, do not train")
    parser.add_argument("--plan-memory", action="store_true", help="print each model's per-rank memory and exit")
    parser.add_argument("--world", type=int, help="ranks to plan for (default: this job's WORLD_SIZE)")
    parser.add_argument("--tp", type=int, help="tensor parallelism to plan for (sets model.tensor_parallel)")
    parser.add_argument("--device-gib", type=float, help="device memory per rank to check the plan against")
    parser.add_argument("--log-all-ranks", action="store_true", help="every rank's lines, prefixed with its rank")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed
    args = parser.parse_args(argv)
    if args.log_all_ranks:
        logs.setup(all_ranks=True)
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
        if d.is_main:  # once, also with --log-all-ranks
            log.info("%s", to_yaml(cfg) + layout(cfg, d.world_size))
        try:
            result = (distill if cfg.stage == "distill" else pretrain)(cfg, d)
        except Preempted as stop:
            log.info("%s", stop)
            return EXIT_CODE
        shutdown()
        log.info("done: %s", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in result.items()))
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

