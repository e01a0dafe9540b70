"""Pre-training under tensor parallelism (megatron-core) x ZeRO (and activation checkpointing) against one dense
process, on CPU ranks over gloo."""
import pytest
import torch
from safetensors.torch import load_file

from data_prep.config import from_dict
from pipeline.config import Config
from pipeline.runtime.distributed import run_ranks
from pipeline.runtime.engine import build_model
from pipeline.runtime.weights import ema_state_dict, resolve_checkpoint
from pipeline.stages.convert import convert
from tests.pipeline.stages.test_pretrain import _run_pretrain, metrics, settings

CLIP = {"optim__grad_clip": 0.05}  # small enough to clip every step


def _losses(out):
    logged = metrics(out)
    return [logged[s]["train/loss_nats"] for s in range(1, 7)], [logged[s]["val/nelbo_nats"] for s in (3, 6)]


@pytest.mark.distributed
@pytest.mark.parametrize("tensor, data, zero, dropout", [(2, 1, 1, 0.1), (2, 2, 3, 0.0)])
def test_tensor_parallel_pretraining_matches_one_dense_process(tiny_data, tmp_path, tensor, data, zero, dropout):
    """The split runs recompute activations (with dropout in the first case): same losses as the dense run."""
    dense = settings(tiny_data, tmp_path / "dense", data__batch_size=4, train__zero_stage=0, model__dropout=dropout,
                     **CLIP)
    split = settings(tiny_data, tmp_path / "split", data__batch_size=4 // data, train__zero_stage=zero,
                     model__dropout=dropout, model__tensor_parallel=tensor,
                     model__activation_checkpointing=True, **CLIP)
    reference = run_ranks(_run_pretrain, 1, dense)[0]
    results = run_ranks(_run_pretrain, tensor * data, split)
    assert "error" not in reference and all("error" not in r for r in results), results
    (train_a, val_a), (train_b, val_b) = _losses(tmp_path / "dense"), _losses(tmp_path / "split")
    assert train_b == pytest.approx(train_a, abs=5e-5) and val_b == pytest.approx(val_a, abs=5e-5)
    assert train_a[-1] != train_a[0]
    # the split run's EMA, read from its rank files (TP shards x ZeRO partitions) and converted, is the dense one's
    with torch.device("meta"):
        shapes = build_model(from_dict(Config, dense).model)
    expected = ema_state_dict(resolve_checkpoint(tmp_path / "dense"), shapes)
    bundle = load_file(convert(tmp_path / "split", tmp_path / "bundle", log=lambda _: None) / "model.safetensors")
    assert bundle.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.allclose(bundle[name], value, atol=1e-5), name


@pytest.mark.distributed
def test_tensor_parallel_run_resumes_bit_identically(tiny_data, tmp_path):
    full = settings(tiny_data, tmp_path / "full", model__tensor_parallel=2, model__dropout=0.1, train__zero_stage=2)
    run_ranks(_run_pretrain, 2, full)
    part = settings(tiny_data, tmp_path / "part", model__tensor_parallel=2, model__dropout=0.1, train__zero_stage=2,
                    train__max_steps=3)
    run_ranks(_run_pretrain, 2, part)
    part["train"]["max_steps"] = 6
    run_ranks(_run_pretrain, 2, part)  # resumes from step 3
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    changed = dict(part, model={**part["model"], "tensor_parallel": 1})
    changed["train"] = {**part["train"], "max_steps": 9}
    (result,) = run_ranks(_run_pretrain, 1, changed)
    assert "written with model.tensor_parallel = 2, this job has 1" in result["error"]
