"""What every training stage's loop shares: precision, the local metrics log, endless batches, the guard
against non-finite steps, and EMA samples for watching quality move."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from models.diffusion import subs_log_probs
from models.sampler import SamplerStats, ancestral_sample
from pipeline.config import Config
from pipeline.data import TokenLoader
from pipeline.distributed import Dist
from pipeline.ema import EMA
from pipeline.randomness import SAMPLE, keyed_generator
from pipeline.text import render


class NonFiniteError(RuntimeError):
    """Too many consecutive optimizer steps with non-finite gradients."""


class NonFiniteGuard:
    """Counts optimizer steps skipped for non-finite loss or gradients, per phase, and stops the run after
    ``limit`` in a row in one phase with a message that names it."""

    def __init__(self, limit: int, phases: tuple[str, ...], verbose: bool):
        self.limit, self.verbose = limit, verbose
        self.skipped = dict.fromkeys(phases, 0)
        self.in_a_row = dict.fromkeys(phases, 0)

    def record(self, phase: str, skipped: bool, step: int, loss: float) -> None:
        if not skipped:
            self.in_a_row[phase] = 0
            return
        self.skipped[phase] += 1
        self.in_a_row[phase] += 1
        if self.verbose:
            tqdm.write(f"step {step}: {phase}: non-finite loss or gradients (loss {loss}); step skipped "
                       f"({self.in_a_row[phase]} in a row, {self.skipped[phase]} in all)", file=sys.stderr)
        if self.in_a_row[phase] >= self.limit:
            raise NonFiniteError(f"stopping at step {step}: {self.in_a_row[phase]} consecutive {phase} steps had "
                                 f"non-finite loss or gradients (train.max_nonfinite = {self.limit}); the last "
                                 "checkpoint is intact. Lower the learning rate or check the data.")

    def metrics(self) -> dict[str, float]:
        return {f"{phase}/skipped_steps": count for phase, count in self.skipped.items()}

    def state_dict(self) -> dict:
        return {"skipped": dict(self.skipped), "in_a_row": dict(self.in_a_row)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.in_a_row = dict(state["skipped"]), dict(state["in_a_row"])


def autocast_for(cfg: Config, d: Dist):
    """bf16 autocast on GPU (or when asked), fp32 on CPU; master weights stay fp32 either way."""
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and d.device.type == "cuda")
    return lambda: torch.autocast(device_type=d.device.type, dtype=torch.bfloat16, enabled=bf16)


def log_line(out_dir: Path, step: int, metrics: dict[str, float]) -> None:
    """Append to ``metrics.jsonl``: a local record of every logged value, readable without MLflow."""
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, **metrics}) + "\n")


def endless(loader: TokenLoader):
    while True:
        yield from loader


@torch.no_grad()
def sample_texts(engine, ema: EMA, cfg: Config, d: Dist, step: int, autocast, tok
                 ) -> list[tuple[int, list[str], SamplerStats]]:
    """EMA samples from all-[MASK] at each of ``train.sample_steps``; every rank runs the sampler (ZeRO-3
    gathers need all), rank 0 keeps the text."""
    mask_id = cfg.model.vocab_size
    engine.eval()

    def denoise(z):
        with autocast():
            logits = engine(z, torch.zeros(z.shape[0], device=z.device))
        return subs_log_probs(logits, z, mask_id)

    results = []
    with ema.swapped_in():
        for steps in cfg.train.sample_steps:
            stats = SamplerStats()
            z = torch.full((cfg.train.sample_count, cfg.model.seq_len), mask_id, device=d.device)
            # identical draws on every rank; caching is off under ZeRO-3 so that every rank makes the same calls
            out = ancestral_sample(denoise, z, steps, mask_id, generator=keyed_generator(cfg.run.seed, SAMPLE, step),
                                   cache=cfg.train.zero_stage != 3, stats=stats)
            results.append((steps, [render(row, tok)[0] for row in out.cpu().tolist()], stats))
    engine.train()
    return results


def log_samples(tracker, results, step: int, verbose: bool) -> None:
    """Samples as one text artifact per step count, their NFE as metrics, the first one on the console."""
    for steps, texts, stats in results:
        tracker.log_text("\n\n=====\n\n".join(texts), f"samples/step_{step:08d}_{steps}steps.txt")
        tracker.log_metrics({f"sample/nfe_{steps}steps": stats.nfe}, step)
        if verbose:
            tqdm.write(f"step {step}: sample ({steps} steps, NFE {stats.nfe}):\n{texts[0][:400]}", file=sys.stderr)
