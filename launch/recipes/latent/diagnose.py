"""Whether a latent-conditioned student (our extension, spec §11) coordinates through ξ or only sharpens:

    python launch/recipes/latent/diagnose.py --bundle NAME=BUNDLE [--bundle ...] --steps 8 [--order random]
        [--samples 256] [--contrasts 16] [--pairs 3] [--timing-rounds 5] --out launch/results/latent/regime/diagnostics

For each bundle: a lower bound on I(ξ; x | τ), the information ξ holds about the sample beyond its unmasking trajectory τ, in nats
(``pipeline.measure.latent``'s InfoNCE bound over --contrasts ξ along the trajectory that drew x, mean over
the samples with a 95 % bootstrap interval; 0 for a student without a latent); the sampler's seconds per NFE
(median over interleaved rounds of one 64-sample batch per bundle, so that the machine's load falls on all alike;
as a ratio to the first bundle's); and ``--pairs`` pairs of samples drawn with one trajectory seed and two latent
seeds, the positions where they differ marked with ^. The
conditional entropy and coherence of the same students are in their evaluations (launch/recipes/latent/ablation.yaml).
Writes OUT.md and OUT.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from data_prep.tokenizers import load_tokenizer
from models.diffusion import subs_log_probs
from models.latent import LatentDraws
from pipeline.bundle import load_bundle
from pipeline.measure.latent import latent_information
from pipeline.measure.machine import describe
from pipeline.runtime.randomness import LATENT, keyed_generator
from pipeline.stages.sample import order_argument, sample


def mean_interval(values: np.ndarray, rounds: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    picks = np.random.default_rng(seed).integers(0, len(values), (rounds, len(values)))
    means = np.sort(values[picks].mean(1))
    found = values.mean(), means[int(0.025 * (rounds - 1))], means[int(0.975 * (rounds - 1))]
    return tuple(round(float(v), 9) + 0.0 for v in found)  # + 0.0: no "-0.000" for an exact zero


def information(bundle, rows: list[dict], args) -> np.ndarray:
    """I(ξ; x | τ) per sample (zeros for a model without a latent)."""
    if not bundle.latent_dim:
        return np.zeros(len(rows))
    device, shape, redraw = bundle.device, bundle.latent_shape, bundle.latent_redraw

    def denoise(z, xi):
        return subs_log_probs(bundle.model(z, torch.zeros(z.shape[0], device=z.device), xi), z, bundle.mask_id)

    out = []
    for first in range(0, len(rows), 64):
        batch = rows[first:first + 64]
        x = torch.tensor([r["token_ids"] for r in batch], device=device)

        def own(batch=batch):  # the ξ that drew each sample, replayed from its latent seed and index
            return LatentDraws(len(batch), shape, [keyed_generator(r["latent_seed"], LATENT, r["sample"], device=device)
                                                 for r in batch], device, redraw)

        reveal = torch.tensor([r["reveal_step"] for r in batch])
        out.append(latent_information(denoise, x, reveal, args.steps, own, shape, redraw, bundle.mask_id, args.contrasts,
                                      seed=first).cpu().numpy())
    return np.concatenate(out)


def seconds_per_nfe(bundles: dict, args) -> dict[str, float]:
    """Median over ``--timing-rounds`` interleaved rounds of one 64-sample batch's seconds per denoiser call."""
    times: dict[str, list[float]] = {name: [] for name in bundles}
    for round_ in range(args.timing_rounds):
        for name, (bundle, tok) in bundles.items():
            rows = sample(bundle, tok, args.steps, "ancestral", 64, 64, 1000 + round_, order=args.order)
            times[name].append(rows[0]["batch_seconds"] / float(np.mean([r["nfe"] for r in rows])))
    return {name: float(np.median(values)) for name, values in times.items()}


def one_char(token: int, tok) -> str:
    """A token as one character (a synthetic corpus's letters are one each): [BOS], [EOS] and longer pieces as ·."""
    text = tok.decode([token]) if token not in (tok.bos_id, tok.eos_id) else ""
    return text if len(text) == 1 and text.isprintable() else "·"


def marked_pairs(bundle, tok, args) -> list[tuple[str, str, str]]:
    """Samples with one trajectory seed (``--seed``) and latent seeds 0 and 1, one character per position, and the
    positions where their tokens differ."""
    draws = [sample(bundle, tok, args.steps, "ancestral", args.pairs, args.pairs, args.seed, order=args.order,
                    latent_seed=latent_seed) for latent_seed in (0, 1)]
    pairs = []
    for a, b in zip(*draws):
        ids_a, ids_b = a["token_ids"], b["token_ids"]
        pairs.append(("".join(one_char(t, tok) for t in ids_a), "".join(one_char(t, tok) for t in ids_b),
                      "".join("^" if x != y else " " for x, y in zip(ids_a, ids_b)).rstrip()))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--order", type=order_argument, default="random")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--contrasts", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--timing-rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="OUT.md and OUT.json are written")
    args = parser.parse_args(argv)
    command = "python launch/recipes/latent/diagnose.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"ξ's information about the sample (`{command}`), {describe()}. The InfoNCE lower bound on I(ξ; x | τ) in "
             f"nats per sample (at most log K = {math.log(args.contrasts):.3f} with K = {args.contrasts} ξ, the own one "
             "included; the critic log P(x | τ, ξ) recomputed along the unmasking trajectory τ that drew x), "
             f"{args.samples} samples at {args.steps} steps in the {args.order} order, 95% bootstrap interval.", "",
             "| student | I(ξ; x \\| τ) ≥, nats | ξ | seconds / NFE (× the first) |", "|---|---|---|---|"]
    results, examples, bundles = {}, [], {}
    for spec in args.bundle:
        name, _, path = spec.partition("=")
        bundle = load_bundle(path)
        bundles[name] = (bundle, load_tokenizer(bundle.tokenizer_dir))
    timing = seconds_per_nfe(bundles, args)
    first = timing[next(iter(timing))]
    for name, (bundle, tok) in bundles.items():
        rows = sample(bundle, tok, args.steps, "ancestral", args.samples, 64, args.seed, order=args.order)
        mean, lo, hi = mean_interval(information(bundle, rows, args))
        space = "×".join(map(str, bundle.latent_shape))
        drawn = {"sequence": "once per sequence", "step": "once per step", "first": "for the first step only"}
        about = f"R^{space}, drawn {drawn[bundle.latent_redraw]}" if bundle.latent_dim else "none"
        results[name] = {"information": mean, "interval": [lo, hi], "latent_dim": bundle.latent_dim,
                         "latent_redraw": bundle.latent_redraw if bundle.latent_dim else None,
                         "seconds_per_nfe": timing[name]}
        lines.append(f"| {name} | {mean:.3f} ({lo:.3f}–{hi:.3f}) | {about} | {timing[name] * 1000:.2f} ms "
                     f"({timing[name] / first:.2f}×) |")
        if bundle.latent_dim:
            results[name]["pairs"] = marked_pairs(bundle, tok, args)
            examples += ["", f"**{name}**: one trajectory seed ({args.seed}), latent seeds 0 and 1 (^: the letters "
                         "differ; · is [BOS] or [EOS]):", "", "```"]
            for a, b, marks in results[name]["pairs"]:
                examples += [a, b, marks, ""]
            examples[-1] = "```"
    text = "\n".join(lines + examples) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text(text)
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
