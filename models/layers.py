"""The one place where the DiT gets its linear layers, token embedding and vocabulary projection.

Each layer is requested with its tensor-parallel role (``column``: output features split; ``qkv``: the fused
attention input, split by heads; ``row``: input features split; ``replicated``), so the tensor-parallel factory
(``models.tensor_parallel.MegatronLayers``) can return megatron-core layers without any change to the block
code. ``DenseLayers`` is the plain single-device version.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.vocab_parallel import VocabShard

Role = Literal["column", "qkv", "row", "replicated"]


class TokenEmbedding(nn.Module):
    """Token ids -> rows of E; a float (B, L, W) input u -> softmax(u) @ E[:W] (an expected embedding).

    W may be V (real tokens only) or V + 1 (with [MASK]); RGAS feeds student logits this way.
    """

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            width = x.shape[-1]
            if width > self.weight.shape[0]:
                raise ValueError(f"float input width {width} exceeds the {self.weight.shape[0]} embedding rows")
            return torch.softmax(x, dim=-1) @ self.weight[:width].to(x.dtype)
        return F.embedding(x, self.weight)


class ZeroLinear(nn.Linear):
    """A Linear initialised to zero inside its own constructor (adaLN-Zero, the output projection).

    Zeroing after construction would be lost under ZeRO-3, whose ``zero.Init`` partitions the parameters as
    soon as a module's constructor returns.
    """

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class DenseLayers:
    """Plain PyTorch layers; the roles are ignored."""

    def linear(self, in_features: int, out_features: int, bias: bool, role: Role, zero_init: bool = False) -> nn.Module:
        return (ZeroLinear if zero_init else nn.Linear)(in_features, out_features, bias=bias)

    def embedding(self, num_embeddings: int, dim: int) -> nn.Module:
        return TokenEmbedding(num_embeddings, dim)

    def vocab_projection(self, dim: int, num_outputs: int) -> nn.Module:
        """Zero-initialised, as in MDLM: the untrained model predicts the uniform distribution."""
        return ZeroLinear(dim, num_outputs, bias=True)

    def local_heads(self, heads: int) -> int:
        """Attention heads computed on this rank."""
        return heads

    def vocab_shard(self, width: int) -> VocabShard | None:
        """This rank's columns of an output of ``width`` vocabulary columns (None: all of them)."""
        return None
