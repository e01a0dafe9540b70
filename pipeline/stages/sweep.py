"""Scaling-law sweeps: a grid of model sizes and training lengths, planned, run, tracked and analysed.

A sweep config (``launch/configs/sweep_*.yaml``) names what each point runs (``stages: pretrain``, or
``distill``: pre-train → distil → convert → evaluate), the base configs it overrides and the grid:
- ``explicit``: every shape of the ladder × every step count;
- ``isoflop``: for each compute budget C, ``points_per_budget`` consecutive shapes of the ladder centred on the
  expected optimum N* = √(C / (6·tokens_per_parameter)), each trained for the steps that spend C = 6·N·D.
N counts the non-embedding parameters (all but the token embedding and the output projection; ``count: total``
counts all), from the model built on the meta device; D = steps × tokens per step (global batch × L); the
planned C is 6·N·D with the rounded step count, and is what the analysis uses.

Every point runs through the commands a user would type (``python -m pipeline train``, under the ``deepspeed``
launcher for several ranks, ``convert`` and ``evaluate``), one after another, from the current directory;
``OUT/points/NAME/state.json`` records its state (running, done, failed), the stages finished with their
wall-clock seconds, and the failing stage's return code and log. A finished point is skipped, an interrupted
one resumes (``train`` continues from its checkpoint), a failed one is recorded and the sweep goes on. With
MLflow, the sweep is one parent run and every training run a child tagged with the point's N, D, C and seed.

``python -m pipeline sweep plan|run|status|analyze --config FILE``:

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
import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch

from data_prep.atomic import atomic_write_bytes
from data_prep.config import ConfigError, save_resolved, to_dict
from pipeline.config import Config, EvaluateConfig, ModelConfig, TrackingConfig, load_config

log = logging.getLogger(__name__)


@dataclass
class Shape:
    """One rung of the model ladder."""

    hidden_size: int
    num_layers: int
    num_heads: int
    cond_dim: int = 64


@dataclass
class GridConfig:
    style: Literal["isoflop", "explicit"] = "isoflop"
    shapes: list[Shape] = field(default_factory=list)  # the model ladder
    budgets: list[float] = field(default_factory=list)  # isoflop: FLOPs C per point
    points_per_budget: int = 3  # isoflop: shapes per budget (at least 3 for the parabola)
    tokens_per_parameter: float = 20.0  # isoflop: D / N at the expected optimum
    steps: list[int] = field(default_factory=list)  # explicit: training steps of every shape
    seeds: list[int] = field(default_factory=lambda: [0])
    count: Literal["non_embedding", "total"] = "non_embedding"  # what N counts

    def validate(self) -> None:
        if not self.shapes:
            raise ConfigError("grid.shapes: at least one model shape is needed")
        if not self.seeds:
            raise ConfigError("grid.seeds: at least one seed is needed")
        if self.style == "isoflop":
            if not self.budgets or any(c <= 0 for c in self.budgets):
                raise ConfigError(f"grid.budgets: an isoflop grid needs positive FLOP budgets, got {self.budgets}")
            if not 3 <= self.points_per_budget <= len(self.shapes):
                raise ConfigError(f"grid.points_per_budget: {self.points_per_budget} must be at least 3 (a parabola "
                                  f"per budget) and at most the {len(self.shapes)} shapes of the ladder")
        elif not self.steps or any(s < 1 for s in self.steps):
            raise ConfigError(f"grid.steps: an explicit grid needs positive step counts, got {self.steps}")


@dataclass
class SweepConfig:
    name: str = "sweep"
    out_dir: str = "runs/sweep"
    stages: Literal["pretrain", "distill"] = "pretrain"  # distill: pre-train, distil, convert, evaluate
    prepare: Optional[str] = None  # a data-prep config, prepared once into OUT/data
    data: Optional[str] = None  # or a prepared dataset
    pretrain: str = ""  # the base configs each point overrides
    distill: Optional[str] = None
    evaluate: Optional[str] = None
    ranks: int = 1  # processes per training run (deepspeed --num_gpus)
    set: list[str] = field(default_factory=list)  # overrides for every point's pre-training config
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="sweep"))
    grid: GridConfig = field(default_factory=GridConfig)

    def validate(self) -> None:
        if (self.prepare is None) == (self.data is None):
            raise ConfigError("prepare / data: give exactly one (a data-prep config, or a prepared dataset)")
        if not self.pretrain:
            raise ConfigError("pretrain: required (the base pre-training config)")
        if self.stages == "distill" and not (self.distill and self.evaluate):
            raise ConfigError("distill / evaluate: stages: distill needs both base configs")
        if self.ranks < 1:
            raise ConfigError(f"ranks: must be positive, got {self.ranks}")


@dataclass(frozen=True)
class Point:
    name: str
    shape: Shape
    seed: int
    steps: int
    n: int  # parameters, as grid.count says
    tokens: int  # D
    budget: float | None  # the isoflop budget it belongs to (None in an explicit grid)

    @property
    def flops(self) -> float:
        return 6.0 * self.n * self.tokens

    def tags(self) -> dict[str, str]:
        tags = {"sweep.N": str(self.n), "sweep.D": str(self.tokens), "sweep.C": f"{self.flops:.4g}",
                "sweep.seed": str(self.seed), "sweep.point": self.name}
        return tags if self.budget is None else {**tags, "sweep.budget": f"{self.budget:.4g}"}


def short(x: float) -> str:
    """3e+12 -> 3e12, 120000 -> 1.2e05: compact, sortable enough for names."""
    return f"{x:.2g}".replace("e+", "e")


# ---- planning ----

def base_pretrain(sweep: SweepConfig) -> Config:
    return load_config(sweep.pretrain, sweep.set)


def shape_model(base: ModelConfig, shape: Shape, where: str) -> ModelConfig:
    model = dataclasses.replace(base, size=None, **dataclasses.asdict(shape))
    try:
        model.validate()
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return model


def count_parameters(model: ModelConfig, count: str) -> int:
    """N of the model, from the dense DiT built on the meta device."""
    from pipeline.runtime.engine import build_model

    with torch.device("meta"):
        dit = build_model(dataclasses.replace(model, tensor_parallel=1))
    total = sum(p.numel() for p in dit.parameters())
    if count == "total":
        return total
    return total - sum(p.numel() for m in (dit.vocab_embed, dit.output_layer.linear) for p in m.parameters())


def tokens_per_step(cfg: Config, ranks: int) -> int:
    if ranks % cfg.model.tensor_parallel:
        raise ConfigError(f"ranks: {ranks} is not a multiple of model.tensor_parallel = {cfg.model.tensor_parallel}")
    return cfg.data.batch_size * cfg.train.grad_accum * (ranks // cfg.model.tensor_parallel) * cfg.model.seq_len


def plan(sweep: SweepConfig) -> list[Point]:
    """The sweep's points, every point's configs validated: a problem is reported before anything runs."""
    base = base_pretrain(sweep)
    per_step = tokens_per_step(base, sweep.ranks)
    grid = sweep.grid
    ladder = sorted(((count_parameters(shape_model(base.model, s, f"grid.shapes[{i}]"), grid.count), s)
                     for i, s in enumerate(grid.shapes)), key=lambda item: item[0])
    cells: list[tuple[int, Shape, int, float | None]] = []  # (N, shape, steps, budget)
    if grid.style == "explicit":
        cells = [(n, shape, steps, None) for n, shape in ladder for steps in grid.steps]
    for budget in grid.budgets if grid.style == "isoflop" else []:
        expected = math.sqrt(budget / (6 * grid.tokens_per_parameter))
        nearest = min(range(len(ladder)), key=lambda i: abs(math.log(ladder[i][0] / expected)))
        first = min(max(0, nearest - grid.points_per_budget // 2), len(ladder) - grid.points_per_budget)
        for n, shape in ladder[first: first + grid.points_per_budget]:
            steps = round(budget / (6 * n * per_step))
            if steps < 1:
                raise ConfigError(f"grid.budgets: C = {budget:.3g} is too small for one step of the N = {n:,} "
                                  f"model ({6 * n * per_step:.3g} FLOPs per step of {per_step:,} tokens)")
            cells.append((n, shape, steps, budget))
    points = []
    for n, shape, steps, budget in cells:
        for seed in grid.seeds:
            d = steps * per_step
            name = (f"C{short(budget)}-" if budget is not None else "") + f"N{short(n)}-D{short(d)}-s{seed}"
            points.append(Point(name, shape, seed, steps, n, d, budget))
    if len({p.name for p in points}) != len(points):
        raise ConfigError("grid: two points get the same name (repeated shapes, budgets or steps)")
    for point in points:  # every config a point will run, validated now
        for stage in stages_of(sweep):
            if stage in ("pretrain", "distill", "evaluate"):
                stage_config(sweep, point, stage)
    return points


def stages_of(sweep: SweepConfig) -> tuple[str, ...]:
    return ("pretrain",) if sweep.stages == "pretrain" else ("pretrain", "distill", "convert", "evaluate")


# ---- what a point runs ----

def out_dir(sweep: SweepConfig) -> Path:
    return Path(sweep.out_dir).resolve()


def point_dir(sweep: SweepConfig, point: Point) -> Path:
    return out_dir(sweep) / "points" / point.name


def data_path(sweep: SweepConfig) -> str:
    return str(Path(sweep.data).resolve() if sweep.data else out_dir(sweep) / "data")


def tracking_overrides(sweep: SweepConfig, point: Point, parent: str | None) -> list[str]:
    t = sweep.tracking
    sets = [f"tracking.backend={t.backend}", f"tracking.experiment={t.experiment}",
            f"tracking.tags={json.dumps([f'{k}={v}' for k, v in point.tags().items()])}"]
    if t.uri:
        sets.append(f"tracking.uri={t.uri}")
    return sets + ([f"tracking.parent_run={parent}"] if parent else [])


def stage_config(sweep: SweepConfig, point: Point, stage: str, parent: str | None = None):
    """The validated config of one stage of a point (pretrain, distill or evaluate)."""
    where = point_dir(sweep, point)
    model = ["model.size=null", *(f"model.{k}={v}" for k, v in dataclasses.asdict(point.shape).items())]
    run = [f"run.name={point.name}-{stage}", f"run.out_dir={where / stage}", f"run.seed={point.seed}",
           f"data.path={data_path(sweep)}", *tracking_overrides(sweep, point, parent)]
    try:
        if stage == "pretrain":
            return load_config(sweep.pretrain, [*sweep.set, *model, *run, f"train.max_steps={point.steps}"])
        if stage == "distill":
            return load_config(sweep.distill, [*model, *run, f"distill.teacher={where / 'pretrain'}"])
        bundles = where / "bundles"
        return load_config(sweep.evaluate, [f"teacher={bundles / 'teacher'}", f"student={bundles / 'student'}",
                                            f"data={data_path(sweep)}", f"out={where / 'evaluate'}",
                                            *tracking_overrides(sweep, point, parent)], cls=EvaluateConfig)
    except ConfigError as err:
        raise ConfigError(f"point {point.name}, stage {stage}: {err}") from None


def train_argv(sweep: SweepConfig, config: Path) -> list[str]:
    """The training command through the installed package (no path into a checkout)."""
    train = ["pipeline", "train", "--config", str(config)]
    if sweep.ranks == 1:
        return [sys.executable, "-m", *train]
    return ["deepspeed", "--num_gpus", str(sweep.ranks), "--module", *train]


def commands(sweep: SweepConfig, point: Point, parent: str | None = None, write: bool = True) -> list[tuple[str, list[str]]]:
    """(stage, argv) in order; the stage configs are written into the point's folder (``write``)."""
    where = point_dir(sweep, point)
    out = []
    for stage in stages_of(sweep):
        if stage == "convert":
            out.append((stage, [sys.executable, "-m", "pipeline", "convert", "--checkpoint", str(where / "pretrain"),
                                "--out", str(where / "bundles" / "teacher")]))
            out.append((stage, [sys.executable, "-m", "pipeline", "convert", "--checkpoint", str(where / "distill"),
                                "--out", str(where / "bundles" / "student")]))
            continue
        path = where / f"{stage}.yaml"
        if write:
            save_resolved(stage_config(sweep, point, stage, parent), where, path.name)
        if stage == "evaluate":
            out.append((stage, [sys.executable, "-m", "pipeline", "evaluate", "--config", str(path)]))
        else:
            out.append((stage, train_argv(sweep, path)))
    return out


# ---- state ----

def read_state(sweep: SweepConfig, point: Point) -> dict:
    path = point_dir(sweep, point) / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {"state": "pending", "stages": {}}


def write_state(sweep: SweepConfig, point: Point, state: dict) -> None:
    atomic_write_bytes(point_dir(sweep, point) / "state.json", json.dumps(state, indent=1).encode())


def environment(sweep: SweepConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1" if sweep.ranks > 1 else str(os.cpu_count() or 1))
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def prepare_data(sweep: SweepConfig, log) -> None:
    """Prepare the sweep's dataset once (``prepare``), unless it is there."""
    if sweep.data or (out_dir(sweep) / "data" / "manifest.json").is_file():
        return
    log(f"preparing {out_dir(sweep) / 'data'} from {sweep.prepare}")
    subprocess.run([sys.executable, "-m", "data_prep", "prepare", "--config", sweep.prepare,
                    "--out", str(out_dir(sweep) / "data")], env=environment(sweep), check=True)


def run_point(sweep: SweepConfig, point: Point, parent: str | None, log) -> str:
    """Run the point's unfinished stages; returns its final state (done or failed)."""
    state = read_state(sweep, point)
    if state["state"] == "done":
        return "done"
    where = point_dir(sweep, point)
    where.mkdir(parents=True, exist_ok=True)
    steps = commands(sweep, point, parent)
    for index, (stage, argv) in enumerate(steps):
        key = f"{index}:{stage}"
        if key in state["stages"]:
            continue
        state.update(state="running", stage=stage)
        write_state(sweep, point, state)
        logfile, start = where / f"{index}-{stage}.log", time.perf_counter()
        with open(logfile, "a") as out:
            code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=environment(sweep)).returncode
        if code != 0:
            state.update(state="failed", returncode=code, log=str(logfile))
            write_state(sweep, point, state)
            log(f"{point.name}: {stage} failed (exit code {code}); log {logfile}")
            return "failed"
        state["stages"][key] = round(time.perf_counter() - start, 1)
    state.update(state="done", stage=None)
    state.pop("returncode", None)
    write_state(sweep, point, state)
    return "done"


def parent_run(sweep: SweepConfig) -> str | None:
    """The sweep's MLflow parent run (created on first use, its id kept in OUT/sweep.json)."""
    if sweep.tracking.backend == "none":
        return None
    record = out_dir(sweep) / "sweep.json"
    if record.is_file():
        return json.loads(record.read_text())["parent_run"]
    from pipeline.runtime.tracking import MlflowTracker

    tracker = MlflowTracker(sweep.tracking, sweep.name, None)
    tracker.log_params(to_dict(sweep))
    tracker.close()
    out_dir(sweep).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(record, json.dumps({"parent_run": tracker.run_id}).encode())
    return tracker.run_id


def run(sweep: SweepConfig, points: list[Point], log=print) -> dict[str, str]:
    """Every point in order (skipping finished ones); returns name -> final state."""
    prepare_data(sweep, log)
    parent = parent_run(sweep)
    states = {}
    for i, point in enumerate(points):
        log(f"[{i + 1}/{len(points)}] {point.name}: N = {point.n:,}, D = {point.tokens:,}, C = {point.flops:.3g}, "
            f"{point.steps} steps")
        states[point.name] = run_point(sweep, point, parent, log)
    return states


# ---- results ----

def final_metrics(sweep: SweepConfig, point: Point) -> dict[str, float]:
    """What the analysis reads from a point's outputs: the teacher's final validation NELBO and, with
    distillation, the student's Gen-PPL at 16 NFE (plain sampler) and the distillation's wall-clock seconds."""
    from pipeline.measure.plots import read_metrics

    where, out = point_dir(sweep, point), {}
    metrics = where / "pretrain" / "metrics.jsonl"
    if metrics.is_file():
        values = [(step, row["val/nelbo_nats"]) for step, row in read_metrics(metrics).items() if "val/nelbo_nats" in row]
        if values and max(values)[0] == point.steps:
            out["val_nelbo"] = max(values)[1]
    results = where / "evaluate" / "results.json"
    if results.is_file():
        rows = json.loads(results.read_text())["rows"]
        cell = next((r for r in rows if (r["model"], r["sampler"], r["steps"], r.get("control_for")) ==
                     ("student", "ancestral", 16, None)), None)
        if cell is not None:
            out["student_gen_ppl_16"] = cell["gen_ppl"]
    seconds = [s for key, s in read_state(sweep, point)["stages"].items() if key.endswith(":distill")]
    if seconds:
        out["distill_seconds"] = seconds[0]
    return out


def lowest_by(pairs: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """For each distinct x, the lowest y (the best run at that size or compute), sorted by x."""
    best: dict[float, float] = {}
    for x, y in pairs:
        best[x] = min(y, best.get(x, math.inf))
    xs = sorted(best)
    return xs, [best[x] for x in xs]


def power_law_fit(name: str, xs: list[float], ys: list[float], xlabel: str, ylabel: str, where: Path) -> dict:
    """A saturating power law with bootstrap intervals and its plot, or {"error": why not}."""
    from pipeline.measure.scaling import bootstrap, fit_power_law, plot_fit

    try:
        fit = fit_power_law(xs, ys)
    except ValueError as err:  # too few sizes, or a loss that does not fall with the scale
        return {"points": len(xs), "error": str(err)}
    band = bootstrap(fit_power_law, xs, ys)
    plot_fit(where / f"{name}.png", xs, ys, fit, band, xlabel, ylabel, f"{ylabel} vs {xlabel}")
    return {"points": len(xs), **{k: band[k] for k in ("a", "alpha", "c")}, "samples_used": band["samples_used"]}


def unbracketed(runs: list[tuple[int, float]]) -> str | None:
    """Why one IsoFLOP budget's runs do not locate its optimum (None when they do): the parabola in log N must
    open upwards and its vertex lie among the budget's sizes, not be extrapolated."""
    from pipeline.measure.scaling import isoflop_minimum

    sizes = [n for n, _ in runs]
    try:
        vertex = isoflop_minimum(sizes, [loss for _, loss in runs])["n_opt"]
    except ValueError as err:
        return str(err)
    if not min(sizes) <= vertex <= max(sizes):
        return (f"the parabola's minimum, N = {vertex:,.0f}, lies outside the sizes run ({min(sizes):,}–{max(sizes):,}):"
                " they do not bracket the optimum")
    return None


def interval_text(value: dict, digits: str = ".3g") -> str:
    return f"{value['value']:{digits}} ({value['low']:{digits}}–{value['high']:{digits}})"


def analyze(sweep: SweepConfig, points: list[Point]) -> str:
    """Fit the finished points; writes OUT/analysis/{fits.json, fits.md, *.png}, logs them to the parent run and
    returns the Markdown."""
    from pipeline.measure.machine import describe
    from pipeline.measure.scaling import bootstrap_isoflop, plot_fit

    where = out_dir(sweep) / "analysis"
    shutil.rmtree(where, ignore_errors=True)  # written afresh: no plot of an earlier analysis stays behind
    where.mkdir(parents=True)
    results = [(p, final_metrics(sweep, p)) for p in points]
    done = [(p, m) for p, m in results if "val_nelbo" in m]
    n_label = "N (non-embedding parameters)" if sweep.grid.count == "non_embedding" else "N (parameters)"
    nelbo = "validation NELBO (nats/token)"
    fits: dict[str, dict] = {"nelbo_vs_n": power_law_fit(
        "nelbo_vs_n", *lowest_by([(p.n, m["val_nelbo"]) for p, m in done]), n_label, nelbo, where)}
    # the loss against compute: the best run of each budget (of each point's C in an explicit grid)
    fits["nelbo_vs_c"] = power_law_fit("nelbo_vs_c", *lowest_by([(p.budget or p.flops, m["val_nelbo"]) for p, m in done]),
                                       "C (FLOPs, 6·N·D)", nelbo, where)
    by_budget: dict[float, list[tuple[int, float]]] = {}
    for p, m in done:
        if p.budget is not None:
            by_budget.setdefault(p.budget, []).append((p.n, m["val_nelbo"]))
    excluded = {budget: why for budget, runs in sorted(by_budget.items()) if (why := unbracketed(runs))}
    kept = [budget for budget in sorted(by_budget) if budget not in excluded]
    if len(kept) >= 2:
        iso = bootstrap_isoflop([{"budget": b, "n": n, "loss": loss} for b in kept for n, loss in by_budget[b]])
        centre = {"k": iso["k"]["value"], "beta": iso["beta"]["value"]}
        plot_fit(where / "optimal_n_vs_c.png", kept, [b["n_opt"]["value"] for b in iso["budgets"]], centre, iso,
                 "C (FLOPs)", f"N* ({n_label})", "compute-optimal size from IsoFLOP minima")
        fits["optimal_n_vs_c"] = {**{k: iso[k] for k in ("budgets", "k", "beta", "samples_used")},
                                  "left_out": {f"{b:.4g}": why for b, why in excluded.items()}}
    elif by_budget:
        fits["optimal_n_vs_c"] = {"points": len(kept), "error": "fewer than 2 budgets bracket their optimum: " +
                                  "; ".join(f"C = {b:.3g}: {why}" for b, why in excluded.items())}
    for key, label in (("student_gen_ppl_16", "student Gen-PPL at 16 NFE"), ("distill_seconds", "distillation seconds")):
        pairs = [(p.n, m[key]) for p, m in results if key in m]
        if pairs:
            fits[key] = power_law_fit(key, *lowest_by(pairs), n_label, label, where)
    lines = [f"Sweep `{sweep.name}`: {len(done)} of {len(points)} points finished; {describe()}.",
             f"N counts {'non-embedding' if sweep.grid.count == 'non_embedding' else 'all'} parameters; "
             "C = 6·N·D; 95 % bootstrap intervals over the points.", "",
             "| point | N | D | C | val NELBO | student Gen-PPL 16 | distillation s |", "|---|---|---|---|---|---|---|"]
    for p, m in results:
        cells = [f"{m[k]:.4g}" if k in m else "" for k in ("val_nelbo", "student_gen_ppl_16", "distill_seconds")]
        lines.append(f"| {p.name} | {p.n:,} | {p.tokens:,} | {p.flops:.3g} | " + " | ".join(cells) + " |")
    lines += ["", "| fit | law | parameters |", "|---|---|---|"]
    for name, fit in fits.items():
        if "error" in fit:
            lines.append(f"| {name} | not fitted ({fit['points']} points) | {fit['error']} |")
        elif name == "optimal_n_vs_c":
            lines.append(f"| {name} | N* = k·C^β | k = {interval_text(fit['k'])}, β = {interval_text(fit['beta'], '.3f')} |")
            lines += [f"| minimum at C = {b['budget']:.3g} | parabola in log N | N* = {interval_text(b['n_opt'])}, "
                      f"NELBO = {interval_text(b['loss_opt'], '.4f')} |" for b in fit["budgets"]]
            lines += [f"| C = {b} left out | – | {why} |" for b, why in fit["left_out"].items()]
        else:
            lines.append(f"| {name} | a·X^(−α) + c, {fit['points']} points | a = {interval_text(fit['a'])}, "
                         f"α = {interval_text(fit['alpha'], '.3f')}, c = {interval_text(fit['c'], '.4f')} |")
    text = "\n".join(lines) + "\n"
    (where / "fits.md").write_text(text)
    (where / "fits.json").write_text(json.dumps(fits, indent=1) + "\n")
    log_analysis(sweep, where, fits)
    return text


def log_analysis(sweep: SweepConfig, where: Path, fits: dict) -> None:
    """The analysis's files as artifacts of the parent run, and the exponents as its metrics."""
    parent = parent_run(sweep)
    if parent is None:
        return
    from pipeline.runtime.tracking import MlflowTracker

    tracker = MlflowTracker(sweep.tracking, sweep.name, parent)
    for path in sorted(where.iterdir()):
        tracker.log_artifact(path)
    exponents = {f"fit/{name}/{key}": fit[key]["value"] for name, fit in fits.items()
                 for key in ("alpha", "c", "beta") if key in fit}
    tracker.log_metrics(exponents, 0)
    tracker.close()


# ---- the command ----

def plan_table(points) -> str:
    lines = ["| point | shape (d x layers, heads) | N | steps | D (tokens) | C (FLOPs) |", "|---|---|---|---|---|---|"]
    lines += [f"| {p.name} | {p.shape.hidden_size} x {p.shape.num_layers}, {p.shape.num_heads} | {p.n:,} | {p.steps:,} "
              f"| {p.tokens:,} | {p.flops:.3g} |" for p in points]
    total = sum(p.flops for p in points)
    return "\n".join(lines + ["", f"{len(points)} points, {total:.3g} FLOPs in all (6·N·D)"])


def slurm_script(sweep: SweepConfig, config: str, points) -> str:
    names = " ".join(shlex.quote(p.name) for p in points)
    return f"""#!/bin/bash
# Sweep {sweep.name}: one array task per point, each running that point's stages through python -m pipeline sweep
# (finished points are skipped, interrupted ones resume). Submit from the repository root with the resources
# your site needs, e.g.:  sbatch --gpus-per-node={sweep.ranks} --time=04:00:00 {out_dir(sweep) / 'sweep.slurm'}
#SBATCH --job-name={sweep.name}
#SBATCH --array=0-{len(points) - 1}
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --output={sweep.name}-%A_%a.log
POINTS=({names})
cd "${{SLURM_SUBMIT_DIR}}"
python -m pipeline sweep run --config {shlex.quote(config)} --point "${{POINTS[$SLURM_ARRAY_TASK_ID]}}"
"""


def status_table(sweep: SweepConfig, points) -> str:
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
    """The tables and commands are the command's output (stdout); what goes wrong is logged (stderr)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline sweep", description=__doc__.splitlines()[0],
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
                raise ConfigError(f"--point: {', '.join(unknown)} not in the sweep "
                                  "(see: python -m pipeline sweep plan)")
            points = [p for p in points if p.name in args.point]
    except ConfigError as err:
        log.error("%s", err)
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
            log.info("wrote %s: %d array tasks", path, len(points))
        else:
            print(plan_table(points))
        return 0
    if args.command == "run":
        states = run(sweep, points)
        print(status_table(sweep, points))
        failed = [name for name, state in states.items() if state != "done"]
        if failed:
            log.error("%d point(s) failed: %s (their logs are named in the table)", len(failed), ", ".join(failed))
        return 1 if failed else 0
    if args.command == "status":
        print(status_table(sweep, points))
        return 0
    print(analyze(sweep, points))
    return 0
