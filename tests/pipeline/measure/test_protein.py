"""The protein metrics against hand-computed values, and the diversity metric against known families."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from data_prep.tokenizers import ProteinTokenizer
from pipeline.measure.judge import rendered_encoder
from pipeline.measure.protein import (ProteinMetrics, clusters_per_100, counts, distinct_kmer_share, is_low_complexity,
                                      kl, longest_run, segments)
from pipeline.measure.text import render
from tests.proteins import protein_families

needs_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs2 is not installed "
                                  "(launch/test.sh installs it)")


def test_segments_are_the_proteins_between_eos_and_masks():
    assert segments("MKV\n\nAC[MASK]DE\n\n") == ["MKV", "AC", "DE"]
    assert segments("") == [] and segments("[MASK]") == []


def test_counts_and_kl_by_hand():
    c = counts("AACX[MASK]\n\nW")  # X is not a standard letter; the letters of "[MASK]" are not residues
    assert c[0] == 2 and c[1] == 1 and c[18] == 1 and c.sum() == 4
    p, q = np.zeros(20), np.zeros(20)
    p[0], q[0], q[1] = 3.5, 1.5, 2.0  # + 0.5 each: p = (4, .5, .5 ...), q = (2, 2.5, .5, ...)
    pp = np.full(20, 0.5)
    pp[0] = 4.0
    qq = np.full(20, 0.5)
    qq[0], qq[1] = 2.0, 2.5
    pp, qq = pp / pp.sum(), qq / qq.sum()
    assert kl(p, q) == pytest.approx(sum(a * math.log(a / b) for a, b in zip(pp, qq)))
    assert kl(p, p) == 0.0


def test_runs_and_kmers_by_hand():
    assert longest_run("MKAAAV\n\nWWWWQ") == 4 and longest_run("") == 0
    assert distinct_kmer_share("ABABAB") == pytest.approx(2 / 4)  # ABA BAB ABA BAB
    assert distinct_kmer_share("MK\n\nVL") == 1.0  # no 3-mer within a segment
    assert is_low_complexity("M" + "Q" * 8 + "KVLA") and not is_low_complexity("MKTAYIAKQRQISFVKSHFSQQQQQQQAC")
    assert is_low_complexity("GSGSGSGSGSGSGSGSGSGS") and not is_low_complexity("MKTAYIAKQRQISFVKSHFSRQ")


def test_rendered_protein_rows_are_read_back_as_their_ids():
    tok = ProteinTokenizer()
    ids = [tok.bos_id, *tok.encode("MKV"), tok.eos_id, *tok.encode("ACDE"), tok.eos_id]
    text, masks = render(ids, tok)
    assert masks == 0 and rendered_encoder(tok)(text) == ids[1:]  # the judge scores the closing [EOS] too


@needs_mmseqs
def test_diversity_counts_families_per_100_samples():
    family_of = protein_families(families=5, members=4, seed=4)
    texts = [s + "\n\nMK" for s in family_of]  # the longest segment of each sample is its protein
    assert clusters_per_100(texts + ["", "[MASK]", "MKV", "MKV", "MKVL"], threads=1) == pytest.approx(100 * 7 / 25)
    # no letter: no cluster; under 20 residues: one cluster per distinct string (and no mmseqs2 run)


@needs_mmseqs
def test_summary_of_samples_against_held_out_proteins():
    real = list(protein_families(families=8, members=2, seed=6))
    metrics = ProteinMetrics(real, threads=1)
    same = metrics.summarise(real, rounds=200)
    assert same["composition_kl"] == 0.0 and same["composition_kl_interval"][1] > 0
    assert same["clusters_per_100"] == pytest.approx(50.0) and same["residues"] == sum(map(len, real))
    collapsed = metrics.summarise(["Q" * 40] * 16, rounds=200)
    assert collapsed["low_complexity"] == 1.0 and collapsed["longest_run"] == 40
    assert collapsed["clusters_per_100"] == pytest.approx(100 / 16)
    assert collapsed["composition_kl_interval"][0] > 1.0 > same["composition_kl_interval"][1]
