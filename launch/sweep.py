"""Scaling-law sweeps (``pipeline/stages/sweep.py``): ``python launch/sweep.py plan|run|status|analyze --config FILE``.

    plan      list the points (every point's configs validated first); --emit commands prints each point's
              commands, one line per point; --emit slurm writes OUT/sweep.slurm, a SLURM array with one task
              per point (submit it from the repository root with your site's sbatch options)
    run       run the points one after another (finished ones skipped, interrupted ones resumed, failures
              recorded); --point NAME runs only that point (what each SLURM task does)
    status    a table of the points and their state
    analyze   fit the scaling laws; writes OUT/analysis/ and logs it to the sweep's MLflow parent run
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.config import ConfigError  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.stages.sweep import (SweepConfig, commands, out_dir, parent_run, plan, read_state, run,  # noqa: E402
                                   short)


def plan_table(points) -> str:
    lines = ["| point | shape (d x layers, heads) | N | steps | D (tokens) | C (FLOPs) |", "|---|---|---|---|---|---|"]
    lines += [f"| {p.name} | {p.shape.hidden_size} x {p.shape.num_layers}, {p.shape.num_heads} | {p.n:,} | {p.steps:,} "
              f"| {p.tokens:,} | {p.flops:.3g} |" for p in points]
    total = sum(p.flops for p in points)
    return "\n".join(lines + ["", f"{len(points)} points, {total:.3g} FLOPs in all (6·N·D)"])


def slurm_script(sweep: SweepConfig, config: str, points) -> str:
    names = " ".join(shlex.quote(p.name) for p in points)
    return f"""#!/bin/bash
# Sweep {sweep.name}: one array task per point, each running that point's stages through launch/sweep.py
# (finished points are skipped, interrupted ones resume). Submit from the repository root with the resources
# your site needs, e.g.:  sbatch --gpus-per-node={sweep.ranks} --time=04:00:00 {out_dir(sweep) / 'sweep.slurm'}
#SBATCH --job-name={sweep.name}
#SBATCH --array=0-{len(points) - 1}
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --output={sweep.name}-%A_%a.log
POINTS=({names})
cd "${{SLURM_SUBMIT_DIR}}"
python launch/sweep.py run --config {shlex.quote(config)} --point "${{POINTS[$SLURM_ARRAY_TASK_ID]}}"
"""


def status_table(sweep: SweepConfig, points) -> str:
    from pipeline.stages.sweep import final_metrics

    lines = ["| point | N | D | C | state | stage / log | seconds | val NELBO |", "|---|---|---|---|---|---|---|---|"]
    total = 0.0
    for p in points:
        state = read_state(sweep, p)
        where = state.get("log", "") if state["state"] == "failed" else (state.get("stage") or "")
        nelbo, seconds = final_metrics(sweep, p).get("val_nelbo"), sum(state["stages"].values())
        total += seconds
        lines.append(f"| {p.name} | {short(p.n)} | {short(p.tokens)} | {p.flops:.3g} | {state['state']} | {where} | "
                     f"{seconds:,.0f} | {'' if nelbo is None else f'{nelbo:.4f}'} |")
    return "\n".join(lines + ["", f"wall-clock of the finished stages: {total:,.0f} s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/sweep.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("command", choices=["plan", "run", "status", "analyze"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--emit", choices=["commands", "slurm"], help="plan: print the commands or write a SLURM array")
    parser.add_argument("--point", action="append", default=[], help="run: only this point (repeatable)")
    args = parser.parse_args(argv)
    try:
        sweep = load_config(args.config, args.overrides, cls=SweepConfig)
        points = plan(sweep)
        if args.point:
            unknown = sorted(set(args.point) - {p.name for p in points})
            if unknown:
                raise ConfigError(f"--point: {', '.join(unknown)} not in the sweep (see: launch/sweep.py plan)")
            points = [p for p in points if p.name in args.point]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "plan":
        if args.emit == "commands":
            for point in points:
                print(" && ".join(shlex.join(argv) for _, argv in commands(sweep, point, parent_run(sweep))))
        elif args.emit == "slurm":
            parent_run(sweep)  # created once here, so that the array's tasks only read it
            path = out_dir(sweep) / "sweep.slurm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(slurm_script(sweep, args.config, points))
            print(f"wrote {path}: {len(points)} array tasks")
        else:
            print(plan_table(points))
        return 0
    if args.command == "run":
        states = run(sweep, points)
        print(status_table(sweep, points))
        failed = [name for name, state in states.items() if state != "done"]
        if failed:
            print(f"{len(failed)} point(s) failed: {', '.join(failed)} (their logs are named in the table)",
                  file=sys.stderr)
        return 1 if failed else 0
    if args.command == "status":
        print(status_table(sweep, points))
        return 0
    from pipeline.stages.sweep import analyze

    print(analyze(sweep, points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
