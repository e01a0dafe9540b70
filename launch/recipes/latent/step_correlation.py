"""Where a factorised few-step sampler loses (spec §11): at each step of the teacher's own N-step random-order
sampling, how far the teacher's joint fill of the positions that step reveals (``latent_match_substeps`` teacher
sub-steps) is from the product of its one-step marginals, the joint KL that shared randomness could recover there:

    python launch/recipes/latent/step_correlation.py --bundle runs/orders/regime/bundles/teacher --steps 8 \
        --out launch/results/latent/regime/step_correlation.md

Per step: the mean over rows of log T(y | z_k) − Σ_i log T(y_i | z_k) (nats per sequence; a Monte Carlo estimate
of KL(joint ‖ product), y drawn from the joint), and per revealed position.
"""
from __future__ import annotations

import argparse
import sys

import torch

from models.diffusion import LogLinearSchedule, subs_log_probs
from models.didi import teacher_joint_sample
from models.sampler import ancestral_sample, time_grid
from models.vocab_parallel import take
from pipeline.bundle import load_bundle
from pipeline.measure.machine import describe, write_markdown


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="the teacher's bundle")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--substeps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    bundle = load_bundle(args.bundle)
    model, mask = bundle.model.eval(), bundle.mask_id

    def denoise(z):
        return subs_log_probs(model(z, torch.zeros(z.shape[0])), z, mask)

    generators = [torch.Generator().manual_seed(args.seed * 100_000 + i) for i in range(args.rows)]
    states = []
    ancestral_sample(denoise, torch.full((args.rows, bundle.seq_len), mask), args.steps, mask, LogLinearSchedule(),
                     generators, on_step=lambda i, s, z: states.append(z.clone()))
    before = [torch.full_like(states[0], mask)] + states[:-1]
    per_sequence, per_position = [], []
    for z, after in zip(before, states):
        where = (z == mask) & (after != mask)
        y, log_joint = teacher_joint_sample(denoise, z, where, args.substeps, mask, generators)
        log_product = torch.where(where, take(denoise(z), y, None), 0.0).sum(1)
        gap = log_joint - log_product
        per_sequence.append(gap.mean().item())
        per_position.append(gap.sum().item() / max(int(where.sum()), 1))
    grid = time_grid(args.steps)
    lines = [f"Where the factorised {args.steps}-step sampler loses, on `{args.bundle}` (`python "
             f"launch/recipes/latent/step_correlation.py {' '.join(argv if argv is not None else sys.argv[1:])}`), "
             f"{describe()}: along the teacher's own random-order sampling ({args.rows} rows), the joint KL between "
             f"its {args.substeps}-sub-step fill of each step's revealed positions and the product of its one-step "
             "marginals.", "", "| step | t | nats per sequence | nats per revealed position |", "|---|---|---|---|"]
    lines += [f"| {k + 1} | {grid[k]:.3f} → {grid[k + 1]:.3f} | {a:.3f} | {b:.3f} |"
              for k, (a, b) in enumerate(zip(per_sequence, per_position))]
    lines.append(f"| all | | {sum(per_sequence):.3f} | |")
    return write_markdown(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
