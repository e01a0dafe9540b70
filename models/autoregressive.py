"""Next-token log-likelihood of a causal DiT (``DiT(causal=True)``): the loss of the in-domain judge and its score.

The output at position i predicts token i + 1; the [MASK] column is never a target, so it is left out of the
softmax. The first position ([BOS]) is context only.
"""
from __future__ import annotations

import torch

from models.vocab_parallel import NEG_INF, VocabShard, add_to_column, log_softmax, take


def next_token_nll(logits: torch.Tensor, x: torch.Tensor, mask_id: int, shard: VocabShard | None = None) -> torch.Tensor:
    """(B, L − 1) in fp32: −log p(x_{i+1} | x_{≤ i}) from logits (B, L, V + 1) of the causal model on x (B, L)
    (this rank's columns under a vocabulary ``shard``)."""
    logits = add_to_column(logits[:, :-1].float().clone(), mask_id, NEG_INF, shard)
    return -take(log_softmax(logits, shard), x[:, 1:], shard)
