"""DiDi-Instruct maths (spec §2–§5), one named function per equation; pure PyTorch, no engines.

Conventions: rows are rollout rows (B' = B·G), consecutive groups of G rows form a group; masks are bool
(B', L) tensors marking the positions an average runs over; log-probabilities are SUBS-processed (B', L, V + 1).
Random draws take one generator per row, so that a row's draws depend only on its global key. Under tensor
parallelism log-probabilities are this rank's vocabulary columns and the functions that reduce over the
vocabulary take its ``shard`` (``models.vocab_parallel``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from models.diffusion import LogLinearSchedule, mask_tokens
from models.sampler import Latent, draw_uniform, sample_where
from models.unmasking import RANDOM, UnmaskingOrder, reveal
from models.vocab_parallel import VocabShard, take, vocab_sum

TAU_CLAMP = (0.02, 0.98)
OMEGA_CLAMP = (0.1, 10.0)


def sample_tau(generators: list[torch.Generator], a: float = 1.0, b: float = 1.0) -> torch.Tensor:
    """τ_i ~ Beta(a, b) per row, clamped to [0.02, 0.98] (inverse-CDF free: Beta as a ratio of Gammas)."""
    taus = []
    for g in generators:
        x = torch._standard_gamma(torch.tensor([a, b], dtype=torch.float64, device=g.device), generator=g)
        taus.append(x[0] / x.sum())
    return torch.stack(taus).float().clamp(*TAU_CLAMP)


def omega(tau: torch.Tensor, schedule: LogLinearSchedule) -> torch.Tensor:
    """ω(τ) = −α'(τ)/(1 − α(τ)) clamped to [0.1, 10]; analytic (for the log-linear schedule, min(1/τ, 10))."""
    return schedule.loss_weight(tau).clamp(*OMEGA_CLAMP)


def beta_density(tau: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """π(τ) of Beta(a, b), for the optional importance weight ω/π."""
    log_norm = torch.lgamma(torch.tensor(a + b)) - torch.lgamma(torch.tensor(a)) - torch.lgamma(torch.tensor(b))
    return torch.exp(log_norm + (a - 1) * torch.log(tau) + (b - 1) * torch.log1p(-tau))


@dataclass
class Rollout:
    x: torch.Tensor  # (B', L) final student sample
    states: list[torch.Tensor]  # (B', L) state before each step: z_1 (all [MASK]) and the intermediate ones
    log_probs: list[torch.Tensor]  # (B', L, V + 1) student SUBS log-probs at each state, with grad
    masked: list[torch.Tensor]  # positions masked before each step (the KL and entropy run over them)
    log_prob: torch.Tensor  # (B',) log P_ν(trajectory), with grad


def rollout_grid(steps: int, t0: float = 1e-3) -> list[float]:
    """The shared times 1 > t_1 > … > t_N = t0 of an N-step rollout (N ≥ 3): uniform, as the plain sampler's."""
    return [1 - k * (1 - t0) / steps for k in range(steps + 1)]


def snap_tau(tau: torch.Tensor, steps: int, t0: float = 1e-3) -> torch.Tensor:
    """For an N-step rollout (N ≥ 3) each row's τ moved to the nearest intermediate time of the grid, so that the
    discriminator's time is one of the rollout's; τ itself for the paper's rollouts (N ≤ 2)."""
    if steps <= 2:
        return tau
    inner = torch.tensor(rollout_grid(steps, t0)[1:-1], dtype=tau.dtype, device=tau.device)
    return inner[(tau[:, None] - inner[None, :]).abs().argmin(1)]


def rollout_times(tau: torch.Tensor, steps: int = 2, t0: float = 1e-3) -> torch.Tensor:
    """Each row's rollout times (B', N + 1) from 1 to t0: N = 1 is the ablation's one step 1 → t0, N = 2 the
    paper's 1 → τ → t0, N ≥ 3 the shared uniform grid (``rollout_grid``)."""
    one = torch.ones_like(tau)
    if steps == 1:
        return torch.stack([one, t0 * one], 1)
    if steps == 2:
        return torch.stack([one, tau, t0 * one], 1)
    return torch.tensor(rollout_grid(steps, t0), dtype=tau.dtype, device=tau.device).expand(tau.shape[0], -1)


def revealed(order: UnmaskingOrder, z: torch.Tensor, log_p: torch.Tensor, alpha_t: torch.Tensor,
             alpha_s: torch.Tensor, last: bool, mask_id: int, generators: list[torch.Generator],
             shard: VocabShard | None) -> torch.Tensor:
    """The positions one rollout step t -> s reveals (``models.unmasking.reveal``), each row with its own times
    and generator: shared by the sampled rollout and the teacher-forced trajectories."""
    return reveal(order, z, lambda: log_p.detach().exp(), (alpha_s - alpha_t) / (1 - alpha_t), last, mask_id,
                  lambda shape: draw_uniform(shape, generators, z.device), shard)


def conditioned(student: Callable[..., torch.Tensor], latent: Latent | None) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """(k, z) -> the student's log-probabilities at step k: ``student(z)``, or ``student(z, ξ_k)`` for a
    latent-conditioned student (our extension, spec §11)."""
    if latent is None:
        return lambda k, z: student(z)
    return lambda k, z: student(z, latent(k))


def student_rollout(student: Callable[..., torch.Tensor], times: torch.Tensor, seq_len: int,
                    mask_id: int, schedule: LogLinearSchedule, generators: list[torch.Generator],
                    shard: VocabShard | None = None, order: UnmaskingOrder = RANDOM,
                    latent: Latent | None = None) -> Rollout:
    """Ancestral steps through each row's ``times`` (B', N + 1) (``rollout_times``) with one student forward per
    step, revealing positions in ``order``; samples come from the detached probabilities.

    ``student(z)`` (``student(z, ξ)`` with a ``latent``) returns SUBS log-probabilities with grad. log P sums, per row, the log-probabilities of the
    newly unmasked positions only (a position that stays masked has a ν-independent probability). Under a
    confidence order which positions are revealed depends on ν too; log P ignores that dependence (the revealed
    set is treated as given), so the policy gradient is biased there. With a latent, log P is log P(x | ξ, order).
    """
    rows, device = times.shape[0], times.device
    forward = conditioned(student, latent)
    alphas = [schedule.alpha(times[:, k]) for k in range(times.shape[1])]
    z = torch.full((rows, seq_len), mask_id, dtype=torch.long, device=device)
    states, log_probs, masked, log_prob = [], [], [], torch.zeros(rows, device=device)
    for k, (alpha_t, alpha_s) in enumerate(zip(alphas, alphas[1:])):
        log_p = forward(k, z)
        unmask = revealed(order, z, log_p, alpha_t, alpha_s, k == len(alphas) - 2, mask_id, generators, shard)
        z_next = torch.where(unmask, sample_where(log_p, unmask, generators, mask_id, shard, torch.exp), z)
        log_prob = log_prob + (take(log_p, z_next, shard) * unmask).sum(1)
        states.append(z)
        log_probs.append(log_p)
        masked.append(z == mask_id)
        z = z_next
    return Rollout(z, states, log_probs, masked, log_prob)


@torch.no_grad()
def teacher_forced_log_prob(student: Callable[..., torch.Tensor], x: torch.Tensor, times: torch.Tensor,
                            mask_id: int, schedule: LogLinearSchedule, generators: list[torch.Generator],
                            shard: VocabShard | None = None, order: UnmaskingOrder = RANDOM,
                            latent: Latent | None = None) -> torch.Tensor:
    """log P_ν(x | τ) (B',) along a fresh unmasking trajectory τ of the rollout's ``times`` and ``order`` whose
    revealed tokens are x's own (teacher forcing: no token is drawn); with a ``latent``, log P_ν(x | τ, ξ) for a
    fresh ξ, so that ``marginal_log_prob`` averages over ξ too. A position x leaves masked is never
    revealed (in the random order its staying masked has a ν-independent probability), and every other one is
    revealed by the last step (the random order's rare leftovers, about t0/τ of them, are revealed there)."""
    z = torch.full_like(x, mask_id)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    alphas = [schedule.alpha(times[:, k]) for k in range(times.shape[1])]
    forward = conditioned(student, latent)
    for k, (alpha_t, alpha_s) in enumerate(zip(alphas, alphas[1:])):
        log_p = forward(k, z)
        last = k == len(alphas) - 2
        unmask = revealed(order, z, log_p, alpha_t, alpha_s, last, mask_id, generators, shard)
        unmask = (unmask | (last & (z == mask_id))) & (x != mask_id)
        total += (take(log_p, x, shard).double() * unmask).sum(1)
        z = torch.where(unmask, x, z)
    return total


def group_mixture(log_p: torch.Tensor, group_size: int) -> torch.Tensor:
    """log of the mean over each group's G rows of their probabilities, for every row of the group: at the
    all-[MASK] state, where every row's input is the same and only its ξ differs, the latent student's ξ-averaged
    prediction log (1/G) Σ_j q(· | z_1, ξ_j) (our extension, spec §11)."""
    rows = log_p.shape[0]
    grouped = log_p.view(rows // group_size, group_size, *log_p.shape[1:])
    mixture = torch.logsumexp(grouped, 1, keepdim=True) - math.log(group_size)
    return mixture.expand_as(grouped).reshape(log_p.shape)


def teacher_joint_sample(teacher: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, where: torch.Tensor,
                         substeps: int, mask_id: int, generators: list[torch.Generator],
                         shard: VocabShard | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A joint draw y of the positions ``where`` marks (B, L) from ``z``, filled by the teacher in ``substeps``
    steps (each position's sub-step uniform, the teacher re-run after each), and log T(y) (B,): the teacher's
    many-step answer to the one step a few-step student takes there. ``substeps`` is fixed, so every rank makes
    the same teacher calls. Returns (z with the positions filled, log T)."""
    chunk = (draw_uniform(z.shape, generators, z.device) * substeps).long().clamp(max=substeps - 1)
    log_t = torch.zeros(z.shape[0], device=z.device)
    for m in range(substeps):
        log_p = teacher(z)
        now = where & (chunk == m)
        z = torch.where(now, sample_where(log_p, now, generators, mask_id, shard, torch.exp), z)
        log_t = log_t + torch.where(now, take(log_p, z, shard), 0.0).sum(1)
    return z, log_t


def mixture_log_likelihood(log_p: torch.Tensor, y: torch.Tensor, where: torch.Tensor,
                           shard: VocabShard | None = None) -> torch.Tensor:
    """log (1/M) Σ_j Π_{i ∈ where_r} q(y_{r,i} | ξ_j) (B,) for every row r of ``y``, from the predictions ``log_p``
    of M draws ξ_j: (M, L, V + 1) at one input every row shares, or (B, M, L, V + 1) at each row's own (our
    extension, spec §11: states where ξ's posterior is its prior). An importance-weighted bound on
    log E_ξ q(y | ξ) that tightens as M grows; unlike a per-position KL it rewards ξ for making the tokens of one
    step agree. With M = 1 (no ξ) it is the product likelihood."""
    rows, draws = y.shape[0], log_p.shape[-3]
    per_row = log_p if log_p.dim() == 4 else log_p.unsqueeze(0).expand(rows, -1, -1, -1)
    terms = torch.stack([(take(per_row[:, j], y, shard) * where).sum(-1) for j in range(draws)])
    return torch.logsumexp(terms, 0) - math.log(draws)


def marginal_log_prob(trajectory_log_probs: torch.Tensor) -> torch.Tensor:
    """log q̂_ν(x) = log (1/K) Σ_k P_ν(x | τ_k) from (K, B') teacher-forced trajectory log-probabilities: the
    student's marginal likelihood of its own sample, which ``log P(x | the trajectory that drew it)`` is not
    (that one also counts the information the trajectory holds about x). Biased low by Jensen, less so as K grows."""
    return torch.logsumexp(trajectory_log_probs, 0) - math.log(trajectory_log_probs.shape[0])


def coupled_corruption(x_fake: torch.Tensor, x_real: torch.Tensor, tau: torch.Tensor, mask_id: int,
                       schedule: LogLinearSchedule, generators: list[torch.Generator]):
    """Mask fake and real rows at the same level 1 − α(τ_i) per row (fresh masks for each side)."""
    level = 1 - schedule.alpha(tau)
    shape, device = x_fake.shape, x_fake.device
    z_fake = mask_tokens(x_fake, level, mask_id, u=draw_uniform(shape, generators, device))
    z_real = mask_tokens(x_real, level, mask_id, u=draw_uniform(shape, generators, device))
    return z_fake, z_real


def masked_mean(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over the mask / count; count defaults to the mask's size. Data-parallel callers pass the global
    count divided by the number of ranks, so that averaging the ranks' values (and gradients) gives the
    mean over every rank's positions."""
    return (values * mask).sum() / (mask.sum() if count is None else count).clamp(min=1)


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor, mask_real: torch.Tensor,
                       mask_fake: torch.Tensor, smoothing: float = 0.1, count_real: torch.Tensor | None = None,
                       count_fake: torch.Tensor | None = None):
    """½[BCE(d_real, 1 − s) over masked real positions + BCE(d_fake, s) over masked fake positions];
    returns (loss, accuracy) with accuracy = share of masked positions on the right side of 0."""
    bce_real = F.binary_cross_entropy_with_logits(d_real.float(), torch.full_like(d_real.float(), 1 - smoothing),
                                                  reduction="none")
    bce_fake = F.binary_cross_entropy_with_logits(d_fake.float(), torch.full_like(d_fake.float(), smoothing),
                                                  reduction="none")
    loss = 0.5 * (masked_mean(bce_real, mask_real, count_real) + masked_mean(bce_fake, mask_fake, count_fake))
    count_real = mask_real.sum() if count_real is None else count_real
    count_fake = mask_fake.sum() if count_fake is None else count_fake
    correct = ((d_real > 0) & mask_real).sum() + ((d_fake < 0) & mask_fake).sum()
    accuracy = correct.float() / (count_real + count_fake).clamp(min=1)
    return loss, accuracy


def row_rewards(d_fake: torch.Tensor, mask_fake: torch.Tensor, clip: float = 8.0) -> torch.Tensor:
    """r_i = mean over the row's masked positions of clip(logit σ(d), −8, 8) (= clip(d); fp32, no grad)."""
    o = d_fake.detach().float().clamp(-clip, clip)
    return (o * mask_fake).sum(1) / (mask_fake.sum(1) + 1e-8)


def group_normalised_advantages(rewards: torch.Tensor, group_size: int, clip: float = 3.0) -> torch.Tensor:
    """Â_i = clip((r_i − mean_g r)/(std_g r + 1e-8), ±3) over consecutive groups of G rows (unbiased std)."""
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rows do not form groups of G = {group_size} (G >= 2)")
    r = rewards.view(-1, group_size)
    a = (r - r.mean(1, keepdim=True)) / (r.std(1, unbiased=True, keepdim=True) + 1e-8)
    return a.clamp(-clip, clip).view(-1)


def forward_kl(teacher_log_p: torch.Tensor, student_log_p: torch.Tensor, mask: torch.Tensor,
               count: torch.Tensor | None = None, shard: VocabShard | None = None) -> torch.Tensor:
    """Mean over masked positions of KL(T ‖ p) = Σ_v T_v (log T_v − log p_v); teacher without grad."""
    t = teacher_log_p.detach()
    return masked_mean(vocab_sum(t.exp() * (t - student_log_p), shard), mask, count)


def jeffreys(teacher_log_p: torch.Tensor, student_log_p: torch.Tensor, mask: torch.Tensor,
             beta: float = 1.0, count: torch.Tensor | None = None, shard: VocabShard | None = None) -> torch.Tensor:
    """KL(T ‖ p) + β·KL(p ‖ T)."""
    reverse = vocab_sum(student_log_p.exp() * (student_log_p - teacher_log_p.detach()), shard)
    return forward_kl(teacher_log_p, student_log_p, mask, count, shard) + beta * masked_mean(reverse, mask, count)


def entropy(log_p: torch.Tensor, mask: torch.Tensor, count: torch.Tensor | None = None,
            shard: VocabShard | None = None) -> torch.Tensor:
    """Mean over masked positions of H(p) = −Σ_v p_v log p_v."""
    return masked_mean(-vocab_sum(log_p.exp() * log_p, shard), mask, count)


def student_loss(weight: torch.Tensor, advantages: torch.Tensor, log_prob: torch.Tensor,
                 kls: Sequence[torch.Tensor], entropies: Sequence[torch.Tensor], cs: Sequence[float] = (0.01, 0.01),
                 lambda_kl: float = 1.0, lambda_h: float = 5e-4, match: torch.Tensor | None = None,
                 lambda_match: float = 0.0) -> torch.Tensor:
    """L_S = −mean(ω·Â·log P) + λ_KL Σ_k c_k KL_k − λ_H·mean_k H_k over the rollout's steps (the paper's two:
    c1 KL1 + c2 KL2 and ½(H1 + H2)); ω and Â are detached. With ``match`` (B',), the rows' mixture
    log-likelihoods of the teacher's joint fill (``mixture_log_likelihood``; our extension), − λ_match·mean(match)."""
    pg = -(weight.detach() * advantages.detach() * log_prob).mean()
    kl = sum(c * k for c, k in zip(cs, kls, strict=True))
    loss = pg + lambda_kl * kl - lambda_h * sum(entropies) / len(entropies)
    return loss if match is None else loss - lambda_match * match.mean()
