import itertools
import math

import numpy as np
import pytest
import torch

from models.diffusion import (NEG_INF, LogLinearSchedule, mask_tokens, nelbo_per_token, sample_times,
                              subs_log_probs)


def test_schedule_by_hand():
    s = LogLinearSchedule(eps=1e-3)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    assert torch.allclose(s.alpha(t), torch.tensor([1.0, 1 - 0.999 * 0.25, 1e-3], dtype=torch.float64))
    assert torch.allclose(s.sigma(t), -torch.log(s.alpha(t)))
    assert torch.allclose(s.loss_weight(t[1:]), 1 / t[1:])  # −α'/(1 − α) = 1/t exactly


def test_masking_uses_one_uniform_per_token():
    x = torch.arange(12).view(2, 6)
    prob = torch.tensor([0.3, 0.8])
    z = mask_tokens(x, prob, mask_id=99, generator=torch.Generator().manual_seed(0))
    u = torch.rand((2, 6), generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, torch.where(u < prob[:, None], 99, x))
    assert torch.equal(mask_tokens(x, torch.zeros(2), 99), x)
    assert (mask_tokens(x, torch.ones(2), 99) == 99).all()


def test_masking_rate():
    z = mask_tokens(torch.zeros(4, 50_000, dtype=torch.long), torch.tensor([0.0, 0.1, 0.5, 0.9]), 7,
                    torch.Generator().manual_seed(1))
    rates = (z == 7).double().mean(1)
    assert torch.allclose(rates, torch.tensor([0.0, 0.1, 0.5, 0.9], dtype=torch.float64), atol=0.01)


def test_subs_by_hand():
    mask_id = 2
    logits = torch.tensor([[[1.0, 2.0, 5.0], [3.0, -1.0, 0.0]]])
    z = torch.tensor([[mask_id, 1]])
    lp = subs_log_probs(logits, z, mask_id)
    e = math.e
    expected_masked = torch.tensor([-math.log(1 + e), -math.log(1 + 1 / e)])
    assert torch.allclose(lp[0, 0, :2], expected_masked, atol=1e-6)  # softmax over real tokens only
    assert lp[0, 0, mask_id] < -1e5  # zero masking probability
    assert torch.equal(lp[0, 1], torch.tensor([NEG_INF, 0.0, NEG_INF]))  # carry-over of the unmasked token
    assert not torch.equal(logits, logits.clone().fill_(0))  # input not modified in place
    assert logits[0, 0, 2] == 5.0


def exact_posterior_logits(p: dict, z: tuple, vocab: int, mask_id: int) -> torch.Tensor:
    """log p(x^l = v | z) for every position by enumeration; the [MASK] logit is arbitrary (SUBS removes it)."""
    consistent = {x: w for x, w in p.items() if all(zi in (mask_id, xi) for zi, xi in zip(z, x))}
    total = sum(consistent.values())
    out = torch.full((len(z), vocab + 1), 3.0, dtype=torch.float64)
    for l in range(len(z)):
        for v in range(vocab):
            out[l, v] = math.log(max(sum(w for x, w in consistent.items() if x[l] == v) / total, 1e-300))
    return out


def test_nelbo_with_the_exact_posterior_equals_the_exact_nll():
    """Brute force on V = 3, L = 3: with the true denoiser, ∫ E_z[NELBO terms] dt = −log p(x) for every x."""
    vocab, length, mask_id = 3, 3, 3
    rng = np.random.default_rng(0)
    seqs = list(itertools.product(range(vocab), repeat=length))
    p = dict(zip(seqs, rng.dirichlet(np.ones(len(seqs)))))
    schedule = LogLinearSchedule(eps=0.0)  # α_1 = 0: everything masked at t = 1, no prior term
    nodes, weights = np.polynomial.legendre.leggauss(4)  # the integrand is a polynomial of degree L − 1 in t
    ts, ws = (nodes + 1) / 2, weights / 2
    for x in seqs:
        total = 0.0
        for pattern in itertools.product([False, True], repeat=length):
            z = tuple(mask_id if m else xi for m, xi in zip(pattern, x))
            k = sum(pattern)
            lp = subs_log_probs(exact_posterior_logits(p, z, vocab, mask_id)[None], torch.tensor([z]), mask_id)
            for t, w in zip(ts, ws):
                terms = nelbo_per_token(lp.double(), torch.tensor([x]), torch.tensor([z]),
                                        torch.tensor([t], dtype=torch.float64), mask_id, schedule)
                total += w * t**k * (1 - t) ** (length - k) * terms.sum().item()
        assert total == pytest.approx(-math.log(p[x]), rel=1e-4), x


def test_monte_carlo_nelbo_estimates_the_entropy():
    """The training estimator (antithetic t, masking, SUBS) with the exact denoiser averages to H(p)."""
    vocab, length, mask_id = 3, 3, 3
    rng = np.random.default_rng(1)
    seqs = list(itertools.product(range(vocab), repeat=length))
    weights = rng.dirichlet(np.ones(len(seqs)))
    p = dict(zip(seqs, weights))
    table = {z: exact_posterior_logits(p, z, vocab, mask_id)
             for z in itertools.product(range(vocab + 1), repeat=length)}
    g = torch.Generator().manual_seed(0)
    n = 40_000
    x = torch.tensor(seqs)[torch.multinomial(torch.tensor(weights), n, replacement=True, generator=g)]
    schedule = LogLinearSchedule()
    t = sample_times(n, generator=g)
    z = mask_tokens(x, 1 - schedule.alpha(t), mask_id, g)
    logits = torch.stack([table[tuple(row)] for row in z.tolist()])
    terms = nelbo_per_token(subs_log_probs(logits, z, mask_id), x, z, t, mask_id, schedule)
    entropy = -sum(w * math.log(w) for w in weights)
    assert terms.sum(1).mean().item() == pytest.approx(entropy, rel=0.03)


def test_antithetic_times_are_stratified():
    t = sample_times(8, t_min=1e-3, generator=torch.Generator().manual_seed(3))
    u = (t - 1e-3) / (1 - 1e-3)
    assert sorted((u * 8).floor().long().tolist()) == list(range(8))  # one t per eighth of [t_min, 1]
    assert t.min() >= 1e-3 and t.max() <= 1
