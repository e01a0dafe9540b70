"""The synthetic benchmark's ablation table from the evaluations its runs leave, and the arms' switches."""
from __future__ import annotations

import json

import pytest

from launch.oracle_tables import ARMS, ablation, main, switches


def row(model, steps, nll, control=None):
    metrics = {"nll_per_letter": nll, "invalid_rate": 0.05, "bigram_tv": 0.1, "unigram_entropy": 2.3}
    return {"model": model, "sampler": "ancestral" if model != "held-out text" else "-", "steps": steps,
            "temperature": 1.0, "control": control, **metrics,
            **{f"{k}_interval": [v - 0.01, v + 0.01] for k, v in metrics.items()}}


def write(path, rows):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"rows": rows}))


def test_table_has_the_teacher_and_every_finished_arm_at_8_and_32_steps(tmp_path):
    out = tmp_path / "oracle"
    write(out / "evaluate", [row("held-out text", None, 0.9), row("teacher", 8, 1.7), row("teacher", 32, 1.2),
                             row("teacher", 8, 1.6, "best temperature"), row("student", 4, 2.0),
                             row("student", 8, 1.5), row("student", 32, 1.1)])
    write(out / "ablation" / "paper" / "evaluate", [row("teacher", 8, 1.7), row("student", 8, 1.65),
                                                    row("student", 32, 1.19)])
    rows = ablation(out, tmp_path / "results")
    assert [(r["arm"], r["steps"]) for r in rows] == [("paper", 8), ("paper", 32), ("main", 8), ("main", 32)]
    table = (tmp_path / "results" / "ablation.md").read_text()
    assert "| teacher | 8 | 1.700 (1.690–1.710) |" in table and "| teacher | 32 | 1.200" in table
    assert f"| {ARMS['paper'][0]} | 8 | 1.650 (1.640–1.660) |" in table
    assert "1.600" not in table  # the best-temperature control is not the teacher's row
    assert table.index(ARMS["paper"][0]) < table.index(ARMS["main"][0])
    assert json.loads((tmp_path / "results" / "ablation.json").read_text())["teacher"]["8"]["nll_per_letter"] == 1.7


def test_switches_change_one_key_at_a_time_and_unknown_arms_are_refused(capsys):
    assert switches("rollout8") == ["--set=distill.discriminator_positions=masked"]
    assert main(["switches", "paper"]) == 0
    assert capsys.readouterr().out.split() == ["--set=distill.rollout_steps=2", "--set=distill.discriminator_positions=masked"]
    for arm in ("main", "nope"):
        with pytest.raises(SystemExit, match="unknown arm"):
            switches(arm)


def test_the_cumulative_arms_add_one_technique_each_and_every_arm_is_a_valid_config():
    from pipeline.config import load_config

    techniques = ("intermediate_state", "coupled_time", "omega_weight", "regularisation")
    cumulative = ("baseline", "intermediate", "coupled", "omega", "paper")
    on = []
    for arm in ARMS:
        cfg = load_config("launch/recipes/synthetic/distill.yaml", [s.removeprefix("--set=") for s in
                                                                  (switches(arm) if arm != "main" else [])])
        if arm in cumulative:
            on.append([t for t in techniques if getattr(cfg.distill, t)])
            assert (cfg.distill.rollout_steps, cfg.distill.discriminator_positions) == (2, "masked"), arm
    assert on == [list(techniques[:k]) for k in range(5)]
