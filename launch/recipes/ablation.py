"""One ablation for every recipe: its arms are config overrides in the recipe's ``ablation.yaml`` (text, the
synthetic benchmark, proteins), one runner trains, converts and evaluates an arm the way the recipe's main run
was, and one builder writes the recipe's tables from every arm finished so far.

    python launch/recipes/ablation.py run RECIPE ARM [--out DIR] [--results DIR]   # (bash launch/recipes/ablation.sh)
    python launch/recipes/ablation.py table SPEC OUT [--results DIR]               # DIR/TABLE.{md,json}
    python launch/recipes/ablation.py switches SPEC ARM                            # the --set arguments of an arm

An arm lives in OUT/ablation/ARM/{distill,bundles/student,evaluate}; ``main`` in a table is the recipe's own run
(OUT/distill, OUT/evaluate), which the runner never trains.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from pipeline.measure.exact_judge import METRICS
from pipeline.measure.machine import describe
from pipeline.measure.plots import last_value, read_metrics
from pipeline.stages.evaluate import IN_DOMAIN, find_row, gen_ppl_text, metric_text, read_rows

RECIPES = Path("launch/recipes")
MAIN = "main"


def spec_path(recipe: str) -> Path:
    return RECIPES / recipe / "ablation.yaml"


def load_spec(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def switches(spec: dict, arm: str) -> list[str]:
    if arm not in spec["arms"]:
        raise SystemExit(f"error: unknown arm {arm!r}; one of {', '.join(spec['arms'])}")
    return [f"--set={s}" for s in spec["arms"][arm]]


def run_dir(out: Path, arm: str) -> Path:
    return out if arm == MAIN else out / "ablation" / arm


def outputs(spec: dict, out: Path, arm: str) -> tuple[Path, Path]:
    """An arm's distillation and evaluation folders; the main run's may be named by the spec's ``main``."""
    names = spec.get("main", {}) if arm == MAIN else {}
    where = run_dir(out, arm)
    return where / names.get("distill", "distill"), where / names.get("evaluate", "evaluate")


def commands(spec: dict, arm: str, out: Path, ranks: int) -> list[list[str]]:
    """The arm's distillation, conversion and evaluation, as the recipe's main run does them."""
    where = run_dir(out, arm)

    def sets(stage: str) -> list[str]:
        return [f"--set={s.format(out=out, arm=arm)}" for s in spec[stage]["set"]]

    return [["deepspeed", "--num_gpus", str(ranks), "--master_port", os.environ.get("MASTER_PORT", "29500"),
             "launch/train.py", "--config", spec["distill"]["config"], f"--set=run.out_dir={where}/distill",
             *sets("distill"), *switches(spec, arm)],
            [sys.executable, "-m", "pipeline", "convert", "--checkpoint", f"{where}/distill", "--out",
             f"{where}/bundles/student"],
            [sys.executable, "-m", "pipeline", "evaluate", "--config", spec["evaluate"]["config"],
             f"--set=student={where}/bundles/student", f"--set=out={where}/evaluate", *sets("evaluate")]]


def run(recipe: str, arm: str, out: Path, results: Path, ranks: int) -> None:
    if not spec_path(recipe).is_file():
        raise SystemExit(f"error: no ablation for recipe {recipe!r} ({spec_path(recipe)} missing)")
    spec = load_spec(spec_path(recipe))
    missing = [n for n in spec["needs"] if not (out / n).exists()]
    if missing:
        raise SystemExit(f"error: {out / missing[0]} missing: run {spec['after']} first")
    distill, convert, evaluate = commands(spec, arm, out, ranks)
    env = {**os.environ} if torch.cuda.is_available() else {**os.environ, "DS_ACCELERATOR": "cpu"}
    subprocess.run(distill, env=env, check=True)
    shutil.rmtree(run_dir(out, arm) / "bundles" / "student", ignore_errors=True)  # the latest checkpoint's bundle
    subprocess.run(convert, env=env, check=True)
    # one process samples and judges: give it every core
    subprocess.run(evaluate, env={**env, "OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)))}, check=True)
    tables(spec_path(recipe), out, results)


def finished(spec: dict, out: Path, rows: list[dict]) -> list[tuple[dict, Path, Path]]:
    """The table's rows (arm, label, sampler) whose arm has an evaluation, with its distillation and evaluation
    folders."""
    found = [({"sampler": "ancestral", **row}, *outputs(spec, out, row["arm"])) for row in rows]
    return [found_row for found_row in found if (found_row[2] / "results.json").is_file()]


def gen_ppl_table(spec: dict, out: Path, intro: str, rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Text and proteins: each arm's Gen-PPL (and the in-domain judge's, where there is one) at 8 and 32 NFE with
    its distillation state, and the main run's held-out data and teacher for reference."""
    table = []
    for row, distilled, evaluated in finished(spec, out, rows):
        cells, metrics = read_rows(evaluated), read_metrics(distilled / "metrics.jsonl")
        table.append({"arm": row["label"], "sampler": row["sampler"],
                      **{f"nfe{n}": find_row(cells, "student", row["sampler"], n) for n in (8, 32)},
                      "discriminator_accuracy": last_value(metrics, "discriminator/accuracy"),
                      "student_entropy": last_value(metrics, "student/entropy"), "kl": last_value(metrics, "student/kl_last")})
    in_domain = all(f"{IN_DOMAIN}gen_ppl" in r["nfe8"] for r in table)
    judged = ("", IN_DOMAIN) if in_domain else ("",)
    lines = [*intro.rstrip("\n").split("\n"), "",
             "| arm | Gen-PPL 8 | Gen-PPL 32 | " + ("in-domain 8 | in-domain 32 | " if in_domain else "")
             + "entropy 8 / 32 | discriminator accuracy | student entropy (nats) | KL (nats) |",
             "|---|---|---|" + "---|---|" * in_domain + "---|---|---|---|"]
    for r in table:
        a, b = r["nfe8"], r["nfe32"]
        lines.append(f"| {r['arm']} | " + " | ".join(f"{gen_ppl_text(a, p)} | {gen_ppl_text(b, p)}" for p in judged)
                     + f" | {a['entropy']:.2f} / {b['entropy']:.2f} | {r['discriminator_accuracy']:.3f} | "
                     f"{r['student_entropy']:.3f} | {r['kl']:.4f} |")
    main_rows = read_rows(outputs(spec, out, MAIN)[1])
    reference = next(r for r in main_rows if r["model"] == "held-out text")
    teacher = {n: find_row(main_rows, "teacher", "ancestral", n) for n in (8, 32, 256, 1024)}
    lines += ["", "For reference: held-out text " + gen_ppl_text(reference) + "; teacher "
              + ", ".join(f"{n} steps {gen_ppl_text(r)}" for n, r in teacher.items() if r) + "."]
    return lines, table


def exact_table(spec: dict, out: Path, intro: str, rows: list[dict]) -> tuple[list[str], dict]:
    """The synthetic benchmark: one row per finished arm and step count (the spec's ``steps``, default 8 and 32)
    in the spec's ``order`` (default random), the student's exact metrics with their intervals, and the
    teacher's at the same steps (from the evaluations, the main run's included); with the spec's
    ``best_temperature``, also the teacher at its best temperature where an evaluation has it (the row a student
    that only sharpens does not beat)."""
    steps_shown, order = spec.get("steps", [8, 32]), spec.get("order", "random")
    arms, teacher, best = [], {}, {}
    for row, _, evaluated in finished(spec, out, rows):
        for r in read_rows(evaluated):
            if r.get("order", "random") != order:
                continue
            if r["model"] == "teacher" and r["temperature"] == 1.0 and not r["control"]:
                teacher.setdefault(r["steps"], r)
            if r["model"] == "teacher" and r["control"] == "best temperature" and spec.get("best_temperature"):
                best.setdefault(r["steps"], r)
            if r["model"] == "student" and r["sampler"] == row["sampler"] and r["steps"] in steps_shown:
                arms.append({"arm": row["arm"], "label": row["label"], **r})
    lines = [*intro.rstrip("\n").split("\n"), "",
             "| arm | steps | " + " | ".join(title for _, title, _ in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for steps in steps_shown:
        if steps in teacher:
            lines.append(f"| teacher | {steps} | " + " | ".join(metric_text(teacher[steps], k, f) for k, _, f in METRICS)
                         + " |")
        if steps in best:
            lines.append(f"| teacher at its best temperature (T = {best[steps]['temperature']:.2f}) | {steps} | "
                         + " | ".join(metric_text(best[steps], k, f) for k, _, f in METRICS) + " |")
        for r in (r for r in arms if r["steps"] == steps):
            lines.append(f"| {r['label']} | {steps} | " + " | ".join(metric_text(r, k, f) for k, _, f in METRICS) + " |")
    return lines, {"teacher": teacher, "best_temperature": best, "arms": arms}


LAYOUTS = {"gen_ppl": gen_ppl_table, "exact": exact_table}


def tables(spec_file: Path, out: Path, results: Path) -> dict[str, str]:
    """Every table of the spec, written to RESULTS/NAME.{md,json} and returned as markdown."""
    spec, written = load_spec(spec_file), {}
    command = f"python launch/recipes/ablation.py table {spec_file} {out} --results {results}"
    results.mkdir(parents=True, exist_ok=True)
    for name, table in spec["tables"].items():
        intro = table["intro"].format(out=out, command=command, machine=describe())
        lines, data = LAYOUTS[spec["layout"]](spec, out, intro, table["rows"])
        written[name] = "\n".join(lines) + "\n"
        (results / f"{name}.md").write_text(written[name])
        (results / f"{name}.json").write_text(json.dumps(data, indent=1))
        print(written[name])
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/recipes/ablation.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="train, convert and evaluate one arm, then rewrite the tables")
    one.add_argument("recipe", help="a folder of launch/recipes/ with an ablation.yaml")
    one.add_argument("arm")
    one.add_argument("--out", help="the recipe's OUT (default runs/RECIPE)")
    one.add_argument("--results", help="where the tables go (default launch/results/RECIPE)")
    one.add_argument("--ranks", type=int, default=2)
    table = sub.add_parser("table", help="write RESULTS/TABLE.{md,json} for each table of SPEC")
    table.add_argument("spec", help="a recipe's ablation.yaml")
    table.add_argument("out", help="the recipe's OUT")
    table.add_argument("--results", help="where the tables go (default launch/results/RECIPE, the spec's folder)")
    arm = sub.add_parser("switches", help="the --set arguments of one arm")
    arm.add_argument("spec")
    arm.add_argument("arm")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.recipe, args.arm, Path(args.out or f"runs/{args.recipe}"),
            Path(args.results or f"launch/results/{args.recipe}"), args.ranks)
    elif args.command == "table":
        spec = Path(args.spec)
        tables(spec, Path(args.out), Path(args.results or f"launch/results/{spec.parent.name}"))
    else:
        print(" ".join(switches(load_spec(args.spec), args.arm)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
