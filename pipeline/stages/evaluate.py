"""The evaluation stage: teacher and student sampled over step grids and judged side by side (spec §7).

``python -m pipeline evaluate --config launch/configs/evaluate_tiny.yaml [--set key=value ...]``

Rows: the judge on held-out real text (the validation split, decoded like the samples: the reference), the
teacher with the plain sampler at ``teacher_steps``, the student at ``student_steps`` with each of
``student_samplers``; every row has its sample count, Gen-PPL with a bootstrap interval, the mean unigram
entropy of the token ids, [MASK]s left after noise removal (should be 0), NFE and wall-clock per sample. Next to
each student sampler, the entropy-matched control: the teacher at the temperature whose entropy matches the
student's (a lower temperature lowers Gen-PPL and entropy together, so a student that does not beat this row
has only sharpened its distribution). With ``in_domain_judge`` (a causal DiT bundle trained on this corpus's
training split), every row is also scored by it. With an exact judge (``judge: markov:CHAIN``): the teacher's
best temperature at each of ``student_steps`` and the exact denoiser (the chain's posterior driving the plain
sampler) at each of ``teacher_steps``. On real proteins (the protein tokenizer, an in-domain judge bundle): the
protein metrics of ``pipeline/measure/protein.py`` beside Gen-PPL. Every sampled row, controls included, is
repeated in each unmasking order of ``orders`` (``models/unmasking.py``): a student is compared with the teacher
sampled the same way. Same judges, seeds and sample count throughout. Writes ``results.md``, ``results.json``,
plots and the samples to ``out``, and logs them to MLflow.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from data_prep.atomic import atomic_write_bytes
from data_prep.config import ConfigError, to_dict
from data_prep.tokenizers import load_tokenizer
from models.unmasking import UnmaskingOrder
from pipeline.bundle import BundleError, load_bundle
from pipeline.config import EvaluateConfig, load_config
from pipeline.measure.exact_denoiser import exact_bundle
from pipeline.measure.exact_judge import METRICS as EXACT_METRICS
from pipeline.measure.exact_judge import ExactJudge, ExactJudgeError, is_exact, load_exact_judge
from pipeline.measure.judge import JudgeError, bootstrap_interval, gen_ppl, in_domain_judge, load_judge, unigram_entropy
from pipeline.measure.plots import plot_versus_nfe
from pipeline.measure.protein import METRICS as PROTEIN_METRICS
from pipeline.measure.protein import ProteinMetrics, mmseqs_missing
from pipeline.measure.text import render
from pipeline.runtime.data import TokenShards
from pipeline.runtime.tracking import make_tracker
from pipeline.stages.sample import sample

log = logging.getLogger(__name__)

EXACT_DENOISER = "exact denoiser"  # the model of the rows sampled from the chain's exact posterior
IN_DOMAIN = "in_domain_"  # key prefix of the in-domain judge's numbers
PROTEIN = "protein_"  # key prefix of the protein metrics (pipeline/measure/protein.py)


def make_judge(cfg: EvaluateConfig, tok):
    """The judge ``cfg.judge`` names: an exact judge for ``markov:PATH``, else an autoregressive LM (for protein
    samples an in-domain judge bundle: no text LM can judge them)."""
    if not is_exact(cfg.judge):
        if tok.kind == "protein" and not (Path(cfg.judge) / "manifest.json").is_file():
            raise JudgeError(f"judge {cfg.judge!r}: protein samples need a judge bundle trained on this corpus "
                             "(model.causal: true; launch/recipes/protein/protein.sh trains one), not a text model")
        return load_judge(cfg.judge, cfg.judge_context, cfg.judge_batch_size)
    try:
        return load_exact_judge(cfg.judge, tok)
    except ExactJudgeError as err:
        raise JudgeError(str(err)) from None


def judged_row(judges: dict, cfg: EvaluateConfig, texts: list[str], ids: list[list[int]], **about) -> dict:
    """Under each judge (keys prefixed by the judge's prefix): Gen-PPL and its interval, or an exact judge's
    metrics and intervals; and the mean entropy of the token ids."""
    row = {**about, "samples": len(texts), "entropy": sum(unigram_entropy(i) for i in ids) / len(ids)}
    for prefix, judge in judges.items():
        if isinstance(judge, ExactJudge):
            summary = judge.summarise([judge.score(i) for i in ids], cfg.bootstrap_rounds, cfg.seed)
            row.update({f"{prefix}{key}": value for key, value in summary.items() if key != "samples"})
            continue
        if isinstance(judge, ProteinMetrics):
            row.update({f"{prefix}{key}": value
                        for key, value in judge.summarise(texts, cfg.bootstrap_rounds, cfg.seed).items()})
            continue
        scores = judge.score(texts)
        row.update({f"{prefix}gen_ppl": gen_ppl(scores), f"{prefix}judge_tokens": sum(c for _, c in scores),
                    f"{prefix}interval": list(bootstrap_interval(scores, cfg.bootstrap_rounds, seed=cfg.seed))})
    return row


def held_out(cfg: EvaluateConfig) -> list[list[int]]:
    """The first ``num_samples`` rows of the validation split: the reference the samples are compared with."""
    shards = TokenShards(cfg.data, "val")
    return [shards[i].tolist() for i in range(min(cfg.num_samples, len(shards)))]


def reference_row(judges: dict, cfg: EvaluateConfig, tok, ids: list[list[int]]) -> dict:
    return judged_row(judges, cfg, [render(i, tok)[0] for i in ids], ids, model="held-out text", sampler="-",
                      order=None, steps=None, temperature=None, control_for=None, control=None, nfe=None, masks_left=0,
                      seconds_per_sample=None)


def tag(order: str) -> str:
    """An order's spec as a file-name and MLflow-metric-name part (no colon: dispersed:3 -> dispersed3)."""
    return order.replace(":", "")


def sampled_row(judges: dict, cfg: EvaluateConfig, bundle, tok, model: str, sampler: str, order: UnmaskingOrder,
                steps: int, temperature: float = 1.0, control_for: str | None = None,
                control: str | None = None) -> dict:
    rows = sample(bundle, tok, steps, sampler, cfg.num_samples, cfg.batch_size, cfg.seed, temperature=temperature,
                  order=order)
    samples_dir = Path(cfg.out) / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    name = (f"{model}_{sampler}_{tag(str(order))}_{steps}"
            + ("" if temperature == 1.0 else f"_T{temperature:.3f}"))
    atomic_write_bytes(samples_dir / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    batches = {r["batch"]: r for r in rows}.values()
    return judged_row(judges, cfg, [r["text"] for r in rows], [r["token_ids"] for r in rows], model=model,
                      sampler=sampler, order=str(order), steps=steps, temperature=temperature, control_for=control_for,
                      control=control if control_for is None or control else "entropy-matched",
                      nfe=sum(r["nfe"] for r in rows) / len(rows), masks_left=sum(r["masks_left"] for r in rows),
                      seconds_per_sample=sum(b["batch_seconds"] for b in batches) / len(rows))


def mean_entropy(bundle, tok, cfg: EvaluateConfig, order: UnmaskingOrder, temperature: float) -> float:
    rows = sample(bundle, tok, cfg.control_search_steps, "ancestral", cfg.control_search_samples, cfg.batch_size,
                  cfg.seed, temperature=temperature, order=order)
    return sum(unigram_entropy(r["token_ids"]) for r in rows) / len(rows)


def matching_temperature(bundle, tok, cfg: EvaluateConfig, order: UnmaskingOrder, target: float) -> float:
    """The temperature T in [0.1, 1] at which the teacher's mean entropy meets ``target``: bisection of log T
    with the same seeds in every round (entropy falls with T); 1 when the teacher is not above the target."""
    if mean_entropy(bundle, tok, cfg, order, 1.0) <= target:
        return 1.0
    low, high = 0.1, 1.0
    for _ in range(cfg.control_search_rounds):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if mean_entropy(bundle, tok, cfg, order, middle) < target else (low, middle)
    return math.sqrt(low * high)


def control_rows(judges: dict, cfg: EvaluateConfig, teacher, tok, rows: list[dict],
                 order: UnmaskingOrder) -> list[dict]:
    """The entropy-matched teacher next to each student sampler (at ``control_student_steps``), in ``order``."""
    steps = cfg.control_steps or max(cfg.teacher_steps)
    controls = []
    for student in [r for r in rows if r["model"] == "student" and r["steps"] == cfg.control_student_steps
                    and r["order"] == str(order)]:
        about = f"student {student['sampler']} {student['steps']}"
        temperature = matching_temperature(teacher, tok, cfg, order, student["entropy"])
        log.info(f"entropy-matched control for {about} in order {order} (entropy {student['entropy']:.2f}): "
                 f"teacher at T = {temperature:.3f}")
        controls.append(sampled_row(judges, cfg, teacher, tok, "teacher", "ancestral", order, steps, temperature,
                                    about))
    return controls


def best_temperature_rows(judges: dict, cfg: EvaluateConfig, teacher, tok, rows: list[dict],
                          order: UnmaskingOrder) -> list[dict]:
    """With an exact judge: the teacher at each of ``student_steps`` (with or without a student: what one must
    beat), at the temperature of ``exact_control_temperatures`` whose samples have the lowest bigram TV (a lower
    temperature trades bigram distance for likelihood, so a student that does not beat this row has only
    sharpened), in ``order``. A teacher row of ``rows`` at T = 1 has the same seeds, so it is reused rather than
    sampled again."""
    plain = {r["steps"]: r for r in rows if r["model"] == "teacher" and r["temperature"] == 1.0 and not r["control"]
             and r["order"] == str(order)}
    controls = []
    for steps in cfg.student_steps:
        grid = [{**plain[steps], "control_for": "best temperature", "control": "best temperature"}
                if temperature == 1.0 and steps in plain else
                sampled_row(judges, cfg, teacher, tok, "teacher", "ancestral", order, steps, temperature,
                            "best temperature", "best temperature")
                for temperature in cfg.exact_control_temperatures]
        best = min(grid, key=lambda r: math.inf if r["bigram_tv"] is None else r["bigram_tv"])
        log.info(f"best-temperature control at {steps} steps in order {order}: teacher at "
                 f"T = {best['temperature']:.2f} (bigram TV "
                 + ", ".join(f"{r['temperature']:.2f}: {r['bigram_tv']:.3f}" for r in grid
                             if r["bigram_tv"] is not None)
                 + ")")
        controls.append(best)
    return controls


def gen_ppl_text(r: dict, prefix: str = "") -> str:
    low, high = r[f"{prefix}interval"]
    return f"{r[f'{prefix}gen_ppl']:,.1f} ({low:,.1f}–{high:,.1f})"


def metric_text(r: dict, key: str, fmt: str) -> str:
    if r.get(key) is None:
        return "–"
    if f"{key}_interval" not in r:
        return format(r[key], fmt)
    low, high = r[f"{key}_interval"]
    return f"{format(r[key], fmt)} ({format(low, fmt)}–{format(high, fmt)})"


def judge_columns(judges: dict) -> list[tuple[str, object]]:
    """(title, row -> cell) of each judge's columns, in the judges' order."""
    columns = []
    for prefix, judge in judges.items():
        if isinstance(judge, (ExactJudge, ProteinMetrics)):
            metrics = EXACT_METRICS if isinstance(judge, ExactJudge) else PROTEIN_METRICS
            columns += [(title, lambda r, k=prefix + key, f=fmt: metric_text(r, k, f)) for key, title, fmt in metrics]
        else:
            columns.append(("in-domain Gen-PPL" if prefix else "Gen-PPL", lambda r, p=prefix: gen_ppl_text(r, p)))
    return columns


def row_label(r: dict) -> str:
    if r["control"] == "entropy-matched":
        return f"{r['model']} (entropy-matched to {r['control_for']})"
    if r["control"] == "best temperature":
        return f"{r['model']} (best temperature by bigram TV)"
    return r["model"]


def markdown(rows: list[dict], cfg: EvaluateConfig, judges: dict) -> str:
    in_domain = cfg.in_domain_judge is not None
    exact = isinstance(judges[""], ExactJudge)
    intro = (f"Judge: {cfg.judge}" + (" (exact scores under the synthetic corpus's Markov chain)" if exact else "")
             + (f"; in-domain judge: {cfg.in_domain_judge} (trained on this corpus's training split: it rewards "
                "fitting this corpus)" if in_domain else "") + ". "
             + ("NLL is letter-weighted; " if exact else "Gen-PPL is token-weighted; ")
             + "95% bootstrap interval over samples in brackets."
             + (" Protein metrics (pipeline/measure/protein.py): amino-acid composition KL(held-out ‖ samples), the "
                "share of low-complexity samples, the mean longest single-residue run, and clusters of the samples' "
                "longest proteins at 50 % identity (mmseqs2) per 100 samples." if PROTEIN in judges else ""))
    columns = judge_columns(judges)
    lines = [intro, "", "| model | sampler | order | steps | T | NFE | samples | " + " | ".join(c[0] for c in columns)
             + " | entropy | [MASK] left | s / sample |", "|---|---|---|---|---|---|---|" + "---|" * len(columns)
             + "---|---|---|"]
    for r in rows:
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {row_label(r)} | {r['sampler']} | {r['order'] or '–'} | {fmt(r['steps'], 'd')} | "
                     f"{fmt(r['temperature'], '.2f')} | "
                     f"{fmt(r['nfe'], '.1f')} | {r['samples']} | " + " | ".join(cell(r) for _, cell in columns)
                     + f" | {r['entropy']:.2f} | {r['masks_left']} | {fmt(r['seconds_per_sample'], '.3f')} |")
    return "\n".join(lines) + "\n"


def log_row(r: dict) -> dict:
    if "gen_ppl" in r:
        in_domain = f", in-domain {gen_ppl_text(r, IN_DOMAIN)}" if f"{IN_DOMAIN}gen_ppl" in r else ""
        judged = f"Gen-PPL {gen_ppl_text(r)}{in_domain}"
    else:
        judged = ", ".join(f"{title} {metric_text(r, key, fmt)}" for key, title, fmt in EXACT_METRICS)
    if f"{PROTEIN}composition_kl" in r:
        judged += ", " + ", ".join(f"{title} {metric_text(r, PROTEIN + key, fmt)}" for key, title, fmt in PROTEIN_METRICS)
    log.info(f"{r['model']} {r['sampler']} {r['order']} {r['steps']} steps, T = {r['temperature']:.3f}: {judged}, "
             f"entropy {r['entropy']:.2f}, NFE {r['nfe']:.1f}, {r['seconds_per_sample']:.3f} s/sample")
    return r


def order_rows(judges: dict, cfg: EvaluateConfig, teacher, student, tok, order: UnmaskingOrder) -> list[dict]:
    """Every sampled row of the evaluation in one unmasking order: teacher, student, their controls and the
    exact denoiser."""
    cells = [(teacher, "teacher", "ancestral", s) for s in cfg.teacher_steps]
    if student is not None:
        cells += [(student, "student", sampler, s) for sampler in cfg.student_samplers for s in cfg.student_steps]
    rows = [log_row(sampled_row(judges, cfg, bundle, tok, model, sampler, order, steps))
            for bundle, model, sampler, steps in cells]
    if cfg.entropy_control:
        rows += [log_row(r) for r in control_rows(judges, cfg, teacher, tok, rows, order)]
    exact = isinstance(judges[""], ExactJudge)
    if exact and cfg.exact_control_temperatures:
        rows += [log_row(r) for r in best_temperature_rows(judges, cfg, teacher, tok, rows, order)]
    if exact and cfg.exact_denoiser:
        oracle = exact_bundle(teacher, judges[""])
        rows += [log_row(sampled_row(judges, cfg, oracle, tok, EXACT_DENOISER, "ancestral", order, steps))
                 for steps in cfg.teacher_steps]
    return rows


def evaluate(cfg: EvaluateConfig) -> list[dict]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_bundle(cfg.teacher)
    student = load_bundle(cfg.student) if cfg.student else None
    if student is not None and student.manifest["tokenizer"]["fingerprint"] != teacher.manifest["tokenizer"]["fingerprint"]:
        raise BundleError(f"{cfg.student} and {cfg.teacher} use different tokenizers: compare like with like")
    tok = load_tokenizer(teacher.tokenizer_dir)
    judges = {"": make_judge(cfg, tok)}
    exact = isinstance(judges[""], ExactJudge)
    if cfg.in_domain_judge is not None:
        judges[IN_DOMAIN] = in_domain_judge(Path(cfg.in_domain_judge), cfg.in_domain_judge, cfg.judge_batch_size,
                                            teacher.manifest["tokenizer"]["fingerprint"])
    reference = held_out(cfg)
    if tok.kind == "protein" and not exact:  # real proteins (a synthetic chain has its exact judge)
        if missing := mmseqs_missing():
            raise JudgeError(missing)
        judges[PROTEIN] = ProteinMetrics([render(i, tok)[0] for i in reference], threads=cfg.protein_threads)
    rows = [reference_row(judges, cfg, tok, reference)]
    for order in [UnmaskingOrder.parse(spec).check_length(teacher.seq_len) for spec in cfg.orders]:
        rows += order_rows(judges, cfg, teacher, student, tok, order)
    table = markdown(rows, cfg, judges)
    atomic_write_bytes(out / "results.md", table.encode())
    atomic_write_bytes(out / "results.json", json.dumps({"config": to_dict(cfg), "rows": rows}, indent=1).encode())
    if exact:
        plots = [plot_versus_nfe(rows, key, title, out / f"{key}_vs_nfe.png") for key, title, _ in EXACT_METRICS
                 if any(r[key] is not None for r in rows)]  # regime switches: none under a first-order chain
    else:
        plots = [plot_versus_nfe(rows, "gen_ppl", f"Gen-PPL ({cfg.judge})", out / "genppl_vs_nfe.png")]
    plots.append(plot_versus_nfe(rows, "seconds_per_sample", "seconds per sample", out / "seconds_vs_nfe.png"))
    if cfg.in_domain_judge is not None:
        plots.append(plot_versus_nfe(rows, f"{IN_DOMAIN}gen_ppl", "in-domain Gen-PPL", out / "in_domain_genppl_vs_nfe.png"))
    if PROTEIN in judges:
        plots += [plot_versus_nfe(rows, PROTEIN + key, title, out / f"{key}_vs_nfe.png") for key, title, _ in PROTEIN_METRICS]
    tracker = make_tracker(cfg.tracking, True, "evaluate")
    tracker.log_params(to_dict(cfg))
    for r in rows[1:]:
        name = f"{r['model']}_{r['sampler']}_{tag(r['order'])}" + (f"_control_{r['control_for'].replace(' ', '_')}" if r["control_for"] else "")
        judged = ({f"{key}/{name}": r[key] for key, _, _ in EXACT_METRICS if r[key] is not None} if exact
                  else {f"genppl/{name}": r["gen_ppl"]})
        tracker.log_metrics({**judged, f"entropy/{name}": r["entropy"],
                             **({f"in_domain_genppl/{name}": r[f"{IN_DOMAIN}gen_ppl"]} if IN_DOMAIN in judges else {}),
                             **({f"{key}/{name}": r[PROTEIN + key] for key, _, _ in PROTEIN_METRICS}
                                if PROTEIN in judges else {})},
                            r["steps"])
    for path in (out / "results.md", out / "results.json", *plots):
        tracker.log_artifact(path)
    tracker.close()
    print("\n" + table)  # the command's output
    return rows


def read_rows(out: Path) -> list[dict]:
    """The rows an evaluation wrote to ``out/results.json`` (for the recipes' table builders)."""
    return json.loads((out / "results.json").read_text())["rows"]


def find_row(rows: list[dict], model: str, sampler: str, steps: int, control_for: str | None = None) -> dict | None:
    """The row of ``model`` sampled with ``sampler`` at ``steps`` (a control row: ``control_for`` names its row)."""
    return next((r for r in rows if (r["model"], r["sampler"], r["steps"], r["control_for"]) ==
                 (model, sampler, steps, control_for)), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        evaluate(load_config(args.config, args.overrides, EvaluateConfig))
    except (ConfigError, BundleError, JudgeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

