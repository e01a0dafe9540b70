"""The pre-training stage: an MDLM teacher trained on the NELBO under DeepSpeed (ZeRO 0–3, CPU or GPU).

Features: gradient accumulation, warm-up + constant/linear/cosine LR, EMA with warm-up, gradient clipping,
bf16 autocast on GPU (fp32 on CPU), validation NELBO (EMA weights) and sample text every N steps,
checkpoints with an atomic ``latest`` pointer and exact resume, MLflow on rank 0, non-finite steps skipped
and counted (the run stops after ``train.max_nonfinite`` in a row).
Tensor parallelism (``model.tensor_parallel``): the ranks of a tensor-parallel group read the same rows and
draw the same masks and dropout; ZeRO runs over the data-parallel ranks.
Limitations: the step counter counts optimizer steps, skipped ones included.
The loop is ``pipeline.runtime.trainer``'s; this module supplies the engine, its step and its console lines.
"""
from __future__ import annotations

import torch

from pipeline.config import Config
from pipeline.measure.plots import PRETRAIN_CURVES
from pipeline.runtime.distributed import Dist, all_reduce_sum
from pipeline.runtime.ema import EMA
from pipeline.runtime.engine import build_engine, build_model, ds_config, step_skipped
from pipeline.runtime.loop import NonFiniteGuard, autocast_for
from pipeline.runtime.objective import loss_terms, val_key
from pipeline.runtime.randomness import DROPOUT, TRAIN, keyed_seed
from pipeline.runtime.trainer import Stage, Trainer, Update


class Pretraining(Stage):
    """One engine trained on the NELBO (next-token NLL for a causal model), ``train.grad_accum`` micro-batches
    per step; the window's mean loss counts the steps that were not skipped."""

    name, curves = "pretrain", PRETRAIN_CURVES

    def __init__(self, cfg: Config, d: Dist):
        self.cfg, self.d = cfg, d
        config = ds_config(cfg)
        torch.manual_seed(cfg.run.seed)
        self.model = build_engine(build_model(cfg.model, cfg.train.zero_stage, config), cfg.optim,
                                  cfg.train.max_steps, config)
        self.engines = {"model": self.model}
        self.ema = EMA(self.model.module, cfg.train.ema, cfg.train.ema_warmup)
        self.autocast = autocast_for(cfg, d)
        self.guard = NonFiniteGuard(cfg.train.max_nonfinite, ("train",), d.is_main, cfg.train.max_loss_ratio)
        self.window_loss, self.window_steps = 0.0, 0
        self.tokens_per_step = cfg.data.batch_size * cfg.model.seq_len * cfg.train.grad_accum * d.data_size

    def about(self) -> str:
        params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in self.model.module.parameters())
        return f"{params:,} parameters"

    def step(self, step: int, batches) -> list[Update]:
        cfg, d, engine = self.cfg, self.d, self.model
        step_loss = 0.0
        for micro in range(cfg.train.grad_accum):
            x = next(batches)["input_ids"].to(d.device)
            torch.manual_seed(keyed_seed(cfg.run.seed, DROPOUT, step, micro, d.data_rank))
            loss = loss_terms(engine, x, cfg, d, self.autocast, TRAIN, step, micro).mean()
            engine.backward(loss)
            engine.step()
            step_loss += loss.item() / cfg.train.grad_accum
        skipped = step_skipped(engine)
        if not skipped:
            self.ema.update()
            self.window_loss += step_loss
            self.window_steps += 1
        return [Update("train", skipped, step_loss)]

    def window_metrics(self, iterations: int, elapsed: float) -> dict[str, float]:
        loss_sum, n = all_reduce_sum(self.window_loss, self.window_steps, device=self.d.device)
        self.window_loss, self.window_steps = 0.0, 0
        return {"train/loss_nats": loss_sum / max(n, 1), "train/lr": self.model.get_lr()[0], **self.guard.metrics(),
                "train/tokens_per_s": self.tokens_per_step * iterations / elapsed}

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{metrics['train/loss_nats']:.3f}", "lr": f"{metrics['train/lr']:.2e}"}

    def summary(self, step: int, metrics: dict[str, float], evaluation: dict[str, float]) -> str:
        return (f"step {step}: train loss {metrics.get('train/loss_nats', float('nan')):.4f} nats/token, "
                f"val {'NLL' if self.cfg.model.causal else 'NELBO'} {evaluation[val_key(self.cfg)]:.4f} nats/token "
                f"({evaluation['val/bits_per_token']:.3f} bits)")


def pretrain(cfg: Config, d: Dist) -> dict:
    """Train (or resume) the teacher; returns the final metrics."""
    trainer = Trainer(cfg, d)
    return trainer.run(Pretraining(cfg, d))
