"""How much a latent-conditioned student's ξ decides its samples (our extension, spec §11).

I(ξ; x) = E[log q(x | ξ) − log q(x)] over the student's own samples, both terms by teacher forcing
(``models.didi.teacher_forced_log_prob``): log q̂(x | ξ) over K unmasking trajectories with the ξ that drew x,
log q̂(x) over the same K trajectories (common random numbers), each with a fresh ξ. A student that ignores ξ
gets exactly 0; one whose ξ picks one of R equally likely modes gets log R. Both terms are log-mean-exp
estimates, biased low by Jensen, and consistent as K grows. Where one trajectory's log-likelihood varies by
several nats (on the regime chain, measured: launch/results/latent/regime/diagnostics.md) a log-mean-exp over few
terms follows their maximum, so the marginal's, whose terms vary more, can come out higher than the
conditional's: a negative estimate says K is too small, not that ξ carries negative information.
"""
from __future__ import annotations

from typing import Callable

import torch

from models.didi import marginal_log_prob, teacher_forced_log_prob
from models.diffusion import LogLinearSchedule
from models.latent import LatentDraws, Redraw
from models.sampler import Latent, time_grid
from models.unmasking import UnmaskingOrder
from pipeline.runtime.randomness import EXACT_TRAJECTORY, LATENT, keyed_generator


@torch.no_grad()
def latent_information(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                       own: Callable[[], Latent], dim: int, redraw: Redraw, steps: int, mask_id: int,
                       order: UnmaskingOrder, trajectories: int, seed: int) -> torch.Tensor:
    """Per sample (B,): log q̂(x | ξ) − log q̂(x) in nats, for samples ``x`` drawn in ``steps`` steps of the
    inference grid and ``order``; ``own()`` replays, afresh each call, the ξ (per step) that drew each row, and the
    marginal draws ξ of ``dim`` dimensions the same way (``redraw``); ``denoise(z, ξ)`` returns SUBS
    log-probabilities."""
    rows, device = x.shape[0], x.device
    times = torch.tensor(time_grid(steps), dtype=torch.float64, device=device).expand(rows, -1)
    schedule = LogLinearSchedule()

    def generators(purpose: int, k: int) -> list[torch.Generator]:
        # the last key is never 0: keys that differ only by trailing zeros share a stream (numpy pads them), and
        # the sample stage keys each sample's ξ by (seed, LATENT, sample)
        return [keyed_generator(seed, purpose, k, i + 1, device=device) for i in range(rows)]

    def trajectory(k: int, latent) -> torch.Tensor:
        return teacher_forced_log_prob(denoise, x, times, mask_id, schedule, generators(EXACT_TRAJECTORY, k),
                                       order=order, latent=latent)

    conditional = torch.stack([trajectory(k, own()) for k in range(trajectories)])
    marginal = torch.stack([trajectory(k, LatentDraws(rows, dim, generators(LATENT, k), device, redraw))
                            for k in range(trajectories)])
    return marginal_log_prob(conditional) - marginal_log_prob(marginal)
