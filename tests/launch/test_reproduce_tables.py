"""The reproduction's ablation arms (launch/recipes/reproduce/ablation.yaml) and target checks
(launch/recipes/reproduce/tables.py)."""
import json
from dataclasses import asdict

from launch.recipes.ablation import load_spec, spec_path, switches
from launch.recipes.reproduce.tables import orders_table, targets
from pipeline.config import load_config

SPEC = load_spec(spec_path("reproduce"))
DISTILL = SPEC["distill"]["config"]
TECHNIQUES = ("intermediate_state", "coupled_time", "omega_weight", "regularisation")
ARMS = [r["arm"] for r in SPEC["tables"]["ablation"]["rows"] if r["arm"] != "main"]
VARIANTS = {r["arm"]: r["label"].strip("`") for r in SPEC["tables"]["variants"]["rows"] if r["arm"] != "paper"}


def arm_config(arm: str | None, section: str = "distill"):
    """One section of the distillation config of an arm (None: the main arm), with its overrides applied."""
    overrides = [] if arm is None else [s.removeprefix("--set=") for s in switches(SPEC, arm)]
    return asdict(getattr(load_config(DISTILL, overrides), section))


def test_each_ablation_arm_adds_one_technique_to_the_previous_and_the_main_arm_adds_the_benchmark_settings():
    configs = [arm_config(arm) for arm in ARMS]
    assert not any(configs[0][t] for t in TECHNIQUES) and all(configs[-1][t] for t in TECHNIQUES)
    for k, (before, after) in enumerate(zip(configs, configs[1:])):
        assert [key for key in before if before[key] != after[key]] == [TECHNIQUES[k]]
    paper, main = configs[-1], arm_config(None)
    assert {k: main[k] for k in main if main[k] != paper[k]} == {
        "rollout_steps": 8, "discriminator_positions": "all", "tau_per": "group"}
    assert (paper["rollout_steps"], paper["discriminator_positions"], paper["tau_per"]) == (2, "masked", "row")


def test_each_settings_variant_changes_one_key_of_the_paper_arm():
    for variant, override in VARIANTS.items():
        section, key = override.split("=")[0].split(".")
        paper, changed = arm_config("paper", section), arm_config(variant, section)
        assert [k for k in paper if paper[k] != changed[k]] == [key], variant
        assert all(arm_config("paper", other) == arm_config(variant, other)
                   for other in ("distill", "optim", "train", "model", "discriminator_optim") if other != section)


def row(model, sampler, steps, gen_ppl, entropy, seconds, control_for=None, temperature=1.0):
    return {"model": model, "sampler": sampler, "steps": steps, "gen_ppl": gen_ppl, "in_domain_gen_ppl": gen_ppl,
            "entropy": entropy, "seconds_per_sample": seconds, "control_for": control_for, "temperature": temperature}


def test_targets_are_marked_met_or_missed_from_the_numbers():
    rows = [row("teacher", "ancestral", 256, 100.0, 4.0, 1.0),
            row("student", "ancestral", 16, 90.0, 3.9, 0.05),
            row("student", "rgas", 16, 120.0, 3.0, 0.2),
            row("teacher", "ancestral", 1024, 95.0, 3.9, 1.0, control_for="student ancestral 16", temperature=0.9),
            row("teacher", "ancestral", 1024, 80.0, 3.0, 1.0, control_for="student rgas 16", temperature=0.5)]
    lines = "\n".join(targets(rows))
    assert "ancestral 16 NFE: Gen-PPL ≤ the 256-step teacher's: **met** (90.0 vs 100.0)" in lines
    assert "ancestral 16 NFE: entropy within 5 % of the teacher's: **met**" in lines
    assert "ancestral 16 NFE: beats the entropy-matched teacher (T = 0.90): **met**" in lines
    assert "ancestral 16 NFE: ≥ 10× less wall-clock per sample than the 256-step teacher: **met** (20.0×)" in lines
    assert "rgas 16 NFE: Gen-PPL ≤ the 256-step teacher's: **missed**" in lines
    assert "rgas 16 NFE: entropy within 5 % of the teacher's: **missed**" in lines
    assert "rgas 16 NFE: beats the entropy-matched teacher (T = 0.50): **missed**" in lines


def test_the_orders_table_compares_each_cell_with_the_same_model_in_the_random_order(tmp_path):
    def cell(model, order, steps, gen_ppl, low, high, control_for=None, temperature=1.0):
        return {**row(model, "ancestral", steps, gen_ppl, 4.0, 0.1, control_for, temperature), "order": order,
                "interval": [low, high], "in_domain_interval": [low, high]}
    rows = [cell("held-out text", "-", 0, 90.0, 80.0, 100.0),
            cell("teacher", "random", 8, 700.0, 650.0, 750.0), cell("teacher", "dispersed:3", 8, 500.0, 450.0, 560.0),
            cell("student", "random", 8, 600.0, 550.0, 650.0), cell("student", "dispersed:3", 8, 640.0, 600.0, 700.0),
            cell("teacher", "random", 16, 650.0, 600.0, 700.0, "student ancestral 16", 0.8),
            cell("teacher", "dispersed:3", 16, 800.0, 760.0, 850.0, "student ancestral 16", 0.7)]
    (tmp_path / "evaluate_orders").mkdir()
    (tmp_path / "evaluate_orders" / "results.json").write_text(json.dumps({"rows": rows}))
    text, _ = orders_table(tmp_path)
    lines = text.splitlines()
    assert "| teacher | dispersed:3 | 8 | 1.00 | 500.0 (450.0–560.0) | 500.0 (450.0–560.0) | 4.00 | better / better |" in lines
    assert "| student | dispersed:3 | 8 | 1.00 | 640.0 (600.0–700.0) | 640.0 (600.0–700.0) | 4.00 | level / level |" in lines
    assert "| entropy-matched teacher | dispersed:3 | 16 | 0.70 | 800.0 (760.0–850.0) | 800.0 (760.0–850.0) | 4.00 | worse / worse |" in lines
    assert [line.split(" | ")[0] for line in lines if line.startswith("| ") and "order" not in line and "---" not in line] \
        == ["| teacher"] * 2 + ["| student"] * 2 + ["| entropy-matched teacher"] * 2
