"""Synthetic corpora with a known distribution: a sparse first-order Markov chain over amino-acid letters (and,
in ``data_prep/regime_chain.py``, a regime-switching chain built from the same pieces).

Because the distribution of the data is known exactly, a model's samples can be scored exactly against it.
Each state (letter) has a few preferred successors that share ``mass`` of its row (Dirichlet(1, ..., 1) weights);
the remaining ``1 - mass`` is spread evenly over the other letters. A record starts in the stationary
distribution, so every position of every record has the same letter distribution.

``write_synthetic`` writes ``chain.json`` (the chain: transition matrix, stationary distribution, entropy rate)
and ``chain.fasta`` (the sampled records, which ``python -m data_prep prepare --tokenizer protein`` reads);
``regime_chain.load_chain`` reads either family back, by the file's ``kind``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from data_prep.atomic import atomic_write_bytes

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # ProteinTokenizer.ALPHABET[:20]
CHAIN_JSON = "chain.json"
CHAIN_FASTA = "chain.fasta"
FORMAT = 1
FASTA_LINE = 60
TOLERANCE = 1e-9  # what from_json allows for row sums, the stationary sum and pi @ P == pi
STATIONARY_TOLERANCE = 1e-12  # what make_markov_chain guarantees for pi @ P == pi


class ChainError(ValueError):
    """A chain file that cannot be used; the message names the file and the problem."""


@dataclass
class MarkovChain:
    """A first-order chain: state i is letter ``alphabet[i]``; ``transition[i, j]`` = P(next j | current i)."""

    kind: ClassVar[str] = "markov"
    alphabet: str
    transition: np.ndarray  # (K, K) float64, rows sum to 1
    stationary: np.ndarray  # (K,), pi @ P == pi, sums to 1
    successors: list[list[int]]  # per state, the sorted indices of its preferred successors
    seed: int | None = None

    def __post_init__(self):
        self.transition = np.asarray(self.transition, dtype=np.float64)
        self.stationary = np.asarray(self.stationary, dtype=np.float64)
        self.successors = [[int(j) for j in row] for row in self.successors]

    @property
    def entropy_rate(self) -> float:
        return entropy_rate(self.stationary, self.transition)

    def state_chain(self) -> tuple[np.ndarray, np.ndarray]:
        """The Markov chain a record is a path of: (initial distribution, transition) over the letters."""
        return self.stationary, self.transition

    def to_json(self) -> dict:
        """Plain Python values (floats in full precision: the file round-trips exactly)."""
        return {
            "format": FORMAT, "kind": self.kind, "order": 1, "alphabet": self.alphabet, "seed": self.seed,
            "transition": self.transition.tolist(), "stationary": self.stationary.tolist(),
            "successors": [list(row) for row in self.successors], "entropy_rate_nats": self.entropy_rate,
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "<chain>") -> "MarkovChain":
        """Check every invariant the judge relies on; each failure is a ChainError naming ``source`` and the key."""
        _header(data, source, (("format", FORMAT), ("kind", cls.kind), ("order", 1)))
        alphabet = _alphabet(data.get("alphabet"), source)
        k = len(alphabet)
        transition = _transition(data.get("transition"), k, source)
        stationary = _stationary(data.get("stationary"), transition, source)
        successors = _successor_lists(data.get("successors"), k, source)
        chain = cls(alphabet, transition, stationary, successors, _seed(data.get("seed"), source))
        _check_stored(data, "entropy_rate_nats", chain.entropy_rate, source)
        return chain


def entropy_rate(stationary: np.ndarray, transition: np.ndarray) -> float:
    """Nats per step of a stationary chain: -sum_i pi_i sum_j P_ij log P_ij, with 0 log 0 = 0."""
    logs = np.log(transition, out=np.zeros_like(transition), where=transition > 0)
    return float(0.0 - stationary @ (transition * logs).sum(axis=1))  # 0.0 - x: never -0.0


def _header(data, source: str, expected_values: tuple) -> None:
    """The keys that say which reader a file is for, each with the one value this reader knows."""
    if not isinstance(data, dict):
        raise ChainError(f"{source}: expected a JSON object, got {type(data).__name__}")
    for key, expected in expected_values:
        if key not in data:
            raise ChainError(f"{source}: missing key '{key}'")
        if data[key] != expected or isinstance(data[key], bool):
            raise ChainError(f"{source}: {key} is {data[key]!r}; this reader knows only {expected!r}")


def _seed(value, source: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ChainError(f"{source}: seed must be an integer or null, got {value!r}")
    return value


def _check_stored(data: dict, key: str, value: float, source: str) -> None:
    """A derived figure the file stores (for readers) must be the chain's own, or the file was edited."""
    stored = data.get(key)
    if stored is not None and not (_is_number(stored) and abs(stored - value) <= TOLERANCE):
        raise ChainError(f"{source}: {key} is {stored!r}, but the chain's is {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _alphabet(value, source: str) -> str:
    """Non-empty, unique, upper-case ASCII letters: what a FASTA record carries unchanged."""
    if not isinstance(value, str) or not value:
        raise ChainError(f"{source}: alphabet must be a non-empty string, got {value!r}")
    bad = [c for c in value if not (c.isascii() and c.isupper())]
    if bad:
        raise ChainError(f"{source}: alphabet has {bad[0]!r}, not an upper-case letter A-Z")
    duplicates = sorted({c for c in value if value.count(c) > 1})
    if duplicates:
        raise ChainError(f"{source}: alphabet has duplicate letters {''.join(duplicates)!r}")
    return value


def _numbers(value, source: str, key: str) -> np.ndarray:
    """A list of finite non-negative numbers as float64."""
    if not isinstance(value, list) or not all(_is_number(x) for x in value):
        raise ChainError(f"{source}: {key} must be a list of numbers")
    array = np.array(value, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ChainError(f"{source}: {key} has a non-finite entry")
    if (array < 0).any():
        raise ChainError(f"{source}: {key} has a negative entry ({array.min()!r})")
    return array


def _transition(value, k: int, source: str, key: str = "transition") -> np.ndarray:
    if not isinstance(value, list) or len(value) != k or any(not isinstance(row, list) or len(row) != k
                                                            for row in value):
        raise ChainError(f"{source}: {key} must be a square {k} x {k} matrix (one row and column per letter)")
    matrix = np.stack([_numbers(row, source, f"{key} row {i}") for i, row in enumerate(value)])
    sums = matrix.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > TOLERANCE)
    if bad.size:
        raise ChainError(f"{source}: {key} row {bad[0]} sums to {sums[bad[0]]!r}, not 1")
    return matrix


def _stationary(value, transition: np.ndarray, source: str) -> np.ndarray:
    k = len(transition)
    pi = _numbers(value, source, "stationary")
    if len(pi) != k:
        raise ChainError(f"{source}: stationary has {len(pi)} entries, not {k}")
    if abs(pi.sum() - 1) > TOLERANCE:
        raise ChainError(f"{source}: stationary sums to {pi.sum()!r}, not 1")
    gap = np.abs(pi @ transition - pi).max()
    if gap > TOLERANCE:
        raise ChainError(f"{source}: stationary is not stationary: |pi @ P - pi| reaches {gap:.3g}")
    return pi


def _successor_lists(value, k: int, source: str, key: str = "successors") -> list[list[int]]:
    if not isinstance(value, list) or len(value) != k:
        raise ChainError(f"{source}: {key} must be {k} lists, one per letter")
    for i, row in enumerate(value):
        valid = isinstance(row, list) and all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < k
                                              for j in row)
        if not valid or len(set(row)) != len(row):
            raise ChainError(f"{source}: {key} row {i} must hold distinct state indices 0..{k - 1}, got {row!r}")
    return [list(row) for row in value]


def make_markov_chain(successors: int = 3, seed: int = 0, mass: float = 0.999,
                      alphabet: str = STANDARD_AMINO_ACIDS) -> MarkovChain:
    """Draw a sparse chain: per state ``successors`` distinct next states (self allowed) share ``mass``."""
    transition, chosen = sparse_rows(np.random.default_rng(seed), len(_alphabet(alphabet, "alphabet")), successors,
                                     mass)
    stationary = _stationary_distribution(transition)
    return MarkovChain(alphabet, transition, stationary, chosen, seed)


def sparse_rows(rng: np.random.Generator, k: int, successors: int, mass: float) -> tuple[np.ndarray, list[list[int]]]:
    """A (k, k) transition matrix whose rows each give ``successors`` distinct next states (self allowed)
    Dirichlet(1) shares of ``mass`` and spread the rest evenly; and the sorted successor lists."""
    if not isinstance(successors, int) or not 1 <= successors <= k:
        raise ValueError(f"successors must be an integer between 1 and {k} (the alphabet size), got {successors!r}")
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass!r}")
    if successors == k and mass != 1:
        raise ValueError(f"mass must be 1 when successors={k} covers the whole alphabet (got mass={mass!r})")
    rest = (1 - mass) / (k - successors) if successors < k else 0.0
    transition = np.full((k, k), rest)
    chosen = []
    for i in range(k):
        targets = rng.choice(k, size=successors, replace=False)
        transition[i, targets] = rng.dirichlet(np.ones(successors)) * mass
        chosen.append(sorted(int(j) for j in targets))
    return transition, chosen


def _closed_classes(transition: np.ndarray) -> int:
    """How many closed communicating classes the chain has (1 means a unique stationary distribution)."""
    k = len(transition)
    reach = (transition > 0) | np.eye(k, dtype=bool)
    for _ in range(max(1, math.ceil(math.log2(k)))):
        reach = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
    recurrent = [i for i in range(k) if all(reach[j, i] for j in np.flatnonzero(reach[i]))]
    return len({tuple(np.flatnonzero(reach[i])) for i in recurrent})


def _stationary_distribution(transition: np.ndarray) -> np.ndarray:
    """Solve pi (P - I) = 0 with sum(pi) = 1; refused when the chain has no unique solution."""
    classes = _closed_classes(transition)
    if classes != 1:
        raise ValueError(f"the chain has {classes} closed classes, so no unique stationary distribution; "
                         f"use mass < 1 or another seed")
    k = len(transition)
    system = transition.T - np.eye(k)
    system[-1] = 1.0
    rhs = np.zeros(k)
    rhs[-1] = 1.0
    pi = np.clip(np.linalg.solve(system, rhs), 0.0, None)
    pi /= pi.sum()
    gap = np.abs(pi @ transition - pi).max()
    if gap > STATIONARY_TOLERANCE:
        raise ValueError(f"stationary distribution not found to {STATIONARY_TOLERANCE} (|pi @ P - pi| = {gap:.3g})")
    return pi


def _inverse_cdf(cdf: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Per row, the first index whose cumulative probability exceeds the uniform draw in [0, 1).

    ``cdf`` rows end in exactly 1.0, so a zero-probability state is never drawn."""
    return (cdf <= uniform[:, None]).sum(axis=1)


def _cdf(probabilities: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(probabilities, axis=-1)
    return cdf / cdf[..., -1:]


def sample_states(chain, records: int, length: int, seed: int) -> np.ndarray:
    """(records, length) paths of ``chain.state_chain()``: the first state from its initial distribution, then
    transitions; deterministic in the seed. The states are letters, or r K + x for a regime chain."""
    for name, value in (("records", records), ("length", length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    initial, transition = chain.state_chain()
    rng = np.random.default_rng(seed)
    uniforms = rng.random((length, records))
    transition_cdf = _cdf(transition)
    states = np.empty((length, records), dtype=np.intp)
    states[0] = _inverse_cdf(np.broadcast_to(_cdf(initial), (records, len(initial))), uniforms[0])
    for t in range(1, length):
        states[t] = _inverse_cdf(transition_cdf[states[t - 1]], uniforms[t])
    return states.T


def sample_records(chain, records: int, length: int, seed: int) -> list[str]:
    """``records`` strings of ``length`` letters of either family; deterministic in the seed."""
    states = sample_states(chain, records, length, seed)
    letters = np.array(list(chain.alphabet), dtype="<U1")[states % len(chain.alphabet)]
    return [row.tobytes().decode("utf-32-le") for row in np.ascontiguousarray(letters)]


def _fasta_name(chain, index: int) -> str:
    return f"{chain.kind}_{chain.seed}_{index:05d}"


def render_files(chain, records: list[str]) -> dict[str, bytes]:
    """The bytes of ``chain.fasta`` and ``chain.json`` (in writing order), so a rerun can compare before writing."""
    lengths = {len(r) for r in records}
    if len(lengths) != 1:
        raise ValueError(f"records must be a non-empty list of equally long strings, got lengths {sorted(lengths)}")
    unknown = set("".join(records)) - set(chain.alphabet)
    if unknown:
        raise ValueError(f"records hold letters outside the chain's alphabet: {''.join(sorted(unknown))!r}")
    lines = []
    for i, record in enumerate(records):
        lines.append(f">{_fasta_name(chain, i)}")
        lines.extend(record[k:k + FASTA_LINE] for k in range(0, len(record), FASTA_LINE))
    description = {**chain.to_json(), "records": len(records), "length": lengths.pop()}
    return {CHAIN_FASTA: ("\n".join(lines) + "\n").encode("ascii"),
            CHAIN_JSON: json.dumps(description, indent=1).encode()}


def write_synthetic(out, chain, records: list[str]) -> bool:
    """Write ``out/chain.fasta`` then ``out/chain.json``, each atomically (the json's presence means complete);
    returns False, writing nothing, when ``out`` already holds exactly these files. A file at ``out``, or a
    directory holding anything else, is a ValueError naming what is there."""
    out = Path(out)
    files = render_files(chain, records)
    problem = _output_problem(out, files)
    if problem:
        raise ValueError(f"--out {out} {problem}; choose an empty or new directory")
    if out.is_dir() and set(files) <= {p.name for p in out.iterdir()}:
        return False
    out.mkdir(parents=True, exist_ok=True)
    for stale in (p for p in out.glob(".chain.*") if _TEMPORARY.match(p.name)):
        stale.unlink()
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    return True


# what ``atomic_write_bytes`` leaves behind when a writer is killed mid-write
_TEMPORARY = re.compile(r"^\.chain\.(json|fasta)\.tmp\d+$")


def _output_problem(out: Path, files: dict[str, bytes]) -> str | None:
    """Why ``out`` cannot take these files: it is a file, or holds anything but (some of) exactly these bytes."""
    if out.exists() and not out.is_dir():
        return "is a file, not a directory"
    if not out.exists():
        return None
    entries = [p for p in sorted(out.iterdir()) if not _TEMPORARY.match(p.name)]
    foreign = [p.name for p in entries if p.name not in files]
    if foreign:
        return f"is not empty: it holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}"
    differing = [p.name for p in entries if not p.is_file() or p.read_bytes() != files[p.name]]
    if differing:
        return f"holds a different corpus ({', '.join(differing)} differ)"
    return None
