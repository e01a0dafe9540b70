"""Where a latent ξ can act on a model (our extension, spec §11): how far its predictions at the all-[MASK] state
move when a random vector of a given norm is added to the adaLN conditioning vector, or to every position's token
[MASK] embedding (the two ``distill.latent_input`` paths; at the all-[MASK] state that is every position):

    python launch/recipes/latent/sensitivity.py --bundle runs/orders/regime/bundles/teacher \
        --out launch/results/latent/regime/sensitivity.md

The KL(model ‖ perturbed) per position, mean over 64 random directions; the norm of the unperturbed conditioning
vector and of one token embedding for scale.
"""
from __future__ import annotations

import argparse
import sys

import torch

from models.diffusion import subs_log_probs
from models.dit import latent_width
from pipeline.bundle import load_bundle, new_dit
from pipeline.measure.machine import describe, write_markdown

NORMS = (0.5, 1.0, 2.0, 4.0, 8.0)


def shifted(bundle: str, place: str):
    """The bundle's model with an identity latent projection at ``place``: model(z, σ, v) adds v itself to c or to
    the embedding of every [MASK] position (the DiT's own ``distill.latent_input`` paths)."""
    loaded = load_bundle(bundle)
    spec = loaded.manifest["model"]
    width = latent_width(place, spec["hidden_size"], spec["cond_dim"])
    model = new_dit({**spec, "latent_dim": width, "latent_input": place})
    model.load_state_dict(loaded.model.state_dict(), strict=False)
    model.latent_map.weight.copy_(torch.eye(width))
    return model.eval(), width, spec["seq_len"]


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--directions", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    models = {place: shifted(args.bundle, place) for place in ("condition", "mask")}
    kls = {}
    for place, (model, width, length) in models.items():
        z, sigma = torch.full((args.directions, length), model.mask_id), torch.zeros(args.directions)
        base = subs_log_probs(model(z, sigma, torch.zeros(args.directions, width)), z, model.mask_id)
        for norm in NORMS:
            v = torch.randn(args.directions, width, generator=generator)
            out = subs_log_probs(model(z, sigma, v / v.norm(dim=1, keepdim=True) * norm), z, model.mask_id)
            kls[place, norm] = (base.exp() * (base - out)).sum(-1).mean().item()
    model = models["condition"][0]
    c0, e0 = model.sigma_map(torch.zeros(1)).norm().item(), model.vocab_embed.weight[model.mask_id].norm().item()
    lines = [f"Where ξ can act on `{args.bundle}` (`python launch/recipes/latent/sensitivity.py "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}`), {describe()}: KL(model ‖ perturbed) per "
             f"position at the all-[MASK] state, mean over {args.directions} random directions of the given norm. For "
             f"scale: |e_σ| = {c0:.1f} (the conditioning vector at σ = 0, before its SiLU), |E[MASK]| = {e0:.2f}.", "",
             "| norm | added to the conditioning vector | added to every [MASK] embedding |", "|---|---|---|"]
    lines += [f"| {norm:g} | {kls['condition', norm]:.4f} | {kls['mask', norm]:.4f} |" for norm in NORMS]
    return write_markdown(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
