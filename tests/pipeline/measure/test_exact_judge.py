"""The exact judge against hand-computed scores on a 2-state chain, against sums over every regime path on a tiny
regime chain, and against each chain's own samples."""
from __future__ import annotations

import math

import numpy as np
import pytest

import itertools

from data_prep.regime_chain import RegimeChain, make_regime_chain
from data_prep.synthetic import MarkovChain, make_markov_chain, sample_records
from data_prep.tokenizers import build_tokenizer
from pipeline.measure.exact_judge import ExactJudge, ExactJudgeError
from tests.data_prep.test_regime_chain import tiny_regime_chain

PROTEIN = build_tokenizer("protein", iter(()))


def two_states() -> MarkovChain:
    """P = [[0.9, 0.1], [0.5, 0.5]] over A, C: π = (5/6, 1/6); A's successor set is {A}, C's {A, C}."""
    return MarkovChain("AC", np.array([[0.9, 0.1], [0.5, 0.5]]), np.array([5 / 6, 1 / 6]), [[0], [0, 1]])


def ids(text: str) -> list[int]:
    """``|`` is [EOS], ``?`` is [MASK], the rest are letters; framed as [BOS] ... [EOS] like a prepared sequence."""
    special = {"|": PROTEIN.eos_id, "?": PROTEIN.mask_id}
    return [PROTEIN.bos_id] + [special.get(c) or PROTEIN.encode(c)[0] for c in text] + [PROTEIN.eos_id]


def test_one_sample_scored_by_hand():
    judge = ExactJudge(two_states(), PROTEIN)
    score = judge.score(ids("AAC|CA?A"))  # runs AAC, CA, A; the inner [EOS] and the [MASK] break the chain
    pi_a, pi_c = 5 / 6, 1 / 6
    expected = (-math.log(pi_a) - math.log(0.9) - math.log(0.1)) + (-math.log(pi_c) - math.log(0.5)) - math.log(pi_a)
    assert score.nll == pytest.approx(expected, rel=1e-12)
    assert (score.letters, score.transitions, score.invalid, score.breaks, score.masks) == (6, 3, 1, 2, 1)
    assert score.bigrams.tolist() == [[1, 1], [1, 0]]
    assert score.unigram_entropy == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))


def test_summary_by_hand():
    judge = ExactJudge(two_states(), PROTEIN)
    summary = judge.summarise([judge.score(ids("AAC|CA?A"))], rounds=50)
    # pooled bigrams AA, AC, CA (1/3 each) against π_i P_ij = [[3/4, 1/12], [1/12, 1/12]]
    assert summary["bigram_tv"] == pytest.approx(0.5 * (abs(1 / 3 - 0.75) + 2 * abs(1 / 3 - 1 / 12) + 1 / 12))
    assert summary["invalid_rate"] == pytest.approx(1 / 3)
    assert summary["nll_per_letter"] == pytest.approx(judge.score(ids("AAC|CA?A")).nll / 6)
    assert summary["perplexity"] == pytest.approx(math.exp(summary["nll_per_letter"]))
    assert (summary["samples"], summary["letters"], summary["breaks"], summary["masks"]) == (1, 6, 2, 1)
    # one sample: every bootstrap round redraws that sample, so the interval is the point
    assert summary["nll_per_letter_interval"] == pytest.approx([summary["nll_per_letter"]] * 2)


def test_the_chains_own_samples_score_its_entropy_rate_and_its_invalid_mass():
    chain = make_markov_chain(successors=3, seed=5)
    judge = ExactJudge(chain, PROTEIN)
    records = sample_records(chain, 64, 2000, seed=1)
    summary = judge.summarise([judge.score(PROTEIN.encode(r)) for r in records], rounds=200)
    low, high = summary["nll_per_letter_interval"]
    assert low <= summary["nll_per_letter"] <= high
    assert abs(summary["nll_per_letter"] - chain.entropy_rate) < 0.02
    assert summary["invalid_rate"] < 0.003  # the chain leaves its successor sets with probability 0.001
    assert summary["bigram_tv"] < 0.03
    # the chain's own samples are at distance 0 from it: the bias-corrected TV is nearer 0 than the plug-in one
    pooled = sum(judge.score(PROTEIN.encode(r)).bigrams for r in records)
    plug_in = 0.5 * np.abs(pooled / pooled.sum() - chain.stationary[:, None] * chain.transition).sum()
    tv_low, tv_high = summary["bigram_tv_interval"]
    assert summary["bigram_tv"] < plug_in and tv_low <= summary["bigram_tv"] <= tv_high
    # shuffling the letters keeps the unigram entropy and destroys the chain
    g = np.random.default_rng(0)
    shuffled = ["".join(g.permutation(list(r))) for r in records]
    worse = judge.summarise([judge.score(PROTEIN.encode(r)) for r in shuffled], rounds=200)
    assert worse["unigram_entropy"] == pytest.approx(summary["unigram_entropy"], rel=1e-9)
    assert worse["nll_per_letter_interval"][0] > high and worse["invalid_rate"] > 0.5


def test_more_samples_narrow_the_interval():
    chain = make_markov_chain(successors=3, seed=2)
    judge = ExactJudge(chain, PROTEIN)
    scores = [judge.score(PROTEIN.encode(r)) for r in sample_records(chain, 256, 62, seed=3)]
    few, many = judge.summarise(scores[:16], rounds=300), judge.summarise(scores, rounds=300)
    width = lambda s: s["nll_per_letter_interval"][1] - s["nll_per_letter_interval"][0]  # noqa: E731
    assert width(many) < width(few) / 2


def test_empty_samples_are_counted_and_a_foreign_alphabet_refused():
    judge = ExactJudge(two_states(), PROTEIN)
    empty = judge.summarise([judge.score(ids("??")), judge.score(ids(""))])
    assert empty["empty_samples"] == 2 and empty["masks"] == 2 and empty["nll_per_letter"] is None
    mixed = judge.summarise([judge.score(ids("??")), judge.score(ids("AA"))], rounds=20)
    assert mixed["empty_samples"] == 1 and mixed["letters"] == 2
    foreign = MarkovChain("AJ", np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([0.5, 0.5]), [[0], [1]])
    with pytest.raises(ExactJudgeError, match="'J'"):
        ExactJudge(foreign, PROTEIN)


def path_sums(chain: RegimeChain, letters: str) -> tuple[float, float]:
    """p(letters) as the sum over every regime path, and the posterior expected number of regime switches."""
    states = [chain.alphabet.index(c) for c in letters]
    a, total, switches = chain.regime_transition, 0.0, 0.0
    for path in itertools.product(range(chain.regimes), repeat=len(states)):
        weight = chain.stationary[path[0], states[0]]
        for k in range(1, len(states)):
            weight *= a[path[k - 1], path[k]] * chain.transitions[path[k], states[k - 1], states[k]]
        total += weight
        switches += weight * sum(r != s for r, s in zip(path, path[1:]))
    return total, switches / total


@pytest.mark.parametrize("text", ["ACDA", "DDACA", "AC|DCA?A", "C"])
def test_regime_chain_nll_and_switches_are_the_sums_over_regime_paths(text):
    chain = tiny_regime_chain()
    score = ExactJudge(chain, PROTEIN).score(ids(text))
    runs = [run for run in text.replace("?", "|").split("|") if run]
    sums = [path_sums(chain, run) for run in runs]
    assert score.nll == pytest.approx(-sum(math.log(p) for p, _ in sums), rel=1e-12)
    assert score.switches == pytest.approx(sum(s for _, s in sums), rel=1e-10, abs=1e-15)
    assert score.letters == sum(map(len, runs)) and score.transitions == sum(len(r) - 1 for r in runs)


def test_identical_regimes_are_the_first_order_chain():
    """Regimes that share P are invisible in the letters: the NLL is the first-order chain's and the posterior
    switch rate is the prior's, ρ per transition."""
    first_order = make_markov_chain(successors=3, seed=6)
    twin = RegimeChain(first_order.alphabet, np.stack([first_order.transition] * 2), 0.3,
                       np.stack([first_order.stationary] * 2) / 2, [first_order.successors] * 2)
    records = sample_records(first_order, 5, 80, seed=2)
    for record in records:
        once, twice = (ExactJudge(c, PROTEIN).score(PROTEIN.encode(record)) for c in (first_order, twin))
        assert twice.nll == pytest.approx(once.nll, rel=1e-9, abs=1e-9)
        assert twice.switches == pytest.approx(0.3 * 79, rel=1e-9) and once.switches == 0.0


def test_conditional_entropy_and_switches_in_the_summary():
    judge = ExactJudge(two_states(), PROTEIN)
    summary = judge.summarise([judge.score(ids("AAC|CA?A"))], rounds=20)
    # bigrams AA, AC, CA: H(next | A) = ln 2 on 2/3 of them, H(next | C) = 0
    assert summary["conditional_entropy"] == pytest.approx(2 / 3 * math.log(2), rel=1e-12)
    assert summary["switches_per_64"] is None and summary["switches_per_64_interval"] is None  # one regime
    assert judge.chain_conditional_entropy == pytest.approx(two_states().entropy_rate, rel=1e-12)
    regime = ExactJudge(tiny_regime_chain(), PROTEIN)
    scores = [regime.score(ids(t)) for t in ("ACDA", "DDACA")]
    assert regime.summarise(scores, rounds=20)["switches_per_64"] == pytest.approx(
        63 * sum(s.switches for s in scores) / 7, rel=1e-12)


def test_regime_metrics_see_what_the_letter_entropy_does_not():
    """The chain's own samples: switches ≈ 63 ρ and the conditional entropy ≈ the chain's. Records whose regime
    switches ten times as often (same regimes) raise the switches; a first-order chain sharpened at T = 0.5 lowers
    the conditional entropy."""
    chain = make_regime_chain(regimes=4, switch=0.05, seed=9)
    judge = ExactJudge(chain, PROTEIN)
    summarise = lambda records: judge.summarise([judge.score(PROTEIN.encode(r)) for r in records],  # noqa: E731
                                                rounds=200)
    real = summarise(sample_records(chain, 64, 640, seed=1))
    assert real["switches_per_64"] == pytest.approx(63 * 0.05, abs=0.4)
    assert real["conditional_entropy"] == pytest.approx(judge.chain_conditional_entropy, abs=0.05)
    assert real["nll_per_letter"] < chain.joint_entropy_rate + 0.05  # the letters' rate is below the joint one's
    mixed = summarise(sample_records(make_regime_chain(regimes=4, switch=0.5, seed=9), 64, 640, seed=1))
    assert mixed["switches_per_64_interval"][0] > 3 * real["switches_per_64_interval"][1]
    first_order = make_markov_chain(seed=9)
    sharp = first_order.transition ** 2 / (first_order.transition ** 2).sum(1, keepdims=True)
    sharpened = MarkovChain(first_order.alphabet, sharp, np.linalg.matrix_power(sharp, 1000)[0],
                            first_order.successors)
    plain_judge = ExactJudge(first_order, PROTEIN)
    plain, sharper = (plain_judge.summarise([plain_judge.score(PROTEIN.encode(r))
                                             for r in sample_records(c, 64, 640, seed=1)], rounds=200)
                      for c in (first_order, sharpened))
    assert sharper["conditional_entropy_interval"][1] < plain["conditional_entropy_interval"][0]
    assert plain["conditional_entropy"] == pytest.approx(first_order.entropy_rate, abs=0.03)
