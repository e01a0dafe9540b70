"""The small-scale reproduction's tables, written from the files its runs left
(launch/recipes/reproduce/reproduce.sh, orders_text.sh; the ablation's tables: launch/recipes/ablation.py):

    python launch/recipes/reproduce/tables.py main OUT     # launch/results/reproduce/main.{md,json} and plots
    python launch/recipes/reproduce/tables.py orders OUT   # launch/results/orders/text/orders.{md,json}
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pipeline.measure.machine import describe
from pipeline.measure.plots import last_value, read_metrics
from pipeline.stages.evaluate import IN_DOMAIN, find_row, gen_ppl_text, read_rows

RESULTS = Path("launch/results/reproduce")
ORDERS = Path("launch/results/orders/text")


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets for the 16-NFE student against the 256-step teacher, each marked met or missed."""
    teacher = find_row(rows, "teacher", "ancestral", 256)
    lines = []
    for sampler in ("ancestral", "rgas"):
        student = find_row(rows, "student", sampler, 16)
        control = next((r for r in rows if r["control_for"] == f"student {sampler} 16"), None)
        if student is None or teacher is None:
            continue
        checks = [("Gen-PPL ≤ the 256-step teacher's", student["gen_ppl"] <= teacher["gen_ppl"],
                   f"{student['gen_ppl']:.1f} vs {teacher['gen_ppl']:.1f}")]
        if f"{IN_DOMAIN}gen_ppl" in student:
            checks.append(("in-domain Gen-PPL ≤ the 256-step teacher's",
                           student[f"{IN_DOMAIN}gen_ppl"] <= teacher[f"{IN_DOMAIN}gen_ppl"],
                           f"{student[f'{IN_DOMAIN}gen_ppl']:.1f} vs {teacher[f'{IN_DOMAIN}gen_ppl']:.1f}"))
        drift = student["entropy"] / teacher["entropy"] - 1
        checks.append(("entropy within 5 % of the teacher's", abs(drift) <= 0.05,
                       f"{student['entropy']:.2f} vs {teacher['entropy']:.2f} ({drift:+.1%})"))
        if control is not None:
            checks.append((f"beats the entropy-matched teacher (T = {control['temperature']:.2f})",
                           student["gen_ppl"] < control["gen_ppl"],
                           f"{student['gen_ppl']:.1f} vs {control['gen_ppl']:.1f}"))
        lines += [f"- student {sampler} 16 NFE: {what}: **{'met' if ok else 'missed'}** ({numbers})"
                  for what, ok, numbers in checks]
        speed = teacher["seconds_per_sample"] / student["seconds_per_sample"]
        if sampler == "ancestral":
            lines.append(f"- student ancestral 16 NFE: ≥ 10× less wall-clock per sample than the 256-step teacher: "
                         f"**{'met' if speed >= 10 else 'missed'}** ({speed:.1f}×)")
        else:
            lines.append(f"- student rgas 16 NFE: wall-clock per sample, 256-step teacher ÷ student (no target): {speed:.1f}×")
    return lines


def main_table(out: Path) -> str:
    rows = read_rows(out / "evaluate")
    timings = dict(line.split("\t") for line in (out / "timings.tsv").read_text().splitlines())
    teacher, judge, student = (read_metrics(out / name / "metrics.jsonl") for name in ("pretrain", "judge", "distill"))
    lines = [
        f"Main arm of `bash launch/recipes/reproduce/reproduce.sh` on {describe()}.",
        "Corpus: Macbeth (embedded Shakespeare), SentencePiece BPE 1k, L = 128; teacher, student and judge are the "
        "`tiny` DiT. A different corpus, model size and judge from the paper's (spec §8): compare shapes, not values.",
        "",
        "Wall-clock of this invocation per stage (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())
        + f" (total {sum(int(v) for v in timings.values()) / 60:.0f} min).",
        f"Teacher: {max(teacher)} steps, validation NELBO {last_value(teacher, 'val/nelbo_nats'):.3f} nats/token. "
        f"In-domain judge: {max(judge)} steps, validation NLL {last_value(judge, 'val/nll_nats'):.3f} nats/token. "
        f"Student: {max(student)} iterations; last logged window: discriminator accuracy "
        f"{last_value(student, 'discriminator/accuracy'):.3f}, student entropy {last_value(student, 'student/entropy'):.3f} nats, "
        f"KL(teacher ‖ student) {last_value(student, 'student/kl_last'):.4f} nats, EMA student validation NELBO "
        f"{last_value(student, 'val/nelbo_nats'):.3f}.",
        "", "Targets (the issue's, for the 16-NFE student):", *targets(rows), "",
        (out / "evaluate" / "results.md").read_text(),
    ]
    return "\n".join(lines)


def against_random(rows: list[dict], r: dict, prefix: str = "") -> str:
    """``r``'s Gen-PPL against the same model's at the same steps in the random order: better or worse with the
    intervals apart, else level."""
    base = next(b for b in rows if (b["model"], b["steps"], b["control_for"], b["order"]) ==
                (r["model"], r["steps"], r["control_for"], "random"))
    (low, high), (base_low, base_high) = r[f"{prefix}interval"], base[f"{prefix}interval"]
    return "better" if high < base_low else "worse" if low > base_high else "level"


def orders_table(out: Path) -> tuple[str, list[dict]]:
    """The reproduction's teacher and student in each unmasking order (launch/recipes/reproduce/orders_text.sh):
    Gen-PPL under both judges and the entropy at 8 and 16 steps, the entropy-matched teacher beside the 16-step
    student, and each cell against the same model in the random order."""
    held_out, *rows = json.loads((out / "evaluate_orders" / "results.json").read_text())["rows"]
    lines = [f"Unmasking orders on text (`bash launch/recipes/reproduce/orders_text.sh`: the models of "
             f"`bash launch/recipes/reproduce/reproduce.sh`, unchanged), {describe()}. 256 samples a cell, 95 % "
             "bootstrap intervals; judge SmolLM2-135M and the in-domain judge. \"vs random\": the same model at the "
             "same steps in the random order, better or worse when the intervals are apart (SmolLM2 / in-domain).", "",
             f"Held-out text: Gen-PPL {gen_ppl_text(held_out)}, in-domain {gen_ppl_text(held_out, IN_DOMAIN)}, "
             f"entropy {held_out['entropy']:.2f}.", "",
             "| model | order | steps | T | Gen-PPL | in-domain Gen-PPL | entropy | vs random |",
             "|---|---|---|---|---|---|---|---|"]
    for model in ("teacher", "student", "entropy-matched teacher"):
        for r in rows:
            label = "entropy-matched teacher" if r["control_for"] else r["model"]
            if label == model:
                lines.append(f"| {label} | {r['order']} | {r['steps']} | {r['temperature']:.2f} | {gen_ppl_text(r)} | "
                             f"{gen_ppl_text(r, IN_DOMAIN)} | {r['entropy']:.2f} | "
                             f"{against_random(rows, r)} / {against_random(rows, r, IN_DOMAIN)} |")
    return "\n".join(lines) + "\n", [held_out, *rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/recipes/reproduce/tables.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("main", "orders"))
    parser.add_argument("out", help="the main arm's run directory")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.command == "orders":
        text, rows = orders_table(out)
        ORDERS.mkdir(parents=True, exist_ok=True)
        (ORDERS / "orders.md").write_text(text)
        (ORDERS / "orders.json").write_text(json.dumps(rows, indent=1))
        shutil.copyfile(out / "evaluate_orders" / "genppl_vs_nfe.png", ORDERS / "genppl_vs_nfe.png")
        print(text)
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = main_table(out)
    (RESULTS / "main.json").write_text(json.dumps({"timings": (out / "timings.tsv").read_text(),
                                                   "rows": read_rows(out / "evaluate")}, indent=1))
    for plot in ("genppl_vs_nfe.png", "in_domain_genppl_vs_nfe.png", "seconds_vs_nfe.png"):
        shutil.copyfile(out / "evaluate" / plot, RESULTS / plot)
    (RESULTS / "main.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
