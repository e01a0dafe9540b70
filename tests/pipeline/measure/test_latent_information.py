"""The InfoNCE bound on I(ξ; x | τ) of a latent-conditioned student (our extension), τ the trajectory that drew x:
the likelihood along τ is the sampler's own, the bound is 0 for a student that ignores ξ, about log R for one whose
ξ picks one of R equally likely sequences, and never above log K."""
import math

import torch

from models.diffusion import LogLinearSchedule, subs_log_probs
from models.latent import LatentDraws
from models.sampler import SamplerStats, ancestral_sample
from pipeline.measure.latent import latent_information, trajectory_log_prob
from tests.models.test_dit import build, randomised

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


def test_the_likelihood_along_the_recorded_trajectory_is_the_samplers_own():
    model = randomised(build(vocab=VOCAB, latent_dim=3), seed=4)

    def denoise(z, xi):
        return subs_log_probs(model(z, torch.zeros(z.shape[0]), xi), z, VOCAB)

    generators = [torch.Generator().manual_seed(10 + i) for i in range(ROWS)]
    seen, state = torch.zeros(ROWS, dtype=torch.float64), {}

    def draws():
        return LatentDraws(ROWS, 3, [torch.Generator().manual_seed(50 + i) for i in range(ROWS)], "cpu", "step")

    latent, stats = draws(), SamplerStats()
    state["z"] = torch.full((ROWS, LENGTH), VOCAB)

    def on_step(i, _, z):  # the sampler's own log-probability of the tokens step i revealed
        revealed = z != state["z"]
        seen.add_(torch.where(revealed, denoise(state["z"], latent(i)).gather(-1, z[..., None])[..., 0], 0.0)
                  .double().sum(1))
        state["z"] = z

    x = ancestral_sample(denoise, state["z"].clone(), 4, VOCAB, LogLinearSchedule(), generators, stats=stats,
                         on_step=on_step, latent=latent)
    assert (stats.reveal_step >= 0).all() and (stats.reveal_step < 4).all()  # every position by a step
    assert len(set(stats.reveal_step.flatten().tolist())) > 1  # revealed over several steps
    found = trajectory_log_prob(denoise, x, stats.reveal_step, 4, draws(), VOCAB)
    assert torch.allclose(found, seen, atol=1e-5)


def test_a_latent_that_picks_one_of_r_sequences_carries_log_r_nats():
    reveal = torch.randint(0, 4, (ROWS, LENGTH), generator=torch.Generator().manual_seed(1))
    for regimes in (2, 4):
        xi = torch.randn(ROWS, 3, generator=torch.Generator().manual_seed(regimes))
        choice = (torch.special.ndtr(xi[:, 0]) * regimes).long()
        x = choice[:, None].expand(-1, LENGTH).clone()  # each row is the sequence its ξ picked
        info = latent_information(picker(regimes), x, reveal, 4, lambda: lambda _: xi, 3, "sequence", VOCAB,
                                  contrasts=200, seed=0)
        # the bound: log K − log(1 + the contrasts that pick the same sequence), about log R − R/K
        assert torch.allclose(info, torch.full((ROWS,), math.log(regimes), dtype=info.dtype), atol=0.15), (regimes, info)
        few = latent_information(picker(regimes), x, reveal, 4, lambda: lambda _: xi, 3, "sequence", VOCAB,
                                 contrasts=3, seed=0)
        assert (few <= math.log(3) + 1e-9).all() and (few < info.max()).any()  # K = 3 caps what it can show


def test_a_student_that_ignores_its_latent_carries_none_exactly():
    logits = torch.randn(1, LENGTH, VOCAB + 1, generator=torch.Generator().manual_seed(1))

    def ignoring(z, xi):
        return subs_log_probs(logits.expand(z.shape[0], -1, -1), z, VOCAB)

    x = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=torch.Generator().manual_seed(2))
    reveal = torch.randint(0, 3, (ROWS, LENGTH), generator=torch.Generator().manual_seed(3))
    info = latent_information(ignoring, x, reveal, 3, lambda: lambda _: torch.randn(ROWS, 3), 3, "step", VOCAB,
                              contrasts=5, seed=5)
    assert torch.equal(info, torch.zeros(ROWS, dtype=info.dtype))
