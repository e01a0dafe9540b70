import json

import pytest

from launch.bench_distill import PHASES, main


@pytest.mark.distributed
def test_benchmark_times_every_phase_and_zero3_halves_every_models_footprint(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--size", "unit", "--seq-len", "32", "--rows", "8", "--stages", "3", "--steps", "1",
                 "--repeats", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"plain", "tp1_zero3"}
    for r in results.values():
        assert all(r["phase_s"][p] > 0 for p in PHASES) and r["rollout_tokens_per_s"] > 0
    plain, zero3 = results["plain"]["footprint_mb"][0], results["tp1_zero3"]["footprint_mb"]
    assert len(zero3) == 2
    for model in ("student", "ema", "discriminator", "teacher"):  # each co-hosted model is split over 2 ranks
        assert zero3[0][model] == pytest.approx(plain[model] / 2, rel=0.05), model
