"""One line that says where a result was measured, for the headers of tables the repository commits."""
from __future__ import annotations

import datetime
import os
import platform

import torch


def describe() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {device}, torch "
            f"{torch.__version__}, {datetime.date.today().isoformat()}")
