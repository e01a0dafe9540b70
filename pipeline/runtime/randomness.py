"""Random draws keyed by what they are for, so that N ranks reproduce one process and a resume continues.

Draws for a batch are made for the *global* batch from a generator keyed by (seed, purpose, step, micro-step)
and each rank keeps its own rows: a run on W ranks with batch B sees exactly the draws of one process with
batch W·B.
"""
from __future__ import annotations

import numpy as np
import torch

TRAIN, EVAL, SAMPLE, DROPOUT, ROLLOUT, TAU, TEACHER_SAMPLE, DISCRIMINATOR_TIME = 1, 2, 3, 4, 5, 6, 7, 8  # purposes
EXACT_TRAJECTORY = 9  # the teacher-forced trajectories of distill.reward: exact


def keyed_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def keyed_generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` (CPU and CUDA streams differ: ranks reproduce each other on the same kind)."""
    return torch.Generator(device=device).manual_seed(keyed_seed(*keys))


def rank_rows(global_draw: torch.Tensor, rank: int, batch: int) -> torch.Tensor:
    return global_draw[rank * batch: (rank + 1) * batch]
