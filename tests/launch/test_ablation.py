"""One ablation for every recipe (launch/recipes/ablation.py): the arms' switches, the commands that run an arm,
and the tables written from the evaluations the runs leave."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from launch.recipes.ablation import load_spec, main, spec_path, switches, tables
from pipeline.config import EvaluateConfig, load_config

SYNTHETIC = load_spec(spec_path("synthetic"))
TECHNIQUES = ("intermediate_state", "coupled_time", "omega_weight", "regularisation")
CUMULATIVE = ("none", "intermediate_state", "coupled_time", "omega_weight", "paper")


def label(spec: dict, arm: str, table: str = "ablation") -> str:
    return next(r["label"] for r in spec["tables"][table]["rows"] if r["arm"] == arm)


def row(model, steps, nll, control=None):
    metrics = {"nll_per_letter": nll, "invalid_rate": 0.05, "bigram_tv": 0.1, "unigram_entropy": 2.3}
    return {"model": model, "sampler": "ancestral" if model != "held-out text" else "-", "steps": steps,
            "temperature": 1.0, "control": control, **metrics,
            **{f"{k}_interval": [v - 0.01, v + 0.01] for k, v in metrics.items()}}


def write(path, rows):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"rows": rows}))


def test_table_has_the_teacher_and_every_finished_arm_at_8_and_32_steps(tmp_path):
    out = tmp_path / "synthetic"
    write(out / "evaluate", [row("held-out text", None, 0.9), row("teacher", 8, 1.7), row("teacher", 32, 1.2),
                             row("teacher", 8, 1.6, "best temperature"), row("student", 4, 2.0),
                             row("student", 8, 1.5), row("student", 32, 1.1)])
    write(out / "ablation" / "paper" / "evaluate", [row("teacher", 8, 1.7), row("student", 8, 1.65),
                                                    row("student", 32, 1.19)])
    tables(spec_path("synthetic"), out, tmp_path / "results")
    saved = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert [(r["arm"], r["steps"]) for r in saved["arms"]] == [("paper", 8), ("paper", 32), ("main", 8), ("main", 32)]
    table = (tmp_path / "results" / "ablation.md").read_text()
    assert "| teacher | 8 | 1.700 (1.690–1.710) |" in table and "| teacher | 32 | 1.200" in table
    assert f"| {label(SYNTHETIC, 'paper')} | 8 | 1.650 (1.640–1.660) |" in table
    assert "1.600" not in table  # the best-temperature control is not the teacher's row
    assert table.index(label(SYNTHETIC, "paper")) < table.index(label(SYNTHETIC, "main"))
    assert saved["teacher"]["8"]["nll_per_letter"] == 1.7


def test_switches_change_one_key_at_a_time_and_unknown_arms_are_refused(capsys):
    assert switches(SYNTHETIC, "rollout8") == ["--set=distill.discriminator_positions=masked"]
    assert main(["switches", str(spec_path("synthetic")), "paper"]) == 0
    assert capsys.readouterr().out.split() == ["--set=distill.rollout_steps=2", "--set=distill.discriminator_positions=masked"]
    for arm in ("main", "nope"):
        with pytest.raises(SystemExit, match="unknown arm"):
            switches(SYNTHETIC, arm)


@pytest.mark.parametrize("recipe", ["reproduce", "synthetic", "protein"])
def test_the_cumulative_arms_add_one_technique_each_and_every_arm_is_a_valid_config(recipe):
    spec = load_spec(spec_path(recipe))
    on = []
    for arm in spec["arms"]:
        cfg = load_config(spec["distill"]["config"], [s.removeprefix("--set=") for s in switches(spec, arm)])
        if arm in CUMULATIVE:
            on.append([t for t in TECHNIQUES if getattr(cfg.distill, t)])
            assert (cfg.distill.rollout_steps, cfg.distill.discriminator_positions) == (2, "masked"), arm
    assert on == [list(TECHNIQUES[:k]) for k in range(5)]
    assert all(r["arm"] in spec["arms"] or r["arm"] == "main" for t in spec["tables"].values() for r in t["rows"])


@pytest.mark.parametrize("recipe", ["reproduce", "synthetic", "protein"])
def test_an_arms_commands_load_with_the_recipes_configs(recipe, tmp_path):
    """The runner's distillation and evaluation configs load with every override it passes, and the arm's outputs
    land under OUT/ablation/ARM."""
    from launch.recipes.ablation import commands

    spec = load_spec(spec_path(recipe))
    distill, convert, evaluate = commands(spec, "paper", tmp_path, ranks=2)

    def loaded(argv, cls=None):
        config = argv[argv.index("--config") + 1]
        overrides = [a.removeprefix("--set=") for a in argv if a.startswith("--set=")]
        return load_config(config, overrides, *([cls] if cls else []))

    arm = tmp_path / "ablation" / "paper"
    assert loaded(distill).run.out_dir == str(arm / "distill")
    assert convert[-4:] == ["--checkpoint", str(arm / "distill"), "--out", str(arm / "bundles" / "student")]
    evaluated = asdict(loaded(evaluate, EvaluateConfig))
    assert (evaluated["student"], evaluated["out"]) == (str(arm / "bundles" / "student"), str(arm / "evaluate"))
    assert str(tmp_path) in evaluated["teacher"] and Path(evaluated["data"]) == tmp_path / "data"


def test_a_spec_may_show_the_best_temperature_teacher_and_name_its_main_runs_folders(tmp_path):
    out = tmp_path / "orders"
    write(out / "evaluate_random", [row("teacher", 8, 1.7), row("teacher", 8, 1.6, "best temperature"),
                                    row("student", 8, 1.5), row("student", 16, 1.3)])
    write(out / "ablation" / "init01" / "evaluate", [row("student", 8, 1.45)])
    written = tables(spec_path("latent"), out, tmp_path / "results")["latent"]
    spec = load_spec(spec_path("latent"))
    assert "| teacher at its best temperature (T = 1.00) | 8 | 1.600 (1.590–1.610) |" in written
    assert f"| {label(spec, 'main', 'latent')} | 8 | 1.500" in written and f"| {label(spec, 'init01', 'latent')} | 8 | 1.450" in written
    assert f"| {label(spec, 'main', 'latent')} | 16 | 1.300" in written  # the spec's steps: 8, 16, 32


def test_every_latent_arm_is_a_valid_config_and_its_commands_load(tmp_path):
    from launch.recipes.ablation import commands

    spec = load_spec(spec_path("latent"))
    for arm in spec["arms"]:
        cfg = load_config(spec["distill"]["config"], [s.removeprefix("--set=") for s in switches(spec, arm)])
        assert cfg.distill.rollout_order == "random", arm
        assert cfg.distill.latent == (0 if arm.endswith("factorised") else 16), arm  # the control has no latent
    distill, _, evaluate = commands(spec, "init01", tmp_path, ranks=2)
    overrides = [a.removeprefix("--set=") for a in distill if a.startswith("--set=")]
    assert load_config(spec["distill"]["config"], overrides).distill.latent_init == 0.1
    evaluated = load_config(spec["evaluate"]["config"], [a.removeprefix("--set=") for a in evaluate
                                                         if a.startswith("--set=")], EvaluateConfig)
    assert evaluated.student == str(tmp_path / "ablation" / "init01" / "bundles" / "student")
