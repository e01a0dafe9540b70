"""The unmasking-order tables from the two evaluations launch/recipes/synthetic/orders.sh leaves, and the targets' verdicts."""
from __future__ import annotations

import json

import pytest

from launch.recipes.synthetic.orders_tables import main, tables, verdict

KEYS = ("nll_per_letter", "invalid_rate", "bigram_tv", "conditional_entropy", "switches_per_64", "unigram_entropy")


def row(model, order, steps, nll, control=None, temperature=1.0, tv=0.1, switches=None):
    metrics = {"nll_per_letter": nll, "invalid_rate": nll / 20, "bigram_tv": tv, "conditional_entropy": 0.9,
               "switches_per_64": switches, "unigram_entropy": 2.3}
    return {"model": model, "sampler": "ancestral", "order": order, "steps": steps, "temperature": temperature,
            "control": control, **metrics,
            **{f"{k}_interval": None if v is None else [v - 0.01, v + 0.01] for k, v in metrics.items()}}


def write(path, rows):
    path.mkdir(parents=True)
    held_out = {**row("held-out text", None, None, 0.9), "sampler": "-"}
    (path / "results.json").write_text(json.dumps({"rows": [held_out, *rows]}))


@pytest.fixture
def evaluations(tmp_path):
    out = tmp_path / "orders"
    first = []
    for order, scale in (("random", 1.0), ("dispersed:3", 0.6)):
        first += [row("teacher", order, s, scale * 8 / s) for s in (4, 8, 16, 32)]
        first += [row("exact denoiser", order, s, scale * 6 / s) for s in (4, 8, 16, 32)]
        first += [row("teacher", order, 8, scale * 0.9, "best temperature", 0.8)]
        first += [row("student", order, s, scale * 7 / s, tv=0.2) for s in (4, 8, 16, 32)]
    write(out / "evaluate_random", first)
    write(out / "evaluate_dispersed3", [row("student", order, s, 0.5 * 8 / s) for order in ("random", "dispersed:3")
                                        for s in (4, 8, 16, 32)])
    write(out / "evaluate_probe", [row(model, "margin", s, 9 / s) for model in ("teacher", "exact denoiser")
                                   for s in (4, 8)])
    return out


def test_tables_compare_within_each_order_and_name_the_verdicts(evaluations, tmp_path):
    text = tables(evaluations, "dispersed:3", tmp_path / "results")
    assert (tmp_path / "results" / "orders.md").read_text() == text
    assert "| teacher | dispersed:3 | 1.200 | 0.600 | 0.300 | 0.150 |" in text  # NLL by steps, 0.6 × 8 / s
    assert "| exact denoiser | random | 1.500 | 0.750 | 0.375 | 0.188 |" in text
    assert "| teacher | margin | 2.250 | 1.125 | – | – |" in text  # the probe's orders, at 4 and 8 steps
    assert "regime switches" not in text  # none measured: a first-order chain
    within = text.split("**Within the dispersed:3 order**")[1]
    assert "| student (dispersed:3 rollouts) | 4 | 1.00 | 1.000 (0.990–1.010) |" in within
    assert "| teacher, best T | 8 | 0.80 | 0.540 (0.530–0.550) |" in within
    # dispersed:3 teacher at 8 (0.6) against random teacher at 32 (0.25): worse, intervals apart
    assert "- teacher, dispersed:3, 8 steps vs teacher, random, 32 steps: nll_per_letter worse (0.6 against 0.25" in text
    # the dispersed student at 4 (1.0) against the dispersed teacher at 8 (0.6): worse
    assert "4 steps vs teacher, dispersed:3, 8 steps: nll_per_letter worse (1 against 0.6" in text
    # the random-order student at 8 (0.875) against the random teacher at 8 (1.0): better
    assert "random, 8 steps vs teacher, random, 8 steps: nll_per_letter better (0.875 against 1" in text
    assert "(bigram TV): bigram_tv worse (0.2 against 0.1, intervals apart)" in text
    rows = json.loads((tmp_path / "results" / "orders.json").read_text())
    assert {r["label"] for r in rows} == {"teacher", "exact denoiser", "teacher, best T", "student (random rollouts)",
                                          "student (dispersed:3 rollouts)", "held-out data"}
    assert "| held-out data | – | – | 0.900 (0.890–0.910) |" in within
    assert "in each order (held-out data: 0.900 (0.890–0.910)):" in text


def test_verdicts_by_hand():
    a = {"x": 1.0, "x_interval": [0.9, 1.1]}
    assert verdict(a, {"x": 1.5, "x_interval": [1.2, 1.8]}, "x").startswith("better")
    assert verdict(a, {"x": 1.05, "x_interval": [1.0, 1.1]}, "x").startswith("level")
    assert verdict(a, {"x": 0.5, "x_interval": [0.4, 0.6]}, "x").startswith("worse")
    assert verdict(a, None, "x") == "not measured"


def test_a_missing_evaluation_is_named(tmp_path):
    with pytest.raises(SystemExit, match="evaluate_random/results.json missing"):
        main([str(tmp_path)])
