"""The training loop both stages run: data, tokenizer and exact judge, resume, tracking, the progress bar,
logging windows, validation of the EMA weights, samples, checkpoints, preemption and the final curves. A stage
(``Stage``) supplies only what differs: its engines, one optimizer step, its window's metrics, its console lines
and its curves."""
from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from data_prep import logs
from data_prep.config import save_resolved, to_dict
from data_prep.tokenizers import load_tokenizer
from pipeline.config import Config
from pipeline.measure.plots import plot_curves
from pipeline.runtime import checkpoint
from pipeline.runtime.data import TokenLoader, loader_from_config
from pipeline.runtime.dataset import dataset_tokenizer_dir
from pipeline.runtime.distributed import Dist, broadcast_object
from pipeline.runtime.ema import EMA
from pipeline.runtime.loop import (NonFiniteError, NonFiniteGuard, autocast_for, exact_curves, exact_judge_for,
                                   log_samples, record, resume, sample_texts)
from pipeline.runtime.objective import ema_validation_loss
from pipeline.runtime.preemption import Preempted, PreemptionWatch
from pipeline.runtime.tracking import Tracker, make_tracker

log = logging.getLogger(__name__)


@dataclass
class Update:
    """One trained engine's optimizer step, for the guard: its phase, whether it was skipped, its loss."""
    phase: str
    skipped: bool
    loss: float


class Stage(ABC):
    """What a training stage gives the ``Trainer``: its engines (checkpointed under these names), the one whose
    EMA weights are validated and sampled, the EMA and the guard, and the parts of the loop that differ."""

    name: str  # the progress bar's label
    engines: dict  # name -> engine, as checkpoints store them
    model: object  # the engine whose EMA weights are validated and sampled
    ema: EMA
    guard: NonFiniteGuard
    curves: dict[str, tuple[str, ...]]  # the curves panels of ``metrics.jsonl``
    baseline_samples = False  # with an exact judge, samples scored at step 0 too

    @abstractmethod
    def about(self) -> str:
        """What the start line says after the output folder."""

    def resumed(self, side: dict) -> None:
        """Check a resumed checkpoint's side state against this run (raise to refuse it)."""

    def side_state(self) -> dict:
        """What the stage adds to each checkpoint's side state."""
        return {}

    @abstractmethod
    def step(self, step: int, batches: Iterator[dict]) -> list[Update]:
        """One optimizer step of every trained engine from ``step`` (0-based), its values added to the window."""

    @abstractmethod
    def window_metrics(self, iterations: int, elapsed: float) -> dict[str, float]:
        """Collective: the logged metrics of the window of ``iterations`` steps that took ``elapsed`` seconds;
        starts the next window."""

    @abstractmethod
    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        """The progress bar's values after a window."""

    @abstractmethod
    def summary(self, step: int, metrics: dict[str, float], evaluation: dict[str, float]) -> str:
        """The console line of a validation."""


def due(step: int, every: int, cfg: Config) -> bool:
    """Every ``every`` steps, and at the last step."""
    return step % every == 0 or step == cfg.train.max_steps


def endless(loader: TokenLoader):
    while True:
        yield from loader


class Trainer:
    """Runs a ``Stage`` from its latest checkpoint (or step 0) to ``train.max_steps``."""

    def __init__(self, cfg: Config, d: Dist):
        self.cfg, self.d, self.out_dir = cfg, d, Path(cfg.run.out_dir)
        self.loader = loader_from_config(cfg, "train", d.data_rank, d.data_size)
        self.val = loader_from_config(cfg, "val", d.data_rank, d.data_size, shuffle=False)
        self.tok = load_tokenizer(dataset_tokenizer_dir(cfg.data.path, cfg.data.retries))
        self.judge = exact_judge_for(cfg, self.tok)
        self.autocast = autocast_for(cfg, d)
        self.tracker: Tracker | None = None

    def run(self, stage: Stage) -> dict:
        """Train (or resume training) ``stage``; returns the step and the last logged metrics."""
        cfg, d = self.cfg, self.d
        side = resume(cfg, d, stage.engines, stage.guard, stage.ema, self.loader)
        if side is not None:
            stage.resumed(side)
        step = side["step"] if side else 0
        self.start_tracking(side, stage.about())
        stream, metrics = endless(self.loader), {}
        bar = logs.progress(cfg.train.max_steps, step, stage.name, enabled=d.is_main)
        if step == 0 and stage.baseline_samples and self.judge is not None:
            self.sample(stage, 0)
        for engine in stage.engines.values():
            engine.train()
        window_start, window_first = time.perf_counter(), step
        with PreemptionWatch(d.device) as preemption:
            while step < cfg.train.max_steps:
                updates = stage.step(step, stream)
                step += 1
                self.count(stage.guard, updates, step)
                bar.update(1)
                if due(step, cfg.train.log_every, cfg):
                    metrics = stage.window_metrics(step - window_first, time.perf_counter() - window_start)
                    record(self.tracker, self.out_dir, d, step, metrics)
                    bar.set_postfix(**stage.postfix(metrics))
                    window_start, window_first = time.perf_counter(), step
                if due(step, cfg.train.eval_every, cfg):
                    self.validate(stage, step, metrics)
                if due(step, cfg.train.sample_every, cfg) and not cfg.model.causal:  # a judge is not sampled
                    self.sample(stage, step)
                self.end_of_step(stage, step, preemption)
        bar.close()
        self.finish({**stage.curves, **exact_curves(cfg)})
        return {"step": step, **metrics}

    def start_tracking(self, side: dict | None, about: str) -> None:
        """The tracker (re-attached to the checkpoint's run on resume), the resolved config saved and logged, and
        one line saying what starts."""
        cfg, d = self.cfg, self.d
        self.tracker = make_tracker(cfg.tracking, d.is_main, cfg.run.name, broadcast_object(side and side["run_id"]))
        step = side["step"] if side else 0
        log.info("%s: %s, %s", f"resuming at step {step}" if side else "starting", cfg.run.out_dir, about)
        if d.is_main:
            saved = save_resolved(cfg, cfg.run.out_dir)
            if side is None:
                self.tracker.log_params(to_dict(cfg))
                self.tracker.log_artifact(saved)
            if step >= cfg.train.max_steps:
                log.warning("already trained: step %d of train.max_steps = %d (raise it to go on)", step,
                            cfg.train.max_steps)

    def count(self, guard: NonFiniteGuard, updates: list[Update], step: int) -> None:
        """The step's updates counted by the guard; when it stops the run, its counts are logged first."""
        try:
            for update in updates:
                guard.record(update.phase, update.skipped, step, update.loss)
        except NonFiniteError:
            self.tracker.log_metrics(guard.metrics(), step)
            self.tracker.close()
            raise

    def validate(self, stage: Stage, step: int, metrics: dict[str, float]) -> None:
        """Validation of the EMA weights into the run's latest ``metrics``, the tracker and ``metrics.jsonl``;
        the stage's summary on the console."""
        evaluation = ema_validation_loss(stage.model, stage.ema, self.val, self.cfg, self.d, self.autocast)
        summary = stage.summary(step, metrics, evaluation)
        metrics.update(evaluation)
        record(self.tracker, self.out_dir, self.d, step, evaluation)
        log.info("%s", summary)

    def sample(self, stage: Stage, step: int) -> None:
        results = sample_texts(stage.model, stage.ema, self.cfg, self.d, step, self.autocast, self.tok)
        log_samples(self.tracker, self.out_dir, self.d, results, step, self.judge)

    def end_of_step(self, stage: Stage, step: int, preemption: PreemptionWatch) -> None:
        """Checkpoint when due (unless the loss diverged: ``NonFiniteGuard.diverged``); if a rank was signalled
        to stop, checkpoint now (unless just done) and raise ``Preempted`` on every rank."""
        cfg, d = self.cfg, self.d
        stop = step < cfg.train.max_steps and preemption.agreed()
        if stop or due(step, cfg.train.checkpoint_every, cfg):
            stage.guard.diverged(step, d.device)
            side = {"ema": stage.ema.state_dict(), "loader": self.loader.state_dict(),
                    "guard": stage.guard.state_dict(), "run_id": self.tracker.run_id, **stage.side_state()}
            checkpoint.save(cfg, stage.engines, step, d.rank, d.world_size, side)
        if stop:
            self.tracker.close(status="KILLED")
            raise Preempted(step, preemption.received)

    def finish(self, panels: dict) -> None:
        """Curves from ``metrics.jsonl`` as an artifact, then the tracker closed."""
        if self.d.is_main and (self.out_dir / "metrics.jsonl").exists():
            self.tracker.log_artifact(plot_curves(self.out_dir / "metrics.jsonl", self.out_dir / "curves.png", panels))
        self.tracker.close()
