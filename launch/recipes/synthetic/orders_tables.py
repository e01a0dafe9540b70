"""The unmasking-order tables of launch/recipes/synthetic/orders.sh, from the three evaluations it leaves in OUT:

    python launch/recipes/synthetic/orders_tables.py OUT [--order dispersed:3] [--results DIR]   # DIR/orders.{md,json}

First how much of the few-step error is the order (the teacher and the exact denoiser in every order, by step
count); then what the distillation buys on top of it, always within one order (the teacher, its best temperature
and the two students sampled the same way); then the issue's targets, each with the rows it compares.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.measure.exact_judge import METRICS
from pipeline.measure.machine import describe
from pipeline.stages.evaluate import EXACT_DENOISER, metric_text

SHOWN = ("nll_per_letter", "invalid_rate", "bigram_tv", "conditional_entropy", "switches_per_64", "unigram_entropy")


def load_rows(out: Path, order: str) -> list[dict]:
    """The three evaluations' rows (the random-order student's with the teacher's, the other student's, the other
    orders' probe), each labelled with what it is: teacher, teacher best T, exact denoiser, or the student by the
    order its rollouts used."""
    rows = []
    for rollout in ("random", order, "probe"):
        path = out / f"evaluate_{rollout.replace(':', '')}" / "results.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} missing: run bash launch/recipes/synthetic/orders.sh first")
        held_out, *sampled = json.loads(path.read_text())["rows"]
        if rollout == "random":
            rows.append({**held_out, "label": "held-out data"})
        for r in sampled:
            if r["model"] == "student":
                label = f"student ({rollout} rollouts)"
            elif r["control"] == "best temperature":
                label = "teacher, best T"
            elif r["control"] is None and r["model"] in ("teacher", EXACT_DENOISER):
                label = r["model"]
            else:
                continue
            rows.append({**r, "label": label})
    return rows


def find(rows: list[dict], label: str, order: str, steps: int) -> dict | None:
    return next((r for r in rows if r["label"] == label and r["order"] == order and r["steps"] == steps), None)


def compact(rows: list[dict], key: str, fmt: str, steps: list[int]) -> list[str]:
    """One metric: a row per (model, order), a column per step count (intervals in the evaluations' tables)."""
    lines = ["| model | order | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for label in ("teacher", EXACT_DENOISER):
        for order in dict.fromkeys(r["order"] for r in rows):
            cells = [find(rows, label, order, s) for s in steps]
            if any(cells):
                lines.append(f"| {label} | {order} | " + " | ".join("–" if c is None or c[key] is None
                                                                    else format(c[key], fmt) for c in cells) + " |")
    return lines


def comparison(rows: list[dict], order: str, metrics: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| model | steps | T | " + " | ".join(t for _, t, _ in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    held_out = next(r for r in rows if r["label"] == "held-out data")
    lines.append("| held-out data | – | – | " + " | ".join(metric_text(held_out, k, f) for k, _, f in metrics) + " |")
    for label in ("teacher", "teacher, best T", "student (random rollouts)", *sorted(
            {r["label"] for r in rows if r["label"].startswith("student") and "random" not in r["label"]})):
        for r in sorted((r for r in rows if r["label"] == label and r["order"] == order), key=lambda r: r["steps"]):
            if r["steps"] <= 32:
                lines.append(f"| {label} | {r['steps']} | {r['temperature']:.2f} | "
                             + " | ".join(metric_text(r, k, f) for k, _, f in metrics) + " |")
    return lines


def verdict(a: dict | None, b: dict | None, key: str) -> str:
    """a against b on ``key`` (lower is better): better or worse with the intervals apart, else level."""
    if a is None or b is None or a[key] is None or b[key] is None:
        return "not measured"
    (a_low, a_high), (b_low, b_high) = a[f"{key}_interval"], b[f"{key}_interval"]
    text = f"{a[key]:.4g} against {b[key]:.4g}"
    if a_high < b_low:
        return f"better ({text}, intervals apart)"
    if a_low > b_high:
        return f"worse ({text}, intervals apart)"
    return f"level ({text}, intervals overlap)"


def targets(rows: list[dict], order: str, regime: bool) -> list[str]:
    """The issue's targets, each with its verdict per metric."""
    student, plain = f"student ({order} rollouts)", "student (random rollouts)"
    keys = ["nll_per_letter", "invalid_rate"] + (["switches_per_64"] if regime else [])
    checks = [(f"teacher, {order}, 8 steps vs teacher, random, 32 steps", find(rows, "teacher", order, 8),
               find(rows, "teacher", "random", 32), keys),
              (f"{student}, {order}, 4 steps vs teacher, {order}, 8 steps", find(rows, student, order, 4),
               find(rows, "teacher", order, 8), keys)]
    for steps in (16, 32):
        checks.append((f"{student}, {order}, 8 steps vs teacher, {order}, {steps} steps",
                       find(rows, student, order, 8), find(rows, "teacher", order, steps),
                       keys + ["conditional_entropy"]))
    for control in ("teacher", "teacher, best T"):
        checks.append((f"{plain}, random, 8 steps vs {control}, random, 8 steps", find(rows, plain, "random", 8),
                       find(rows, control, "random", 8), keys))
    for steps in (16, 32):
        checks.append((f"{plain}, random, {steps} steps vs teacher, random, {steps} steps (bigram TV)",
                       find(rows, plain, "random", steps), find(rows, "teacher", "random", steps), ["bigram_tv"]))
    lines = [f"- {name}: " + "; ".join(f"{key} {verdict(a, b, key)}" for key in keys) for name, a, b, keys in checks]
    held_out = next(r for r in rows if r["label"] == "held-out data")
    for label in (student, plain):
        if (r := find(rows, label, order, 8)) is not None:
            gap = r["nll_per_letter"] - held_out["nll_per_letter"]
            lines.append(f"- {label}, {order}, 8 steps: exact NLL {gap:.3f} nats/letter above held-out data "
                         "(moonshot: within 0.1)")
    return lines


def tables(out: Path, order: str, results: Path) -> str:
    rows = load_rows(out, order)
    regime = any(r.get("switches_per_64") is not None for r in rows)
    metrics = [m for m in METRICS if m[0] in SHOWN and (regime or m[0] != "switches_per_64")]
    steps = sorted({r["steps"] for r in rows if r["label"] == "teacher"})
    held_out = next(r for r in rows if r["label"] == "held-out data")
    family = "regime" if regime else "markov"
    lines = [f"Unmasking orders on `{out}` (`FAMILY={family} bash launch/recipes/synthetic/orders.sh`, tables by "
             f"`python launch/recipes/synthetic/orders_tables.py {out} --order {order}`), {describe()}. 256 samples a cell; every interval is a 95 % bootstrap "
             "interval over samples (all of them in the evaluations' results.md).", ""]
    for key, title, fmt in metrics:
        lines += [f"**{title}**, the teacher and the exact denoiser in each order (held-out data: "
                  f"{metric_text(held_out, key, fmt)}):", "", *compact(rows, key, fmt, steps), ""]
    for within in ("random", order):
        lines += [f"**Within the {within} order**: the teacher, its best temperature by bigram TV and the students, "
                  "all sampled this way:", "", *comparison(rows, within, metrics), ""]
    lines += ["**Targets** (lower is better on every metric named):", "", *targets(rows, order, regime)]
    text = "\n".join(lines) + "\n"
    results.mkdir(parents=True, exist_ok=True)
    (results / "orders.md").write_text(text)
    (results / "orders.json").write_text(json.dumps(rows, indent=1))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/recipes/synthetic/orders_tables.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="launch/recipes/synthetic/orders.sh's OUT (runs/orders/FAMILY)")
    parser.add_argument("--order", default="dispersed:3", help="the second student's rollout order")
    parser.add_argument("--results", default=None, help="where orders.{md,json} go (default: OUT)")
    args = parser.parse_args(argv)
    print(tables(Path(args.out), args.order, Path(args.results or args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
