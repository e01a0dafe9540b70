"""The latent-conditioned student's shared randomness ξ (our extension, spec §11).

A factorised sampler fills the positions of one step with independent draws, so it can make them agree only by
sharpening. Each row gets ξ ~ N(0, I_d), drawn from its own generator (apart from the trajectory's draws, so one
trajectory seed can be replayed with another ξ), either once for the whole sequence (``sequence``), afresh at
every step (``step``, as Di4C does), or for the first step only (``first``: from the second step on ξ = 0, the
centre of its prior, where the bias-free projection adds nothing and the student is exactly its factorised self).
Given (z_t, ξ) the tokens stay independent; the sampler's distribution is the mixture E_ξ[q(x | ξ)].
"""
from __future__ import annotations

from typing import Literal, get_args

import torch

from models.sampler import Generators, draw_uniform

Redraw = Literal["sequence", "step", "first"]
REDRAWS: tuple[str, ...] = get_args(Redraw)


class LatentDraws:
    """``draws(i)``: each row's ξ (B, *shape) at step i (``shape``: (d,) or (L, d); an int d is (d,)), kept for
    repeated calls. With ``step`` redraws ξ_i is the i-th draw of each row's stream whichever steps were asked
    for (a sampler that skips a step, all its rows cached, and a replay that does not, see the same ξ_i), so steps
    must be asked for in order."""

    def __init__(self, rows: int, shape: int | tuple[int, ...], generator: Generators, device,
                 redraw: Redraw = "sequence"):
        if redraw not in REDRAWS:
            raise ValueError(f"latent redraw {redraw!r}: one of {', '.join(REDRAWS)}")
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.rows, self.generator, self.device, self.redraw = rows, generator, device, redraw
        self.step, self.xi = None, None

    def __call__(self, step: int) -> torch.Tensor:
        if self.xi is None or (self.redraw == "step" and step != self.step):
            if self.step is not None and step < self.step:
                raise ValueError(f"latent draws asked for step {step} after step {self.step}: steps go in order")
            draws = 1 if self.redraw != "step" else step + 1 if self.step is None else step - self.step
            for _ in range(draws):
                self.xi = draw_uniform((self.rows, *self.shape), self.generator, self.device, draw=torch.randn)
            self.step = step
        return torch.zeros_like(self.xi) if self.redraw == "first" and step else self.xi
