"""The SLURM scripts under a real SLURM: a one-machine cluster (launch/slurm/local_cluster.sh) runs the training
job through a preemption and requeue, and the preprocessing array with its merge."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from data_prep.config import from_dict, save_resolved
from data_prep.prepare import prepare
from pipeline.config import Config
from pipeline.measure.plots import read_metrics
from tests.conftest import ROOT, tiny_prepare_config, train_command
from tests.data_prep.test_prepare import shard_bytes
from tests.pipeline.stages.test_pretrain import settings

pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(not (shutil.which("slurmctld") and shutil.which("munged")),
                                 reason="SLURM is not installed: bash launch/slurm/local_cluster.sh install "
                                        "(Debian's slurmctld slurmd slurm-client munge)")]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The environment of a running one-node cluster (SLURM_CONF set); stopped afterwards."""
    where = tmp_path_factory.mktemp("slurm")
    script = str(ROOT / "launch" / "slurm" / "local_cluster.sh")
    env = {**os.environ, "SLURM_LOCAL_PORT": str(17000 + os.getpid() % 2000 * 2)}
    subprocess.run(["bash", script, "start", str(where)], env=env, check=True, capture_output=True)
    yield {**env, "SLURM_CONF": str(where / "slurm.conf"), "OMP_NUM_THREADS": "1"}
    subprocess.run(["bash", script, "stop", str(where)], env=env, check=True)


def sbatch(env, *args) -> str:
    return subprocess.run(["sbatch", "--parsable", "--chdir", str(ROOT), *args], env=env, check=True,
                          capture_output=True, text=True).stdout.strip().split(";")[0]


def state(env, job: str) -> str:
    """The job's state (PENDING, RUNNING, …), or "" once it has left the queue."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "")


def wait_until(condition, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_preempted_training_job_requeues_and_finishes_with_the_uninterrupted_losses(slurm, tmp_path):
    prepare(tiny_prepare_config(tmp_path / "data"), log=lambda _: None)
    paths = {}
    for name in ("reference", "slurm"):
        cfg = from_dict(Config, settings(tmp_path / "data", tmp_path / name, train__max_steps=60,
                                         train__checkpoint_every=4, train__eval_every=30))
        paths[name] = save_resolved(cfg, tmp_path, f"{name}.yaml")
    subprocess.run(train_command(paths["reference"]), env=slurm, check=True, capture_output=True)
    job = sbatch(slurm, "--output", str(tmp_path / "job-%j.out"), "launch/slurm/train.sbatch",
                 "--config", str(paths["slurm"]))
    wait_until((tmp_path / "slurm" / "checkpoints" / "latest").exists, "the first checkpoint")
    subprocess.run(["scancel", "--signal", "TERM", job], env=slurm, check=True)  # what a preemption sends
    wait_until(lambda: state(slurm, job) == "PENDING", "the requeue")
    wait_until(lambda: state(slurm, job) in ("COMPLETED", "FAILED", "CANCELLED"), "the job to finish")
    log = (tmp_path / f"job-{job}.out").read_text()
    assert state(slurm, job) == "COMPLETED", log[-3000:]
    assert "resuming at step" in log
    restarts = subprocess.run(["scontrol", "-o", "show", "job", job], env=slurm, capture_output=True,
                              text=True).stdout
    assert "Restarts=1" in restarts
    ref, resumed = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("reference", "slurm"))
    assert sorted(resumed) == sorted(ref)
    for step in ref:
        assert resumed[step].get("train/loss_nats") == ref[step].get("train/loss_nats"), step
    assert resumed[60]["val/nelbo_nats"] == ref[60]["val/nelbo_nats"]


def test_the_preprocessing_array_and_its_merge_give_the_single_process_dataset(slurm, tmp_path):
    single = tmp_path / "single"
    prepare(tiny_prepare_config(single), log=lambda _: None)
    cfg = tiny_prepare_config(tmp_path / "array")
    flags = ["--input", *cfg.inputs, "--out", cfg.out, "--tokenizer", cfg.tokenizer, "--seq-len", str(cfg.seq_len),
             "--val-fraction", str(cfg.val_fraction), "--min-doc-chars", str(cfg.min_doc_chars),
             "--shard-mb", str(cfg.shard_mb)]
    subprocess.run(["python", "-m", "data_prep", "tokenizer", *flags], env=slurm, check=True, capture_output=True)
    array = sbatch(slurm, "--array=0-2", "--output", str(tmp_path / "task-%A_%a.out"), "launch/slurm/prepare.sbatch",
                   "--num-tasks", "3", *flags)
    merge = sbatch(slurm, f"--dependency=afterok:{array}", "--output", str(tmp_path / "merge.out"),
                   "--wrap", f"python -m data_prep merge {cfg.out}")
    wait_until(lambda: state(slurm, merge) in ("COMPLETED", "FAILED", "CANCELLED"), "the merge")
    assert state(slurm, merge) == "COMPLETED", (tmp_path / "merge.out").read_text()
    assert sorted(p.name for p in (Path(cfg.out) / ".parts").glob("task-*")) == [
        f"task-0000{i}-of-00003.json" for i in range(3)]
    assert shard_bytes(Path(cfg.out)) == shard_bytes(single)
    assert (Path(cfg.out) / "manifest.json").read_text() == (single / "manifest.json").read_text()
