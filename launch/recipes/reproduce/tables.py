"""The small-scale reproduction's tables, written from the files its runs left (launch/reproduce.sh,
launch/ablation.sh), and the ablation's switches:

    python launch/reproduction.py main OUT        # launch/results/reproduce/main.{md,json} and plots
    python launch/reproduction.py ablation OUT    # launch/results/reproduce/{ablation,variants}.{md,json}
    python launch/reproduction.py orders OUT      # launch/results/orders/text/orders.{md,json} (launch/orders_text.sh)
    python launch/reproduction.py switches ARM    # the --set arguments of one ablation arm or settings variant
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pipeline.stages.evaluate import IN_DOMAIN, gen_ppl_text
from pipeline.measure.machine import describe
from pipeline.measure.plots import read_metrics

RESULTS = Path("launch/results/reproduce")
ORDERS = Path("launch/results/orders/text")
# The paper's cumulative ablation, on its 2-step rollout with one τ per row and the discriminator at the re-masked
# positions (PAPER; the main arm has the synthetic benchmark's settings instead): arm k has the first k techniques
# on and the others off, so each arm differs from the previous one in one key; the "paper" arm has all four on,
# and the main arm differs from it in the PAPER keys. RGAS is the main arm's sampler.
TECHNIQUES = ("intermediate_state", "coupled_time", "omega_weight", "regularisation")
PAPER = ("distill.rollout_steps=2", "distill.discriminator_positions=masked", "distill.tau_per=row")
ARMS = ("none", *TECHNIQUES[:-1], "paper")
LABELS = {"none": "no technique (one-step rollout, per-row reward)", "intermediate_state": "+ intermediate state",
          "coupled_time": "+ coupled time", "omega_weight": "+ ω weighting",
          "paper": "+ regularisation: the paper's method"}
# The student's settings tried beyond the paper's: each variant changes one key of the paper arm's config.
VARIANTS = {"lr2e-5": "optim.lr=2.0e-5", "lr1e-4": "optim.lr=1.0e-4", "tau_small": "distill.tau_b=3.0"}


def switches(arm: str) -> list[str]:
    if arm in VARIANTS:
        return [f"--set={s}" for s in (*PAPER, VARIANTS[arm])]
    if arm not in ARMS:
        raise SystemExit(f"error: unknown arm {arm!r}; an ablation arm ({', '.join(ARMS)}) "
                         f"or a settings variant ({', '.join(VARIANTS)})")
    on = ARMS.index(arm)
    return [f"--set={s}" for s in PAPER] + [f"--set=distill.{name}={'true' if k < on else 'false'}"
                                            for k, name in enumerate(TECHNIQUES)]


def rows_of(out: Path) -> list[dict]:
    return json.loads((out / "evaluate" / "results.json").read_text())["rows"]


def cell(rows: list[dict], model: str, sampler: str, steps: int, control_for: str | None = None) -> dict | None:
    return next((r for r in rows if (r["model"], r["sampler"], r["steps"], r["control_for"]) ==
                 (model, sampler, steps, control_for)), None)


def last(metrics: dict[int, dict], key: str) -> float:
    return max((step, row[key]) for step, row in metrics.items() if key in row)[1]


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets for the 16-NFE student against the 256-step teacher, each marked met or missed."""
    teacher = cell(rows, "teacher", "ancestral", 256)
    lines = []
    for sampler in ("ancestral", "rgas"):
        student = cell(rows, "student", sampler, 16)
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
    rows = rows_of(out)
    timings = dict(line.split("\t") for line in (out / "timings.tsv").read_text().splitlines())
    teacher, judge, student = (read_metrics(out / name / "metrics.jsonl") for name in ("pretrain", "judge", "distill"))
    lines = [
        f"Main arm of `bash launch/reproduce.sh` on {describe()}.",
        "Corpus: Macbeth (embedded Shakespeare), SentencePiece BPE 1k, L = 128; teacher, student and judge are the "
        "`tiny` DiT. A different corpus, model size and judge from the paper's (spec §8): compare shapes, not values.",
        "",
        "Wall-clock of this invocation per stage (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())
        + f" (total {sum(int(v) for v in timings.values()) / 60:.0f} min).",
        f"Teacher: {max(teacher)} steps, validation NELBO {last(teacher, 'val/nelbo_nats'):.3f} nats/token. "
        f"In-domain judge: {max(judge)} steps, validation NLL {last(judge, 'val/nll_nats'):.3f} nats/token. "
        f"Student: {max(student)} iterations; last logged window: discriminator accuracy "
        f"{last(student, 'discriminator/accuracy'):.3f}, student entropy {last(student, 'student/entropy'):.3f} nats, "
        f"KL(teacher ‖ student) {last(student, 'student/kl_last'):.4f} nats, EMA student validation NELBO "
        f"{last(student, 'val/nelbo_nats'):.3f}.",
        "", "Targets (the issue's, for the 16-NFE student):", *targets(rows), "",
        (out / "evaluate" / "results.md").read_text(),
    ]
    return "\n".join(lines)


def arm_rows(arms: list[tuple[str, Path, str]]) -> list[dict]:
    """One row per finished arm (label, run directory, sampler): its 8- and 32-NFE cells and distillation state."""
    table = []
    for label, where, sampler in arms:
        if not (where / "evaluate" / "results.json").is_file():
            continue
        rows, metrics = rows_of(where), read_metrics(where / "distill" / "metrics.jsonl")
        table.append({"arm": label, "sampler": sampler, **{f"nfe{n}": cell(rows, "student", sampler, n) for n in (8, 32)},
                      "discriminator_accuracy": last(metrics, "discriminator/accuracy"),
                      "student_entropy": last(metrics, "student/entropy"), "kl": last(metrics, "student/kl_last")})
    return table


def arms_table(out: Path, name: str, title: str, arms: list[tuple[str, Path, str]]) -> str:
    """launch/results/reproduce/NAME.{md,json}: the arms side by side with the main arm's teacher for reference."""
    table = arm_rows(arms)
    lines = [f"{title} on {describe()}.",
             "Student Gen-PPL at 8 and 32 NFE, 256 samples a cell, 95 % bootstrap interval; the distillation "
             "columns are the last logged window of each run.", "",
             "| arm | Gen-PPL 8 | Gen-PPL 32 | in-domain 8 | in-domain 32 | entropy 8 / 32 | discriminator accuracy | "
             "student entropy (nats) | KL (nats) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        a, b = r["nfe8"], r["nfe32"]
        lines.append(f"| {r['arm']} | {gen_ppl_text(a)} | {gen_ppl_text(b)} | {gen_ppl_text(a, IN_DOMAIN)} | "
                     f"{gen_ppl_text(b, IN_DOMAIN)} | {a['entropy']:.2f} / {b['entropy']:.2f} | "
                     f"{r['discriminator_accuracy']:.3f} | {r['student_entropy']:.3f} | {r['kl']:.4f} |")
    main_rows = rows_of(out)
    reference = next(r for r in main_rows if r["model"] == "held-out text")
    teacher = {n: cell(main_rows, "teacher", "ancestral", n) for n in (8, 32, 256, 1024)}
    lines += ["", "For reference: held-out text " + gen_ppl_text(reference) + "; teacher "
              + ", ".join(f"{n} steps {gen_ppl_text(r)}" for n, r in teacher.items() if r) + "."]
    (RESULTS / f"{name}.json").write_text(json.dumps(table, indent=1))
    return "\n".join(lines) + "\n"


def ablation_tables(out: Path) -> dict[str, str]:
    """The cumulative ablation (arms, then the main arm and its RGAS) and the settings variants (the paper arm
    first)."""
    main_arm = [("+ 8-step rollouts, the discriminator at every position, τ per group (main arm)", out, "ancestral"),
                ("+ RGAS (main arm)", out, "rgas")]
    ablation = [(LABELS[a], out / "ablation" / a, "ancestral") for a in ARMS] + main_arm
    variants = [("the paper's method", out / "ablation" / "paper", "ancestral")]
    variants += [(f"`{VARIANTS[v]}`", out / "ablation" / v, "ancestral") for v in VARIANTS]
    return {"ablation": arms_table(out, "ablation", "Cumulative ablation (`bash launch/ablation.sh ARM`, then the "
                                   "main arm)", ablation),
            "variants": arms_table(out, "variants", "Student settings, each one key off the paper's method "
                                   "(`bash launch/ablation.sh VARIANT`)", variants)}


def against_random(rows: list[dict], r: dict, prefix: str = "") -> str:
    """``r``'s Gen-PPL against the same model's at the same steps in the random order: better or worse with the
    intervals apart, else level."""
    base = next(b for b in rows if (b["model"], b["steps"], b["control_for"], b["order"]) ==
                (r["model"], r["steps"], r["control_for"], "random"))
    (low, high), (base_low, base_high) = r[f"{prefix}interval"], base[f"{prefix}interval"]
    return "better" if high < base_low else "worse" if low > base_high else "level"


def orders_table(out: Path) -> tuple[str, list[dict]]:
    """The reproduction's teacher and student in each unmasking order (launch/orders_text.sh): Gen-PPL under both
    judges and the entropy at 8 and 16 steps, the entropy-matched teacher beside the 16-step student, and each
    cell against the same model in the random order."""
    held_out, *rows = json.loads((out / "evaluate_orders" / "results.json").read_text())["rows"]
    lines = [f"Unmasking orders on text (`bash launch/orders_text.sh`: the models of `bash launch/reproduce.sh`, "
             f"unchanged), {describe()}. 256 samples a cell, 95 % bootstrap intervals; judge SmolLM2-135M and the "
             "in-domain judge. \"vs random\": the same model at the same steps in the random order, better or worse "
             "when the intervals are apart (SmolLM2 / in-domain).", "",
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
    parser = argparse.ArgumentParser(prog="launch/reproduction.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("main", "ablation", "orders", "switches"))
    parser.add_argument("target", help="main, ablation, orders: the main arm's run directory; switches: an arm or "
                        "variant")
    args = parser.parse_args(argv)
    if args.command == "switches":
        print(" ".join(switches(args.target)))
        return 0
    out = Path(args.target)
    if args.command == "orders":
        text, rows = orders_table(out)
        ORDERS.mkdir(parents=True, exist_ok=True)
        (ORDERS / "orders.md").write_text(text)
        (ORDERS / "orders.json").write_text(json.dumps(rows, indent=1))
        shutil.copyfile(out / "evaluate_orders" / "genppl_vs_nfe.png", ORDERS / "genppl_vs_nfe.png")
        print(text)
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.command == "main":
        tables = {"main": main_table(out)}
        (RESULTS / "main.json").write_text(json.dumps({"timings": (out / "timings.tsv").read_text(),
                                                       "rows": rows_of(out)}, indent=1))
        for plot in ("genppl_vs_nfe.png", "in_domain_genppl_vs_nfe.png", "seconds_vs_nfe.png"):
            shutil.copyfile(out / "evaluate" / plot, RESULTS / plot)
    else:
        tables = ablation_tables(out)
    for name, text in tables.items():
        (RESULTS / f"{name}.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
