"""How much a latent-conditioned student's ξ decides its samples (our extension, spec §11).

The contrastive (InfoNCE) lower bound on I(ξ; x | τ) over the student's own samples, τ the unmasking trajectory
that drew x (which step revealed each position, recorded by the sampler): with the exact conditional likelihood
f(x, ξ) = log P(x | τ, ξ), the sum of the log-probabilities of the tokens each step revealed, recomputed along τ,
I ≥ E[f(x, ξ_0) − log (1/K) Σ_{k<K} exp f(x, ξ_k)], ξ_0 the ξ that drew x and ξ_1 … ξ_{K−1} fresh draws. In the
random order τ does not depend on the model, so x is a draw from P(· | τ, ξ_0) and the bound is that of the
information ξ holds about x beyond the order of reveal; each sample's term is at most log K, a student that ignores
ξ gets exactly 0, and one whose ξ picks one of R equally likely sequences about log R once K ≫ R. (A critic along
fresh teacher-forced trajectories came out far below 0 on the regime chain: a few-step student's likelihood of x
along another trajectory varies with ξ by nats, noise that a log-mean-exp over ξ turns into a large negative bias.)
"""
from __future__ import annotations

from typing import Callable

import torch

from models.didi import marginal_log_prob
from models.latent import LatentDraws, Redraw
from models.sampler import Latent
from models.vocab_parallel import take
from pipeline.runtime.randomness import LATENT, keyed_generator


@torch.no_grad()
def trajectory_log_prob(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                        reveal_step: torch.Tensor, steps: int, latent: Latent, mask_id: int) -> torch.Tensor:
    """log P(x | τ, ξ) (B,) along the trajectory ``reveal_step`` (B, L) of a ``steps``-step sampler (−1: given at the
    start, ``steps``: the noise removal, which uses the last step's ξ): at step k the state is x where an earlier
    step revealed it and [MASK] elsewhere, and the tokens step k revealed are scored."""
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for k in range(steps + 1):
        now = reveal_step == k
        if k == steps and not now.any():
            break  # nothing was left for the noise removal
        z = torch.where(reveal_step < k, x, torch.full_like(x, mask_id))
        log_p = denoise(z, latent(min(k, steps - 1)))
        total += torch.where(now, take(log_p, x, None), 0.0).double().sum(1)
    return total


@torch.no_grad()
def latent_information(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                       reveal_step: torch.Tensor, steps: int, own: Callable[[], Latent], shape: int | tuple[int, ...],
                       redraw: Redraw,
                       mask_id: int, contrasts: int, seed: int) -> torch.Tensor:
    """Per sample (B,): the InfoNCE bound's term in nats, for samples ``x`` drawn in ``steps`` sampler steps along
    ``reveal_step``, with ``contrasts`` ξ (the own one included); ``own()`` replays, afresh each call, the ξ (per
    step) that drew each row, and the contrasts draw ξ of one row's ``shape`` the same way (``redraw``);
    ``denoise(z, ξ)`` returns SUBS log-probabilities."""
    rows, device = x.shape[0], x.device
    reveal_step = reveal_step.clamp(max=steps).to(device)

    def critic(latent: Latent) -> torch.Tensor:
        return trajectory_log_prob(denoise, x, reveal_step, steps, latent, mask_id)

    # the last key is never 0: keys that differ only by trailing zeros share a stream (numpy pads them), and the
    # sample stage keys each sample's ξ by (seed, LATENT, sample)
    fresh = [critic(LatentDraws(rows, shape, [keyed_generator(seed, LATENT, k, i + 1, device=device)
                                            for i in range(rows)], device, redraw)) for k in range(1, contrasts)]
    scores = torch.stack([critic(own()), *fresh])
    return scores[0] - marginal_log_prob(scores)
