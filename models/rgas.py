"""The reward-guided ancestral sampler (RGAS, spec §6): the plain sampler's loop with two kinds of step.

For N steps, K = ⌊N·(1 − ρ)⌋. Steps i < K tilt the student's log-probabilities ℓ_i towards what the
discriminator calls real: ℓ_i + h_i·g with g = ∂/∂ℓ_i Σ_{masked} d(u, σ_t), zeroed outside masked positions
and clipped to [−1, 1], h_i going linearly from h_start to h_end. The discriminator reads u = ℓ_i itself: at
masked positions the student's log-probabilities, at unmasked ones SUBS's carry-over row (0 at the token,
−1e6 elsewhere), whose softmax is the token's one-hot exactly. Steps i ≥ K draw M candidates with the plain
step and continue from one drawn with probability softmax(R), R_m = Σ_ℓ d(z_s^(m), σ_s). With h = 0 and M = 1
RGAS is the plain sampler, draw for draw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from models.diffusion import LogLinearSchedule
from models.sampler import (Denoiser, Generators, Latent, SamplerStats, ancestral_sample, ancestral_step,
                            sample_categorical)
from models.unmasking import RANDOM, UnmaskingOrder


@dataclass
class RGASSettings:
    rho: float = 0.5  # share of the steps that re-rank (the last ones)
    h_start: float = 30.0
    h_end: float = 40.0
    candidates: int = 4  # M


@dataclass
class RGASStats(SamplerStats):
    discriminator_forward: int = 0
    discriminator_backward: int = 0


def tilt_strengths(steps: int, settings: RGASSettings) -> list[float]:
    """h_i for the K = ⌊N(1 − ρ)⌋ tilting steps, linear from h_start to h_end."""
    k = math.floor(steps * (1 - settings.rho))
    if k <= 1:
        return [settings.h_start] * k
    return [settings.h_start + (settings.h_end - settings.h_start) * i / (k - 1) for i in range(k)]


def tilting_gradient(discriminator, log_probs: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor,
                     mask_id: int) -> torch.Tensor:
    """g = ∂/∂u Σ_{ℓ masked} d^ℓ(u, σ) at u = log_probs, fp32, zero outside masked positions, clipped to ±1."""
    masked = (z == mask_id).unsqueeze(-1)
    with torch.enable_grad():
        u = log_probs.detach().float().requires_grad_()
        score = (discriminator(u, sigma).float() * masked.squeeze(-1)).sum()
        (g,) = torch.autograd.grad(score, u)
    return (g * masked).clamp(-1.0, 1.0)


def rerank(discriminator, candidates: torch.Tensor, sigma: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One of M candidate states per row (candidates: (M, B, L)), drawn with probability softmax(R)."""
    m, b, length = candidates.shape
    scores = discriminator(candidates.reshape(m * b, length), sigma.repeat(m)).float().sum(-1).view(m, b).t()
    pick = sample_categorical(torch.softmax(scores.double(), dim=-1), generator)
    return candidates[pick, torch.arange(b, device=candidates.device)]


@torch.no_grad()
def rgas_sample(denoise: Denoiser, discriminator, z: torch.Tensor, steps: int, mask_id: int,
                schedule: LogLinearSchedule = LogLinearSchedule(), generator: Generators = None,
                settings: RGASSettings = RGASSettings(), stats: RGASStats | None = None,
                order: UnmaskingOrder = RANDOM, latent: Latent | None = None) -> torch.Tensor:
    """RGAS from z to t = 1e-5, then noise removal with ``denoise`` (the EMA student); every step, tilted or
    re-ranked, reveals its positions in ``order``; a latent-conditioned student gets its ξ (``latent``), the
    discriminator never does."""
    stats = stats if stats is not None else RGASStats()
    strengths = tilt_strengths(steps, settings)

    def sigma(t: float) -> torch.Tensor:
        return schedule.sigma(torch.full((z.shape[0],), t, device=z.device))

    def step(z_t: torch.Tensor, probs: torch.Tensor, i: int, t: float, s: float) -> torch.Tensor:
        return ancestral_step(z_t, probs, t, s, mask_id, schedule, generator, order=order, last=i == steps - 1)

    def transition(i: int, z_t: torch.Tensor, log_probs: torch.Tensor, t: float, s: float) -> torch.Tensor:
        if i < len(strengths) and strengths[i] != 0:
            tilted = log_probs + strengths[i] * tilting_gradient(discriminator, log_probs, z_t, sigma(t), mask_id)
            stats.discriminator_forward += 1
            stats.discriminator_backward += 1
            return step(z_t, torch.softmax(tilted, -1), i, t, s)
        probs = log_probs.exp()
        if i < len(strengths) or settings.candidates == 1:
            return step(z_t, probs, i, t, s)
        candidates = torch.stack([step(z_t, probs, i, t, s) for _ in range(settings.candidates)])
        stats.discriminator_forward += 1
        return rerank(discriminator, candidates, sigma(s), generator)

    return ancestral_sample(denoise, z, steps, mask_id, schedule, generator, stats=stats, transition=transition,
                            latent=latent)
