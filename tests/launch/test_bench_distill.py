import json

import pytest
import torch

from launch.bench.bench_distill import PHASES, VOCAB, bench_config, main, plain_distiller
from pipeline.runtime.benchmark import process_group_rank
from pipeline.runtime.distributed import Dist, run_ranks


@pytest.mark.distributed
def test_benchmark_times_every_phase_and_zero3_halves_every_models_footprint(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--size", "unit", "--seq-len", "32", "--rows", "8", "--stages", "3", "--steps", "1",
                 "--repeats", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"plain", "torch_distributed", "tp1_zero3"}
    for r in results.values():
        assert all(r["phase_s"][p] > 0 for p in PHASES) and r["rollout_tokens_per_s"] > 0
    plain, zero3 = results["plain"]["footprint_mb"][0], results["tp1_zero3"]["footprint_mb"]
    assert len(zero3) == 2
    for model in ("student", "ema", "discriminator", "teacher"):  # each co-hosted model is split over 2 ranks
        assert zero3[0][model] == pytest.approx(plain[model] / 2, rel=0.05), model


@pytest.mark.distributed
def test_compare_mode_gives_ratios_to_its_own_baseline_and_offload_moves_the_teacher_off_the_device(tmp_path):
    out = tmp_path / "compare.json"
    assert main(["--compare", "offload", "checkpointing", "--size", "unit", "--seq-len", "32", "--rows", "8",
                 "--steps", "1", "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert list(results) == ["plain", "baseline", "offload", "checkpointing"]
    assert "host memory" in report["notes"][0]  # says what offloading means on a CPU
    base = results["baseline"]["ratios"]
    assert base["iteration_s"] == 1 and base["peak_mb"] == base["iteration_peak_mb"] == [1, 1]
    assert set(base["footprint_mb"].values()) == {1}
    for name, r in results.items():
        assert r["iteration_s"] > 0 and all(r["phase_s"][p] > 0 for p in PHASES), name
        assert all(0 < x < 100 for k in ("peak_mb", "iteration_peak_mb") for x in r["ratios"][k]), name
    offload, teacher = results["offload"]["ratios"]["footprint_mb"], results["baseline"]["footprint_mb"][0]["teacher"]
    assert offload["teacher"] == 0 and {offload[m] for m in ("student", "ema", "discriminator")} == {1}
    assert [f["teacher_offloaded"] for f in results["offload"]["footprint_mb"]] == [teacher, teacher]
    assert results["checkpointing"]["ratios"]["footprint_mb"] == base["footprint_mb"]
    planned = {name: results[name]["planned_mb"] for name in ("baseline", "offload", "checkpointing")}
    assert planned["offload"]["total"] < planned["baseline"]["total"]  # the memory planner's view, beside it
    assert planned["checkpointing"]["activations"] < planned["baseline"]["activations"]


def _weights_after_one_iteration(d: Dist, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    from pipeline.stages.distill import PhaseTimer

    run = plain_distiller(bench_config("unit", rows.shape[1], 4 * rows.shape[0], 4, 0), d)
    run.iteration(0, rows, PhaseTimer(d.device))
    return {**{f"student.{k}": v for k, v in run.student.module.state_dict().items()},
            **{f"disc.{k}": v for k, v in run.disc.module.state_dict().items()}}


def _rank_weights_after_one_iteration(rank: int, world_size: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return _weights_after_one_iteration(process_group_rank(), x.chunk(world_size)[rank])


@pytest.mark.distributed
def test_torch_distributed_reference_steps_as_the_one_process_reference():
    """One iteration on 2 ranks, each with its half of the data rows and rollouts, leaves the student and the
    discriminator where one process with all of them leaves them (only if the gradients were averaged)."""
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    one_process = _weights_after_one_iteration(Dist(0, 1, 0, torch.device("cpu")), x)
    for rank in run_ranks(_rank_weights_after_one_iteration, 2, x):
        torch.testing.assert_close(rank, one_process, rtol=0, atol=1e-6)  # lr 1e-5: a lost average moves 2e-5
