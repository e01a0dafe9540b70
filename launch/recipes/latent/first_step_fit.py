"""The mixture match alone (our extension, spec §11): how far a student's first step, fitted only to the teacher's
joint fills of the positions it reveals (``distill.latent_match``, no policy gradient), gets towards them with ξ at
the [MASK] embeddings (``--latent-input positions``: a ξ_i for each position) and without ξ:

    python launch/recipes/latent/first_step_fit.py --bundle runs/orders/regime/bundles/teacher --iterations 300 \
        --out launch/results/latent/regime/first_step_fit.md

Each iteration: 32 rows, each position revealed with probability 1/8 (the first of 8 random-order steps), the
teacher's 4-sub-step fill y, and one Adam step on −mean log (1/M) Σ_j Π_i q(y_i | z_1, ξ_j) over M = 32 fresh ξ
(one row without ξ; with ``--dropout p``, a third student whose M rows differ only by their dropout masks, the
noise a trained DiT already responds to). Reported: the joint KL per revealed position,
Σ (log T(y) − log q̄(y)) / Σ |S|, averaged over windows of iterations; the factorised student can lower it only by
fitting the fills' marginals. ``--at every`` fits one drawn step k of N per row instead (``latent_match_at:
every``): each position's step is uniform, the positions of the steps before k are the teacher's fill from
all-[MASK] (``--prefix-substeps`` sub-steps), and the M draws are each row's own (M rows per row); the table then
also splits the last window by step, the first against the later ones.
"""
from __future__ import annotations

import argparse
import sys

import torch

from models.diffusion import subs_log_probs
from models.didi import mixture_log_likelihood, teacher_joint_sample
from models.dit import latent_shape
from pipeline.bundle import load_bundle, new_dit
from pipeline.measure.machine import describe, write_markdown


def draw_steps(args, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's step k (0: the first), the positions revealed before it (the caller fills them) and those it
    reveals. ``--at first``: every row at the first of ``rollout_steps`` random-order steps; every: each
    position's step uniform, each row's k uniform."""
    if args.at == "first":
        return (torch.zeros(rows, dtype=torch.long), torch.zeros(rows, length, dtype=torch.bool),
                torch.rand(rows, length) < 1 / args.rollout_steps)
    step_of = torch.randint(args.rollout_steps, (rows, length))
    k = torch.randint(args.rollout_steps, (rows,))
    return k, step_of < k[:, None], step_of == k[:, None]


def fit(bundle: str, latent: int, args, latent_input: str = "mask", dropout: float = 0.0) -> list[float]:
    """The window means of the joint KL over ``args.iterations`` Adam steps of the match alone; with ``dropout``
    the student's M rows draw their own dropout masks (a mixture without ξ)."""
    torch.manual_seed(args.seed)
    loaded = load_bundle(bundle)
    teacher, spec = loaded.model.eval(), loaded.manifest["model"]
    student = new_dit({**spec, "latent_dim": latent, "latent_input": latent_input}, dropout)
    student.load_state_dict(teacher.state_dict(), strict=False)
    if latent:
        with torch.no_grad():
            student.latent_map.weight.normal_(0, args.latent_init)
    mask, length, rows = teacher.mask_id, spec["seq_len"], args.rows
    projection = [p for name, p in student.named_parameters() if name.startswith("latent_map.")]
    others = [p for name, p in student.named_parameters() if not name.startswith("latent_map.")]
    optimiser = torch.optim.Adam([{"params": others, "lr": args.lr},
                                  {"params": projection, "lr": args.lr * args.latent_lr_scale}])
    generators = [torch.Generator().manual_seed(1000 + i) for i in range(rows)]

    def log_probs(model, z, *xi):
        return subs_log_probs(model(z, torch.zeros(z.shape[0]), *xi), z, mask)

    windows, window, last = [], [], {"first": [0.0, 0.0], "later": [0.0, 0.0]}
    for iteration in range(args.iterations):
        k, before, where = draw_steps(args, rows, length)
        start = torch.full((rows, length), mask)
        with torch.no_grad():
            if args.at == "every":
                start, _ = teacher_joint_sample(lambda s: log_probs(teacher, s), start, before, args.prefix_substeps,
                                                mask, generators)
            y, log_t = teacher_joint_sample(lambda s: log_probs(teacher, s), start, where, 4, mask, generators)
        draws = args.draws if latent or dropout else 1
        if args.at == "first":  # one all-[MASK] input, its M rows shared by every row
            start = start[:1]
        states = start.repeat_interleave(draws, 0)
        xi = torch.randn(states.shape[0], *latent_shape(latent_input, latent, length))
        predicted = log_probs(student, states, xi) if latent else log_probs(student, states)
        if args.at == "every":
            predicted = predicted.view(rows, draws, *predicted.shape[1:])
        log_q = mixture_log_likelihood(predicted, y, where)
        optimiser.zero_grad()
        (-log_q.mean()).backward()
        optimiser.step()
        gap, revealed = (log_t - log_q.detach()), where.sum(1)
        window.append((gap.sum() / revealed.sum()).item())
        if args.at == "every" and iteration >= args.iterations - args.window:
            for name, rows_of in (("first", k == 0), ("later", k > 0)):
                last[name][0] += gap[rows_of].sum().item()
                last[name][1] += revealed[rows_of].sum().item()
        if len(window) == args.window:
            windows.append(sum(window) / len(window))
            window = []
    if args.at == "every":
        windows += [total / max(count, 1) for total, count in last.values()]
    return windows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="the teacher's bundle")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--rollout-steps", type=int, default=8)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--latent-init", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--latent-lr-scale", type=float, default=10.0)
    parser.add_argument("--latent-input", choices=("mask", "positions"), nargs="+", default=["mask"],
                        help="one ξ at every [MASK] embedding, or a ξ_i for each position (each given is fitted)")
    parser.add_argument("--dropout", type=float, default=0.0, help="also fit a student mixed by dropout masks")
    parser.add_argument("--at", choices=("first", "every"), default="first",
                        help="fit the first step, or one drawn step per row (M draws per row)")
    parser.add_argument("--prefix-substeps", type=int, default=16,
                        help="--at every: the teacher's sub-steps filling the steps before the drawn one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    curves = {"factorised": fit(args.bundle, 0, args)}
    for where in args.latent_input:
        name = f"ξ_i ∈ R^{args.latent} at each [MASK] position" if where == "positions" else f"ξ ∈ R^{args.latent}"
        curves[name] = fit(args.bundle, args.latent, args, where)
    if args.dropout:
        curves[f"dropout {args.dropout:g} (M masks)"] = fit(args.bundle, 0, args, dropout=args.dropout)
    ends = [(k + 1) * args.window for k in range(args.iterations // args.window)]
    headers = [f"its. {end - args.window + 1}–{end}" for end in ends]
    if args.at == "every":
        headers += ["last window: the first step", "last window: the later steps"]
    command = "python launch/recipes/latent/first_step_fit.py " + " ".join(argv if argv is not None else sys.argv[1:])
    fitted = ("the student's first step" if args.at == "first" else
              f"the student at one drawn step of {args.rollout_steps} per row (its state: the teacher's fill of the "
              "steps before it)")
    lines = [f"The mixture match alone (`{command}`), {describe()}: the joint KL per revealed position from the "
             f"teacher's fills to {fitted}, mean over each window of {args.window} iterations.", "",
             "| student | " + " | ".join(headers) + " |", "|---|" + "---|" * len(headers)]
    lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |" for name, values in curves.items()]
    return write_markdown(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
