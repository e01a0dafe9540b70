"""Preemption: SIGTERM or SIGUSR1 (what schedulers send before they stop a job) ends a run at a step boundary with
a checkpoint, so that the same command, run again, resumes from it.

A signal may reach only some ranks (the deepspeed launcher passes SIGTERM to its ranks one after another, and
``kill`` hits one process), so after every step the ranks agree: if any rank received one, all of them stop at
the same step, write the checkpoint together and exit with ``EXIT_CODE``.
"""
from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

EXIT_CODE = 75  # EX_TEMPFAIL: stopped on request with a checkpoint written; run the same command to go on
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped on a preemption signal after checkpointing ``step``."""

    def __init__(self, step: int, received: str | None):
        self.step = step
        super().__init__(f"preempted ({received or 'a signal on another rank'}): stopped after step {step} with a "
                         f"checkpoint; run the same command again to resume (exit code {EXIT_CODE})")


class PreemptionWatch:
    """Records SIGTERM / SIGUSR1 while the training loop runs (a context manager: the previous handlers come
    back afterwards); ``agreed`` is a collective every rank calls after every step."""

    def __init__(self, device: torch.device):
        self.device, self.received = device, None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "PreemptionWatch":
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            self._previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _on_signal(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name

    def agreed(self) -> bool:
        """Whether any rank has received a preemption signal."""
        flag = torch.tensor([float(self.received is not None)], device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def ignore_in_workers(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker killed by the same signal would fail the main process's next
    batch before it could checkpoint; workers end with their loader instead."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
