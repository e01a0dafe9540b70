"""Maths over a vocabulary split across tensor-parallel ranks, never holding the full (batch, length,
vocabulary) tensor on one rank.

Under tensor parallelism the DiT's output projection is column-parallel: rank r holds the logits of the global
columns [start, start + width) of the padded vocabulary. Log-softmax, sums over the vocabulary (KL, entropy),
picking a token's value and categorical draws then need a reduction over the tensor-parallel group. Every
function takes this rank's ``VocabShard``; ``None`` means the whole vocabulary is here, and the function is the
plain PyTorch operation (the single-device models pass None, so there is one code path for both).

Gradients: a sum over the vocabulary is all-reduced forward and passed through unchanged backward (megatron's
``reduce_from_tensor_model_parallel_region``), right when its result is used the same way on every rank (as a
loss is); the log-softmax has its own backward, which needs the sum of the upstream gradient over the whole
vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist



NEG_INF = -1e6  # "zero probability" in log space, finite so that products with zero stay zero


@dataclass(frozen=True)
class VocabShard:
    """This rank's columns [start, start + width) of a vocabulary-parallel tensor, and its tensor-parallel group."""

    group: object
    start: int
    width: int

    def local(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global column ids -> (local ids clamped into range, whether each id lies on this rank)."""
        inside = (index >= self.start) & (index < self.start + self.width)
        return (index - self.start).clamp(0, self.width - 1), inside


def reduce_sum(x: torch.Tensor, shard: VocabShard | None) -> torch.Tensor:
    """Σ over the tensor-parallel ranks (forward all-reduce, backward identity)."""
    if shard is None:
        return x
    from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

    return reduce_from_tensor_model_parallel_region(x.contiguous(), shard.group)


class _LogSoftmax(torch.autograd.Function):
    """log p = ℓ − log Σ_all exp ℓ; backward ∂ℓ_i = g_i − p_i Σ_all g (one all-reduce each way)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, group) -> torch.Tensor:
        top = logits.amax(-1, keepdim=True)
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        sum_exp = (logits - top).exp().sum(-1, keepdim=True)
        dist.all_reduce(sum_exp, group=group)
        out = logits - top - sum_exp.log()
        ctx.save_for_backward(out)
        ctx.group = group
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        total = grad.sum(-1, keepdim=True)
        dist.all_reduce(total, group=ctx.group)
        return grad - out.exp() * total, None


def log_softmax(logits: torch.Tensor, shard: VocabShard | None) -> torch.Tensor:
    if shard is None:
        return torch.log_softmax(logits, dim=-1)
    return _LogSoftmax.apply(logits.contiguous(), shard.group)


def vocab_sum(x: torch.Tensor, shard: VocabShard | None) -> torch.Tensor:
    """Σ over the last (vocabulary) dimension."""
    return reduce_sum(x.sum(-1), shard)


def take(values: torch.Tensor, index: torch.Tensor, shard: VocabShard | None) -> torch.Tensor:
    """values[..., index] for global ids ``index`` (shape values.shape[:-1]), with grad."""
    if shard is None:
        return values.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    local, inside = shard.local(index)
    picked = values.gather(-1, local.unsqueeze(-1)).squeeze(-1)
    return reduce_sum(torch.where(inside, picked, torch.zeros_like(picked)), shard)


def one_hot_log(index: torch.Tensor, like: torch.Tensor, shard: VocabShard | None) -> torch.Tensor:
    """log of the one-hot rows of ``index``: 0 at the token's column, NEG_INF elsewhere (shaped like ``like``)."""
    out = torch.full_like(like, NEG_INF)
    if shard is None:
        return out.scatter_(-1, index.unsqueeze(-1), 0.0)
    local, inside = shard.local(index)
    return out.scatter_(-1, local.unsqueeze(-1), torch.where(inside, 0.0, NEG_INF).unsqueeze(-1).to(out.dtype))


def add_to_column(x: torch.Tensor, column: int, value: float, shard: VocabShard | None) -> torch.Tensor:
    """x with ``value`` added to the global column ``column`` (in place; a no-op on the ranks without it)."""
    if shard is None:
        x[..., column] += value
    elif shard.start <= column < shard.start + shard.width:
        x[..., column - shard.start] += value
    return x


def columns_below(width: int, shard: VocabShard | None) -> slice:
    """The local columns whose global id is below ``width`` (all of them for the whole vocabulary, [:width])."""
    if shard is None:
        return slice(0, width)
    return slice(0, max(0, min(shard.width, width - shard.start)))


def race_local(q: torch.Tensor, width: int, generator: torch.Generator | None,
               shard: VocabShard | None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's leg of a categorical draw from the unnormalised q over the global columns v < width: the best
    q_v / E_v of its columns and that column's global id, E ~ Exp(1) in float64. Every rank draws the same
    (n, width) noise from its replica of the generator, so the draw is the single-device one exactly."""
    device = generator.device if generator is not None else q.device  # a CPU generator may drive GPU sampling
    noise = torch.empty((*q.shape[:-1], width), dtype=torch.float64, device=device).exponential_(generator=generator)
    noise = noise.to(q.device)
    if shard is None:
        return (q[..., :width].double() / noise).max(dim=-1)
    columns = columns_below(width, shard)
    n = columns.stop - columns.start
    if n == 0:  # all of this rank's columns are [MASK] or padding: it never wins (scores are >= 0)
        return (torch.full(q.shape[:-1], -1.0, dtype=torch.float64, device=q.device),
                torch.zeros(q.shape[:-1], dtype=torch.long, device=q.device))
    best, where = (q[..., columns].double() / noise[..., shard.start: shard.start + n]).max(dim=-1)
    return best, where + shard.start


def race_winners(legs: list[tuple[torch.Tensor, torch.Tensor]], shard: VocabShard | None) -> list[torch.Tensor]:
    """The drawn ids of several races from their local legs, with one exchange over the group for all of them
    (the first rank with the best score wins: the lowest global column, as a single-device argmax)."""
    if shard is None:
        return [where for _, where in legs]
    sizes = [best.numel() for best, _ in legs]
    best, where = (torch.cat([leg[i].reshape(-1) for leg in legs]) for i in (0, 1))
    ranks = dist.get_world_size(shard.group)
    bests, wheres = [torch.empty_like(best) for _ in range(ranks)], [torch.empty_like(where) for _ in range(ranks)]
    dist.all_gather(bests, best, group=shard.group)
    dist.all_gather(wheres, where, group=shard.group)
    winner = torch.stack(bests).argmax(dim=0)
    ids = torch.stack(wheres).gather(0, winner.unsqueeze(0)).squeeze(0)
    return [piece.reshape(leg[0].shape) for piece, leg in zip(ids.split(sizes), legs)]
