"""``python -m pipeline COMMAND [ARGS]``: every command of the pipeline but data preparation (``python -m
data_prep``, a package of its own). ``deepspeed launch/train.py`` runs ``train`` through ``run`` here, and
``deepspeed --module pipeline train`` works too (the launcher's leading ``--local_rank`` is passed on)."""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import NoReturn

from data_prep import logs

# command -> (module whose main(argv) runs it, what it does); modules are imported only when their command runs
COMMANDS = {
    "train": ("pipeline.stages.train", "pre-train or distil (the config's stage:); restarting resumes"),
    "sweep": ("pipeline.stages.sweep", "scaling-law sweeps: plan, run, status, analyze"),
    "convert": ("pipeline.stages.convert", "a training checkpoint (or a public MDLM) -> an inference bundle"),
    "sample": ("pipeline.stages.sample", "samples from a bundle, ancestral or RGAS"),
    "evaluate": ("pipeline.stages.evaluate", "teacher and student over step grids, judged side by side"),
    "validate": ("pipeline.config", "check a training config and print it resolved"),
    "verify-checkpoints": ("pipeline.runtime.integrity", "check every checkpoint of a run against its checksums"),
    "plan-memory": ("pipeline.measure.memory", "per-rank memory of a training config or of the paper's sizes"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return ("usage: python -m pipeline COMMAND [ARGS] (COMMAND --help for its arguments)\n\ncommands:\n"
            + "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
            + "\n\ndata preparation: python -m data_prep prepare|tokenizer|merge|verify|synthetic|proteins")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("--local_rank"):  # `deepspeed --module pipeline train`: after the command
        argv = argv[1:2] + argv[:1] + argv[2:]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command '{argv[0]}'\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])


def exit_with(code: int) -> NoReturn:
    """Exit with ``code``. While a process group is up (a rank that stopped on an error), skip the interpreter's
    shutdown: gloo's and DeepSpeed's threads can abort it there ("terminate called without an active
    exception", exit 250), hiding the code a scheduler or a retry loop acts on. An MLflow run still open is
    ended as FAILED first, so what it logged asynchronously is sent."""
    dist, mlflow = sys.modules.get("torch.distributed"), sys.modules.get("mlflow")
    if not (dist and dist.is_available() and dist.is_initialized()):
        sys.exit(code)
    if mlflow and mlflow.active_run():
        mlflow.end_run(status="FAILED")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(argv: list[str] | None = None) -> NoReturn:
    """The process entry: logging on stderr (rank 0's lines), the command, and its exit code kept whatever
    happens (an unexpected exception prints its traceback and exits 1)."""
    logs.setup()
    try:
        status = main(argv)
    except Exception:  # noqa: BLE001 - the traceback is printed, the exit code kept
        traceback.print_exc()
        status = 1
    exit_with(status)
