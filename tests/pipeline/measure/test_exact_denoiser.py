"""The chain's exact posterior against brute-force enumeration (both families), and the sampler it drives against
the chain."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from data_prep.regime_chain import RegimeChain, as_regime_chain, make_regime_chain
from data_prep.synthetic import MarkovChain, make_markov_chain
from data_prep.tokenizers import build_tokenizer
from models.sampler import ancestral_sample
from pipeline.measure.exact_denoiser import ChainPosterior
from pipeline.measure.exact_judge import ExactJudge
from tests.data_prep.test_regime_chain import tiny_regime_chain

PROTEIN = build_tokenizer("protein", iter(()))
V = PROTEIN.vocab_size


def three_states() -> MarkovChain:
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]])
    pi = np.linalg.matrix_power(p, 200)[0]
    return MarkovChain("ACD", p, pi, [[0, 1], [1, 2], [0, 2]])


def row(text: str) -> list[int]:
    """``?`` is [MASK], ``|`` an [EOS] inside the window; framed as [BOS] ... [EOS] like a prepared row."""
    special = {"?": V, "|": PROTEIN.eos_id}
    return [PROTEIN.bos_id] + [special.get(c) or PROTEIN.encode(c)[0] for c in text] + [PROTEIN.eos_id]


def brute_force(chain: RegimeChain, text: str) -> list[np.ndarray]:
    """Each window position's letter posterior by enumerating every (regime, letter) path (a first-order chain has
    one regime), each run between breaks an independent stationary joint chain, conditioned on the observed
    letters."""
    k, a = len(chain.alphabet), chain.regime_transition
    marginals = [np.zeros(k) for _ in text]
    for path in itertools.product(itertools.product(range(chain.regimes), range(k)), repeat=len(text)):
        weight, previous = 1.0, None
        for c, (r, s) in zip(text, path):
            if c == "|":
                previous = None
                continue
            if c != "?" and chain.alphabet.index(c) != s:
                weight = 0.0
                break
            weight *= (chain.stationary[r, s] if previous is None
                       else a[previous[0], r] * chain.transitions[r, previous[1], s])
            previous = (r, s)
        for position, (_, s) in enumerate(path):
            marginals[position][s] += weight
    return [m / m.sum() for m in marginals]


@pytest.mark.parametrize("family", ["markov", "regime"])
@pytest.mark.parametrize("text", ["????", "A??D", "?C?|??", "??A|D?", "D???A"])
def test_posterior_matches_enumeration(text, family):
    chain = three_states() if family == "markov" else tiny_regime_chain()
    expectations = brute_force(as_regime_chain(chain), text)
    out = ChainPosterior(ExactJudge(chain, PROTEIN), V)(torch.tensor([row(text)]))
    assert out.shape == (1, len(text) + 2, V + 1)
    letter_ids = [PROTEIN.encode(c)[0] for c in chain.alphabet]
    for position, (c, expected) in enumerate(zip(text, expectations)):
        if c == "?":
            got = out[0, position + 1, letter_ids].double().exp().numpy()
            assert got == pytest.approx(expected, abs=1e-6)
            assert out[0, position + 1].exp().sum().item() == pytest.approx(1.0, abs=1e-5)  # nothing off the chain
    assert out[0, 0].argmax().item() == PROTEIN.bos_id and out[0, -1].argmax().item() == PROTEIN.eos_id


def exact_sampling_scores(chain, letters: int, rounds: int) -> dict[int, dict]:
    """The judge's summary of 64 rows of ``letters`` sampled from the chain's exact posterior in 4 and 256 steps."""
    judge = ExactJudge(chain, PROTEIN)
    model = ChainPosterior(judge, V)
    scores = {}
    for steps in (4, 256):
        x = ancestral_sample(lambda z: model(z).log_softmax(-1), torch.full((64, letters + 2), V), steps, V,
                             generator=torch.Generator().manual_seed(0))
        scores[steps] = judge.summarise([judge.score(r) for r in x.tolist()], rounds=rounds)
    return scores


def test_many_step_sampling_from_the_posterior_reproduces_the_chain():
    """256 steps from the exact posterior ≈ drawing from the chain: NLL per letter near the entropy rate and
    almost no invalid transitions; 4 steps (letters drawn independently in large groups) much worse."""
    chain = make_markov_chain(seed=3)
    scores = exact_sampling_scores(chain, letters=32, rounds=20)
    assert scores[256]["nll_per_letter"] == pytest.approx(chain.entropy_rate, abs=0.15)
    assert scores[256]["invalid_rate"] < 0.01
    assert scores[4]["invalid_rate"] > 5 * max(scores[256]["invalid_rate"], 0.005)


def test_few_step_sampling_from_the_regime_posterior_mixes_regimes():
    """Letters revealed in one step are drawn independently given the rest, so with few steps far-apart letters
    come from different regimes: the exact denoiser's 4-step samples switch regime far more often than its
    256-step ones, which switch as the data do (≈ 63 ρ per 64 letters)."""
    scores = exact_sampling_scores(make_regime_chain(regimes=4, switch=0.05, seed=3), letters=64, rounds=100)
    assert scores[256]["switches_per_64"] == pytest.approx(63 * 0.05, abs=1.0)
    assert scores[4]["switches_per_64_interval"][0] > scores[256]["switches_per_64_interval"][1]
