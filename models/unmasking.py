"""Which masked positions a sampling step reveals (spec §11): MDLM's random order and the alternatives.

MDLM reveals each masked position independently with probability p = (α_s − α_t)/(1 − α_t) and fills the
positions revealed together with independent draws from x_θ; two neighbours revealed in one step cannot agree
except by sharpening. The other orders reveal a deterministic count k = ⌊m·p + ½⌋ of the m positions still
masked (the last step reveals the rest), chosen by:
- ``dispersed:D``: random priority, a chosen position blocking the still-masked positions of its masked run
  within distance < D (in a first-order chain two letters with a revealed letter between them are independent);
  when too few unblocked positions remain, the blocked ones follow in priority order. D = 1 is random priority
  with the deterministic count;
- ``confidence``, ``margin``, ``entropy``: the k positions where x_θ is surest: by its largest probability, by the
  margin of its top two, or by its lowest entropy (as several dLLM codebases do).
The tokens are drawn from x_θ as before, and N steps are N denoiser calls in every order. For ``random`` and
``dispersed`` the revealed set does not depend on the model; for the confidence family it does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from models.vocab_parallel import VocabShard, columns_below, vocab_sum

ORDERS = ("random", "dispersed", "confidence", "margin", "entropy")
DEFAULT_DISTANCE = 3


@dataclass(frozen=True)
class UnmaskingOrder:
    """An order and, for ``dispersed``, its exclusion distance; spelled ``NAME`` or ``dispersed:D``."""

    name: str = "random"
    distance: int = DEFAULT_DISTANCE

    @classmethod
    def parse(cls, spec: str) -> "UnmaskingOrder":
        """``random``, ``dispersed`` (D = 3), ``dispersed:D``, ``confidence``, ``margin`` or ``entropy``; a
        ValueError names what is wrong."""
        name, _, distance = str(spec).partition(":")
        if name not in ORDERS:
            raise ValueError(f"unmasking order {spec!r}: unknown order {name!r}; choose one of "
                             f"{', '.join(ORDERS)} (dispersed:D sets the exclusion distance D)")
        if not distance:
            return cls(name)
        if name != "dispersed":
            raise ValueError(f"unmasking order {spec!r}: only dispersed takes a distance (dispersed:D)")
        if not distance.isdigit() or int(distance) < 1:
            raise ValueError(f"unmasking order {spec!r}: the exclusion distance must be an integer >= 1")
        return cls(name, int(distance))

    def __str__(self) -> str:
        return f"dispersed:{self.distance}" if self.name == "dispersed" else self.name

    def check_length(self, seq_len: int) -> "UnmaskingOrder":
        """Refuse an exclusion distance longer than the sequence (it would block every other position)."""
        if self.name == "dispersed" and self.distance > seq_len:
            raise ValueError(f"unmasking order {self}: exclusion distance {self.distance} exceeds the sequence "
                             f"length {seq_len}")
        return self


RANDOM = UnmaskingOrder()


def reveal_count(masked: torch.Tensor, p: torch.Tensor, last: bool) -> torch.Tensor:
    """k = ⌊m·p + ½⌋ per row (m its masked positions, p its unmasking probability: a scalar or (B,)); every
    masked position at the last step."""
    m = masked.sum(1)
    if last:
        return m
    return torch.floor(m.double() * p.double().reshape(-1) + 0.5).long().clamp(max=m)


def top_k_where(score: torch.Tensor, allowed: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: per row the k[b] allowed positions of highest score (ties: the lower position first)."""
    key = torch.where(allowed, score.double(), torch.tensor(-torch.inf, dtype=torch.float64, device=score.device))
    ranks = key.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    return allowed & (ranks < k[:, None])


def _shifted(x: torch.Tensor, offset: int, fill) -> torch.Tensor:
    """y[:, i] = x[:, i + offset], ``fill`` outside the row."""
    out = torch.full_like(x, fill)
    if offset > 0:
        out[:, :-offset] = x[:, offset:]
    else:
        out[:, -offset:] = x[:, :offset]
    return out


def dispersed_choice(masked: torch.Tensor, priority: torch.Tensor, k: torch.Tensor, distance: int) -> torch.Tensor:
    """Per row the first k[b] positions that greedy selection in ``priority`` order takes, a taken position
    blocking the masked positions of its run within distance < ``distance``; then, if too few are free, the
    blocked ones by priority.

    The greedy set is built in parallel: a position whose priority beats every undecided neighbour is taken by
    the sequential greedy too, so taking all such local maxima and dropping their neighbours, round after round,
    gives the same set (Luby-style); its first k members in priority order are the sequential greedy's first k."""
    rank = priority.argsort(1).argsort(1)  # distinct integer priorities: no ties between neighbours
    run = (~masked).long().cumsum(1)  # masked positions of one run share this value
    neighbours = [(_shifted(masked, o, False) & (_shifted(run, o, -1) == run)) for j in range(1, distance)
                  for o in (j, -j)]
    offsets = [o for j in range(1, distance) for o in (j, -j)]
    taken, undecided = torch.zeros_like(masked), masked.clone()
    while bool(undecided.any()):
        live = torch.where(undecided, rank, -1)
        best = undecided.clone()
        for o, near in zip(offsets, neighbours):
            best &= ~(near & (_shifted(live, o, -1) > live))
        taken |= best
        blocked = torch.zeros_like(masked)
        for o, near in zip(offsets, neighbours):
            blocked |= near & _shifted(best, o, False)
        undecided &= ~best & ~blocked
    return top_k_where(rank + taken.long() * masked.shape[1], masked, k)


def _top_two(probs: torch.Tensor, width: int, shard: VocabShard | None) -> torch.Tensor:
    """(..., 2): the two largest probabilities over the columns below ``width`` (across the tensor-parallel group)."""
    local = probs[..., columns_below(width, shard)].float()
    if local.shape[-1] < 2:
        local = torch.cat([local, torch.zeros(*local.shape[:-1], 2 - local.shape[-1], device=local.device)], -1)
    top = local.topk(2, dim=-1).values
    if shard is None:
        return top
    parts = [torch.empty_like(top) for _ in range(dist.get_world_size(shard.group))]
    dist.all_gather(parts, top.contiguous(), group=shard.group)
    return torch.cat(parts, -1).topk(2, dim=-1).values


def confidence_score(name: str, probs: torch.Tensor, width: int, shard: VocabShard | None = None) -> torch.Tensor:
    """(B, L): how sure x_θ is at each position: its largest probability, its top-two margin or its −entropy."""
    if name == "entropy":
        p = probs[..., columns_below(width, shard)].double()
        return vocab_sum(p * p.clamp(min=1e-300).log(), shard)
    top = _top_two(probs, width, shard)
    return top[..., 0] if name == "confidence" else top[..., 0] - top[..., 1]


def reveal(order: UnmaskingOrder, z: torch.Tensor, probs: Callable[[], torch.Tensor], p: torch.Tensor, last: bool,
           mask_id: int, uniform, shard: VocabShard | None = None) -> torch.Tensor:
    """(B, L) bool: the masked positions of z that this step reveals. ``probs()`` gives x_θ(z) (B, L, V + 1),
    asked for by the confidence family only; ``p`` the unmasking probability (α_s − α_t)/(1 − α_t), a scalar or (B,);
    ``uniform(shape)`` draws U(0, 1) from the rows' generators (the random order's coins, dispersed's
    priorities)."""
    masked = z == mask_id
    if order.name == "random":
        return masked & (uniform(z.shape) < (p.reshape(-1, 1) if p.dim() else p))
    k = reveal_count(masked, p, last)
    if order.name == "dispersed":
        return dispersed_choice(masked, uniform(z.shape), k, order.distance)
    return top_k_where(confidence_score(order.name, probs(), mask_id, shard), masked, k)
