"""Random draws keyed by what they are for, so that N ranks reproduce one process and a resume continues.

Draws for a batch are made for the *global* batch from a generator keyed by (seed, purpose, step, micro-step)
and each rank keeps its own rows: a run on W ranks with batch B sees exactly the draws of one process with
batch W·B.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Purpose(IntEnum):
    """What a draw is for: its value keys the random stream, so a value never changes or is reused."""

    TRAIN = 1
    EVAL = 2
    SAMPLE = 3
    DROPOUT = 4
    ROLLOUT = 5
    TAU = 6
    TEACHER_SAMPLE = 7
    DISCRIMINATOR_TIME = 8
    EXACT_TRAJECTORY = 9  # the teacher-forced trajectories of distill.reward: exact
    LATENT = 10  # the latent-conditioned student's ξ, apart from the trajectory's draws
    LATENT_INIT = 11  # the initial projection of ξ, with distill.latent_init > 0
    LATENT_MATCH = 12  # the teacher's joint fill of the first step's positions, with distill.latent_match > 0


(TRAIN, EVAL, SAMPLE, DROPOUT, ROLLOUT, TAU, TEACHER_SAMPLE, DISCRIMINATOR_TIME, EXACT_TRAJECTORY, LATENT,
 LATENT_INIT, LATENT_MATCH) = Purpose


def keyed_seed(*keys: int) -> int:
    """A seed from non-negative integer keys. NumPy's SeedSequence ignores trailing zero words, so (a, b) and
    (a, b, 0) give one seed: keys of one purpose must have one length (or end in a non-zero key), as every caller's
    do. Encoding the length would change every stream and with it every recorded result, so it is a rule."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def keyed_generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` (CPU and CUDA streams differ: ranks reproduce each other on the same kind)."""
    return torch.Generator(device=device).manual_seed(keyed_seed(*keys))


def rank_rows(global_draw: torch.Tensor, rank: int, batch: int) -> torch.Tensor:
    return global_draw[rank * batch: (rank + 1) * batch]
