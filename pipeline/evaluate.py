"""The evaluation stage: teacher and student sampled over step grids and judged side by side (spec §7).

``python -m pipeline.evaluate --config launch/configs/evaluate_tiny.yaml [--set key=value ...]``

Rows: the judge on held-out real text (the validation split, decoded like the samples: the reference), the
teacher with the plain sampler at ``teacher_steps``, the student at ``student_steps`` with each of
``student_samplers``; every row has its sample count, Gen-PPL with a bootstrap interval, the mean unigram
entropy of the token ids, [MASK]s left after noise removal (should be 0), NFE and wall-clock per sample. Next to
each student sampler, the entropy-matched control: the teacher at the temperature whose entropy matches the
student's (a lower temperature lowers Gen-PPL and entropy together, so a student that does not beat this row
has only sharpened its distribution). Same judge, seeds and sample count throughout. Writes ``results.md``, ``results.json``, two plots and the samples
to ``out``, and logs them to MLflow.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from data_prep.tokenizers import load_tokenizer
from pipeline.atomic import atomic_write_bytes
from pipeline.bundle import BundleError, load_bundle
from pipeline.config import ConfigError, EvaluateConfig, load_config, to_dict
from pipeline.data import TokenShards
from pipeline.judge import JudgeError, bootstrap_interval, gen_ppl, load_judge, unigram_entropy
from pipeline.plots import plot_versus_nfe
from pipeline.sample import sample
from pipeline.text import render
from pipeline.tracking import make_tracker


def judged_row(judge, cfg: EvaluateConfig, texts: list[str], ids: list[list[int]], **about) -> dict:
    scores = judge.score(texts)
    low, high = bootstrap_interval(scores, cfg.bootstrap_rounds, seed=cfg.seed)
    return {**about, "samples": len(texts), "gen_ppl": gen_ppl(scores), "interval": [low, high],
            "entropy": sum(unigram_entropy(i) for i in ids) / len(ids), "judge_tokens": sum(c for _, c in scores)}


def reference_row(judge, cfg: EvaluateConfig, tok) -> dict:
    shards = TokenShards(cfg.data, "val")
    ids = [shards[i].tolist() for i in range(min(cfg.num_samples, len(shards)))]
    return judged_row(judge, cfg, [render(i, tok)[0] for i in ids], ids, model="held-out text", sampler="-",
                      steps=None, temperature=None, control_for=None, nfe=None, masks_left=0, seconds_per_sample=None)


def sampled_row(judge, cfg: EvaluateConfig, bundle, tok, model: str, sampler: str, steps: int,
                temperature: float = 1.0, control_for: str | None = None) -> dict:
    rows = sample(bundle, tok, steps, sampler, cfg.num_samples, cfg.batch_size, cfg.seed, temperature=temperature)
    samples_dir = Path(cfg.out) / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    name = f"{model}_{sampler}_{steps}" + ("" if temperature == 1.0 else f"_T{temperature:.3f}")
    atomic_write_bytes(samples_dir / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    batches = {r["batch"]: r for r in rows}.values()
    return judged_row(judge, cfg, [r["text"] for r in rows], [r["token_ids"] for r in rows], model=model,
                      sampler=sampler, steps=steps, temperature=temperature, control_for=control_for,
                      nfe=sum(b["nfe"] for b in batches) / len(batches), masks_left=sum(r["masks_left"] for r in rows),
                      seconds_per_sample=sum(b["batch_seconds"] for b in batches) / len(rows))


def mean_entropy(bundle, tok, cfg: EvaluateConfig, temperature: float) -> float:
    rows = sample(bundle, tok, cfg.control_search_steps, "ancestral", cfg.control_search_samples, cfg.batch_size,
                  cfg.seed, temperature=temperature)
    return sum(unigram_entropy(r["token_ids"]) for r in rows) / len(rows)


def matching_temperature(bundle, tok, cfg: EvaluateConfig, target: float) -> float:
    """The temperature T in [0.1, 1] at which the teacher's mean entropy meets ``target``: bisection of log T
    with the same seeds in every round (entropy falls with T); 1 when the teacher is not above the target."""
    if mean_entropy(bundle, tok, cfg, 1.0) <= target:
        return 1.0
    low, high = 0.1, 1.0
    for _ in range(cfg.control_search_rounds):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if mean_entropy(bundle, tok, cfg, middle) < target else (low, middle)
    return math.sqrt(low * high)


def control_rows(judge, cfg: EvaluateConfig, teacher, tok, rows: list[dict], log) -> list[dict]:
    """The entropy-matched teacher next to each student sampler (at ``control_student_steps``)."""
    steps = cfg.control_steps or max(cfg.teacher_steps)
    controls = []
    for student in [r for r in rows if r["model"] == "student" and r["steps"] == cfg.control_student_steps]:
        about = f"student {student['sampler']} {student['steps']}"
        temperature = matching_temperature(teacher, tok, cfg, student["entropy"])
        log(f"entropy-matched control for {about} (entropy {student['entropy']:.2f}): teacher at T = {temperature:.3f}")
        controls.append(sampled_row(judge, cfg, teacher, tok, "teacher", "ancestral", steps, temperature, about))
    return controls


def markdown(rows: list[dict], judge: str) -> str:
    lines = [f"Judge: {judge}. Gen-PPL is token-weighted; 95% bootstrap interval over samples in brackets.", "",
             "| model | sampler | steps | T | NFE | samples | Gen-PPL | entropy | [MASK] left | s / sample |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        model = r["model"] + (f" (entropy-matched to {r['control_for']})" if r["control_for"] else "")
        lines.append(f"| {model} | {r['sampler']} | {fmt(r['steps'], 'd')} | {fmt(r['temperature'], '.2f')} | "
                     f"{fmt(r['nfe'], '.1f')} | "
                     f"{r['samples']} | {r['gen_ppl']:,.1f} ({r['interval'][0]:,.1f}–{r['interval'][1]:,.1f}) | "
                     f"{r['entropy']:.2f} | {r['masks_left']} | {fmt(r['seconds_per_sample'], '.3f')} |")
    return "\n".join(lines) + "\n"


def log_row(r: dict, log) -> dict:
    log(f"{r['model']} {r['sampler']} {r['steps']} steps, T = {r['temperature']:.3f}: Gen-PPL {r['gen_ppl']:,.1f} "
        f"({r['interval'][0]:,.1f}–{r['interval'][1]:,.1f}), entropy {r['entropy']:.2f}, NFE {r['nfe']:.1f}, "
        f"{r['seconds_per_sample']:.3f} s/sample")
    return r


def evaluate(cfg: EvaluateConfig, log=print) -> list[dict]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_bundle(cfg.teacher)
    student = load_bundle(cfg.student) if cfg.student else None
    if student is not None and student.manifest["tokenizer"]["fingerprint"] != teacher.manifest["tokenizer"]["fingerprint"]:
        raise BundleError(f"{cfg.student} and {cfg.teacher} use different tokenizers: compare like with like")
    tok = load_tokenizer(teacher.tokenizer_dir)
    judge = load_judge(cfg.judge, cfg.judge_context, cfg.judge_batch_size)
    rows = [reference_row(judge, cfg, tok)]
    cells = [(teacher, "teacher", "ancestral", s) for s in cfg.teacher_steps]
    if student is not None:
        cells += [(student, "student", sampler, s) for sampler in cfg.student_samplers for s in cfg.student_steps]
    for bundle, model, sampler, steps in cells:
        rows.append(log_row(sampled_row(judge, cfg, bundle, tok, model, sampler, steps), log))
    if cfg.entropy_control:
        rows += [log_row(r, log) for r in control_rows(judge, cfg, teacher, tok, rows, log)]
    table = markdown(rows, cfg.judge)
    atomic_write_bytes(out / "results.md", table.encode())
    atomic_write_bytes(out / "results.json", json.dumps({"config": to_dict(cfg), "rows": rows}, indent=1).encode())
    plots = [plot_versus_nfe(rows, "gen_ppl", "Gen-PPL", out / "genppl_vs_nfe.png"),
             plot_versus_nfe(rows, "seconds_per_sample", "seconds per sample", out / "seconds_vs_nfe.png")]
    tracker = make_tracker(cfg.tracking, True, "evaluate")
    tracker.log_params(to_dict(cfg))
    for r in rows[1:]:
        name = f"{r['model']}_{r['sampler']}" + (f"_control_{r['control_for'].replace(' ', '_')}" if r["control_for"] else "")
        tracker.log_metrics({f"genppl/{name}": r["gen_ppl"], f"entropy/{name}": r["entropy"]}, r["steps"])
    for path in (out / "results.md", out / "results.json", *plots):
        tracker.log_artifact(path)
    tracker.close()
    log("\n" + table)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        evaluate(load_config(args.config, args.overrides, EvaluateConfig))
    except (ConfigError, BundleError, JudgeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
