"""Exact scores of samples under the known chain of a synthetic corpus: a first-order Markov chain
(``data_prep/synthetic.py``) or a regime-switching one (``data_prep/regime_chain.py``), the first being the second
with one regime.

A sample's token ids are cut into runs of chain letters: [BOS], [EOS] (a record boundary), [MASK] and any token
that is not a letter of the chain end a run and are counted, never scored. A run starts in the stationary
distribution (it starts mid-record, and records start in equilibrium) and is scored by the scaled forward
algorithm over the hidden regime (with one regime: π of the first letter, P of each next one). Per sample: Σ -log p,
the letters scored, the transitions and how many leave the successor sets of every regime (invalid), the bigram
counts, and the posterior expected number of regime switches (forward–backward). Over samples: the exact NLL per
letter (letter-weighted) and its perplexity, the invalid-transition rate, the total-variation distance of the
pooled bigram frequencies to the chain's stationary letter-bigram distribution (π_i P_ij with one regime), the mean
unigram entropy of the letters, the pooled bigrams' conditional entropy H(X_{k+1} | X_k) (a sampler that sharpens
lowers it even where its letter entropy matches; the chain's own is ``ExactJudge.chain_conditional_entropy``),
and the regime chain's coherence: expected switches per 64 letters (data ≈ 63 ρ; a sampler that draws far-apart
letters from different regimes raises it; None with one regime), each with a percentile bootstrap interval over
samples. The bigram TV of a finite sample is biased upwards (real data drawn
from the chain itself scores above 0), and its resamples more so; it is reported bias-corrected (2 TV − the mean
over resamples, at least 0) with the basic bootstrap interval (2 TV − the percentiles), which estimate the
distance of the sampler's own bigram distribution rather than of this many samples. The conditional entropy of a
finite sample is biased downwards (a 20 × 20 table of few bigrams looks sharper than it is), so it is reported the
same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_prep.regime_chain import WINDOW, RegimeChain, as_regime_chain, conditional_entropy, load_chain
from data_prep.synthetic import ChainError, MarkovChain
from data_prep.tokenizers import Tokenizer, TokenizerError

SPEC = "markov:"  # a judge spec naming a synthetic corpus's chain (either family): markov:DIR or markov:DIR/chain.json
# the metrics a summary reports, with their titles and formats
METRICS = (("nll_per_letter", "exact NLL / letter", ".3f"), ("invalid_rate", "invalid", ".2%"),
           ("bigram_tv", "bigram TV", ".3f"), ("unigram_entropy", "letter entropy", ".2f"),
           ("conditional_entropy", "bigram conditional entropy", ".3f"),
           ("switches_per_64", f"regime switches / {WINDOW}", ".2f"))


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
    switches: float  # posterior expected regime switches over the transitions (0 with one regime; NaN if p = 0)


class ExactJudge:
    """Scores token ids exactly under ``chain``; ``tok`` must encode every chain letter as one token."""

    def __init__(self, chain: MarkovChain | RegimeChain, tok: Tokenizer):
        self.chain, self.tok = chain, tok
        self.hidden = as_regime_chain(chain)  # what the scores are computed from, whichever the family
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
        self.regime_transition = self.hidden.regime_transition
        self.valid = self.hidden.valid
        self.bigram_target = self.hidden.letter_bigrams
        self.chain_conditional_entropy = self.hidden.conditional_entropy  # beside the samples' conditional_entropy

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
        ends = np.flatnonzero(letters & ~np.append(letters[1:], False))
        runs = [self.run_posterior(states[start:end + 1]) for start, end in zip(np.flatnonzero(starts), ends)]
        return SampleScore(
            nll=float(sum(nll for nll, _ in runs)), letters=int(letters.sum()), transitions=int(follows.sum()),
            invalid=int((~self.valid[prev, nxt]).sum()), breaks=int((~letters).sum()),
            masks=sum(1 for i in ids if i == self.tok.mask_id), bigrams=bigrams,
            unigram_entropy=float(-(freq * np.log(freq)).sum()), switches=float(sum(s for _, s in runs)))

    def run_posterior(self, run: np.ndarray) -> tuple[float, float]:
        """−log p of one run of letters and the posterior expected number of regime switches within it, by the
        scaled forward–backward algorithm over the regime (the letters are observed): α_1 ∝ ψ(·, x_1),
        α_k ∝ (α_{k−1} A) ∘ e_k with e_k(r) = P_r(x_{k−1}, x_k), c_k the normaliser, −log p = −Σ log c_k; the pair
        posterior of regimes (r, r') at transition k is α_{k−1}(r) A(r, r') e_k(r') β_k(r') / c_k. A run of
        probability 0 (possible only where a chain has zero entries) scores (inf, NaN)."""
        a = self.regime_transition
        emissions = self.hidden.transitions[:, run[:-1], run[1:]].T  # (transitions, R)
        alpha = np.empty((len(run), len(a)))
        scale = np.empty(len(run))
        carried = self.hidden.stationary[:, run[0]]
        for k in range(len(run)):
            if k:
                carried = (alpha[k - 1] @ a) * emissions[k - 1]
            scale[k] = carried.sum()
            if scale[k] == 0:
                return math.inf, math.nan
            alpha[k] = carried / scale[k]
        nll = float(-np.log(scale).sum())
        if len(a) == 1:
            return nll, 0.0
        beta = np.ones_like(alpha)
        for k in range(len(run) - 1, 0, -1):
            beta[k - 1] = a @ (emissions[k - 1] * beta[k]) / scale[k]
        stay = (alpha[:-1] * np.diag(a) * emissions * beta[1:]).sum(1) / scale[1:]  # posterior P(r_k = r_{k-1})
        return nll, float((1 - stay).sum())

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
            conditional = conditional_entropy(pooled.reshape(len(pooled), *self.valid.shape))
            switch_rate = total([s.switches for s in scored]) / transitions
        switches = (WINDOW - 1) * switch_rate if self.hidden.regimes > 1 else np.full_like(switch_rate, np.nan)
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

        for name, values in (("nll_per_letter", nll), ("invalid_rate", invalid), ("unigram_entropy", entropy),
                             ("switches_per_64", switches)):
            out[name], out[f"{name}_interval"] = interval(values)
        out["bigram_tv"], out["bigram_tv_interval"] = interval(tv, bias_corrected=True)
        out["conditional_entropy"], out["conditional_entropy_interval"] = interval(conditional, bias_corrected=True)
        out["perplexity"] = math.exp(out["nll_per_letter"])
        return out
