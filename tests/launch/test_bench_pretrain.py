import json

import pytest

from launch.bench.bench_pretrain import VOCAB, main
from pipeline.measure.memory import shard_parameters, state_bytes


@pytest.mark.distributed
def test_benchmark_measures_every_configuration(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--size", "unit", "--seq-len", "32", "--batch", "4", "--stages", "3", "--steps", "1",
                 "--repeats", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"plain", "tp1_zero3"}
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
