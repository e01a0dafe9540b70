"""Console output for every command: the standard ``logging`` module with one handler on stderr, rank 0's lines
by default (every rank's, prefixed with its rank, with ``--log-all-ranks``; warnings and errors from any rank),
and progress bars only where stderr is a terminal: a SLURM log file gets a plain line now and then instead of
carriage returns.

Library modules log through ``logging.getLogger(__name__)``; the entry points call ``setup`` once."""
from __future__ import annotations

import logging
import os
import sys
import time

from tqdm import tqdm

PACKAGES = ("pipeline", "data_prep", "models", "launch")  # the loggers ``setup`` configures
PLAIN_EVERY_S = 60.0  # seconds between the plain progress lines of a non-terminal

log = logging.getLogger(__name__)


class _TqdmHandler(logging.Handler):
    """Writes through ``tqdm.write``, so that a line never tears a progress bar on the terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class RankFormatter(logging.Formatter):
    """``message`` on rank 0, ``rank R: message`` elsewhere or when every rank logs; ``WARNING: `` /
    ``ERROR: `` before the message at those levels."""

    def __init__(self, rank: int, all_ranks: bool):
        super().__init__()
        self.prefix = f"rank {rank}: " if all_ranks or rank != 0 else ""

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        text = self.prefix + level + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(all_ranks: bool = False, rank: int | None = None, level: int = logging.INFO) -> None:
    """Route the project's loggers to stderr: ``level`` on rank 0 (on every rank with ``all_ranks``), warnings
    and errors only elsewhere. ``rank`` defaults to the launcher's ``RANK``. Calling it again replaces the
    handler (a test, or a process that learns its rank late)."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    handler = _TqdmHandler()
    handler.setFormatter(RankFormatter(rank, all_ranks))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _TqdmHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level if rank == 0 or all_ranks else logging.WARNING)
        logger.propagate = False


class PlainProgress:
    """What a bar shows, as a log line every ``every_s`` seconds and at the end: for logs that are files.
    ``total`` None: a count with no end known (the line at the end comes from ``close``)."""

    def __init__(self, total: int | None, initial: int, desc: str, every_s: float = PLAIN_EVERY_S):
        self.total, self.n, self.desc, self.every_s = total, initial, desc, every_s
        self.postfix, self.start, self.first, self.last = "", time.monotonic(), initial, time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s or (self.total is not None and self.n >= self.total):
            self.report(now)

    def report(self, now: float) -> None:
        self.last = now
        rate = (self.n - self.first) / max(now - self.start, 1e-9)
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        log.info("%s: %s (%.2f/s)%s", self.desc, count, rate, f" {self.postfix}" if self.postfix else "")

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.total is None and self.n > self.first:
            self.report(time.monotonic())


def progress(total: int | None, initial: int = 0, desc: str = "", enabled: bool = True):
    """A tqdm bar on a terminal, ``PlainProgress`` lines otherwise, nothing where ``enabled`` is false (ranks
    other than 0). All three have ``update``, ``set_postfix`` and ``close``, and are context managers."""
    if enabled and sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True)
    if enabled:
        return PlainProgress(total, initial, desc)
    return tqdm(total=total, initial=initial, disable=True)
