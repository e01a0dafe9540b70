"""Dense weights from per-rank EMA files: ZeRO-3 partitions with padding, whole copies, path resolution."""
import json

import pytest
import torch

from pipeline.runtime.checkpoint import CheckpointError
from pipeline.runtime.weights import consolidate, ema_state_dict, resolve_checkpoint


def test_zero3_partitions_with_padding_consolidate_by_hand():
    # 7 elements over 3 ranks: partitions of ceil(7/3) = 3, the last padded with 2 zeros
    pieces = [torch.tensor([0., 1., 2.]), torch.tensor([3., 4., 5.]), torch.tensor([6., 0., 0.])]
    assert torch.equal(consolidate(pieces, torch.Size([7])), torch.arange(7.))
    pieces = [torch.arange(3.), torch.arange(3., 6.)]  # a (2, 3) tensor over 2 ranks
    assert torch.equal(consolidate(pieces, torch.Size([2, 3])), torch.arange(6.).view(2, 3))
    whole = torch.randn(2, 3)  # ZeRO 0-2: every rank holds the whole tensor
    assert torch.equal(consolidate([whole, whole.clone()], whole.shape), whole)


def _write_checkpoint(directory, world_size, shadows):
    directory.mkdir(parents=True)
    (directory / "meta.json").write_text(json.dumps({"world_size": world_size}))
    for rank, shadow in enumerate(shadows):
        torch.save({"ema": {"shadow": shadow, "updates": 1}}, directory / f"rank{rank:05d}.pt")


def test_ema_state_dict_from_two_zero3_ranks(tmp_path):
    model = torch.nn.Linear(3, 1)  # weight (1, 3): partitions of 2; bias (1,): partitions of 1
    step = tmp_path / "run" / "checkpoints" / "step_00000004"
    _write_checkpoint(step, 2, [[torch.tensor([1., 2.]), torch.tensor([9.])],
                                [torch.tensor([3., 0.]), torch.tensor([0.])]])
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000004")
    for given in (tmp_path / "run", tmp_path / "run" / "checkpoints", step):
        assert resolve_checkpoint(given) == step
    state = ema_state_dict(step, model)
    assert torch.equal(state["weight"], torch.tensor([[1., 2., 3.]])) and torch.equal(state["bias"], torch.tensor([9.]))
    model.load_state_dict(state)  # names and shapes fit the model


def test_missing_or_truncated_rank_files_are_named(tmp_path):
    model = torch.nn.Linear(3, 1)
    step = tmp_path / "step"
    _write_checkpoint(step, 2, [[torch.zeros(2), torch.zeros(1)]])
    with pytest.raises(CheckpointError, match=r"rank00001.pt: missing"):
        ema_state_dict(step, model)
    (step / "rank00001.pt").write_bytes((step / "rank00000.pt").read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"rank00001.pt: unreadable, truncated or corrupt"):
        ema_state_dict(step, model)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_checkpoint(tmp_path / "elsewhere")
