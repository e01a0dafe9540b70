"""The pre-training stage: an MDLM teacher trained on the NELBO under DeepSpeed (ZeRO 0–3, CPU or GPU).

Features: gradient accumulation, warm-up + constant/linear/cosine LR, EMA with warm-up, gradient clipping,
bf16 autocast on GPU (fp32 on CPU), validation NELBO (EMA weights) and sample text every N steps,
checkpoints with an atomic ``latest`` pointer and exact resume, MLflow on rank 0, non-finite steps skipped
and counted (the run stops after ``train.max_nonfinite`` in a row).
Tensor parallelism (``model.tensor_parallel``): the ranks of a tensor-parallel group read the same rows and
draw the same masks and dropout; ZeRO runs over the data-parallel ranks.
Limitations: the step counter counts optimizer steps, skipped ones included.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from data_prep.tokenizers import load_tokenizer
from models.autoregressive import next_token_nll
from models.diffusion import LogLinearSchedule, mask_tokens, nelbo_per_token, sample_times, subs_log_probs
from pipeline.config import Config
from pipeline.runtime.data import TokenLoader, loader_from_config
from pipeline.runtime.dataset import dataset_tokenizer_dir
from pipeline.runtime.distributed import Dist, all_reduce_sum
from pipeline.runtime.ema import EMA
from pipeline.measure.plots import PRETRAIN_CURVES
from pipeline.runtime.loop import (NonFiniteError, NonFiniteGuard, autocast_for, due, end_of_step, endless,
                                   exact_curves, exact_judge_for, finish, log_samples, record, record_evaluation,
                                   resume, sample_texts, side_state, start_tracking)
from pipeline.runtime.preemption import PreemptionWatch
from pipeline.runtime.engine import build_engine, build_model, ds_config, step_skipped
from pipeline.runtime.randomness import DROPOUT, EVAL, TRAIN, keyed_generator, keyed_seed, rank_rows


def corrupt(x: torch.Tensor, cfg: Config, d: Dist, schedule: LogLinearSchedule, *keys: int):
    """t and z_t for this rank's rows, drawn for the global batch from a generator keyed by ``keys``."""
    g = keyed_generator(cfg.run.seed, *keys)
    rows, length = d.data_size * x.shape[0], x.shape[1]
    t = sample_times(rows, cfg.train.t_min, cfg.train.antithetic, generator=g)
    u = torch.rand((rows, length), generator=g)
    t, u = (rank_rows(v, d.data_rank, x.shape[0]).to(x.device) for v in (t, u))
    return t, mask_tokens(x, 1 - schedule.alpha(t), cfg.model.vocab_size, u=u)


def loss_terms(engine, x: torch.Tensor, cfg: Config, d: Dist, autocast, *keys: int) -> torch.Tensor:
    """Per-token loss terms: the NELBO's at masked positions of z_t (draws keyed by ``keys``), or, for a causal
    model, the next-token NLL of every position after the first."""
    zeros, shard, mask_id = torch.zeros(x.shape[0], device=x.device), engine.module.vocab_shard, cfg.model.vocab_size
    if cfg.model.causal:
        with autocast():
            logits = engine(x, zeros)
        return next_token_nll(logits, x, mask_id, shard)
    t, z = corrupt(x, cfg, d, LogLinearSchedule(), *keys)
    with autocast():
        logits = engine(z, zeros)
    return nelbo_per_token(subs_log_probs(logits, z, mask_id, shard), x, z, t, mask_id, LogLinearSchedule(), shard)


def val_key(cfg: Config) -> str:
    return "val/nll_nats" if cfg.model.causal else "val/nelbo_nats"


@torch.no_grad()
def evaluate(engine, ema: EMA, val: TokenLoader, cfg: Config, d: Dist, autocast) -> dict[str, float]:
    """Validation NELBO (next-token NLL for a causal model) of the EMA weights on the first ``eval_batches``
    batches, same masks every time."""
    val.epoch, val.position = 0, 0
    total, count = 0.0, 0
    engine.eval()
    with ema.swapped_in():
        for i, batch in enumerate(itertools.islice(iter(val), cfg.train.eval_batches)):
            terms = loss_terms(engine, batch["input_ids"].to(d.device), cfg, d, autocast, EVAL, i)
            total += terms.double().sum().item()
            count += terms.numel()
    engine.train()
    total, count = all_reduce_sum(total, count, device=d.device)
    nats = total / count
    return {val_key(cfg): nats, "val/bits_per_token": nats / math.log(2)}


def pretrain(cfg: Config, d: Dist) -> dict:
    """Train (or resume) the teacher; returns the final metrics."""
    out_dir = Path(cfg.run.out_dir)
    loader = loader_from_config(cfg, "train", d.data_rank, d.data_size)
    val = loader_from_config(cfg, "val", d.data_rank, d.data_size, shuffle=False)
    tok = load_tokenizer(dataset_tokenizer_dir(cfg.data.path, cfg.data.retries))
    judge = exact_judge_for(cfg, tok)
    config = ds_config(cfg)
    torch.manual_seed(cfg.run.seed)
    engine, optimizer = build_engine(build_model(cfg.model, cfg.train.zero_stage, config), cfg.optim,
                                     cfg.train.max_steps, config)
    ema = EMA(engine.module, cfg.train.ema, cfg.train.ema_warmup)
    autocast = autocast_for(cfg, d)

    guard = NonFiniteGuard(cfg.train.max_nonfinite, ("train",), d.is_main, cfg.train.max_loss_ratio)
    side = resume(cfg, d, {"model": engine}, guard, ema, loader)
    step = side["step"] if side else 0
    params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in engine.module.parameters())
    tracker = start_tracking(cfg, d, side, f"{params:,} parameters")
    stream = endless(loader)
    metrics: dict[str, float] = {}
    window_loss, window_steps, window_start, window_first = 0.0, 0, time.perf_counter(), step
    tokens_per_step = cfg.data.batch_size * cfg.model.seq_len * cfg.train.grad_accum * d.data_size
    bar = tqdm(total=cfg.train.max_steps, initial=step, disable=not d.is_main, file=sys.stderr,
               dynamic_ncols=True, desc="pretrain")
    engine.train()
    with PreemptionWatch(d.device) as preemption:
        while step < cfg.train.max_steps:
            step_loss = 0.0
            for micro in range(cfg.train.grad_accum):
                x = next(stream)["input_ids"].to(d.device)
                torch.manual_seed(keyed_seed(cfg.run.seed, DROPOUT, step, micro, d.data_rank))
                loss = loss_terms(engine, x, cfg, d, autocast, TRAIN, step, micro).mean()
                engine.backward(loss)
                engine.step()
                step_loss += loss.item() / cfg.train.grad_accum
            step += 1
            skipped = step_skipped(engine, optimizer)
            try:
                guard.record("train", skipped, step, step_loss)
            except NonFiniteError:
                tracker.log_metrics(guard.metrics(), step)
                tracker.close()
                raise
            if not skipped:
                ema.update()
                window_loss += step_loss
                window_steps += 1
            bar.update(1)
            if due(step, cfg.train.log_every, cfg):
                loss_sum, n = all_reduce_sum(window_loss, window_steps, device=d.device)
                elapsed = time.perf_counter() - window_start
                metrics = {"train/loss_nats": loss_sum / max(n, 1), "train/lr": engine.get_lr()[0],
                           **guard.metrics(),
                           "train/tokens_per_s": tokens_per_step * (step - window_first) / elapsed}
                record(tracker, out_dir, d, step, metrics)
                bar.set_postfix(loss=f"{metrics['train/loss_nats']:.3f}", lr=f"{metrics['train/lr']:.2e}")
                window_loss, window_steps, window_start, window_first = 0.0, 0, time.perf_counter(), step
            if due(step, cfg.train.eval_every, cfg):
                evaluation = evaluate(engine, ema, val, cfg, d, autocast)
                record_evaluation(tracker, out_dir, d, step, metrics, evaluation,
                                  f"step {step}: train loss {metrics.get('train/loss_nats', float('nan')):.4f} "
                                  f"nats/token, val {'NLL' if cfg.model.causal else 'NELBO'} "
                                  f"{evaluation[val_key(cfg)]:.4f} nats/token "
                                  f"({evaluation['val/bits_per_token']:.3f} bits)")
            if due(step, cfg.train.sample_every, cfg) and not cfg.model.causal:  # the judge is not sampled
                log_samples(tracker, out_dir, d, sample_texts(engine, ema, cfg, d, step, autocast, tok), step, judge)
            end_of_step(cfg, d, step, {"model": engine}, guard, lambda: side_state(guard, ema, loader, tracker),
                        tracker, preemption)
    bar.close()
    finish(tracker, out_dir, d, {**PRETRAIN_CURVES, **exact_curves(cfg)})
    return {"step": step, **metrics}

