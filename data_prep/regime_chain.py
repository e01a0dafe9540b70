"""The second synthetic family: a regime-switching chain, whose letters have long-range structure.

R regimes, each a sparse first-order chain P_r over the same letters (drawn as ``make_markov_chain`` draws one).
Before each letter the regime stays with probability 1 − ρ or switches to one of the other R − 1 uniformly; the
letter then follows P_{r'}(x_{k−1}, ·). The letters alone are Markov of no finite order: which successors a letter
prefers depends on a regime that lasts about 1/ρ letters, so letters far apart are dependent, which N-step
parallel decoding cannot reproduce by revealing them independently. The pair (regime, letter) is a first-order
chain, T((r, x) → (r', x')) = A(r, r') P_{r'}(x, x'), with stationary distribution ψ; a record starts in ψ.
Everything the exact judge and denoiser need is a function of (A, P_r, ψ), and a first-order ``MarkovChain`` is
the case R = 1 (``as_regime_chain``).

The letters' entropy rate has no closed form; ``chain.json`` stores the joint chain's (an upper bound on the
letters') and the letters' bigram conditional entropy H(X_{k+1} | X_k) (another upper bound), each named as what
it is; real data's exact NLL per letter measures the letters' own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from data_prep.synthetic import (CHAIN_JSON, FORMAT, STANDARD_AMINO_ACIDS, ChainError, MarkovChain, _alphabet,
                                 _check_stored, _header, _is_number, _seed, _stationary, _stationary_distribution,
                                 _successor_lists, _transition, entropy_rate, sparse_rows)

WINDOW = 64  # switches_per_64 counts the expected regime switches among 64 consecutive letters (63 transitions)


@dataclass
class RegimeChain:
    """A regime-switching chain; its hidden state s = r K + x pairs regime r with letter x = ``alphabet[x]``."""

    kind: ClassVar[str] = "regime"
    alphabet: str
    transitions: np.ndarray  # (R, K, K) float64: transitions[r, i, j] = P_r(next j | current i), rows sum to 1
    switch: float  # ρ: the probability that the regime changes before a letter
    stationary: np.ndarray  # (R, K): ψ(r, x), stationary for the joint chain, sums to 1
    successors: list[list[list[int]]]  # per regime, per letter, the sorted indices of its preferred successors
    seed: int | None = None

    def __post_init__(self):
        self.transitions = np.asarray(self.transitions, dtype=np.float64)
        self.stationary = np.asarray(self.stationary, dtype=np.float64)
        self.switch = float(self.switch)
        self.successors = [[[int(j) for j in row] for row in regime] for regime in self.successors]

    @property
    def regimes(self) -> int:
        return len(self.transitions)

    @property
    def regime_transition(self) -> np.ndarray:
        return regime_transition(self.regimes, self.switch)

    @property
    def joint_transition(self) -> np.ndarray:
        return joint_transition(self.regime_transition, self.transitions)

    def state_chain(self) -> tuple[np.ndarray, np.ndarray]:
        """The Markov chain a record is a path of: (ψ, T) over the (regime, letter) states."""
        return self.stationary.ravel(), self.joint_transition

    @property
    def letter_bigrams(self) -> np.ndarray:
        """The stationary letter-bigram distribution Σ_{r, r'} ψ(r, x) A(r, r') P_{r'}(x, x'), (K, K)."""
        return np.einsum("ax,ab,bxy->xy", self.stationary, self.regime_transition, self.transitions)

    @property
    def conditional_entropy(self) -> float:
        """H(X_{k+1} | X_k) of the stationary letter bigrams (nats): for R = 1, the entropy rate."""
        return float(conditional_entropy(self.letter_bigrams))

    @property
    def joint_entropy_rate(self) -> float:
        """Of the (regime, letter) chain (nats per letter): an upper bound on the letters' entropy rate."""
        return entropy_rate(*self.state_chain())

    @property
    def valid(self) -> np.ndarray:
        """(K, K) bool: letter pairs inside the successor set of some regime."""
        k = len(self.alphabet)
        valid = np.zeros((k, k), dtype=bool)
        for regime in self.successors:
            for i, successors in enumerate(regime):
                valid[i, successors] = True
        return valid

    def to_json(self) -> dict:
        """Plain Python values (floats in full precision: the file round-trips exactly)."""
        return {
            "format": FORMAT, "kind": self.kind, "alphabet": self.alphabet, "seed": self.seed,
            "regimes": self.regimes, "switch": self.switch, "transitions": self.transitions.tolist(),
            "successors": [[list(row) for row in regime] for regime in self.successors],
            "stationary": self.stationary.tolist(), "joint_entropy_rate_nats": self.joint_entropy_rate,
            "letter_conditional_entropy_nats": self.conditional_entropy,
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "<chain>") -> "RegimeChain":
        """Check every invariant the judge relies on; each failure is a ChainError naming ``source`` and the key."""
        _header(data, source, (("format", FORMAT), ("kind", cls.kind)))
        alphabet = _alphabet(data.get("alphabet"), source)
        k = len(alphabet)
        regimes = data.get("regimes")
        if not isinstance(regimes, int) or isinstance(regimes, bool) or regimes < 1:
            raise ChainError(f"{source}: regimes must be a positive integer, got {regimes!r}")
        switch = _switch(data.get("switch"), regimes, source)
        matrices, successors = data.get("transitions"), data.get("successors")
        for key, value in (("transitions", matrices), ("successors", successors)):
            if not isinstance(value, list) or len(value) != regimes:
                count = len(value) if isinstance(value, list) else "no list of"
                raise ChainError(f"{source}: regimes is {regimes}, but {key} holds {count} entries, one per regime")
        transitions = np.stack([_transition(m, k, source, f"transitions[{r}]") for r, m in enumerate(matrices)])
        successors = [_successor_lists(s, k, source, f"successors[{r}]") for r, s in enumerate(successors)]
        psi = data.get("stationary")
        if not isinstance(psi, list) or len(psi) != regimes or any(not isinstance(row, list) or len(row) != k
                                                                   for row in psi):
            raise ChainError(f"{source}: stationary must be {regimes} lists of {k} numbers, ψ(regime, letter)")
        joint = joint_transition(regime_transition(regimes, switch), transitions)
        stationary = _stationary([x for row in psi for x in row], joint, source).reshape(regimes, k)
        chain = cls(alphabet, transitions, switch, stationary, successors, _seed(data.get("seed"), source))
        _check_stored(data, "joint_entropy_rate_nats", chain.joint_entropy_rate, source)
        _check_stored(data, "letter_conditional_entropy_nats", chain.conditional_entropy, source)
        return chain


def regime_transition(regimes: int, switch: float) -> np.ndarray:
    """A(r, r'): stay with probability 1 − ρ, else move to one of the other R − 1 uniformly."""
    if regimes == 1:
        return np.ones((1, 1))
    a = np.full((regimes, regimes), switch / (regimes - 1))
    np.fill_diagonal(a, 1 - switch)
    return a


def joint_transition(regime_transition: np.ndarray, transitions: np.ndarray) -> np.ndarray:
    """T[r K + x, r' K + x'] = A(r, r') P_{r'}(x, x'), from A (R, R) and the per-regime P (R, K, K)."""
    r, k = transitions.shape[:2]
    return np.einsum("ab,bxy->axby", regime_transition, transitions).reshape(r * k, r * k)


def _switch(value, regimes: int, source: str) -> float:
    if not _is_number(value) or not 0 <= value <= 1:
        raise ChainError(f"{source}: switch must be a probability in [0, 1], got {value!r}")
    if regimes == 1 and value != 0:
        raise ChainError(f"{source}: switch is {value!r} with regimes 1: there is no other regime to switch to")
    return float(value)


def conditional_entropy(bigrams: np.ndarray) -> np.ndarray:
    """H(X_{k+1} | X_k) in nats of bigram counts or probabilities over the last two axes (previous, next):
    −Σ f(x, y) log f(y | x), with 0 log 0 = 0; NaN where there are no bigrams."""
    bigrams = np.asarray(bigrams, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        joint = bigrams / bigrams.sum(axis=(-2, -1), keepdims=True)
        given = bigrams / bigrams.sum(axis=-1, keepdims=True)
        logs = np.log(given, out=np.zeros_like(given), where=bigrams > 0)
        return 0.0 - (joint * logs).sum(axis=(-2, -1))  # 0.0 - x: never -0.0


def make_regime_chain(regimes: int = 4, switch: float = 0.05, successors: int = 3, seed: int = 0,
                      mass: float = 0.999, alphabet: str = STANDARD_AMINO_ACIDS) -> RegimeChain:
    """Draw R sparse chains in turn from one generator seeded with ``seed`` (regime 0's is
    ``make_markov_chain(successors, seed, mass)``'s) and join them by regime switches of probability ``switch``."""
    k = len(_alphabet(alphabet, "alphabet"))
    if not isinstance(regimes, int) or regimes < 1:
        raise ValueError(f"regimes must be a positive integer, got {regimes!r}")
    if not 0 <= switch <= 1 or (regimes == 1) != (switch == 0):
        raise ValueError(f"switch must be in (0, 1] with several regimes (0 never mixes them, so ψ is not unique) "
                         f"and 0 with one, got switch={switch!r} with regimes={regimes}")
    rng = np.random.default_rng(seed)
    drawn = [sparse_rows(rng, k, successors, mass) for _ in range(regimes)]
    transitions = np.stack([t for t, _ in drawn])
    stationary = _stationary_distribution(joint_transition(regime_transition(regimes, switch), transitions))
    return RegimeChain(alphabet, transitions, switch, stationary.reshape(regimes, k), [s for _, s in drawn], seed)


def as_regime_chain(chain: MarkovChain | RegimeChain) -> RegimeChain:
    """A first-order chain as the regime chain with one regime (A = [[1]], ψ = π); a regime chain unchanged."""
    if isinstance(chain, RegimeChain):
        return chain
    return RegimeChain(chain.alphabet, chain.transition[None], 0.0, chain.stationary[None], [chain.successors],
                       chain.seed)


def load_chain(path):
    """Read ``DIR/chain.json`` or the file itself, a ``MarkovChain`` or (kind "regime") a ``RegimeChain``; any
    problem (missing, not JSON, invalid) is a ChainError."""
    path = Path(path)
    if path.is_dir():
        path = path / CHAIN_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChainError(f"{path}: no such chain file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ChainError(f"{path}: unreadable ({err.__class__.__name__}: {err})") from None
    except json.JSONDecodeError as err:
        raise ChainError(f"{path}: not valid JSON ({err})") from None
    reader = RegimeChain if isinstance(data, dict) and data.get("kind") == RegimeChain.kind else MarkovChain
    return reader.from_json(data, source=str(path))
