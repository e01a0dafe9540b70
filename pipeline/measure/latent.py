"""How much a latent-conditioned student's ξ decides its samples (our extension, spec §11).

The contrastive (InfoNCE) lower bound on I(ξ; x) over the student's own samples: with the critic
f(x, ξ) = log q̂(x | ξ), a log-mean-exp over M teacher-forced unmasking trajectories
(``models.didi.teacher_forced_log_prob``) that every ξ shares (common random numbers),
I ≥ E[f(x, ξ_0) − log (1/K) Σ_{k<K} exp f(x, ξ_k)], ξ_0 the ξ that drew x and ξ_1 … ξ_{K−1} fresh draws. It holds
for any critic, so the estimate cannot overstate ξ's information (up to sampling noise), and no term compares
log-likelihoods along different trajectories (on the regime chain one trajectory's log-likelihood varies by nats,
which made the difference of two log-mean-exp estimates come out negative). Each sample's term is at most
log K; a student that ignores ξ gets exactly 0, and one whose ξ picks one of R equally likely sequences about
log R once K ≫ R.
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
                       order: UnmaskingOrder, trajectories: int, contrasts: int, seed: int) -> torch.Tensor:
    """Per sample (B,): the InfoNCE bound's term in nats, for samples ``x`` drawn in ``steps`` steps of the
    inference grid and ``order``, over ``trajectories`` shared trajectories and ``contrasts`` ξ (the own one
    included); ``own()`` replays, afresh each call, the ξ (per step) that drew each row, and the contrasts draw ξ of
    ``dim`` dimensions the same way (``redraw``); ``denoise(z, ξ)`` returns SUBS log-probabilities."""
    rows, device = x.shape[0], x.device
    times = torch.tensor(time_grid(steps), dtype=torch.float64, device=device).expand(rows, -1)
    schedule = LogLinearSchedule()

    def generators(purpose: int, k: int) -> list[torch.Generator]:
        # the last key is never 0: keys that differ only by trailing zeros share a stream (numpy pads them), and
        # the sample stage keys each sample's ξ by (seed, LATENT, sample)
        return [keyed_generator(seed, purpose, k, i + 1, device=device) for i in range(rows)]

    def critic(latent: Callable[[], Latent]) -> torch.Tensor:
        return marginal_log_prob(torch.stack([
            teacher_forced_log_prob(denoise, x, times, mask_id, schedule, generators(EXACT_TRAJECTORY, t),
                                    order=order, latent=latent()) for t in range(trajectories)]))

    fresh = [critic(lambda k=k: LatentDraws(rows, dim, generators(LATENT, k), device, redraw))
             for k in range(1, contrasts)]
    scores = torch.stack([critic(own), *fresh])
    return scores[0] - marginal_log_prob(scores)
