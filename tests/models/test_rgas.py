"""RGAS against the plain sampler, the tilting gradient against finite differences, re-ranking by hand."""
import pytest
import torch

from models.diffusion import subs_log_probs
from models.discriminator import Discriminator
from models.dit import DiT
from models.rgas import RGASSettings, RGASStats, rerank, rgas_sample, tilt_strengths, tilting_gradient
from models.sampler import SamplerStats, ancestral_sample

V, L = 11, 8
MASK = V


def tiny_models():
    torch.manual_seed(0)
    student = DiT(V, 16, 2, 2, 8, dropout=0.0).eval()
    torch.nn.init.normal_(student.output_layer.linear.weight, std=0.3)  # zero-initialised: give it a say
    disc = Discriminator(student, unfreeze_blocks=1).eval()
    return student, disc


def denoiser(student):
    return lambda z: subs_log_probs(student(z, torch.zeros(z.shape[0])), z, MASK)


def test_tilt_strengths_by_hand():
    assert tilt_strengths(8, RGASSettings()) == pytest.approx([30, 100 / 3, 110 / 3, 40])
    assert tilt_strengths(3, RGASSettings()) == [30.0]  # K = 1
    assert tilt_strengths(4, RGASSettings(rho=1.0)) == []


def test_rgas_with_no_tilt_and_one_candidate_is_the_plain_sampler():
    student, disc = tiny_models()
    z = torch.full((3, L), MASK)
    plain = ancestral_sample(denoiser(student), z, 8, MASK, generator=torch.Generator().manual_seed(4),
                             stats=(plain_stats := SamplerStats()))
    stats = RGASStats()
    same = rgas_sample(denoiser(student), disc, z, 8, MASK, generator=torch.Generator().manual_seed(4),
                       settings=RGASSettings(h_start=0.0, h_end=0.0, candidates=1), stats=stats)
    assert torch.equal(plain, same) and stats.nfe == plain_stats.nfe
    assert stats.discriminator_forward == stats.discriminator_backward == 0
    guided = rgas_sample(denoiser(student), disc, z, 8, MASK, generator=torch.Generator().manual_seed(4),
                         stats=(guided_stats := RGASStats()))
    assert not torch.equal(guided, plain)
    # 4 tilting steps (a forward and a backward each), then 4 re-ranking steps (one batched forward each)
    assert guided_stats.discriminator_forward == 8 and guided_stats.discriminator_backward == 4


def test_tilting_gradient_matches_finite_differences():
    student, disc = tiny_models()
    z = torch.tensor([[MASK, 3, MASK, MASK, 5, MASK, MASK, 1]])
    log_probs = subs_log_probs(student(z, torch.zeros(1)), z, MASK).detach()
    sigma = torch.tensor([0.7])
    g = tilting_gradient(disc, log_probs, z, sigma, MASK)
    assert (g[0, 1] == 0).all() and (g[0, 4] == 0).all()  # unmasked positions get no tilt
    masked = z == MASK

    def score(u):
        return (disc(u, sigma) * masked).sum().item()

    eps, clipped = 1e-2, 0
    for pos in (0, 2, 6):
        for tok in range(V):
            up, down = log_probs.clone(), log_probs.clone()
            up[0, pos, tok] += eps
            down[0, pos, tok] -= eps
            finite_difference = (score(up) - score(down)) / (2 * eps)
            clipped += abs(finite_difference) > 1
            assert g[0, pos, tok].item() == pytest.approx(max(-1.0, min(1.0, finite_difference)), abs=5e-4)
    assert clipped > 0  # the ±1 clip was exercised too


def test_reranking_picks_the_dominant_candidate():
    def disc(x, sigma):  # counts the token 1: scores of 0, 800 and 0
        return (x == 1).float() * 100

    candidates = torch.stack([torch.zeros(2, L, dtype=torch.long), torch.ones(2, L, dtype=torch.long),
                              torch.full((2, L), 2)])
    chosen = rerank(disc, candidates, torch.zeros(2), torch.Generator().manual_seed(0))
    assert torch.equal(chosen, torch.ones(2, L, dtype=torch.long))
