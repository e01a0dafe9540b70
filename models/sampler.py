"""The MDLM ancestral sampler with float64 categorical draws, caching of unchanged rows and an honest NFE count.

For s < t, a masked position becomes token v with probability (α_s − α_t)/(1 − α_t) · x_θ(z_t)[v] and stays
masked with probability (1 − α_s)/(1 − α_t); unmasked positions are copied. The network is not
time-conditioned, so a row that a step leaves unchanged keeps its previous x_θ: only the rows that changed are
recomputed, and NFE counts the denoiser evaluations each row actually got in the N-step loop (with many
steps and L tokens, at most about L per row). A final noise-removal pass (counted apart) fills any position
still masked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from models.diffusion import NEG_INF, LogLinearSchedule
from models.unmasking import RANDOM, UnmaskingOrder, reveal
from models.vocab_parallel import VocabShard, add_to_column, race_local, race_winners

Denoiser = Callable[..., torch.Tensor]  # z (B, L) [, ξ (B, d)] -> SUBS log-probabilities (B, L, V + 1)
Latent = Callable[[int], torch.Tensor]  # step i -> each row's ξ (B, d) at that step (``models.latent``)


@dataclass
class SamplerStats:
    row_nfe: torch.Tensor | None = None  # (B,) denoiser evaluations of each row inside the N-step loop
    noise_removal_calls: int = 0
    # (B, L) the step that revealed each position: -1 for what the start gave, N for the noise removal (the sample's
    # unmasking trajectory, so that its likelihood can be recomputed along it)
    reveal_step: torch.Tensor | None = None

    @property
    def nfe(self) -> float:
        """Denoiser evaluations per sample, averaged over the rows (0 before any step)."""
        return 0.0 if self.row_nfe is None else self.row_nfe.double().mean().item()


Generators = torch.Generator | list[torch.Generator] | None  # one for the batch, or one per row


def sample_categorical(probs: torch.Tensor, generator: Generators = None, width: int | None = None,
                       shard: VocabShard | None = None) -> torch.Tensor:
    """One draw per row of (unnormalised) probabilities over the columns below ``width`` (default: all), in
    float64: argmax(q / E) with E ~ Exp(1). A list of generators gives each leading row its own stream (draws
    keyed by the global row); ``shard``: the columns are this rank's slice of a vocabulary-parallel tensor."""
    width = probs.shape[-1] if width is None else width
    if isinstance(generator, list):
        legs = [race_local(row.detach(), width, g, shard) for row, g in zip(probs, generator, strict=True)]
        return torch.stack(race_winners(legs, shard))
    return race_winners([race_local(probs.detach(), width, generator, shard)], shard)[0]


def sample_where(probs: torch.Tensor, where: torch.Tensor, generator: Generators = None, width: int | None = None,
                 shard: VocabShard | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Draws (B, L) among the columns below ``width`` at the positions ``where`` marks only (0 elsewhere): the
    float64 race costs V draws per position, so positions that keep their token are skipped. ``transform`` maps
    the selected (n, W) probabilities first; with a list of generators each row draws from its own (and the
    rows' races cross the tensor-parallel group in one exchange)."""
    out = torch.zeros(where.shape, dtype=torch.long, device=where.device)
    transform = transform or (lambda p: p)
    width = probs.shape[-1] if width is None else width
    if isinstance(generator, list):
        rows = [(b, where[b].nonzero(as_tuple=True)[0]) for b in range(len(generator))]
        rows = [(b, index) for b, index in rows if index.numel()]
        legs = [race_local(transform(probs[b, index]).detach(), width, generator[b], shard) for b, index in rows]
        for (b, index), ids in zip(rows, race_winners(legs, shard)):
            out[b, index] = ids
    elif where.any():
        out[where] = sample_categorical(transform(probs[where]), generator, width, shard)
    return out


def draw_uniform(shape: tuple[int, ...], generator: Generators, device, dtype=torch.float32,
                 draw: Callable[..., torch.Tensor] = torch.rand) -> torch.Tensor:
    """U(0, 1) draws (``draw=torch.randn``: N(0, 1)) of ``shape`` (B, ...); with a list of generators, row b
    comes from generator b."""
    if isinstance(generator, list):
        return torch.stack([draw(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]).to(device)
    where = generator.device if generator is not None else device
    return draw(shape, generator=generator, device=where, dtype=dtype).to(device)


def ancestral_step(z: torch.Tensor, x0_probs: torch.Tensor, t: float, s: float, mask_id: int,
                   schedule: LogLinearSchedule, generator: Generators = None,
                   shard: VocabShard | None = None, order: UnmaskingOrder = RANDOM, last: bool = False) -> torch.Tensor:
    """One step t -> s: x0_probs (B, L, V + 1) are x_θ(z_t); returns z_s.

    The (V + 1)-way transition in two draws: which masked positions unmask (``order``: in the random order each
    with probability (α_s − α_t)/(1 − α_t), a float64 uniform; ``last``: the step the other orders reveal every
    position left), and only then their tokens from x_θ, so the float64 race over V runs where a token appears,
    not at every masked position of every step."""
    alpha_t, alpha_s = (schedule.alpha(torch.tensor(v, dtype=torch.float64)) for v in (t, s))
    unmask = reveal(order, z, lambda: x0_probs, (alpha_s - alpha_t) / (1 - alpha_t), last, mask_id,
                    lambda shape: draw_uniform(shape, generator, z.device, torch.float64), shard)
    return torch.where(unmask, sample_where(x0_probs, unmask, generator, mask_id, shard), z)


def time_grid(steps: int, t_end: float = 1e-5) -> list[float]:
    return torch.linspace(1.0, t_end, steps + 1, dtype=torch.float64).tolist()


Transition = Callable[[int, torch.Tensor, torch.Tensor, float, float], torch.Tensor]  # (i, z_t, log x_θ, t, s) -> z_s


@torch.no_grad()
def ancestral_sample(denoise: Denoiser, z: torch.Tensor, steps: int, mask_id: int,
                     schedule: LogLinearSchedule = LogLinearSchedule(), generator: Generators = None,
                     cache: bool = True, stats: SamplerStats | None = None,
                     on_step: Callable[[int, float, torch.Tensor], None] | None = None,
                     transition: Transition | None = None, shard: VocabShard | None = None,
                     order: UnmaskingOrder = RANDOM, latent: Latent | None = None) -> torch.Tensor:
    """Run ``steps`` ancestral steps from z (all [MASK], or a prefix kept unmasked) to t = 1e-5, then remove noise.

    ``order``: which masked positions each step reveals (``models.unmasking``). ``latent``: a latent-conditioned
    denoiser's ξ per step, passed as ``denoise(z, ξ)`` (the noise removal uses the last step's). ``transition`` replaces the plain
    step (RGAS tilts or re-ranks it); the loop, the per-row caching of x_θ, the NFE count and the noise removal
    stay here. ``cache=False`` evaluates every row at every step (under
    ZeRO-3 every rank must make the same calls); ``shard``: ``denoise`` returns this rank's vocabulary slice."""
    stats = stats if stats is not None else SamplerStats()
    stats.row_nfe = torch.zeros(z.shape[0], dtype=torch.long)
    reveal_step = torch.where(z == mask_id, steps, -1)  # on z's device: no host sync per step
    grid = time_grid(steps)
    stale = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
    log_probs = probs = None

    def evaluate(i: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x_θ of all rows, or of ``rows`` only, at step i."""
        z_rows = z if rows is None else z[rows]
        if latent is None:
            return denoise(z_rows)
        xi = latent(i)
        return denoise(z_rows, xi if rows is None else xi[rows])

    for i in range(steps):
        if bool(stale.all()):
            log_probs = evaluate(i).contiguous()
            probs = log_probs.exp() if transition is None else None
        elif bool(stale.any()):
            fresh = evaluate(i, stale)
            log_probs[stale] = fresh
            if probs is not None:
                probs[stale] = fresh.exp()
        stats.row_nfe += stale.cpu()
        if transition is None:
            z_next = ancestral_step(z, probs, grid[i], grid[i + 1], mask_id, schedule, generator, shard, order,
                                    last=i == steps - 1)
        else:
            z_next = transition(i, z, log_probs, grid[i], grid[i + 1])
        changed = z_next != z
        reveal_step[changed] = i
        stale = changed.any(1) if cache else torch.ones_like(stale)
        z = z_next
        if on_step is not None:
            on_step(i, grid[i + 1], z)
    stats.reveal_step = reveal_step.cpu()
    still_masked = z == mask_id
    if still_masked.any():
        probs = add_to_column(evaluate(steps - 1), mask_id, NEG_INF, shard).exp()
        stats.noise_removal_calls += 1
        z = torch.where(still_masked, sample_where(probs, still_masked, generator, mask_id + 1, shard), z)
    return z
