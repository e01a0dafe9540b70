"""Exact scores of samples under the known Markov chain of a synthetic corpus (``data_prep/synthetic.py``).

A sample's token ids are cut into runs of chain letters: [BOS], [EOS] (a record boundary), [MASK] and any token
that is not a letter of the chain end a run and are counted, never scored. The first letter of a run is scored
under the stationary distribution π (a run starts mid-record, and records start in equilibrium), each next one
under the transition matrix P. Per sample: Σ -log p, the letters scored, the transitions and how many leave the
chain's successor sets (invalid), and the bigram counts. Over samples: the exact NLL per letter (letter-weighted)
and its perplexity, the invalid-transition rate, the total-variation distance of the pooled bigram frequencies to
the chain's stationary bigram distribution π_i P_ij, and the mean unigram entropy of the letters, each with a
percentile bootstrap interval over samples. The bigram TV of a finite sample is biased upwards (real data drawn
from the chain itself scores above 0), and its resamples more so; it is reported bias-corrected (2 TV − the mean
over resamples, at least 0) with the basic bootstrap interval (2 TV − the percentiles), which estimate the
distance of the sampler's own bigram distribution rather than of this many samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_prep.synthetic import ChainError, MarkovChain, load_chain
from data_prep.tokenizers import Tokenizer, TokenizerError

SPEC = "markov:"  # a judge spec naming a synthetic corpus's chain: markov:DIR or markov:DIR/chain.json
# the metrics a summary reports, with their titles and formats
METRICS = (("nll_per_letter", "exact NLL / letter", ".3f"), ("invalid_rate", "invalid", ".2%"),
           ("bigram_tv", "bigram TV", ".3f"), ("unigram_entropy", "letter entropy", ".2f"))


class ExactJudgeError(ValueError):
    """A chain that cannot score this tokenizer's samples; the message names the letter or the file."""


def is_exact(spec: str | None) -> bool:
    return bool(spec) and spec.startswith(SPEC)


def load_exact_judge(spec: str, tok: Tokenizer) -> "ExactJudge":
    """The exact judge of ``markov:PATH`` for samples of ``tok``; ExactJudgeError names the spec and the problem."""
    try:
        return ExactJudge(load_chain(spec[len(SPEC):]), tok)
    except (ChainError, ExactJudgeError) as err:
        raise ExactJudgeError(f"judge {spec!r}: {err}") from None


@dataclass
class SampleScore:
    nll: float  # Σ -log p over the scored letters (nats)
    letters: int
    transitions: int  # scored letters that follow a letter of the same run
    invalid: int  # transitions outside the successor sets
    breaks: int  # tokens inside the sample that are not chain letters (BOS/EOS, [MASK], others), counted not scored
    masks: int  # [MASK] tokens among the breaks
    bigrams: np.ndarray  # (K, K) counts of the scored transitions
    unigram_entropy: float  # of this sample's letters (nats); 0 for a sample without letters


class ExactJudge:
    """Scores token ids exactly under ``chain``; ``tok`` must encode every chain letter as one token."""

    def __init__(self, chain: MarkovChain, tok: Tokenizer):
        self.chain, self.tok = chain, tok
        self.state = {}  # token id -> chain state
        for index, letter in enumerate(chain.alphabet):
            try:
                ids = tok.encode(letter)
            except TokenizerError:
                ids = []
            if len(ids) != 1:
                raise ExactJudgeError(f"chain letter {letter!r} is not one token of the {tok.kind} tokenizer: the "
                                      "chain and the corpus's tokenizer have different alphabets")
            self.state[ids[0]] = index
        with np.errstate(divide="ignore"):
            self.log_p, self.log_pi = np.log(chain.transition), np.log(chain.stationary)
        size = len(chain.alphabet)
        self.valid = np.zeros((size, size), dtype=bool)
        for i, successors in enumerate(chain.successors):
            self.valid[i, successors] = True
        self.bigram_target = chain.stationary[:, None] * chain.transition

    def score(self, ids: list[int]) -> SampleScore:
        ids = list(ids)
        if ids and ids[0] == self.tok.bos_id:
            ids = ids[1:]
        if ids and ids[-1] == self.tok.eos_id:
            ids = ids[:-1]
        states = np.array([self.state.get(int(i), -1) for i in ids], dtype=np.int64)
        letters = states >= 0
        follows = letters[1:] & letters[:-1]  # position t + 1 continues the run of position t
        starts = letters.copy()
        starts[1:] &= ~letters[:-1]
        prev, nxt = states[:-1][follows], states[1:][follows]
        size = len(self.chain.alphabet)
        bigrams = np.bincount(prev * size + nxt, minlength=size * size).reshape(size, size)
        counts = np.bincount(states[letters], minlength=size)
        freq = counts[counts > 0] / max(1, counts.sum())
        return SampleScore(
            nll=float(-self.log_pi[states[starts]].sum() - self.log_p[prev, nxt].sum()),
            letters=int(letters.sum()), transitions=int(follows.sum()), invalid=int((~self.valid[prev, nxt]).sum()),
            breaks=int((~letters).sum()), masks=sum(1 for i in ids if i == self.tok.mask_id), bigrams=bigrams,
            unigram_entropy=float(-(freq * np.log(freq)).sum()))

    def summarise(self, scores: list[SampleScore], rounds: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
        """The pooled metrics over ``scores`` and their bootstrap intervals (samples drawn with replacement); a
        metric without anything to measure (no letters, no transitions) is None."""
        scored = [s for s in scores if s.letters]
        out = {"samples": len(scores), "empty_samples": len(scores) - len(scored),
               "letters": sum(s.letters for s in scores), "breaks": sum(s.breaks for s in scores),
               "masks": sum(s.masks for s in scores)}
        if not scored:
            return {**out, "perplexity": None, **{k: None for k, _, _ in METRICS},
                    **{f"{k}_interval": None for k, _, _ in METRICS}}
        # every statistic is a function of per-sample totals, so a bootstrap round is a weighted sum over samples
        g = np.random.default_rng(seed)
        weights = np.vstack([np.ones(len(scored)), np.stack([np.bincount(g.integers(0, len(scored), len(scored)),
                                                                         minlength=len(scored))
                                                             for _ in range(rounds)])])
        total = lambda values: weights @ np.asarray(values, dtype=np.float64)  # noqa: E731
        letters, transitions = total([s.letters for s in scored]), total([s.transitions for s in scored])
        nll = total([s.nll for s in scored]) / letters
        with np.errstate(invalid="ignore", divide="ignore"):
            invalid = total([s.invalid for s in scored]) / transitions
            pooled = weights @ np.stack([s.bigrams.ravel() for s in scored]).astype(np.float64)
            tv = 0.5 * np.abs(pooled / pooled.sum(1, keepdims=True) - self.bigram_target.ravel()).sum(1)
        entropy = total([s.unigram_entropy for s in scored]) / weights.sum(1)

        def interval(values: np.ndarray, bias_corrected: bool = False):
            if not np.isfinite(values[0]):
                return None, None
            rest = np.sort(values[1:][np.isfinite(values[1:])])
            low, high = (rest[int(q * (len(rest) - 1))].item() for q in ((1 - level) / 2, (1 + level) / 2))
            if not bias_corrected:
                return values[0].item(), [low, high]
            point = values[0].item()
            return max(0.0, 2 * point - rest.mean().item()), [max(0.0, 2 * point - high), max(0.0, 2 * point - low)]

        for name, values in (("nll_per_letter", nll), ("invalid_rate", invalid), ("unigram_entropy", entropy)):
            out[name], out[f"{name}_interval"] = interval(values)
        out["bigram_tv"], out["bigram_tv_interval"] = interval(tv, bias_corrected=True)
        out["perplexity"] = math.exp(out["nll_per_letter"])
        return out
