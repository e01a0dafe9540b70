"""The InfoNCE bound on I(ξ; x) of a latent-conditioned student (our extension): 0 for a student that ignores ξ,
about log R for one whose ξ picks one of R equally likely sequences, and never above log K."""
import math

import torch

from models.diffusion import subs_log_probs
from models.unmasking import RANDOM, UnmaskingOrder
from pipeline.measure.latent import latent_information

VOCAB, LENGTH, ROWS = 5, 6, 4


def picker(regimes: int, sure: float = 0.999):
    """Every masked position is token floor(R Φ(ξ_0)) with probability ``sure``: ξ picks one of R sequences."""

    def denoise(z, xi):
        choice = (torch.special.ndtr(xi[:, 0]) * regimes).long().clamp(max=regimes - 1)
        probs = torch.full((*z.shape, VOCAB + 1), (1 - sure) / (VOCAB - 1))
        probs[..., VOCAB] = 0
        probs.scatter_(2, choice[:, None, None].expand(-1, z.shape[1], 1), sure)
        return subs_log_probs(probs.log(), z, VOCAB)

    return denoise


def test_a_latent_that_picks_one_of_r_sequences_carries_log_r_nats():
    for regimes in (2, 4):
        xi = torch.randn(ROWS, 3, generator=torch.Generator().manual_seed(regimes))
        choice = (torch.special.ndtr(xi[:, 0]) * regimes).long()
        x = choice[:, None].expand(-1, LENGTH).clone()  # each row is the sequence its ξ picked
        info = latent_information(picker(regimes), x, lambda: lambda _: xi, 3, "sequence", 4, VOCAB, RANDOM,
                                  trajectories=1, contrasts=200, seed=0)
        # the bound: log K − log(1 + the contrasts that pick the same sequence), about log R − R/K
        assert torch.allclose(info, torch.full((ROWS,), math.log(regimes), dtype=info.dtype), atol=0.15), (regimes, info)
        few = latent_information(picker(regimes), x, lambda: lambda _: xi, 3, "sequence", 4, VOCAB, RANDOM,
                                 trajectories=1, contrasts=3, seed=0)
        assert (few <= math.log(3) + 1e-9).all() and (few < info.max()).any()  # K = 3 caps what it can show


def test_a_student_that_ignores_its_latent_carries_none_exactly():
    logits = torch.randn(1, LENGTH, VOCAB + 1, generator=torch.Generator().manual_seed(1))

    def ignoring(z, xi):
        return subs_log_probs(logits.expand(z.shape[0], -1, -1), z, VOCAB)

    x = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=torch.Generator().manual_seed(2))
    for order in (RANDOM, UnmaskingOrder.parse("dispersed:2")):
        info = latent_information(ignoring, x, lambda: lambda _: torch.randn(ROWS, 3), 3, "step", 3, VOCAB, order,
                                  trajectories=4, contrasts=5, seed=5)
        assert torch.equal(info, torch.zeros(ROWS, dtype=info.dtype)), order
