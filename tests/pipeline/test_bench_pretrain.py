import json

import pytest

from launch.bench_pretrain import main


@pytest.mark.distributed
def test_benchmark_measures_every_configuration(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--size", "unit", "--seq-len", "32", "--batch", "4", "--stages", "3", "--steps", "1",
                 "--repeats", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"plain", "zero3"}
    # ZeRO-3 keeps half of the parameters and optimizer state on each of the 2 ranks
    assert results["zero3"]["state_mb"][0] == pytest.approx(results["plain"]["state_mb"][0] / 2, rel=0.05)
