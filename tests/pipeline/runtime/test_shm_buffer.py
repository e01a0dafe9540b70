"""DeepSpeed's CPU all-reduce buffer in /dev/shm is removed at shutdown (it never removes it itself)."""
import os
from pathlib import Path

import pytest

from pipeline.runtime.distributed import remove_shm_buffer


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_this_ranks_buffer_is_removed_and_no_other(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    mine = Path("/dev/shm", f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_1_1")
    other = Path("/dev/shm", f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_1_0")
    for path in (mine, other):
        path.write_bytes(b"x")
    try:
        remove_shm_buffer()
        assert not mine.exists() and other.exists()
    finally:
        for path in (mine, other):
            path.unlink(missing_ok=True)
