"""Gen-PPL, entropy and intervals by hand; the judge against a brute-force token-by-token reference; the
evaluation stage end to end with a tiny randomly initialised judge (CI never downloads the real one)."""
import json
import math

import pytest
import torch

from pipeline.stages.evaluate import main
from pipeline.measure.judge import JudgeError, bootstrap_interval, gen_ppl, load_judge, unigram_entropy
from tests.pipeline.stages.test_in_domain_judge import judge_bundle  # noqa: F401  (a fixture)
from tests.pipeline.stages.test_sample import bundles  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    """A 2-layer Llama over the 256 byte-level pieces, saved as a transformers model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<s>": 0, **{c: i + 1 for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="<s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=1024, bos_token_id=0, eos_token_id=0))
    out = tmp_path_factory.mktemp("judge")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_gen_ppl_entropy_and_interval_by_hand():
    assert gen_ppl([(2.0, 1), (4.0, 3)]) == pytest.approx(math.exp(6 / 4))  # token-weighted, not per text
    assert unigram_entropy([1, 1, 2, 3]) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert unigram_entropy([7, 7, 7]) == 0
    scores = [(float(i), 2) for i in range(1, 30)]
    low, high = bootstrap_interval(scores, rounds=500)
    assert low < gen_ppl(scores) < high and (low, high) == bootstrap_interval(scores, rounds=500)
    assert bootstrap_interval([(3.0, 2)] * 5) == pytest.approx((math.exp(1.5), math.exp(1.5)))


def test_the_judge_scores_every_token_given_its_prefix(tiny_judge):
    judge = load_judge(str(tiny_judge), batch_size=2)
    texts = ["To be, or not to be", "Fair is foul, and foul is fair: hover through the fog."]
    scores = judge.score(texts)
    for text, (nll, count) in zip(texts, scores):  # brute force: one prefix at a time, no padding
        ids = [judge.bos] + judge.encode(text)
        reference = 0.0
        for k in range(1, len(ids)):
            with torch.no_grad():
                logits = judge.logits(torch.tensor([ids[:k]]), torch.ones(1, k, dtype=torch.long))[0, -1]
            reference -= torch.log_softmax(logits.double(), -1)[ids[k]].item()
        assert count == len(ids) - 1 and nll == pytest.approx(reference, rel=1e-4)


def test_a_missing_judge_says_how_to_install_it(tmp_path):
    with pytest.raises(JudgeError, match="no such file or directory"):
        load_judge(str(tmp_path / "nowhere"))


@pytest.mark.distributed
def test_evaluation_writes_the_table_json_plots_and_samples(bundles, judge_bundle, tiny_judge, tiny_data,  # noqa: F811
                                                             tmp_path):
    args = ["--config", "/dev/null", "--set", f"teacher={bundles['teacher']}", "--set", f"student={bundles['student']}",
            "--set", f"data={tiny_data}", "--set", f"out={tmp_path / 'eval'}", "--set", f"judge={tiny_judge}",
            "--set", "teacher_steps=[4, 8]", "--set", "student_steps=[4]", "--set", "num_samples=4",
            "--set", "batch_size=2", "--set", "bootstrap_rounds=50", "--set", "tracking.backend=none",
            "--set", "control_student_steps=4", "--set", "control_search_steps=4", "--set", "control_search_samples=2",
            "--set", "control_search_rounds=2", "--set", f"in_domain_judge={judge_bundle}"]
    assert main(args) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"]
    assert [(r["model"], r["sampler"], r["steps"], r["control_for"]) for r in results] == [
        ("held-out text", "-", None, None), ("teacher", "ancestral", 4, None), ("teacher", "ancestral", 8, None),
        ("student", "ancestral", 4, None), ("student", "rgas", 4, None),
        ("teacher", "ancestral", 8, "student ancestral 4"), ("teacher", "ancestral", 8, "student rgas 4")]
    for r in results:
        assert r["samples"] == 4 and r["interval"][0] <= r["gen_ppl"] <= r["interval"][1] and r["masks_left"] == 0
        assert r["in_domain_interval"][0] <= r["in_domain_gen_ppl"] <= r["in_domain_interval"][1]
        assert r["in_domain_gen_ppl"] != r["gen_ppl"]
    assert all(r["nfe"] <= r["steps"] for r in results[1:])
    assert all(0.1 <= r["temperature"] <= 1.0 for r in results[1:])
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| teacher | ancestral | random | 8 | 1.00 |" in table and "| student | rgas | random | 4 | 1.00 |" in table
    assert "| teacher (entropy-matched to student rgas 4) | ancestral | random | 8 |" in table
    assert "| Gen-PPL | in-domain Gen-PPL | entropy |" in table and "in-domain judge: " in table
    for name in ("genppl_vs_nfe.png", "seconds_vs_nfe.png", "in_domain_genppl_vs_nfe.png", "samples/student_rgas_random_4.jsonl"):
        assert (tmp_path / "eval" / name).is_file()
    assert main(args + ["--set", "teacher_steps=[0]"]) == 2
    assert main(args + ["--set", "control_student_steps=16"]) == 2  # not one of student_steps
    assert main(args + ["--set", "teacher_steps=[]"]) == 2  # a control needs teacher steps
    assert main(args + ["--set", f"in_domain_judge={bundles['teacher']}"]) == 2  # not a judge bundle


def test_the_control_temperature_is_found_by_bisection(monkeypatch):
    from pipeline.stages import evaluate
    from pipeline.config import EvaluateConfig

    calls = []
    monkeypatch.setattr(evaluate, "mean_entropy",
                        lambda b, t, c, order, temperature: calls.append((order, temperature)) or 3 + temperature)
    cfg = EvaluateConfig(teacher="t", data="d", control_search_rounds=12)
    assert evaluate.matching_temperature(None, None, cfg, "o", 3.5) == pytest.approx(0.5, rel=1e-3)
    assert len(calls) == 13 and calls[0] == ("o", 1.0) and {o for o, _ in calls} == {"o"}  # searched in its order
    assert evaluate.matching_temperature(None, None, cfg, "o", 4.2) == 1.0  # the teacher is not above the target
    assert evaluate.matching_temperature(None, None, cfg, "o", 2.0) == pytest.approx(0.1, rel=1e-3)  # the floor
