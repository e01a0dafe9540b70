"""Where is a teacher wrong? Its denoiser against the exact posterior of a synthetic corpus's chain, per mask level.

``python launch/bench/probe_teacher.py --teacher BUNDLE --data DIR --chain DIR [--rows 256] [--levels 0.98 0.9 ...]
[--seed 0] [--json OUT]``

Validation rows of the prepared corpus are masked at each level (each position independently); at the masked
positions it reports KL(exact ‖ teacher) per position (the teacher's model error, in nats), the mean entropy of
both (a teacher above the exact entropy is under-confident: sharpening it helps), and the share of positions
where their most likely letters differ. The exact posterior is ``pipeline/measure/exact_denoiser.py``'s.
Plain PyTorch in one process; a diagnostic, not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import torch

from data_prep.regime_chain import load_chain
from data_prep.tokenizers import load_tokenizer
from models.diffusion import subs_log_probs
from pipeline.bundle import load_bundle
from pipeline.measure.exact_denoiser import ChainPosterior
from pipeline.measure.exact_judge import ExactJudge
from pipeline.runtime.data import TokenShards


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    return -(log_p.exp() * log_p).nan_to_num().sum(-1)


@torch.no_grad()
def probe(teacher, exact: ChainPosterior, rows: torch.Tensor, levels: list[float], seed: int) -> list[dict]:
    mask_id, g, out = exact.mask_id, torch.Generator().manual_seed(seed), []
    for level in levels:
        masked = torch.rand(rows.shape, generator=g) < level
        masked[:, [0, -1]] = False  # the framing tokens are never in doubt
        z = torch.where(masked, torch.full_like(rows, mask_id), rows)
        model = subs_log_probs(teacher(z, torch.zeros(z.shape[0])), z, mask_id).double()
        truth = subs_log_probs(exact(z), z, mask_id).double()
        kl = (truth.exp() * (truth - model)).nan_to_num().sum(-1)
        out.append({"mask_level": level, "positions": int(masked.sum()), "kl_exact_teacher": kl[masked].mean().item(),
                    "entropy_exact": entropy(truth)[masked].mean().item(),
                    "entropy_teacher": entropy(model)[masked].mean().item(),
                    "argmax_disagreement": (truth.argmax(-1) != model.argmax(-1))[masked].double().mean().item()})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/bench/probe_teacher.py", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="teacher bundle")
    parser.add_argument("--data", required=True, help="the prepared synthetic corpus")
    parser.add_argument("--chain", required=True, help="its chain (directory or chain.json)")
    parser.add_argument("--rows", type=int, default=256, help="validation rows")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.98, 0.9, 0.75, 0.5, 0.25, 0.1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    bundle = load_bundle(args.teacher)
    tok = load_tokenizer(bundle.tokenizer_dir)
    exact = ChainPosterior(ExactJudge(load_chain(args.chain), tok), bundle.mask_id)
    shards = TokenShards(args.data, "val")
    rows = torch.stack([torch.as_tensor(shards[i]).long() for i in range(min(args.rows, len(shards)))])
    results = probe(bundle.model, exact, rows, args.levels, args.seed)
    print("| mask level | KL(exact ‖ teacher), nats | entropy exact | entropy teacher | argmax differs |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mask_level']:.2f} | {r['kl_exact_teacher']:.4f} | {r['entropy_exact']:.3f} | "
              f"{r['entropy_teacher']:.3f} | {r['argmax_disagreement']:.1%} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "levels": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
