"""An exact judge (``markov:CHAIN``) on a synthetic corpus: during training (``train.exact_judge``: the logged
samples scored exactly, in ``metrics.jsonl`` and the curves) and in the evaluation stage (the held-out row scores
the chain's own entropy rate; the teacher rows, the best-temperature control and the exact denoiser's rows carry the
exact metrics); a chain
that does not fit the corpus is refused with the reason."""
from __future__ import annotations

import json

import pytest

from data_prep.config import ConfigError, from_dict
from data_prep.prepare import prepare
from data_prep.regime_chain import load_chain
from data_prep.synthetic import make_markov_chain, sample_records, write_synthetic
from data_prep.tokenizers import build_tokenizer
from pipeline.config import Config, EvaluateConfig
from pipeline.measure.judge import JudgeError
from pipeline.measure.plots import read_metrics
from pipeline.runtime.distributed import run_ranks
from pipeline.runtime.loop import exact_judge_for
from pipeline.stages.convert import convert
from pipeline.stages.evaluate import main, make_judge
from tests.conftest import tiny_prepare_config
from tests.pipeline.stages.test_pretrain import _run_pretrain, settings


@pytest.fixture(scope="module")
def chain_corpus(tmp_path_factory):
    """A 3-successor chain, 60 records of 400 letters, prepared with the protein tokenizer at L = 64."""
    out = tmp_path_factory.mktemp("markov")
    chain = make_markov_chain(successors=3, seed=11)
    write_synthetic(out / "corpus", chain, sample_records(chain, 60, 400, seed=12))
    prepare(tiny_prepare_config(out / "data", inputs=[str(out / "corpus" / "chain.fasta")], tokenizer="protein",
                                val_fraction=0.2), log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def markov_teacher(chain_corpus):
    run_ranks(_run_pretrain, 1, settings(chain_corpus / "data", chain_corpus / "run", model__vocab_size=28,
                                         train__max_steps=40, train__eval_every=40, train__checkpoint_every=40,
                                         train__sample_every=20, train__sample_count=8, train__sample_steps=[8],
                                         train__exact_judge=f"markov:{chain_corpus / 'corpus'}", optim__lr=1e-2))
    return convert(chain_corpus / "run", chain_corpus / "teacher", log=lambda _: None)


@pytest.mark.distributed
def test_training_logs_the_exact_scores_of_its_samples(chain_corpus, markov_teacher):
    metrics = read_metrics(chain_corpus / "run" / "metrics.jsonl")
    for step in (20, 40):
        assert 0 <= metrics[step]["exact/invalid_rate_8steps"] <= 1
        assert metrics[step]["exact/nll_per_letter_8steps"] > 0 and "exact/bigram_tv_8steps" in metrics[step]
    assert (chain_corpus / "run" / "curves.png").is_file()


@pytest.mark.distributed
def test_exact_evaluation_rows_and_controls(chain_corpus, markov_teacher, tmp_path):
    out = tmp_path / "eval"
    args = ["--config", str(tmp_path / "none.yaml")]
    (tmp_path / "none.yaml").write_text("tracking: {backend: none}\n")
    assert main(args + ["--set", f"teacher={markov_teacher}", "--set", f"student={markov_teacher}",
                        "--set", f"data={chain_corpus / 'data'}", "--set", f"out={out}",
                        "--set", f"judge=markov:{chain_corpus / 'corpus'}", "--set", "teacher_steps=[4,32]",
                        "--set", "student_steps=[4]", "--set", "student_samplers=[ancestral]",
                        "--set", "num_samples=24", "--set", "batch_size=12", "--set", "entropy_control=false",
                        "--set", "exact_control_temperatures=[0.7,1.0]", "--set", "bootstrap_rounds=200",
                        "--set", "orders=[random,dispersed:3]"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    per_order = [("teacher", 4, None), ("teacher", 32, None), ("student", 4, None), ("teacher", 4, "best temperature"),
                 ("exact denoiser", 4, None), ("exact denoiser", 32, None)]
    assert [(r["model"], r["steps"], r["control"], r["order"]) for r in rows] == [("held-out text", None, None, None)] + [
        (*cell, order) for order in ("random", "dispersed:3") for cell in per_order]
    # a perfect denoiser on a first-order chain: most of its few-step error is the order (spec §11)
    random4, dispersed4 = (next(r for r in rows if r["model"] == "exact denoiser" and r["steps"] == 4
                                and r["order"] == order) for order in ("random", "dispersed:3"))
    assert dispersed4["nll_per_letter_interval"][1] < random4["nll_per_letter_interval"][0]
    assert dispersed4["nll_per_letter"] < random4["nll_per_letter"] - 0.3, (dispersed4["nll_per_letter"],
                                                                             random4["nll_per_letter"])
    rows = rows[:7]
    chain = load_chain(chain_corpus / "corpus")
    held_out = rows[0]
    low, high = held_out["nll_per_letter_interval"]
    assert low - 0.05 < chain.entropy_rate < high + 0.05  # real chunks of the chain score its entropy rate
    assert held_out["invalid_rate"] < 0.01 and held_out["empty_samples"] == 0
    best = rows[4]
    assert best["temperature"] in (0.7, 1.0)
    exact4, exact32 = rows[-2:]  # a perfect denoiser: N-step sampling costs it only the independent draws
    assert exact32["invalid_rate"] < 0.05 and exact32["nll_per_letter"] < exact4["nll_per_letter"] - 0.5
    assert exact4["invalid_rate"] > 3 * max(exact32["invalid_rate"], 0.005)
    table = (out / "results.md").read_text()
    assert "| exact NLL / letter | invalid | bigram TV | letter entropy |" in table
    assert "| exact denoiser | ancestral | dispersed:3 | 4 |" in table
    assert "teacher (best temperature by bigram TV)" in table
    for name in ("nll_per_letter", "invalid_rate", "bigram_tv", "unigram_entropy", "seconds"):
        assert (out / f"{name}_vs_nfe.png").is_file()


def test_a_chain_that_does_not_fit_the_corpus_is_refused(tmp_path, tiny_data):
    protein = build_tokenizer("protein", iter(()))
    chain = make_markov_chain(successors=2, seed=0, alphabet="ACJ")
    write_synthetic(tmp_path / "foreign", chain, sample_records(chain, 2, 10, seed=0))
    cfg = lambda judge: from_dict(EvaluateConfig, {"teacher": "t", "data": "d", "judge": judge})  # noqa: E731
    with pytest.raises(JudgeError, match="'J'"):
        make_judge(cfg(f"markov:{tmp_path / 'foreign'}"), protein)
    with pytest.raises(JudgeError, match="nowhere"):
        make_judge(cfg(f"markov:{tmp_path / 'nowhere'}"), protein)
    training = from_dict(Config, {"data": {"path": str(tiny_data)}, "model": {"vocab_size": 500},
                                  "train": {"exact_judge": f"markov:{tmp_path / 'foreign'}"}})
    with pytest.raises(ConfigError, match="train.exact_judge: .*'J'"):
        exact_judge_for(training, protein)
    with pytest.raises(ConfigError, match="train.exact_judge"):
        from_dict(Config, {"data": {"path": str(tiny_data)}, "train": {"exact_judge": "smollm2"}})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "chain.json").write_text('{"format": 1, "kind": "markov"')
    with pytest.raises(JudgeError, match="chain.json"):
        make_judge(cfg(f"markov:{tmp_path / 'broken'}"), protein)


@pytest.mark.distributed
def test_a_perfect_reward_makes_the_8_step_student_beat_its_teacher(chain_corpus, markov_teacher, tmp_path):
    """End to end with ``distill.reward: exact`` (the chain's log-likelihood minus the rollout's log-probability,
    what the discriminator's reward estimates) on 8-step rollouts: distil, convert, evaluate. The student's
    8-step samples must score a lower exact NLL and fewer invalid transitions than its teacher's, their
    intervals apart: a policy-gradient update that lost its sign, its log-probabilities or its advantages fails."""
    from tests.pipeline.stages.test_distill import _run_distill, distill_settings

    corpus = chain_corpus / "corpus"
    cfg = distill_settings(chain_corpus / "data", markov_teacher, tmp_path / "distill", model__vocab_size=28,
                           train__max_steps=60, train__eval_every=1000, train__checkpoint_every=60,
                           train__log_every=10, train__exact_judge=f"markov:{corpus}",
                           optim__lr=3e-3, discriminator_optim__lr=1e-4)
    cfg["distill"].update(reward="exact", rollout_steps=8, rollout_rows=16, tau_per="group")
    result = run_ranks(_run_distill, 1, cfg)[0]
    assert "error" not in result, result
    curves = read_metrics(tmp_path / "distill" / "metrics.jsonl")
    assert curves[0]["exact/nll_per_letter_4steps"] > curves[60]["exact/nll_per_letter_4steps"]  # from the teacher on
    correlations = [m["advantage/exact_correlation"] for m in curves.values() if "advantage/exact_correlation" in m]
    assert len(correlations) == 6 and min(correlations) > 0.5  # a perfect reward ranks the rows by their quality
    student = convert(tmp_path / "distill", tmp_path / "student", log=lambda _: None)
    (tmp_path / "none.yaml").write_text("tracking: {backend: none}\n")
    out = tmp_path / "eval"
    assert main(["--config", str(tmp_path / "none.yaml"), "--set", f"teacher={markov_teacher}",
                 "--set", f"student={student}", "--set", f"data={chain_corpus / 'data'}", "--set", f"out={out}",
                 "--set", f"judge=markov:{corpus}", "--set", "teacher_steps=[8]", "--set", "student_steps=[8]",
                 "--set", "student_samplers=[ancestral]", "--set", "num_samples=128", "--set", "batch_size=64",
                 "--set", "entropy_control=false", "--set", "exact_control_temperatures=[]",
                 "--set", "exact_denoiser=false", "--set", "bootstrap_rounds=300"]) == 0
    rows = {r["model"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    teacher, distilled = rows["teacher"], rows["student"]
    for key in ("nll_per_letter", "invalid_rate"):
        assert distilled[f"{key}_interval"][1] < teacher[f"{key}_interval"][0], (key, distilled[key], teacher[key])
