"""``python -m pipeline COMMAND [ARGS]``: the inference-side and planning commands (training runs through
``launch/train.py``, data preparation through ``python -m data_prep``)."""
from __future__ import annotations

import importlib
import sys

# command -> (module whose main(argv) runs it, what it does); modules are imported only when their command runs
COMMANDS = {
    "convert": ("pipeline.stages.convert", "a training checkpoint (or a public MDLM) -> an inference bundle"),
    "sample": ("pipeline.stages.sample", "samples from a bundle, ancestral or RGAS"),
    "evaluate": ("pipeline.stages.evaluate", "teacher and student over step grids, judged side by side"),
    "validate": ("pipeline.config", "check a training config and print it resolved"),
    "verify-checkpoints": ("pipeline.runtime.integrity", "check every checkpoint of a run against its checksums"),
    "plan-memory": ("pipeline.measure.memory", "per-rank memory of a training config or of the paper's sizes"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "usage: python -m pipeline COMMAND [ARGS] (COMMAND --help for its arguments)\n\ncommands:\n" + "\n".join(
        f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command '{argv[0]}'\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
