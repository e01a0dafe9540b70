"""Distillation under tensor parallelism (megatron-core) x ZeRO against one dense process: the teacher (trained
dense), the student, its EMA and the discriminator split over 2 CPU ranks; two trainable engines per process."""
import pytest
import torch
from safetensors.torch import load_file

from pipeline.stages.convert import convert
from pipeline.runtime.distributed import run_ranks
from pipeline.measure.plots import read_metrics
from tests.pipeline.stages.test_distill import _run_distill, distill_settings

CLIP = {"optim__grad_clip": 0.02, "discriminator_optim__grad_clip": 0.02}  # clips every step
KEYS = ("discriminator/loss", "discriminator/accuracy", "student/loss", "student/kl_step1", "student/kl_step2",
        "student/entropy", "reward/mean")


# a ξ_i per position, redrawn at every step, and the mixture match at every step (its likelihood over vocab shards)
LATENT = {"distill__latent": 8, "distill__latent_lr_scale": 10.0, "distill__latent_kl": "marginal",
          "distill__latent_input": "positions", "distill__latent_redraw": "step", "distill__latent_match": 1.0,
          "distill__latent_match_at": "every", "distill__latent_match_draws": 2}


@pytest.mark.distributed
@pytest.mark.parametrize("data, zero, latent", [(1, 1, LATENT), (2, 3, {})], ids=["tp2-zero1-latent", "tp2-dp2-zero3"])
def test_tensor_parallel_distillation_matches_one_dense_process(tiny_data, teacher, tmp_path, data, zero, latent):
    """The first case with the latent-conditioned student (our extension): its ξ projection is replicated like the
    σ embedding; the second without."""
    dense = distill_settings(tiny_data, teacher, tmp_path / "dense", distill__rollout_rows=16, **CLIP, **latent)
    split = distill_settings(tiny_data, teacher, tmp_path / "split", distill__rollout_rows=16 // data,
                             train__zero_stage=zero, model__tensor_parallel=2, **CLIP, **latent)
    reference = run_ranks(_run_distill, 1, dense)[0]
    results = run_ranks(_run_distill, 2 * data, split)
    assert "error" not in reference and all("error" not in r for r in results), results
    a, b = read_metrics(tmp_path / "dense" / "metrics.jsonl"), read_metrics(tmp_path / "split" / "metrics.jsonl")
    for step in range(1, 7):
        for key in KEYS + ("student/match_kl",) * bool(latent):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=2e-5), (step, key)
    for step in (3, 6):
        assert b[step]["val/nelbo_nats"] == pytest.approx(a[step]["val/nelbo_nats"], abs=5e-5)
    assert a[6]["student/loss"] != a[1]["student/loss"]
    # the bundles (EMA student, discriminator, online student) join the TP shards back into the dense tensors
    bundles = {name: convert(tmp_path / name, tmp_path / f"{name}_bundle", online=True, log=lambda _: None)
               for name in ("dense", "split")}
    for file in ("model.safetensors", "discriminator.safetensors", "online.safetensors"):
        expected, joined = (load_file(bundles[name] / file) for name in ("dense", "split"))
        assert joined.keys() == expected.keys(), file
        for name, value in expected.items():
            assert torch.allclose(joined[name], value, atol=1e-5), (file, name)
