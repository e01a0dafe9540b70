"""Scaling-law sweeps (pipeline/stages/sweep.py, python -m pipeline sweep): planning, bad input, running, resuming, failures,
tracking."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from data_prep.config import from_dict, save_resolved
from pipeline.config import Config, load_config
from pipeline.stages.sweep import main as sweep_main
from pipeline.stages.sweep import SweepConfig, count_parameters, plan, read_state, run
from tests.pipeline.stages.test_pretrain import settings

SHAPES = [{"hidden_size": 16, "num_layers": 1, "num_heads": 2, "cond_dim": 8},
          {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "cond_dim": 8},
          {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "cond_dim": 8},
          {"hidden_size": 48, "num_layers": 2, "num_heads": 2, "cond_dim": 8}]
TOKENS_PER_STEP = 4 * 64  # the unit settings: 4 sequences of 64 tokens on one rank


def non_embedding_by_hand(d: int, layers: int, cond: int) -> int:
    """qkv, attention output, MLP (with biases), two norms and adaLN per block; σ embedder; final norm and adaLN."""
    block = 3 * d * d + d * d + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * d + (cond * 6 * d + 6 * d)
    sigma = 256 * cond + cond + cond * cond + cond
    return layers * block + sigma + d + cond * 2 * d + 2 * d


def sweep_file(tiny_data, tmp_path, **changes) -> str:
    base = save_resolved(from_dict(Config, settings(tiny_data, tmp_path / "base", train__checkpoint_every=4,
                                                    train__eval_every=1000)), tmp_path, "base.yaml")
    cfg = {"name": "t", "out_dir": str(tmp_path / "sweep"), "data": str(tiny_data), "pretrain": str(base),
           "tracking": {"backend": "none"},
           "grid": {"style": "isoflop", "budgets": [2e8, 6e8], "points_per_budget": 3, "shapes": SHAPES}}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_planner_counts_names_and_steps_from_c_equals_6nd(tiny_data, tmp_path):
    sweep = load_config(sweep_file(tiny_data, tmp_path, grid__seeds=[0, 1]), cls=SweepConfig)
    points = plan(sweep)
    base = load_config(sweep.pretrain).model
    ns = sorted(non_embedding_by_hand(s["hidden_size"], s["num_layers"], s["cond_dim"]) for s in SHAPES)
    assert len(points) == 2 * 3 * 2  # budgets x points per budget x seeds
    for point in points:
        assert point.n in ns
        assert point.steps == round(point.budget / (6 * point.n * TOKENS_PER_STEP))
        assert point.tokens == point.steps * TOKENS_PER_STEP and point.flops == 6 * point.n * point.tokens
        assert point.name == f"C{point.budget:.2g}-N{point.n:.2g}-D{point.tokens:.2g}-s{point.seed}".replace("e+", "e")
        assert point.tags()["sweep.N"] == str(point.n)
    # each budget takes 3 consecutive rungs of the ladder around N* = sqrt(C / 120)
    for budget in (2e8, 6e8):
        chosen = sorted({p.n for p in points if p.budget == budget})
        expected = math.sqrt(budget / 120)
        nearest = min(ns, key=lambda n: abs(math.log(n / expected)))
        assert len(chosen) == 3 and nearest in chosen and chosen == ns[ns.index(chosen[0]): ns.index(chosen[0]) + 3]
    total = count_parameters(base.__class__(size=None, vocab_size=500, seq_len=64, **SHAPES[0]), "total")
    assert total == ns[0] + 2 * 501 * 16 + 501  # + token embedding and output projection (with bias)
    explicit = plan(load_config(sweep_file(tiny_data, tmp_path, grid={"style": "explicit", "steps": [3, 5],
                                                                       "shapes": SHAPES[:2]}), cls=SweepConfig))
    assert [(p.n, p.steps) for p in explicit] == [(ns[0], 3), (ns[0], 5), (ns[1], 3), (ns[1], 5)]


@pytest.mark.parametrize("change, message", [
    ({"grid__shapes": [*SHAPES, {"hidden_size": 30, "num_layers": 1, "num_heads": 4}]},
     "grid.shapes[4]: model.hidden_size: 30 does not split into model.num_heads = 4"),
    ({"grid__budgets": [1e5]}, "C = 1e+05 is too small for one step"),
    ({"set": ["optim.lr=-1"]}, "optim.lr: must be positive"),
    ({"ranks": 3, "set": ["model.tensor_parallel=2"]}, "ranks: 3 is not a multiple of model.tensor_parallel = 2"),
    ({"grid__points_per_budget": 5}, "at most the 4 shapes"),
])
def test_bad_sweeps_are_reported_by_plan_before_anything_runs(tiny_data, tmp_path, capsys, change, message):
    assert sweep_main(["plan", "--config", sweep_file(tiny_data, tmp_path, **change)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def explicit_sweep(tiny_data, tmp_path, steps, **changes):
    return sweep_file(tiny_data, tmp_path, grid={"style": "explicit", "steps": steps, "shapes": SHAPES[:2]}, **changes)


@pytest.mark.distributed
def test_a_failed_point_is_recorded_and_the_others_run_and_finished_ones_are_skipped(tiny_data, tmp_path, monkeypatch):
    import pipeline.stages.sweep as module

    path = explicit_sweep(tiny_data, tmp_path, [3], tracking={"backend": "mlflow", "experiment": "t",
                                                              "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    sweep = load_config(path, cls=SweepConfig)
    points = plan(sweep)
    real = module.commands

    def failing_first(sweep_, point, parent=None, write=True):
        steps = real(sweep_, point, parent, write)
        return [(s, [sys.executable, "-c", "import sys; sys.exit(7)"]) for s, _ in steps] if point == points[0] else steps

    monkeypatch.setattr(module, "commands", failing_first)
    states = run(sweep, points, log=lambda _: None)
    assert states == {points[0].name: "failed", points[1].name: "done"}
    failed = read_state(sweep, points[0])
    assert failed["returncode"] == 7 and failed["stage"] == "pretrain" and os.path.isfile(failed["log"])
    monkeypatch.setattr(module, "commands", real)
    done_before = read_state(sweep, points[1])
    states = run(sweep, points, log=lambda _: None)  # the failed point runs again, the finished one is skipped
    assert states == {p.name: "done" for p in points} and read_state(sweep, points[1]) == done_before
    # MLflow: one parent run, a child per training run, tagged with N, D and C
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["parent_run"]
    children = mlflow.search_runs(experiment_names=["t"], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(children["tags.sweep.point"]) == sorted(p.name for p in points)
    assert sorted(children["tags.sweep.N"].astype(int)) == sorted(p.n for p in points)
    assert {c for c in children["tags.sweep.C"]} == {f"{p.flops:.4g}" for p in points}


@pytest.mark.distributed
def test_an_interrupted_sweep_continues_where_it_stopped(tiny_data, tmp_path):
    path = explicit_sweep(tiny_data, tmp_path, [12])
    sweep = load_config(path, cls=SweepConfig)
    first = plan(sweep)[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "sweep", "run", "--config", path], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = tmp_path / "sweep" / "points" / first.name / "pretrain" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the training run it started
    proc.wait()
    assert latest.exists() and read_state(sweep, first)["state"] == "running"
    assert sweep_main(["run", "--config", path]) == 0
    log = (tmp_path / "sweep" / "points" / first.name / "0-pretrain.log").read_text()
    assert "resuming at step" in log
    assert all(read_state(sweep, p)["state"] == "done" for p in plan(sweep))


def test_emitted_commands_and_slurm_array_run_the_points(tiny_data, tmp_path, capsys):
    path = explicit_sweep(tiny_data, tmp_path, [3, 5])
    assert sweep_main(["plan", "--config", path, "--emit", "commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("-m pipeline train --config" in line and "pretrain.yaml" in line for line in lines)
    assert sweep_main(["plan", "--config", path, "--emit", "slurm"]) == 0
    script = (tmp_path / "sweep" / "sweep.slurm").read_text()
    assert "#SBATCH --array=0-3" in script and 'cd "${SLURM_SUBMIT_DIR}"' in script
    assert "--point" in script and "/home" not in script and "partition" not in script


def test_analyze_reads_the_points_and_recovers_a_known_optimal_size_law(tiny_data, tmp_path):
    from pipeline.stages.sweep import analyze, point_dir

    sweep = load_config(sweep_file(tiny_data, tmp_path, grid__budgets=[2e8, 6e8, 2e9, 6e9]), cls=SweepConfig)
    points = plan(sweep)
    k, beta = 0.5, 0.5  # IsoFLOP minima at N* = k·C^0.5, inside the sizes run; the last budget is concave
    for p in points:
        optimum = k * p.budget ** beta
        curvature = -0.1 if p.budget == 6e9 else 0.1
        loss = 3.0 + curvature * (math.log(p.n) - math.log(optimum)) ** 2 + 10 * p.budget ** -0.1
        metrics = point_dir(sweep, p) / "pretrain" / "metrics.jsonl"
        metrics.parent.mkdir(parents=True)
        metrics.write_text(json.dumps({"step": p.steps, "val/nelbo_nats": loss}) + "\n")
    text = analyze(sweep, points)
    fits = json.loads((tmp_path / "sweep" / "analysis" / "fits.json").read_text())
    assert fits["optimal_n_vs_c"]["beta"]["value"] == pytest.approx(beta, abs=1e-6)
    assert fits["optimal_n_vs_c"]["k"]["value"] == pytest.approx(k, rel=1e-5)
    assert list(fits["optimal_n_vs_c"]["left_out"]) == ["6e+09"]  # its parabola has no minimum
    assert "opens downward" in fits["optimal_n_vs_c"]["left_out"]["6e+09"]
    assert fits["nelbo_vs_c"]["alpha"]["value"] > 0  # the best run of each budget falls with C
    for plot in ("nelbo_vs_c.png", "optimal_n_vs_c.png"):
        assert (tmp_path / "sweep" / "analysis" / plot).stat().st_size > 0
    assert f"{len(points)} of {len(points)} points finished" in text and "β = 0.500" in text
    assert "| C = 6e+09 left out |" in text


@pytest.mark.parametrize("config, stages", [("launch/configs/sweep_tiny.yaml", 1), ("launch/configs/sweep_distill.yaml", 4)])
def test_the_example_sweeps_plan(config, stages):
    from pipeline.stages.sweep import stages_of

    sweep = load_config(config, cls=SweepConfig)
    points = plan(sweep)
    assert len(points) == len(sweep.grid.budgets) * sweep.grid.points_per_budget >= 9
    assert len(stages_of(sweep)) == stages
    assert all(abs(p.flops / p.budget - 1) < 0.05 for p in points)  # rounding the steps moves C by under 5 %
