"""The pre-training objective per token (the NELBO's terms, or a causal model's next-token NLL) and its value on
the validation rows under the EMA weights, which both training stages report."""
from __future__ import annotations

import itertools
import math

import torch

from models.autoregressive import next_token_nll
from models.diffusion import LogLinearSchedule, mask_tokens, nelbo_per_token, sample_times, subs_log_probs
from pipeline.config import Config
from pipeline.runtime.data import TokenLoader
from pipeline.runtime.distributed import Dist, all_reduce_sum
from pipeline.runtime.ema import EMA
from pipeline.runtime.randomness import EVAL, keyed_generator, rank_rows


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
def ema_validation_loss(engine, ema: EMA, val: TokenLoader, cfg: Config, d: Dist, autocast) -> dict[str, float]:
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
