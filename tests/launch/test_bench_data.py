import json

from launch.bench.bench_data import main
from tests.conftest import CORPUS, write_tiny_gpt2_ranks


def test_benchmark_runs_and_compares_like_with_like(tmp_path):
    """One quick pass: the benchmark itself asserts that every run of a tokenizer (workers, tasks) wrote the same
    shards and that both readers yield identical batches."""
    out = tmp_path / "bench.json"
    write_tiny_gpt2_ranks(tmp_path / "gpt2.tiktoken")
    assert main(["--input", str(CORPUS / "macbeth.txt"), "--repeat", "1", "--replicate", "2", "--seq-len", "64",
                 "--shard-mb", "0.05", "--gpt2-ranks", str(tmp_path / "gpt2.tiktoken"), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for kind in ("spm", "gpt2"):
        prepared = results["prepare"][kind]
        assert prepared["shards"] >= 4 and prepared["tokens"] > 0
        assert [r["workers"] for r in prepared["runs"].values()] == [1, 2, 2]
    for workers in ("0", "2"):
        assert results["loader"]["num_workers"][workers]["seq_per_s"] > 0
        assert results["loader"]["stream_num_workers"][workers]["seq_per_s"] > 0
