"""Sampling from bundles: reproducible, independent of the batch size, prefixes kept, RGAS counted, bad input."""
import json

import pytest
import torch

from pipeline.stages.convert import convert
from pipeline.runtime.distributed import run_ranks
from pipeline.stages.sample import main
from tests.pipeline.stages.test_distill import _run_distill, distill_settings


@pytest.fixture(scope="module")
def bundles(tiny_data, teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    run_ranks(_run_distill, 1, distill_settings(tiny_data, teacher, out / "run", train__max_steps=1,
                                                train__checkpoint_every=1, distill__rollout_order="dispersed:2"))
    quiet = lambda _: None  # noqa: E731
    return {"teacher": convert(teacher, out / "teacher", log=quiet),
            "student": convert(out / "run", out / "student", log=quiet)}


def run_sampler(bundle, out, *extra) -> list[dict]:
    assert main(["--bundle", str(bundle), "--out", str(out), *extra]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.distributed
def test_samples_are_reproducible_and_do_not_depend_on_the_batch_size(bundles, tmp_path):
    args = ["--steps", "8", "--num-samples", "4", "--seed", "3"]
    a = run_sampler(bundles["teacher"], tmp_path / "a.jsonl", *args, "--batch-size", "4")
    b = run_sampler(bundles["teacher"], tmp_path / "b.jsonl", *args, "--batch-size", "2")
    c = run_sampler(bundles["teacher"], tmp_path / "c.jsonl", *args[:-1], "4", "--batch-size", "4")
    assert [r["token_ids"] for r in a] == [r["token_ids"] for r in b]
    assert [r["token_ids"] for r in a] != [r["token_ids"] for r in c]
    assert len(a) == 4 and all(len(r["token_ids"]) == 64 and r["masks_left"] == 0 for r in a)
    assert {r["batch"] for r in b} == {0, 1} and all(1 <= r["nfe"] <= 8 for r in a)
    assert all(r["discriminator_forward"] == 0 and r["noise_removal_calls"] <= 1 for r in a)


@pytest.mark.distributed
def test_a_low_temperature_takes_the_most_likely_token(bundles, tmp_path):
    """One step from all-[MASK] unmasks every position at once; at T -> 0 each takes argmax x_θ, whatever the seed."""
    import torch

    from pipeline.bundle import load_bundle

    bundle = load_bundle(bundles["teacher"])
    z = torch.full((1, bundle.seq_len), bundle.mask_id)
    with torch.no_grad():
        logits = bundle.model(z, torch.zeros(1))[0]
    logits[:, bundle.mask_id] = -float("inf")
    args = ["--steps", "1", "--num-samples", "2", "--temperature", "1e-4"]
    cold = [run_sampler(bundles["teacher"], tmp_path / f"{s}.jsonl", *args, "--seed", s) for s in ("0", "1")]
    assert cold[0][0]["token_ids"] == cold[0][1]["token_ids"] == cold[1][0]["token_ids"] == logits.argmax(-1).tolist()
    warm = run_sampler(bundles["teacher"], tmp_path / "warm.jsonl", "--steps", "1", "--num-samples", "2")
    assert warm[0]["token_ids"] != warm[1]["token_ids"] and warm[0]["temperature"] == 1.0


@pytest.mark.distributed
def test_a_prefix_survives_sampling(bundles, tmp_path):
    from data_prep.tokenizers import load_tokenizer

    tok = load_tokenizer(bundles["student"] / "tokenizer")
    rows = run_sampler(bundles["student"], tmp_path / "p.jsonl", "--steps", "4", "--num-samples", "2",
                       "--prefix", "MACBETH. So foul and fair a day")
    expected = [tok.bos_id] + tok.encode("MACBETH. So foul and fair a day")
    assert all(r["token_ids"][: len(expected)] == expected for r in rows)
    assert all(r["text"].startswith("MACBETH. So foul and fair a day") for r in rows)


@pytest.mark.distributed
def test_rgas_runs_on_a_student_bundle_and_counts_the_discriminator(bundles, tmp_path):
    rows = run_sampler(bundles["student"], tmp_path / "r.jsonl", "--steps", "8", "--sampler", "rgas",
                       "--num-samples", "2")
    # 4 tilting steps (forward and backward), 4 re-ranking steps (one batched forward each)
    assert all(r["discriminator_forward"] == 8 and r["discriminator_backward"] == 4 for r in rows)
    plain = run_sampler(bundles["student"], tmp_path / "s.jsonl", "--steps", "8", "--num-samples", "2")
    assert [r["token_ids"] for r in rows] != [r["token_ids"] for r in plain]


@pytest.mark.distributed
def test_a_student_samples_in_its_distillation_order_unless_told_otherwise(bundles, tmp_path):
    args = ["--steps", "8", "--num-samples", "2"]
    student = run_sampler(bundles["student"], tmp_path / "s.jsonl", *args)
    assert all(r["order"] == "dispersed:2" and r["nfe"] == 8 and r["noise_removal_calls"] == 0 for r in student)
    teacher = run_sampler(bundles["teacher"], tmp_path / "t.jsonl", *args)
    assert {r["order"] for r in teacher} == {"random"}
    told = run_sampler(bundles["student"], tmp_path / "r.jsonl", *args, "--order", "random")
    assert {r["order"] for r in told} == {"random"} and told[0]["token_ids"] != student[0]["token_ids"]
    margin = run_sampler(bundles["teacher"], tmp_path / "m.jsonl", *args, "--order", "margin")
    assert {r["order"] for r in margin} == {"margin"} and all(r["masks_left"] == 0 for r in margin)


@pytest.mark.distributed
def test_bad_orders_are_refused_by_name(bundles, tmp_path, capsys):
    import shutil

    out = tmp_path / "x.jsonl"
    for spec, message in (("sideways", "unknown order 'sideways'"), ("dispersed:0", "must be an integer >= 1")):
        with pytest.raises(SystemExit):
            main(["--bundle", str(bundles["teacher"]), "--out", str(out), "--steps", "4", "--order", spec])
        assert message in capsys.readouterr().err
    assert main(["--bundle", str(bundles["teacher"]), "--out", str(out), "--steps", "4", "--order", "dispersed:65"]) == 2
    assert "exclusion distance 65 exceeds the sequence length 64" in capsys.readouterr().err
    tampered = tmp_path / "tampered"
    shutil.copytree(bundles["student"], tampered)
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["sampling"]["order"] = "backwards"
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    assert main(["--bundle", str(tampered), "--out", str(out), "--steps", "4"]) == 2
    assert "manifest.json: sampling.order: unmasking order 'backwards': unknown order" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.distributed
def test_bad_requests_are_refused_and_write_nothing(bundles, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    cases = [
        ([str(bundles["teacher"]), "--steps", "0"], "--steps: 0; from 1 to 65,536"),
        ([str(bundles["teacher"]), "--steps", "100000000"], "--steps: 100000000; from 1 to 65,536"),
        ([str(bundles["teacher"]), "--steps", "4", "--temperature", "0"], "--temperature: 0.0; it must be positive"),
        ([str(bundles["teacher"]), "--steps", "4", "--sampler", "rgas"], "has no discriminator (teacher bundle)"),
        ([str(bundles["student"]), "--steps", "4", "--prefix", "word " * 200], "leave no room in sequences of 64"),
        ([str(tmp_path / "nowhere"), "--steps", "4"], "not a bundle (no manifest.json)"),
    ]
    if not torch.cuda.is_available():
        cases.append(([str(bundles["teacher"]), "--steps", "4", "--device", "cuda"], "--device cuda: this torch"))
    for (bundle, *extra), message in cases:
        assert main(["--bundle", bundle, "--out", str(out), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
    nested = tmp_path / "new" / "folder" / "s.jsonl"  # folders that do not exist yet are made
    assert len(run_sampler(bundles["teacher"], nested, "--steps", "2", "--num-samples", "1")) == 1
    (tmp_path / "file").write_text("")
    assert main(["--bundle", str(bundles["teacher"]), "--out", str(tmp_path / "file" / "s.jsonl"), "--steps", "2"]) == 2
    assert "file" in capsys.readouterr().err
