"""Cluster launch forms on one machine, 2 CPU ranks: two deepspeed launchers as nodes 0 and 1 (``--no_ssh``),
the SLURM rank script, preemption by SIGUSR1 / SIGTERM and a rank killed with SIGKILL, each restart resuming to
the losses of the uninterrupted two-node run."""
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from data_prep.config import from_dict, save_resolved
from launch.bench.soak import deepspeed, environment, free_port, start
from pipeline.config import Config
from pipeline.runtime.preemption import EXIT_CODE
from tests.conftest import ROOT, train_command
from tests.pipeline.stages.test_pretrain import metrics, settings

pytestmark = pytest.mark.distributed
STEPS = 120


def config(tiny_data, tmp_path: Path, name: str, **changes) -> Path:
    changes = {"train__max_steps": STEPS, "train__eval_every": 60, "train__checkpoint_every": 1000,
               "model__dropout": 0.1, **changes}
    cfg = from_dict(Config, settings(tiny_data, tmp_path / name, **changes))
    return save_resolved(cfg, tmp_path, f"{name}.yaml")


def wait_for_step(out: Path, step: int, job: subprocess.Popen, timeout: float = 300) -> None:
    log, deadline = out / "metrics.jsonl", time.time() + timeout
    while not (log.exists() and f'"step": {step},' in log.read_text()):
        assert job.poll() is None and time.time() < deadline, f"step {step} never came"
        time.sleep(0.005)


def latest_step(out: Path) -> int:
    return int((out / "checkpoints" / "latest").read_text().removeprefix("step_"))


def finish(job: subprocess.Popen, log: Path, timeout: float = 300) -> int:
    try:
        return job.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        pytest.fail(f"the job hung:\n{log.read_text()[-3000:]}")


def assert_same_run(out: Path, reference: Path) -> None:
    ran, ref = metrics(out), metrics(reference)
    for step in range(1, STEPS + 1):
        assert ran[step]["train/loss_nats"] == ref[step]["train/loss_nats"], step
    assert ran[STEPS]["val/nelbo_nats"] == ref[STEPS]["val/nelbo_nats"]


@pytest.fixture(scope="module")
def two_nodes(tiny_data, tmp_path_factory) -> Path:
    """The uninterrupted run: two deepspeed launchers on 127.0.0.1, node ranks 0 and 1, one slot each."""
    tmp = tmp_path_factory.mktemp("two_nodes")
    cfg = config(tiny_data, tmp, "reference")
    (tmp / "hostfile").write_text("node0 slots=1\nnode1 slots=1\n")
    command = deepspeed(cfg, "--hostfile", str(tmp / "hostfile"), "--no_ssh")
    nodes = [start(command[:3] + ["--node_rank", str(r)] + command[3:], tmp / f"node{r}.log") for r in (0, 1)]
    for r, node in enumerate(nodes):
        assert finish(node, tmp / f"node{r}.log") == 0, (tmp / f"node{r}.log").read_text()[-3000:]
    assert f"done: step {STEPS}" in (tmp / "node0.log").read_text()
    assert "done:" not in (tmp / "node1.log").read_text()  # rank 0 alone reports
    return tmp / "reference"


def test_preempted_twice_and_resumed_equals_the_uninterrupted_run(tiny_data, tmp_path, two_nodes):
    cfg, out, log = config(tiny_data, tmp_path, "preempted"), tmp_path / "preempted", tmp_path / "job.log"
    # 1. the SLURM form (srun starts each rank): SIGUSR1 reaches rank 1 only, both ranks stop and exit 75
    port = str(free_port())
    ranks = [start(["bash", str(ROOT / "launch/slurm/rank.sh"), "--config", str(cfg)], log, SLURM_PROCID=str(r),
                   SLURM_LOCALID=str(r), SLURM_NTASKS="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
             for r in (0, 1)]
    wait_for_step(out, 30, ranks[0])
    ranks[1].send_signal(signal.SIGUSR1)
    assert [finish(job, log) for job in ranks] == [EXIT_CODE, EXIT_CODE], log.read_text()[-3000:]
    first = latest_step(out)
    assert 30 <= first < STEPS and "preempted (" in log.read_text()
    # 2. the deepspeed launcher, the whole job signalled with SIGTERM (as a scheduler does): resumes, then stops
    job = start(deepspeed(cfg, "--num_gpus", "2"), log)
    wait_for_step(out, first + 30, job)
    processes = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    os.killpg(job.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=120)
    assert not alive, log.read_text()[-3000:]
    second = latest_step(out)
    assert first + 30 <= second < STEPS, (first, second)
    assert f"resuming at step {first}" in log.read_text()
    # 3. a restart with another number of ranks is refused, naming the number it needs
    refused = subprocess.run(train_command(cfg), env=environment(), capture_output=True, text=True)
    assert refused.returncode == 2 and "was written by 2 ranks, this job has 1" in refused.stderr
    # 4. the same command again runs to the end
    job = start(deepspeed(cfg, "--num_gpus", "2"), log)
    assert finish(job, log) == 0, log.read_text()[-3000:]
    assert_same_run(out, two_nodes)


def test_a_killed_rank_ends_the_job_and_the_restart_resumes(tiny_data, tmp_path, two_nodes):
    cfg, out, log = config(tiny_data, tmp_path, "killed", train__checkpoint_every=20), tmp_path / "killed", \
        tmp_path / "job.log"
    job = start(deepspeed(cfg, "--num_gpus", "2"), log)
    wait_for_step(out, 50, job)
    rank1 = next(p for p in psutil.Process(job.pid).children(recursive=True) if "--local_rank=1" in p.cmdline())
    rank1.send_signal(signal.SIGKILL)
    assert finish(job, log, timeout=90) != 0
    assert f"its last complete checkpoint is step_{latest_step(out):08d}" in log.read_text()
    job = start(deepspeed(cfg, "--num_gpus", "2"), log)
    assert finish(job, log) == 0, log.read_text()[-3000:]
    assert_same_run(out, two_nodes)
