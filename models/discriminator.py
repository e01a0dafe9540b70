"""The DiDi-Instruct discriminator (spec §3): the teacher's trunk plus a spectral-norm per-token head.

Every trunk parameter is frozen except the last ``unfreeze_blocks`` transformer blocks; the teacher's output
layer is replaced by ``SN-Linear(d, d) → SiLU → SN-Linear(d, 1)``, one logit per token (positive = real).
σ routing (spec §9): the frozen blocks get σ = 0, as they were trained, and the trainable blocks get σ_τ, so
the head sees it through them (``sigma_to="trainable"``); ``"all"`` gives σ_τ to every block, as the
reference code does.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.dit import DiT, rotary_cos_sin, run_block


class SpectralNormLinear(nn.Module):
    """A Linear whose weight is divided by its largest singular value, estimated by one power iteration per
    training forward (as ``torch.nn.utils.spectral_norm``). The weight is read inside ``forward``, so ZeRO-3
    gathers it like any other parameter; u and v are buffers, saved with the weights."""

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-12):
        super().__init__()
        linear = nn.Linear(in_features, out_features)
        self.weight, self.bias, self.eps = linear.weight, linear.bias, eps
        g = torch.Generator().manual_seed(out_features * 7919 + in_features)
        u, v = (torch.randn(n, generator=g, device="cpu") for n in (out_features, in_features))
        self.register_buffer("u", F.normalize(u, dim=0, eps=eps).to(self.weight.device))
        self.register_buffer("v", F.normalize(v, dim=0, eps=eps).to(self.weight.device))

    def sigma(self) -> torch.Tensor:
        w = self.weight
        if self.training:
            with torch.no_grad():
                self.v.copy_(F.normalize(w.t().float() @ self.u.float(), dim=0, eps=self.eps))
                self.u.copy_(F.normalize(w.float() @ self.v.float(), dim=0, eps=self.eps))
        wv = w @ self.v.to(w.dtype)  # bf16 under autocast, also on CPU, where torch.dot is not autocast
        return torch.dot(self.u.to(wv.dtype), wv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight / self.sigma(), self.bias)


class Discriminator(nn.Module):
    """``forward(x, sigma)`` → (B, L) logits; x is (B, L) token ids or (B, L, W) float logits (RGAS)."""

    def __init__(self, teacher: DiT, unfreeze_blocks: int = 4, sigma_to: Literal["trainable", "all"] = "trainable"):
        super().__init__()
        depth = len(teacher.blocks)
        if not 0 <= unfreeze_blocks <= depth:
            raise ValueError(f"unfreeze_blocks = {unfreeze_blocks} must be between 0 and the depth {depth}")
        self.num_heads, self.first_trainable, self.sigma_to = teacher.num_heads, depth - unfreeze_blocks, sigma_to
        self.vocab_size, self.vocab_shard = teacher.vocab_size, teacher.vocab_shard  # this rank's input columns
        self.checkpointing = teacher.checkpointing
        # copies of the trunk; a tensor-parallel trunk's process group is shared, not copied
        memo = {} if teacher.vocab_shard is None else {id(teacher.vocab_shard.group): teacher.vocab_shard.group}
        self.vocab_embed = copy.deepcopy(teacher.vocab_embed, memo)
        self.sigma_map = copy.deepcopy(teacher.sigma_map, memo)
        self.blocks = copy.deepcopy(teacher.blocks, memo)
        dim = self.vocab_embed.weight.shape[1]
        self.head = nn.Sequential(SpectralNormLinear(dim, dim), nn.SiLU(), SpectralNormLinear(dim, 1))
        for module in (self.vocab_embed, self.sigma_map, *self.blocks[: self.first_trainable]):
            module.requires_grad_(False)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h = self.vocab_embed(x)
        c_tau = F.silu(self.sigma_map(sigma))
        c_zero = c_tau if self.sigma_to == "all" else F.silu(self.sigma_map(torch.zeros_like(sigma)))
        cos, sin = rotary_cos_sin(h.shape[1], h.shape[2] // self.num_heads, h.device)
        for i, block in enumerate(self.blocks):
            h = run_block(block, h, cos, sin, c_tau if i >= self.first_trainable else c_zero, self.checkpointing)
        return self.head(h).squeeze(-1)
