"""The in-domain judge: a causal DiT pre-trained by the same stage, converted to a bundle of kind ``judge``,
scoring every token given its prefix; what cannot be one is refused."""
import random

import pytest
import torch

from data_prep.config import from_dict
from data_prep.tokenizers import load_tokenizer
from pipeline.bundle import load_bundle
from pipeline.config import Config
from pipeline.measure.judge import JudgeError, gen_ppl, in_domain_judge, load_judge
from pipeline.measure.plots import read_metrics
from pipeline.measure.text import render
from pipeline.runtime.checkpoint import CheckpointError
from pipeline.runtime.data import TokenShards
from pipeline.runtime.distributed import run_ranks
from pipeline.stages.convert import convert
from tests.pipeline.stages.test_pretrain import _run_pretrain, settings


@pytest.fixture(scope="module")
def judge_bundle(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("judge")
    run_ranks(_run_pretrain, 1, settings(tiny_data, out / "run", model__causal=True, train__max_steps=60,
                                         train__eval_every=60, train__checkpoint_every=60, optim__lr=1e-2))
    return convert(out / "run", out / "bundle", log=lambda _: None)


@pytest.mark.distributed
def test_the_judge_bundle_scores_every_token_given_its_prefix(judge_bundle):
    bundle = load_bundle(judge_bundle)
    assert bundle.manifest["kind"] == "judge" and bundle.manifest["model"]["causal"] is True
    logged = read_metrics(judge_bundle.parent / "run" / "metrics.jsonl")[60]
    assert "val/nll_nats" in logged and "val/nelbo_nats" not in logged  # the causal model's own metric
    assert (judge_bundle.parent / "run" / "curves.png").is_file()
    judge = load_judge(str(judge_bundle), batch_size=2)
    texts = ["To be, or not to be", "Fair is foul, and foul is fair: hover through the fog.", "A"]
    for text, (nll, count) in zip(texts, judge.score(texts)):  # brute force: one prefix at a time, no padding
        ids = [judge.bos] + judge.encode(text)
        reference = 0.0
        for k in range(1, len(ids)):
            with torch.no_grad():
                logits = bundle.model(torch.tensor([ids[:k]]), torch.zeros(1))[0, -1, : bundle.mask_id]
            reference -= torch.log_softmax(logits.double(), -1)[ids[k]].item()
        assert count == len(ids) - 1 and nll == pytest.approx(reference, rel=1e-4)


@pytest.mark.distributed
def test_the_trained_judge_prefers_real_text_to_shuffled_text(judge_bundle, tiny_data):
    judge = load_judge(str(judge_bundle))
    tok = load_tokenizer(judge_bundle / "tokenizer")
    shards = TokenShards(tiny_data, "val")
    real = [shards[i].tolist() for i in range(8)]
    shuffled = [[row[0]] + random.Random(i).sample(row[1:], len(row) - 1) for i, row in enumerate(real)]
    texts = lambda rows: [render(r, tok)[0] for r in rows]  # noqa: E731
    assert gen_ppl(judge.score(texts(real))) < 0.8 * gen_ppl(judge.score(texts(shuffled)))


@pytest.mark.distributed
def test_what_cannot_be_an_in_domain_judge_is_refused(judge_bundle, teacher, tiny_data, tmp_path):
    teacher_bundle = convert(teacher, tmp_path / "teacher", log=lambda _: None)
    with pytest.raises(JudgeError, match="a teacher bundle; an in-domain judge is a bundle of kind 'judge'"):
        in_domain_judge(teacher_bundle, "t", 4)
    with pytest.raises(JudgeError, match="not this corpus's judge"):
        in_domain_judge(judge_bundle, "j", 4, fingerprint="0" * 32)

    from pipeline.stages.distill import check_teacher
    from tests.pipeline.stages.test_distill import distill_settings

    cfg = from_dict(Config, distill_settings(tiny_data, judge_bundle, tmp_path / "run"))
    with pytest.raises(CheckpointError, match="is an autoregressive model"):
        check_teacher(cfg)
