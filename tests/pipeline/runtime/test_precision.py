"""bf16 compute inside the DeepSpeed engines (their own ``torch_autocast`` section), fp32 master weights and
gradient reductions, and no device synchronisation from DeepSpeed's throughput timer."""
from __future__ import annotations

import pytest
import torch

from data_prep.config import from_dict
from pipeline.config import Config
from pipeline.runtime import engine as engine_module
from pipeline.runtime.distributed import run_ranks
from pipeline.runtime.engine import ds_config


def config(precision: str, zero_stage: int = 0) -> Config:
    return from_dict(Config, {"data": {"path": "synthetic", "batch_size": 2},
                              "model": {"size": "unit", "seq_len": 8, "vocab_size": 11, "dropout": 0.0},
                              "train": {"precision": precision, "zero_stage": zero_stage},
                              "tracking": {"backend": "none"}})


@pytest.mark.parametrize("precision, cuda, section", [("bf16", False, True), ("fp32", True, False),
                                                      ("auto", True, True), ("auto", False, False)])
def test_deepspeed_config_asks_for_bf16_autocast_exactly_when_the_stages_compute_in_bf16(monkeypatch, precision,
                                                                                        cuda, section):
    monkeypatch.setattr(engine_module, "uses_cuda", lambda: cuda)
    ds = ds_config(config(precision))
    assert ("torch_autocast" in ds) == section
    if section:  # no module safe for bf16 communication: gradients are reduced in fp32
        assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert ds["timers"] == {"throughput": {"enabled": False}}


def _engine_rank(rank: int, world_size: int, precision: str, zero_stage: int, timer: bool) -> dict:
    from deepspeed.accelerator import get_accelerator

    from pipeline.runtime.distributed import setup
    from pipeline.runtime.engine import build_engine, build_model

    setup()
    cfg = config(precision, zero_stage)
    ds = ds_config(cfg)
    if timer:  # DeepSpeed's default
        del ds["timers"]
    torch.manual_seed(0)
    engine = build_engine(build_model(cfg.model, zero_stage, ds), cfg.optim, 10, ds)
    accelerator, syncs = get_accelerator(), []
    plain_sync = accelerator.synchronize
    accelerator.synchronize = lambda *a, **k: (syncs.append(1), plain_sync(*a, **k))[1]
    x = torch.randint(0, 11, (2, 8))
    for _ in range(4):  # the timer starts synchronising at its third step
        logits = engine(x, torch.zeros(2))  # no autocast outside the engine
        engine.backward(logits.float().logsumexp(-1).mean())
        engine.step()
    accelerator.synchronize = plain_sync
    params = list(engine.module.parameters())
    return {"logits": logits.dtype, "masters": {p.dtype for p in engine.optimizer.param_groups[0]["params"]}
            if zero_stage == 0 else {p.dtype for p in params},
            "comm_dtype": any(hasattr(p, "comm_dtype") for p in params), "syncs": len(syncs)}


@pytest.mark.distributed
@pytest.mark.parametrize("zero_stage", [0, 3])
def test_engines_compute_in_bf16_with_fp32_weights_and_fp32_reductions_when_asked(zero_stage):
    bf16, fp32 = (run_ranks(_engine_rank, 1, precision, zero_stage, False)[0] for precision in ("bf16", "fp32"))
    assert bf16["logits"] == torch.bfloat16 and fp32["logits"] == torch.float32
    assert bf16["masters"] == fp32["masters"] == {torch.float32}
    assert not bf16["comm_dtype"]
    assert bf16["syncs"] == fp32["syncs"] == 0


@pytest.mark.distributed
def test_deepspeed_throughput_timer_would_synchronise_every_step():
    """The control for the timer switch: with DeepSpeed's default the same steps synchronise the device."""
    assert run_ranks(_engine_rank, 1, "fp32", 0, True)[0]["syncs"] > 0


def _distiller_rank(rank: int, world_size: int, zero_stage: int) -> dict:
    import copy

    from pipeline.runtime.distributed import setup
    from pipeline.runtime.engine import build_model
    from pipeline.stages.distill import build_distiller, initial_models

    d = setup()
    cfg = from_dict(Config, {"stage": "distill", "data": {"path": "synthetic", "batch_size": 2},
                             "model": {"size": "tiny", "seq_len": 64, "vocab_size": 50, "dropout": 0.0},
                             "distill": {"teacher": "unused: weights given", "rollout_rows": 8, "group_size": 4},
                             "train": {"zero_stage": zero_stage, "max_steps": 2, "precision": "bf16"},
                             "tracking": {"backend": "none"}})
    torch.manual_seed(0)
    weights = build_model(cfg.model).state_dict()
    plain = [m.to(d.device).eval() for m in initial_models(cfg, copy.deepcopy(weights))]
    run = build_distiller(cfg, d, weights=weights)
    z = torch.randint(0, 51, (4, 64), device=d.device)
    sigma = torch.full((4,), 0.5, device=d.device)
    out = {}
    with torch.no_grad():
        for name, engine, reference in zip(("student", "discriminator", "teacher"),
                                           (run.student, run.disc, run.teacher), plain):
            engine.eval()
            with run.autocast():
                got = engine(z, sigma)
            with torch.autocast(d.device.type, dtype=torch.bfloat16):
                want = reference(z, sigma)
            out[name] = (got.dtype, (got.float() - want.float()).abs().max().item(), want.float().abs().max().item())
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("zero_stage", [0, 3])
def test_every_distillation_engine_computes_in_bf16_like_its_plain_module(zero_stage):
    """On a GPU (one rank per GPU, as run_ranks places them) and on CPU alike; bf16 is what auto means on a GPU."""
    for name, (dtype, error, scale) in run_ranks(_distiller_rank, 1, zero_stage)[0].items():
        assert dtype == torch.bfloat16, name
        assert error <= 0.02 * scale, (name, error, scale)
