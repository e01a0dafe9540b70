"""What the training loop (``pipeline.runtime.trainer``) is built from: precision, the local metrics log, the guard
against non-finite steps, resuming from a checkpoint, and EMA samples (with exact scores) for watching quality
move."""
from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import torch

from data_prep.config import ConfigError
from models.diffusion import subs_log_probs
from models.dit import latent_shape
from models.latent import LatentDraws
from models.sampler import SamplerStats, ancestral_sample
from models.unmasking import RANDOM, UnmaskingOrder
from pipeline.config import Config, bf16_compute
from pipeline.measure.exact_judge import METRICS as EXACT_METRICS
from pipeline.measure.exact_judge import ExactJudge, ExactJudgeError, load_exact_judge
from pipeline.measure.text import render
from pipeline.runtime import checkpoint
from pipeline.runtime.data import TokenLoader
from pipeline.runtime.distributed import Dist, all_reduce_sum
from pipeline.runtime.ema import EMA
from pipeline.runtime.randomness import LATENT, SAMPLE, keyed_generator
from pipeline.runtime.tracking import Tracker

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive optimizer steps with non-finite gradients."""


class NonFiniteGuard:
    """Counts optimizer steps skipped for non-finite loss or gradients, per phase, and stops the run after
    ``limit`` in a row in one phase with a message that names it. Before each checkpoint it also compares each
    phase's mean loss since the previous checkpoint with the earlier ones (``diverged``): a loss that blew up
    while staying finite stops the run before its model is saved, so the good checkpoints stay."""

    def __init__(self, limit: int, phases: tuple[str, ...], verbose: bool, ratio: float = 0.0):
        self.limit, self.verbose, self.ratio = limit, verbose, ratio
        self.skipped = dict.fromkeys(phases, 0)
        self.in_a_row = dict.fromkeys(phases, 0)
        self.window = {phase: [0.0, 0] for phase in phases}  # finite losses since the last checkpoint: sum, count
        self.history: dict[str, list[float]] = {phase: [] for phase in phases}  # earlier windows' mean losses

    def record(self, phase: str, skipped: bool, step: int, loss: float) -> None:
        if not skipped:
            self.in_a_row[phase] = 0
            if math.isfinite(loss):
                self.window[phase][0] += loss
                self.window[phase][1] += 1
            return
        self.skipped[phase] += 1
        self.in_a_row[phase] += 1
        if self.verbose:
            log.warning("step %d: %s: non-finite loss or gradients (loss %s); step skipped (%d in a row, %d in all)",
                        step, phase, loss, self.in_a_row[phase], self.skipped[phase])
        if self.in_a_row[phase] >= self.limit:
            raise NonFiniteError(f"stopping at step {step}: {self.in_a_row[phase]} consecutive {phase} steps had "
                                 f"non-finite loss or gradients (train.max_nonfinite = {self.limit}); the last "
                                 "checkpoint is intact. Lower the learning rate or check the data.")

    def diverged(self, step: int, device: torch.device) -> None:
        """Collective, before a checkpoint: raise ``NonFiniteError`` if a phase's mean loss since the last
        checkpoint is above ``ratio`` × max(1, the median of the earlier windows' |mean|), on every rank alike."""
        phases = list(self.window)
        totals = all_reduce_sum(*(v for p in phases for v in self.window[p]), device=device)
        for k, phase in enumerate(phases):
            total, count = totals[2 * k], totals[2 * k + 1]
            self.window[phase] = [0.0, 0]
            if count == 0:
                continue
            mean, history = total / count, self.history[phase]
            typical = max(1.0, statistics.median(abs(h) for h in history)) if history else None
            if self.ratio and typical is not None and not abs(mean) <= self.ratio * typical:
                raise NonFiniteError(f"stopping at step {step}: the {phase} loss diverged (mean {mean:.4g} since the "
                                     f"last checkpoint, typically {typical:.4g} before; train.max_loss_ratio = "
                                     f"{self.ratio:g}); this model was not saved, the last checkpoint is the good "
                                     "one. Lower the learning rate.")
            history.append(mean)

    def metrics(self) -> dict[str, float]:
        return {f"{phase}/skipped_steps": count for phase, count in self.skipped.items()}

    def state_dict(self) -> dict:
        return {"skipped": dict(self.skipped), "in_a_row": dict(self.in_a_row),
                "window": {p: list(w) for p, w in self.window.items()},
                "history": {p: list(h) for p, h in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.in_a_row = dict(state["skipped"]), dict(state["in_a_row"])
        self.window.update({p: list(w) for p, w in state.get("window", {}).items()})  # absent: older checkpoints
        self.history.update({p: list(h) for p, h in state.get("history", {}).items()})


def resume(cfg: Config, d: Dist, engines: dict, guard: NonFiniteGuard, ema: EMA, loader: TokenLoader) -> dict | None:
    """Restore the latest checkpoint if there is one (engines, then the guard, the EMA and the data position,
    RNG states included); returns this rank's side state, or None for a fresh run."""
    side = checkpoint.load(cfg, engines, d.rank, d.world_size)
    if side is not None:
        guard.load_state_dict(side["guard"])
        ema.load_state_dict(side["ema"])
        loader.load_state_dict(side["loader"])
    return side


def autocast_for(cfg: Config, d: Dist):
    """bf16 autocast on GPU (or when asked), fp32 on CPU, for what runs outside the engines (inside them,
    ``ds_config``'s ``torch_autocast`` section); master weights stay fp32 either way."""
    bf16 = bf16_compute(cfg, d.device.type)
    return lambda: torch.autocast(device_type=d.device.type, dtype=torch.bfloat16, enabled=bf16)


def log_line(out_dir: Path, step: int, metrics: dict[str, float]) -> None:
    """Append to ``metrics.jsonl``: a local record of every logged value, readable without MLflow."""
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, **metrics}) + "\n")


def record(tracker: Tracker, out_dir: Path, d: Dist, step: int, metrics: dict[str, float]) -> None:
    """Metrics to the tracker and, on rank 0, to ``metrics.jsonl``."""
    tracker.log_metrics(metrics, step)
    if d.is_main:
        log_line(out_dir, step, metrics)


@torch.no_grad()
def sample_texts(engine, ema: EMA, cfg: Config, d: Dist, step: int, autocast, tok
                 ) -> list[tuple[int, list[str], SamplerStats]]:
    """EMA samples from all-[MASK] at each of ``train.sample_steps``, in the order a distillation's rollouts use;
    every rank runs the sampler (ZeRO-3 gathers need all), rank 0 keeps the text."""
    mask_id, shard = cfg.model.vocab_size, engine.module.vocab_shard
    order = UnmaskingOrder.parse(cfg.distill.rollout_order) if cfg.stage == "distill" else RANDOM

    latent = cfg.distill.latent if cfg.stage == "distill" else 0  # a latent-conditioned student's ξ
    shape = latent_shape(cfg.distill.latent_input, latent, cfg.model.seq_len)
    engine.eval()

    def denoise(z, *latent):
        with autocast():
            logits = engine(z, torch.zeros(z.shape[0], device=z.device), *latent)
        return subs_log_probs(logits, z, mask_id, shard)

    results = []
    with ema.swapped_in():
        for steps in cfg.train.sample_steps:
            stats = SamplerStats()
            z = torch.full((cfg.train.sample_count, cfg.model.seq_len), mask_id, device=d.device)
            draws = None if not latent else LatentDraws(z.shape[0], shape, keyed_generator(
                cfg.run.seed, LATENT, step), d.device, cfg.distill.latent_redraw)
            # identical draws on every rank; caching is off under ZeRO-3 so that every rank makes the same calls
            out = ancestral_sample(denoise, z, steps, mask_id, generator=keyed_generator(cfg.run.seed, SAMPLE, step),
                                   cache=cfg.train.zero_stage != 3, stats=stats, shard=shard, order=order,
                                   latent=draws)
            ids = out.cpu().tolist()
            results.append((steps, [render(row, tok)[0] for row in ids], stats, ids))
    engine.train()
    return results


def exact_judge_for(cfg: Config, tok) -> ExactJudge | None:
    """``train.exact_judge`` for this run's tokenizer (None when unset); a chain that does not fit the data is a
    ConfigError naming the key, raised before the first step."""
    if cfg.train.exact_judge is None:
        return None
    try:
        return load_exact_judge(cfg.train.exact_judge, tok)
    except ExactJudgeError as err:
        raise ConfigError(f"train.exact_judge: {err}") from None


def exact_curves(cfg: Config) -> dict[str, tuple[str, ...]]:
    """The curves panels of the exact scores that ``log_samples`` records (none without an exact judge)."""
    if cfg.train.exact_judge is None:
        return {}
    return {f"EMA samples: {title}": tuple(f"exact/{key}_{steps}steps" for steps in cfg.train.sample_steps)
            for key, title, _ in EXACT_METRICS}


def log_samples(tracker, out_dir: Path, d: Dist, results, step: int, judge: ExactJudge | None = None) -> None:
    """Samples as one text artifact per step count, their NFE as metrics, the first one on the console; with an
    exact judge, their exact scores as ``exact/*`` metrics (also in ``metrics.jsonl``, for the curves)."""
    for steps, texts, stats, ids in results:
        tracker.log_text("\n\n=====\n\n".join(texts), f"samples/step_{step:08d}_{steps}steps.txt")
        tracker.log_metrics({f"sample/nfe_{steps}steps": stats.nfe}, step)
        if judge is not None:
            summary = judge.summarise([judge.score(row) for row in ids], rounds=200, seed=step)
            record(tracker, out_dir, d, step, {f"exact/{key}_{steps}steps": summary[key]
                                               for key, _, _ in EXACT_METRICS if summary[key] is not None})
        log.info("step %d: sample (%d steps, NFE %.1f):\n%s", step, steps, stats.nfe, texts[0][:400])
