"""Can a discriminator tell a teacher's few-step samples from data at all? A diagnostic of the distillation's
reward on a synthetic corpus, with the student out of the picture.

``python launch/bench/probe_discriminator.py --teacher BUNDLE --data DIR --chain DIR [--steps 8] [--samples 1024]
[--iterations 300] [--lr 1e-4] [--unfreeze-blocks 4] [--json OUT]``

Two discriminators start from the teacher's weights and learn the teacher's ``--steps``-step samples (fake)
against the training split (real):
- ``didi``: the distillation's own (``models/discriminator.py``: per-position logits, spectral-norm head, the
  last ``--unfreeze-blocks`` blocks trainable), trained as the stage trains it: fake and real rows masked at the
  same level 1 − α(τ), τ ~ Beta(1, 1) clamped to [0.02, 0.98], ``discriminator_loss`` over the masked positions;
- ``classifier``: the same module on unmasked rows (σ = 0, every position visible), its per-position logits
  averaged into one sequence logit, trained with binary cross-entropy on the row's label.
On held-out rows (fakes of another seed, the validation split) it reports the AUC of the row score (``didi``:
the stage's row reward at each τ of ``--eval-tau``; ``classifier``: the sequence logit) with a bootstrap
interval (0.5 = chance), and the Spearman correlation of the fakes' scores with minus their exact NLL per letter
under the chain (is the score informative about quality?). Plain PyTorch in one process; a diagnostic, not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import torch
import torch.nn.functional as F

from data_prep.regime_chain import load_chain
from data_prep.tokenizers import load_tokenizer
from models.didi import coupled_corruption, discriminator_loss, row_rewards
from models.diffusion import LogLinearSchedule
from models.discriminator import Discriminator
from pipeline.bundle import load_bundle
from pipeline.measure.exact_judge import ExactJudge
from pipeline.runtime.data import TokenShards
from pipeline.stages.sample import sample

TAU_CLAMP = (0.02, 0.98)


def auc(real: torch.Tensor, fake: torch.Tensor) -> float:
    """P(score of a real row > score of a fake row), ties counting one half (Mann–Whitney)."""
    diff = real[:, None] - fake[None, :]
    return ((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean()).item()


def auc_interval(real: torch.Tensor, fake: torch.Tensor, rounds: int = 300, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    values = sorted(auc(real[torch.randint(len(real), (len(real),), generator=g)],
                        fake[torch.randint(len(fake), (len(fake),), generator=g)]) for _ in range(rounds))
    return [values[int(0.025 * (rounds - 1))], values[int(0.975 * (rounds - 1))]]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rank = lambda v: v.argsort().argsort().double()  # noqa: E731
    rx, ry = rank(x), rank(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return (rx @ ry / (rx.norm() * ry.norm()).clamp(min=1e-12)).item()


def row_generators(seed: int, first: int, rows: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1_000_003 + first + i) for i in range(rows)]


def masked_scores(disc, x: torch.Tensor, tau: float, mask_id: int, schedule, seed: int) -> torch.Tensor:
    """The stage's row reward of rows ``x`` re-masked at level 1 − α(τ)."""
    t = torch.full((x.shape[0],), tau)
    z, _ = coupled_corruption(x, x, t, mask_id, schedule, row_generators(seed, 0, x.shape[0]))
    with torch.no_grad():
        return row_rewards(disc(z, schedule.sigma(t)).float(), z == mask_id)


def sequence_logits(disc, x: torch.Tensor) -> torch.Tensor:
    return disc(x, torch.zeros(x.shape[0])).float().mean(1)


def train(variant: str, bundle, fakes: torch.Tensor, reals: torch.Tensor, args, mask_id: int, schedule):
    torch.manual_seed(args.seed)
    disc = Discriminator(bundle.model, args.unfreeze_blocks).train()
    optimizer = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    beta = torch.distributions.Beta(torch.tensor(1.0), torch.tensor(1.0))
    for it in range(args.iterations):
        fake = fakes[torch.randint(len(fakes), (args.batch,), generator=g)]
        real = reals[torch.randint(len(reals), (args.batch,), generator=g)]
        if variant == "didi":
            tau = beta.sample((args.batch,)).clamp(*TAU_CLAMP)
            z_fake, z_real = coupled_corruption(fake, real, tau, mask_id, schedule,
                                                row_generators(args.seed, it * args.batch, args.batch))
            sigma = schedule.sigma(tau)
            d_real, d_fake = disc(torch.cat([z_real, z_fake]), torch.cat([sigma, sigma])).float().chunk(2)
            loss, _ = discriminator_loss(d_real, d_fake, z_real == mask_id, z_fake == mask_id)
        else:
            logits = sequence_logits(disc, torch.cat([real, fake]))
            labels = torch.cat([torch.ones(args.batch), torch.zeros(args.batch)])
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return disc.eval()


def probe(args) -> dict:
    bundle = load_bundle(args.teacher)
    tok = load_tokenizer(bundle.tokenizer_dir)
    judge = ExactJudge(load_chain(args.chain), tok)
    mask_id, schedule = bundle.mask_id, LogLinearSchedule()
    draw = lambda n, seed: torch.tensor([r["token_ids"] for r in sample(  # noqa: E731
        bundle, tok, args.steps, "ancestral", n, args.batch_size, seed)])
    fakes, held_fakes = draw(args.samples, args.seed), draw(args.held_out, args.seed + 1)
    train_split, val_split = TokenShards(args.data, "train"), TokenShards(args.data, "val")
    reals = torch.stack([torch.as_tensor(train_split[i], dtype=torch.long) for i in range(min(args.samples,
                                                                                               len(train_split)))])
    held_reals = torch.stack([torch.as_tensor(val_split[i], dtype=torch.long)
                              for i in range(min(args.held_out, len(val_split)))])
    quality = torch.tensor([-s.nll / max(1, s.letters) for s in map(judge.score, held_fakes.tolist())])
    results = {"settings": {k: v for k, v in vars(args).items()}}
    for variant in ("didi", "classifier"):
        disc = train(variant, bundle, fakes, reals, args, mask_id, schedule)
        if variant == "didi":
            cells = {f"tau_{tau:g}": (masked_scores(disc, held_reals, tau, mask_id, schedule, args.seed),
                                      masked_scores(disc, held_fakes, tau, mask_id, schedule, args.seed + 1))
                     for tau in args.eval_tau}
        else:
            with torch.no_grad():
                cells = {"all positions": (sequence_logits(disc, held_reals), sequence_logits(disc, held_fakes))}
        results[variant] = {name: {"auc": auc(real, fake), "auc_interval": auc_interval(real, fake),
                                   "spearman_with_quality": spearman(fake, quality)}
                            for name, (real, fake) in cells.items()}
    return results


def table(results: dict) -> str:
    s = results["settings"]
    lines = [f"Teacher {s['teacher']} at {s['steps']} steps: {s['samples']} training fakes and reals, "
             f"{s['held_out']} held-out; {s['iterations']} iterations of {s['batch']} + {s['batch']} rows, lr "
             f"{s['lr']}, {s['unfreeze_blocks']} trainable blocks.", "",
             "| discriminator | scored at | held-out AUC (95 % interval) | Spearman(score, −exact NLL) of the fakes |",
             "|---|---|---|---|"]
    for variant in ("didi", "classifier"):
        for name, r in results[variant].items():
            low, high = r["auc_interval"]
            lines.append(f"| {variant} | {name} | {r['auc']:.3f} ({low:.3f}–{high:.3f}) | "
                         f"{r['spearman_with_quality']:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/bench/probe_discriminator.py", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="teacher bundle")
    parser.add_argument("--data", required=True, help="the prepared synthetic corpus")
    parser.add_argument("--chain", required=True, help="its chain (directory or chain.json)")
    parser.add_argument("--steps", type=int, default=8, help="the teacher's sampling steps for the fakes")
    parser.add_argument("--samples", type=int, default=1024, help="training fakes (and reals)")
    parser.add_argument("--held-out", type=int, default=256, help="held-out fakes and reals")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32, help="fakes (and reals) per iteration")
    parser.add_argument("--batch-size", type=int, default=64, help="sampling batch")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--unfreeze-blocks", type=int, default=4)
    parser.add_argument("--eval-tau", type=float, nargs="+", default=[0.05, 0.2, 0.5, 0.8])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results = probe(args)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
