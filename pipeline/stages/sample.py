"""Sampling from an inference bundle with the plain ancestral sampler or RGAS.

``python -m pipeline sample --bundle BUNDLE --steps N --sampler ancestral|rgas --num-samples K --batch-size B
--seed S [--latent-seed S] [--order ORDER] [--prefix TEXT] [--temperature T] [--rho R --h-start H --h-end H
--candidates M] --out samples.jsonl``

Each line of the output holds one sample (text, token ids, [MASK]s left) with its batch's NFE, noise-removal
calls, discriminator forward/backward calls and wall-clock seconds. Draws are keyed by (seed, sample index),
so a sample does not depend on the batch size. Noise removal uses the EMA student (the bundle's model).
A temperature T < 1 sharpens x_θ (its logits divided by T before SUBS): lower Gen-PPL and lower entropy together,
the control that a distilled student must beat (spec §7). ``--order`` chooses which masked positions each step
reveals (``models/unmasking.py``: random, dispersed:D, confidence, margin, entropy); by default the bundle's
(a student's distillation order, else random). A latent-conditioned student (our extension, spec §11) draws
its ξ from ``--latent-seed`` (default: the seed), apart from the trajectory's draws: the same --seed with
another --latent-seed replays the trajectory's randomness with another ξ. The output is written whole or not
at all.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from data_prep.atomic import atomic_write_bytes
from data_prep.tokenizers import Tokenizer, load_tokenizer
from models.diffusion import LogLinearSchedule, subs_log_probs
from models.latent import LatentDraws
from models.rgas import RGASSettings, RGASStats, rgas_sample
from models.sampler import ancestral_sample
from models.unmasking import UnmaskingOrder
from pipeline.bundle import Bundle, BundleError, load_bundle
from pipeline.config import MAX_SAMPLING_STEPS
from pipeline.measure.text import render
from pipeline.runtime.randomness import LATENT, SAMPLE, keyed_generator


def start_state(bundle: Bundle, tok: Tokenizer, rows: int, prefix: str | None, device) -> torch.Tensor:
    """All [MASK]; with a prefix, [BOS] and the prefix's tokens are kept unmasked from the start."""
    z = torch.full((rows, bundle.seq_len), bundle.mask_id, dtype=torch.long, device=device)
    if prefix:
        ids = [tok.bos_id] + tok.encode(prefix)
        if len(ids) >= bundle.seq_len:
            raise ValueError(f"--prefix: {len(ids) - 1} tokens leave no room in sequences of {bundle.seq_len} "
                             "tokens ([BOS] + prefix must be shorter than the sequence)")
        z[:, : len(ids)] = torch.tensor(ids, device=device)
    return z


def sample(bundle: Bundle, tok: Tokenizer, steps: int, sampler: str, num_samples: int, batch_size: int, seed: int,
           prefix: str | None = None, settings: RGASSettings = RGASSettings(), temperature: float = 1.0,
           order: UnmaskingOrder | None = None, latent_seed: int | None = None) -> list[dict]:
    """Samples with their batch's statistics (see the module docstring); ``order`` None: the bundle's;
    ``latent_seed`` None: ``seed``."""
    if not 1 <= steps <= MAX_SAMPLING_STEPS:
        raise ValueError(f"--steps: {steps}; from 1 to {MAX_SAMPLING_STEPS:,} (the paper's slowest teacher takes 1,024)")
    if not temperature > 0:
        raise ValueError(f"--temperature: {temperature}; it must be positive")
    if sampler == "rgas" and bundle.discriminator is None:
        raise ValueError(f"{bundle.path} has no discriminator ({bundle.manifest['kind']} bundle): RGAS needs a "
                         "distilled student's bundle; use --sampler ancestral")
    order = (order or bundle.order).check_length(bundle.seq_len)
    device = bundle.device
    mask_id = bundle.mask_id
    latent_seed = seed if latent_seed is None else latent_seed

    def denoise(z, *latent):
        return subs_log_probs(bundle.model(z, torch.zeros(z.shape[0], device=z.device), *latent) / temperature, z,
                              mask_id)

    rows = []
    for first in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - first)
        generators = [keyed_generator(seed, SAMPLE, first + i, device=device) for i in range(count)]
        z = start_state(bundle, tok, count, prefix, device)
        latent = None
        if bundle.latent_dim:
            latent_generators = [keyed_generator(latent_seed, LATENT, first + i, device=device) for i in range(count)]
            latent = LatentDraws(count, bundle.latent_shape, latent_generators, device, bundle.latent_redraw)
        stats = RGASStats()
        start = time.perf_counter()
        if sampler == "rgas":
            out = rgas_sample(denoise, bundle.discriminator, z, steps, mask_id, LogLinearSchedule(), generators,
                              settings, stats, order, latent)
        else:
            out = ancestral_sample(denoise, z, steps, mask_id, LogLinearSchedule(), generators, stats=stats,
                                   order=order, latent=latent)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        for i, ids in enumerate(out.cpu().tolist()):
            text, masks = render(ids, tok)
            rows.append({"sample": first + i, "batch": first // batch_size, "text": text, "token_ids": ids,
                         "masks_left": masks, "steps": steps, "sampler": sampler, "order": str(order),
                         "latent_seed": latent_seed if latent is not None else None,
                         "temperature": temperature,
                         "nfe": int(stats.row_nfe[i]), "reveal_step": stats.reveal_step[i].tolist(),
                         "noise_removal_calls": stats.noise_removal_calls,
                         "discriminator_forward": stats.discriminator_forward,
                         "discriminator_backward": stats.discriminator_backward, "batch_seconds": seconds})
    return rows


def order_argument(spec: str) -> UnmaskingOrder:
    """``--order``'s parser: argparse shows the reason a spec is refused."""
    try:
        return UnmaskingOrder.parse(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline sample", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--sampler", choices=("ancestral", "rgas"), default="ancestral")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-seed", type=int, help="a latent-conditioned student's ξ draws (default: --seed)")
    parser.add_argument("--order", type=order_argument, metavar="ORDER",
                        help="which masked positions a step reveals: random, dispersed[:D] (D: exclusion distance, "
                             "default 3), confidence, margin or entropy; default: the bundle's")
    parser.add_argument("--prefix", help="text the samples continue (kept unmasked from the start)")
    parser.add_argument("--temperature", type=float, default=1.0, help="< 1 sharpens the model's distribution")
    defaults = RGASSettings()
    parser.add_argument("--rho", type=float, default=defaults.rho)
    parser.add_argument("--h-start", type=float, default=defaults.h_start)
    parser.add_argument("--h-end", type=float, default=defaults.h_end)
    parser.add_argument("--candidates", type=int, default=defaults.candidates)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, help="JSONL file to write")
    args = parser.parse_args(argv)
    try:
        if args.num_samples < 1 or args.batch_size < 1:
            raise ValueError("--num-samples and --batch-size must be positive")
        if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device; use "
                             "--device cpu")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the sampling, which may take long
        if not 0.0 <= args.rho <= 1.0 or args.candidates < 1:
            raise ValueError("--rho must be in [0, 1] and --candidates at least 1")
        bundle = load_bundle(args.bundle, args.device)
        tok = load_tokenizer(bundle.tokenizer_dir)
        rows = sample(bundle, tok, args.steps, args.sampler, args.num_samples, args.batch_size, args.seed,
                      args.prefix, RGASSettings(args.rho, args.h_start, args.h_end, args.candidates), args.temperature,
                      args.order, args.latent_seed)
    except (BundleError, ValueError, OSError) as err:  # OSError: an --out folder that cannot be made
        print(f"error: {err}", file=sys.stderr)
        return 2
    atomic_write_bytes(Path(args.out), "".join(json.dumps(r) + "\n" for r in rows).encode())
    nfe = sorted({r["nfe"] for r in rows})
    print(f"wrote {len(rows)} samples to {args.out} ({args.sampler}, {args.steps} steps, order {rows[0]['order']}, NFE {nfe}); first:\n"
          f"{rows[0]['text'][:400]}")
    return 0

