"""The exact judge against hand-computed scores on a 2-state chain, and against the chain's own samples."""
from __future__ import annotations

import math

import numpy as np
import pytest

from data_prep.synthetic import MarkovChain, make_markov_chain, sample_records
from data_prep.tokenizers import build_tokenizer
from pipeline.measure.exact_judge import ExactJudge, ExactJudgeError

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
