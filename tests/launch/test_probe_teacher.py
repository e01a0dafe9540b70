"""The teacher probe against the exact posterior itself (no error) and a uniform model (under-confident)."""
from __future__ import annotations

import pytest
import torch

from data_prep.synthetic import make_markov_chain, sample_records
from data_prep.tokenizers import build_tokenizer
from launch.bench.probe_teacher import probe
from pipeline.measure.exact_denoiser import ChainPosterior
from pipeline.measure.exact_judge import ExactJudge

PROTEIN = build_tokenizer("protein", iter(()))
V = PROTEIN.vocab_size


def rows(chain, count=32, length=34):
    letters = sample_records(chain, count, length - 2, seed=5)
    return torch.tensor([[PROTEIN.bos_id, *PROTEIN.encode(r), PROTEIN.eos_id] for r in letters])


def test_the_exact_posterior_has_no_error_and_a_uniform_model_is_under_confident():
    chain = make_markov_chain(seed=2)
    exact = ChainPosterior(ExactJudge(chain, PROTEIN), V)
    data = rows(chain)
    perfect = probe(exact, exact, data, [0.9, 0.5], seed=0)
    for r in perfect:
        assert r["kl_exact_teacher"] == pytest.approx(0.0, abs=1e-5) and r["argmax_disagreement"] == 0.0
        assert r["entropy_teacher"] == pytest.approx(r["entropy_exact"], abs=1e-5) and r["positions"] > 0
    uniform = probe(lambda z, sigma: torch.zeros(*z.shape, V + 1), exact, data, [0.9, 0.5], seed=0)
    for r, p in zip(uniform, perfect):
        assert r["positions"] == p["positions"]  # the same masks for every model
        assert r["kl_exact_teacher"] > 0.5 and r["entropy_teacher"] > r["entropy_exact"] + 0.3
