"""Masked-diffusion maths (MDLM): log-linear schedule, masking, SUBS and the continuous-time NELBO."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.vocab_parallel import NEG_INF, VocabShard, add_to_column, log_softmax, one_hot_log, take


@dataclass(frozen=True)
class LogLinearSchedule:
    """α_t = 1 − (1 − ε)t, α'_t = −(1 − ε), σ_t = −log α_t."""

    eps: float = 1e-3

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - (1 - self.eps) * t

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, -(1 - self.eps))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log(self.alpha(t))

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """−α'_t / (1 − α_t), which is exactly 1/t for this schedule."""
        return -self.dalpha(t) / (1 - self.alpha(t))


def mask_tokens(x: torch.Tensor, mask_prob: torch.Tensor, mask_id: int, generator: torch.Generator | None = None,
                u: torch.Tensor | None = None) -> torch.Tensor:
    """z_t: each token independently becomes [MASK] where u < mask_prob; u ~ U(0,1) per token (drawn here
    unless given), mask_prob is (B,)."""
    if u is None:
        device = generator.device if generator is not None else x.device
        u = torch.rand(x.shape, generator=generator, device=device).to(x.device)
    return torch.where(u < mask_prob.view(-1, *([1] * (x.dim() - 1))), mask_id, x)


def subs_log_probs(logits: torch.Tensor, z: torch.Tensor, mask_id: int, shard: VocabShard | None = None) -> torch.Tensor:
    """SUBS: log x_θ(z), (B, L, V + 1) in fp32 (this rank's columns under a vocabulary ``shard``).

    The [MASK] logit gets −1e6 before the log-softmax (zero masking probability); every unmasked position
    carries its token over (log-probability 0 there, −1e6 elsewhere).
    """
    log_probs = log_softmax(add_to_column(logits.float().clone(), mask_id, NEG_INF, shard), shard)
    carry = one_hot_log(z, log_probs, shard)
    return torch.where((z != mask_id).unsqueeze(-1), carry, log_probs)


def sample_times(batch: int, t_min: float = 1e-3, antithetic: bool = True,
                 generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """t ~ U[t_min, 1] per row; antithetic: stratified over the batch, (u/B + i/B) mod 1."""
    u = torch.rand(batch, generator=generator, device=device)
    if antithetic:
        u = (u / batch + torch.arange(batch, device=device) / batch) % 1
    return (1 - t_min) * u + t_min


def nelbo_per_token(log_probs: torch.Tensor, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
                    mask_id: int, schedule: LogLinearSchedule, shard: VocabShard | None = None) -> torch.Tensor:
    """(B, L) terms of the continuous-time NELBO: −α'_t/(1 − α_t) · log x_θ(z_t)[x] at masked positions, 0 elsewhere."""
    token_log_prob = take(log_probs, x, shard)
    weight = schedule.loss_weight(t).view(-1, 1)
    return torch.where(z == mask_id, -weight * token_log_prob, torch.zeros_like(token_log_prob))
