"""The synthetic benchmark's ablation table, written from the evaluations its runs left (launch/oracle.sh,
launch/oracle_ablation.sh), and each arm's switches:

    python launch/oracle_tables.py ablation OUT [--results DIR]   # DIR/ablation.{md,json}
    python launch/oracle_tables.py switches ARM                   # the --set arguments of one arm
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.measure.exact_judge import METRICS  # noqa: E402
from pipeline.measure.machine import describe  # noqa: E402
from pipeline.stages.evaluate import metric_text  # noqa: E402

# The paper's cumulative ablation (its four techniques, one at a time, on its 2-step rollout and re-masked
# discriminator positions), then from the paper's method to launch/configs/markov/distill.yaml one key at a
# time (the main run), and two arms that each drop a key of the main run's.
PAPER = ["distill.rollout_steps=2", "distill.discriminator_positions=masked"]
ARMS = {
    "baseline": ("none of the paper's four techniques (one-step rollout, independent t, ω = 1, no regulariser)",
                 PAPER + ["distill.intermediate_state=false", "distill.coupled_time=false",
                          "distill.omega_weight=false", "distill.regularisation=false"]),
    "intermediate": ("+ intermediate-state matching (the 2-step rollout)",
                     PAPER + ["distill.coupled_time=false", "distill.omega_weight=false",
                              "distill.regularisation=false"]),
    "coupled": ("+ coupled time", PAPER + ["distill.omega_weight=false", "distill.regularisation=false"]),
    "omega": ("+ ω(t)", PAPER + ["distill.regularisation=false"]),
    "paper": ("+ regularisation: the paper's method", PAPER),
    "rollout8": ("+ 8-step rollouts on the inference grid", ["distill.discriminator_positions=masked"]),
    "main": ("+ the discriminator at every position (launch/configs/markov/distill.yaml)", []),
    "tau_row": ("main, with one τ per row instead of per group", ["distill.tau_per=row"]),
    "positions_all_2steps": ("main, with the paper's 2-step rollout", ["distill.rollout_steps=2"]),
    "iterations1200": ("main, 1,200 iterations instead of 600 (the same schedule, twice as long)",
                       ["train.max_steps=1200"]),
}


def switches(arm: str) -> list[str]:
    if arm not in ARMS or arm == "main":
        raise SystemExit(f"error: unknown arm {arm!r}; one of {', '.join(a for a in ARMS if a != 'main')}")
    return [f"--set={s}" for s in ARMS[arm][1]]


def evaluation(out: Path, arm: str) -> Path:
    return out / "evaluate" if arm == "main" else out / "ablation" / arm / "evaluate"


def ablation(out: Path, results: Path) -> list[dict]:
    """One row per finished arm and step count (8, 32): the student's exact metrics with their intervals, and the
    teacher's at the same steps (from the main run's evaluation)."""
    rows, teacher = [], {}
    for arm, (label, _) in ARMS.items():
        path = evaluation(out, arm) / "results.json"
        if not path.is_file():
            continue
        for r in json.loads(path.read_text())["rows"]:
            if r["model"] == "teacher" and r["temperature"] == 1.0 and not r["control"]:
                teacher.setdefault(r["steps"], r)
            if r["model"] == "student" and r["sampler"] == "ancestral" and r["steps"] in (8, 32):
                rows.append({"arm": arm, "label": label, **r})
    lines = [f"Synthetic benchmark ablation ({out}; `python launch/oracle_tables.py ablation {out}`), {describe()}. "
             "Each arm distils the same teacher for the same iterations unless its label says otherwise; the student "
             "with the plain sampler, "
             "256 samples a cell, 95% bootstrap intervals.", "",
             "| arm | steps | " + " | ".join(title for _, title, _ in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for steps in (8, 32):
        if steps in teacher:
            lines.append(f"| teacher | {steps} | " + " | ".join(metric_text(teacher[steps], k, f) for k, _, f in METRICS)
                         + " |")
        for r in (r for r in rows if r["steps"] == steps):
            lines.append(f"| {r['label']} | {steps} | " + " | ".join(metric_text(r, k, f) for k, _, f in METRICS) + " |")
    results.mkdir(parents=True, exist_ok=True)
    (results / "ablation.md").write_text("\n".join(lines) + "\n")
    (results / "ablation.json").write_text(json.dumps({"teacher": teacher, "arms": rows}, indent=1))
    print("\n".join(lines))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/oracle_tables.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("ablation", help="write DIR/ablation.{md,json}")
    table.add_argument("out", help="launch/oracle.sh's OUT (runs/oracle)")
    table.add_argument("--results", default="launch/results/oracle")
    arm = commands.add_parser("switches", help="the --set arguments of one arm")
    arm.add_argument("arm")
    args = parser.parse_args(argv)
    if args.command == "switches":
        print(" ".join(switches(args.arm)))
    else:
        ablation(Path(args.out), Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
