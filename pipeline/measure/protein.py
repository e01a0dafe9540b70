"""What a protein sample is made of, next to real held-out proteins: composition, low complexity, diversity.

No pretrained protein judge exists offline, so Gen-PPL comes from the in-domain judge (a causal DiT trained on
the training split); these metrics catch what a likelihood misses:
- amino-acid composition KL(held-out ‖ samples) over the 20 standard letters, pooled over all residues (0.5
  added to every count), with a bootstrap interval over samples;
- low complexity: the share of samples whose longest single-residue run is at least ``RUN_LIMIT`` or whose
  distinct 3-mers are fewer than ``KMER_FLOOR`` of its 3-mers (on 254-residue rows of UniProt validation
  proteins: 0.6 % and 0.2 %), and the mean longest run;
- diversity: each sample's longest protein (EOS-delimited segment) clustered by mmseqs2 at ``identity`` (50 %,
  coverage 0.8, no low-complexity masking, so that a repeat is clustered too; segments under 20 residues by
  exact identity): clusters per 100 samples. A collapsed model repeats its few modes and scores low. The number
  depends on the sample count, so rows are compared at the same count (the held-out row has it too).
A sample is the rendered text of one row: segments between [EOS]s (two newlines), [MASK]s dropped.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pipeline.measure.text import MASK_TEXT

STANDARD = "ACDEFGHIKLMNPQRSTVWY"
RUN_LIMIT = 8
KMER_FLOOR = 0.7
SMOOTHING = 0.5
MIN_CLUSTERED = 20  # residues
METRICS = (  # key, column title, format
    ("composition_kl", "AA composition KL", ".4f"),
    ("low_complexity", "low-complexity share", ".3f"),
    ("longest_run", "longest run", ".1f"),
    ("clusters_per_100", "clusters / 100 (50 % id.)", ".1f"),
)
_INDEX = {c: i for i, c in enumerate(STANDARD)}
_RUNS = re.compile(r"(.)\1*")


def segments(text: str) -> list[str]:
    """The proteins of one sample: the runs of letters between [EOS]s (and [MASK]s)."""
    return [s for s in text.replace(MASK_TEXT, "\n\n").split("\n\n") if s]


def counts(text: str) -> np.ndarray:
    """How often each standard amino acid occurs in the segments of ``text`` (others are not counted)."""
    out = np.zeros(len(STANDARD))
    for c in "".join(segments(text)):
        if c in _INDEX:
            out[_INDEX[c]] += 1
    return out


def kl(reference: np.ndarray, sample: np.ndarray) -> float:
    """KL(p ‖ q) in nats between two count vectors, ``SMOOTHING`` added to every count."""
    p, q = reference + SMOOTHING, sample + SMOOTHING
    p, q = p / p.sum(), q / q.sum()
    return float((p * np.log(p / q)).sum())


def longest_run(text: str) -> int:
    return max((len(m.group()) for seg in segments(text) for m in _RUNS.finditer(seg)), default=0)


def distinct_kmer_share(text: str, k: int = 3) -> float:
    """Distinct k-mers / k-mers within the segments of one sample (1 when it has none)."""
    kmers = [seg[i: i + k] for seg in segments(text) for i in range(len(seg) - k + 1)]
    return len(set(kmers)) / len(kmers) if kmers else 1.0


def is_low_complexity(text: str) -> bool:
    return longest_run(text) >= RUN_LIMIT or distinct_kmer_share(text) < KMER_FLOOR


def mmseqs_missing() -> str | None:
    """Why the diversity metric cannot run here, or None."""
    from data_prep.proteins import MMSEQS_HELP

    return None if shutil.which("mmseqs") else f"protein diversity needs mmseqs2, which is not found: {MMSEQS_HELP}"


def clusters_per_100(texts: list[str], identity: float = 0.5, threads: int = 2) -> float:
    """Clusters of the samples' longest segments at ``identity`` (mmseqs2), per 100 samples. Segments shorter
    than ``MIN_CLUSTERED`` (too short for mmseqs2's k-mers) count once per distinct string; a sample without a
    letter joins no cluster."""
    from data_prep.proteins import cluster

    longest = [max(parts, key=len) for parts in map(segments, texts) if parts]
    long = {f"s{i}": s for i, s in enumerate(longest) if len(s) >= MIN_CLUSTERED}
    found = len({s for s in longest if len(s) < MIN_CLUSTERED})
    if long:
        with tempfile.TemporaryDirectory(prefix="protein-diversity-") as tmp:
            representative = cluster(long, identity, Path(tmp), threads, mask=False, cascade=False)
        found += len({representative.get(k, k) for k in long})
    return 100 * found / len(texts)


class ProteinMetrics:
    """The metrics above for a set of samples, against the held-out proteins' composition; used by the
    evaluation stage like a judge (``summarise`` per row)."""

    def __init__(self, reference_texts: list[str], identity: float = 0.5, threads: int = 2):
        self.reference = sum((counts(t) for t in reference_texts), np.zeros(len(STANDARD)))
        self.identity, self.threads = identity, threads

    def summarise(self, texts: list[str], rounds: int = 1000, seed: int = 0) -> dict:
        per_sample = np.stack([counts(t) for t in texts])
        picks = np.random.default_rng(seed).integers(0, len(texts), (rounds, len(texts)))
        boot = sorted(kl(self.reference, per_sample[p].sum(0)) for p in picks)
        runs = [longest_run(t) for t in texts]
        return {
            "composition_kl": kl(self.reference, per_sample.sum(0)),
            "composition_kl_interval": [boot[int(0.025 * (rounds - 1))], boot[int(0.975 * (rounds - 1))]],
            "low_complexity": sum(map(is_low_complexity, texts)) / len(texts),
            "longest_run": sum(runs) / len(runs),
            "clusters_per_100": clusters_per_100(texts, self.identity, self.threads),
            "residues": int(per_sample.sum()),
        }

