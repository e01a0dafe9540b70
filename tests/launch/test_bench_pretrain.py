import json

import pytest
import torch

from launch.bench.bench_pretrain import VOCAB, bench_config, main, plain_loop
from pipeline.measure.memory import shard_parameters, state_bytes
from pipeline.runtime.benchmark import process_group_rank
from pipeline.runtime.distributed import Dist, run_ranks


@pytest.mark.distributed
def test_benchmark_measures_every_configuration(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--size", "unit", "--seq-len", "32", "--batch", "4", "--stages", "3", "--steps", "1",
                 "--repeats", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"plain", "torch_distributed", "tp1_zero3"}
    # ZeRO-3 keeps half of the parameters and optimizer state on each of the 2 ranks
    assert results["tp1_zero3"]["state_mb"][0] == pytest.approx(results["plain"]["state_mb"][0] / 2, rel=0.05)


@pytest.mark.distributed
def test_memory_plan_is_what_the_tensor_parallel_engines_hold(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--size", "tiny", "--seq-len", "16", "--batch", "2", "--stages", "0", "1", "3",
                 "--tensor-parallel", "2", "--steps", "1", "--repeats", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    dense, split = shard_parameters("tiny", VOCAB, 1), shard_parameters("tiny", VOCAB, 2)
    assert results["plain"]["state_mb"] == [pytest.approx(state_bytes(dense, 0, 1) / 2**20, rel=0.01)]
    assert dense / 2 < split < dense  # the replicated layers stay whole on both ranks
    for stage in (0, 1, 3):  # T = 2 x DP = 1 on 2 ranks
        planned = state_bytes(split, stage, 1) / 2**20
        assert results[f"tp2_zero{stage}"]["state_mb"] == pytest.approx([planned] * 2, rel=0.01), stage


def _plain_loop_losses(rank: int, world_size: int, x: torch.Tensor, steps: int) -> list[float]:
    d = process_group_rank()
    step, _, _ = plain_loop(bench_config("unit", x.shape[1], x.shape[0] // world_size, 0), d)
    rows = x.chunk(world_size)[rank]
    return [step(rows, i).item() for i in range(steps)]


@pytest.mark.distributed
def test_torch_distributed_reference_trains_as_the_one_process_reference():
    """Its rows' losses average to the one process's loss on all the rows, at the first step and after an update
    (which only matches if the gradients were averaged over the ranks)."""
    x = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    step, _, _ = plain_loop(bench_config("unit", 16, 4, 0), Dist(0, 1, 0, torch.device("cpu")))
    one_process = [step(x, i).item() for i in range(3)]
    ranks = run_ranks(_plain_loop_losses, 2, x, 3)
    assert [sum(losses) / 2 for losses in zip(*ranks)] == pytest.approx(one_process, rel=1e-6)
