"""Preparation as an array job: tokenizer first, N tasks, then merge; the bytes do not depend on N."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_prep.merge import merge
from data_prep.prepare import PrepareError, Task, prepare, train_tokenizer
from data_prep.verify import verify_dataset
from tests.conftest import CORPUS, ROOT, tiny_prepare_config
from tests.data_prep.test_prepare import QUIET, shard_bytes


def run_job(out, tasks, skip=()):
    """The array job's steps in order; ``skip`` lists tasks that do not run."""
    cfg = tiny_prepare_config(out)
    train_tokenizer(cfg, **QUIET)
    for index in range(tasks):
        if index not in skip:
            prepare(cfg, task=Task(index, tasks), **QUIET)
    return cfg


@pytest.mark.parametrize("tasks", [2, 3])
def test_the_merged_dataset_is_the_single_process_one_byte_for_byte(tiny_data, tmp_path, tasks):
    out = tmp_path / "job"
    run_job(out, tasks)
    assert not (out / "manifest.json").exists()
    records = [json.loads((out / ".parts" / Task(i, tasks).record).read_text()) for i in range(tasks)]
    units = records[0]["units"]
    assert len(units) > tasks and all(r["built"] == units[r["task"]::tasks] for r in records)
    merge(out)
    assert shard_bytes(out) == shard_bytes(tiny_data)
    assert (out / "manifest.json").read_text() == (tiny_data / "manifest.json").read_text()
    assert verify_dataset(out)[0] == []


def test_merge_names_missing_tasks_damaged_shards_and_stale_records_and_writes_nothing(tiny_data, tmp_path):
    out = tmp_path / "job"
    cfg = run_job(out, 3, skip=(1,))
    with pytest.raises(PrepareError, match=r"tasks \[1\] of 3 have not finished"):
        merge(out)
    prepare(cfg, task=Task(1, 3), **QUIET)
    (out / "train-00001.tar").write_bytes(b"garbage")  # unit 1: task 1's
    with pytest.raises(PrepareError, match="train-00001.tar is missing or damaged: rerun task 1"):
        merge(out)
    (out / ".parts" / "task-00000-of-00002.json").write_text("{}")
    with pytest.raises(PrepareError, match="jobs with 2 and 3 tasks"):
        merge(out)
    assert not (out / "manifest.json").exists()
    (out / ".parts" / "task-00000-of-00002.json").unlink()
    prepare(cfg, task=Task(1, 3), **QUIET)  # the rerun redoes the damaged shard
    merge(out)
    assert shard_bytes(out) == shard_bytes(tiny_data)


def test_merge_refuses_tasks_that_used_another_tokenizer(tmp_path):
    out = tmp_path / "job"
    run_job(out, 2)
    record = out / ".parts" / Task(1, 2).record
    record.write_text(json.dumps({**json.loads(record.read_text()), "fingerprint": "0123abcd"}))
    with pytest.raises(PrepareError, match=r"tasks \[1\] used another tokenizer than .*tokenizer \(fingerprint"):
        merge(out)
    assert not (out / "manifest.json").exists()


def test_a_task_needs_the_tokenizer_step_the_same_settings_and_a_valid_index(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep")
    with pytest.raises(PrepareError, match="not empty and holds no prepare_config.yaml"):
        train_tokenizer(tiny_prepare_config(tmp_path / "foreign"), **QUIET)
    assert [p.name for p in (tmp_path / "foreign").iterdir()] == ["notes.txt"]
    cfg = tiny_prepare_config(tmp_path / "job")
    with pytest.raises(PrepareError, match="run python -m data_prep tokenizer with the same settings"):
        prepare(cfg, task=Task(0, 2), **QUIET)
    train_tokenizer(cfg, **QUIET)
    with pytest.raises(PrepareError, match=r"other settings \(seq_len: 64 there, 128 in this task\)"):
        prepare(tiny_prepare_config(tmp_path / "job", seq_len=128), task=Task(0, 2), **QUIET)
    with pytest.raises(PrepareError, match=r"--task-index 2 with --num-tasks 2: the index must be in \[0, 1\]"):
        Task(2, 2)


def test_a_killed_task_rerun_alone_finishes_the_dataset(tmp_path):
    """SIGKILL one task of two mid-way; the other finishes; merge names the killed one; its rerun completes it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = ["--input", str(CORPUS / "hamlet.txt"), "--tokenizer", "spm:400", "--seq-len", "32",
              "--shard-mb", "0.004", "--min-doc-chars", "500"]

    def cli(*args, out=tmp_path / "job", **kw):
        return subprocess.run([sys.executable, "-m", "data_prep", *args, *common, "--out", str(out)], env=env,
                              check=True, capture_output=True, **kw)

    cli("prepare", out=tmp_path / "ref")
    cli("tokenizer")
    task1 = [sys.executable, "-m", "data_prep", "prepare", *common, "--out", str(tmp_path / "job"),
             "--num-tasks", "2", "--task-index", "1"]
    proc = subprocess.Popen(task1, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(list((tmp_path / "job").glob(".parts/*.json"))) < 3 and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "job" / ".parts" / "task-00001-of-00002.json").exists()
    cli("prepare", "--num-tasks", "2", "--task-index", "0")
    failed = subprocess.run([sys.executable, "-m", "data_prep", "merge", str(tmp_path / "job")], env=env,
                            capture_output=True, text=True)
    assert failed.returncode == 2 and "tasks [1] of 2 have not finished" in failed.stderr
    subprocess.run(task1, env=env, check=True, capture_output=True)
    merged = subprocess.run([sys.executable, "-m", "data_prep", "merge", str(tmp_path / "job")], env=env,
                            check=True, capture_output=True, text=True)
    assert "train:" in merged.stdout
    assert shard_bytes(tmp_path / "job") == shard_bytes(tmp_path / "ref")
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert manifest == json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert not list((tmp_path / "job").glob(".*.tmp*")) and verify_dataset(tmp_path / "job")[0] == []
