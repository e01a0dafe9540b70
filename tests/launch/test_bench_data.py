import json

from launch.bench_data import main
from tests.conftest import CORPUS


def test_benchmark_runs_and_compares_like_with_like(tmp_path):
    """One quick pass: the benchmark itself asserts that both readers yield identical batches."""
    out = tmp_path / "bench.json"
    assert main(["--input", str(CORPUS / "macbeth.txt"), "--repeat", "1", "--replicate", "2", "--seq-len", "64",
                 "--shard-mb", "0.05", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["prepare"]["shards"] >= 4 and results["prepare"]["tokens"] > 0
    for workers in ("0", "2"):
        assert results["loader"]["num_workers"][workers]["seq_per_s"] > 0
