"""Shared fixtures: the embedded corpus, a tiny prepared dataset and a tiny GPT-2-format ranks file, in seconds;
and the guard that keeps ``-m "not distributed"`` (the tier run on every change) free of rank processes."""
from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.config import PrepareConfig
from data_prep.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data_prep" / "corpus" / "shakespeare"


# fixtures that train in rank processes: a test that uses one belongs to the `distributed` tier
RANK_FIXTURES = {"teacher", "bundles", "judge_bundle"}


def pytest_configure(config):
    from data_prep import logs

    logs.setup(rank=0)  # library code logs as under an entry point: rank 0's lines on stderr


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if RANK_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("distributed")]
    if unmarked:
        raise pytest.UsageError("these tests use a fixture that trains in rank processes but are not marked "
                                "@pytest.mark.distributed:\n  " + "\n  ".join(unmarked))


@pytest.fixture(autouse=True)
def _rank_processes_only_when_marked(request, monkeypatch):
    """Outside the `distributed` tier, starting rank processes (``run_ranks``, the training command in either form,
    the deepspeed launcher, a sweep) fails the test with the mark it needs, instead of slowing the fast tier down."""
    if request.node.get_closest_marker("distributed"):
        return
    import torch.multiprocessing

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts rank processes: mark it @pytest.mark.distributed")

    def popen(args, *rest, **kwargs):
        words = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
        if any(w == "deepspeed" or w.endswith("launch/train.py") for w in words) or any(
                words[i:i + 2] == ["pipeline", c] for i in range(len(words)) for c in ("train", "sweep")):
            refuse()
        return real_popen(args, *rest, **kwargs)

    real_popen = subprocess.Popen
    monkeypatch.setattr(torch.multiprocessing, "start_processes", refuse)
    monkeypatch.setattr(subprocess, "Popen", popen)


def tiny_prepare_config(out: Path, **changes) -> PrepareConfig:
    """Two plays, a 500-piece BPE, 64-token sequences, shards of about 50 kB of text."""
    settings = dict(inputs=[str(CORPUS / "macbeth.txt"), str(CORPUS / "tempest.txt")], out=str(out),
                    tokenizer="spm:500", seq_len=64, val_fraction=0.1, min_doc_chars=2000, shard_mb=0.05)
    settings.update(changes)
    return PrepareConfig(**settings)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared dataset (read-only for tests: copy it before changing anything)."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    prepare(tiny_prepare_config(out), log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def teacher(tiny_data, tmp_path_factory) -> Path:
    """A unit-size teacher pre-trained for 20 steps on ``tiny_data`` (what distillation tests start from)."""
    from pipeline.runtime.distributed import run_ranks
    from tests.pipeline.stages.test_pretrain import _run_pretrain, settings

    out = tmp_path_factory.mktemp("teacher")
    run_ranks(_run_pretrain, 1, settings(tiny_data, out, train__max_steps=20, train__checkpoint_every=20,
                                         train__eval_every=20, train__ema=0.9))
    return out


def one_process(rank: int, world_size: int, calls: list) -> list:
    """``run_ranks(one_process, 1, [(fn, args), ...])``: several unit runs in one rank process, in order (starting
    the process costs more than a unit run); each ``fn(rank, world_size, *args)`` must undo what it patches."""
    return [fn(rank, world_size, *args) for fn, args in calls]


def write_tiny_gpt2_ranks(path: Path) -> dict[bytes, int]:
    """A byte-level BPE in tiktoken format: the 256 bytes, then a few merges (each of two earlier tokens)."""
    ranks = {bytes([b]): b for b in range(256)}
    for merged in (b"th", b"the", b" t", b" the", b"in", b"ing", b"er"):
        ranks[merged] = len(ranks)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return ranks


def train_command(cfg_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "train", "--config", str(cfg_path), *extra]


def run_killed_and_resumed(reference: Path, killed: Path, killed_out: Path) -> None:
    """Run the ``reference`` config to the end; run the ``killed`` one, SIGKILL it as soon as its first
    checkpoint is published, and run it again (it resumes) to the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(train_command(reference), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(train_command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed_out / "checkpoints" / "latest"
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    subprocess.run(train_command(killed), env=env, check=True, capture_output=True)
