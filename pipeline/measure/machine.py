"""One line that says where a result was measured, for the headers of tables the repository commits, and the
writing of such a table."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch


def describe() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {device}, torch "
            f"{torch.__version__}, {datetime.date.today().isoformat()}")


def write_markdown(path: str | Path, lines: list[str]) -> int:
    """Write ``lines`` as a Markdown file (its folder made if needed) and print them; a script's exit code, 0."""
    text = "\n".join(lines) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    print(text)
    return 0
