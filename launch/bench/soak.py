"""Kill soak: training jobs on 2 CPU ranks killed at random moments, rerun until they finish, and compared
bit for bit with an uninterrupted run.

``python launch/bench/soak.py [--trials 20] [--stages pretrain distill] [--out runs/soak] [--seed 0] [--json PATH]``

Each trial starts the stage under the deepspeed launcher (2 ranks, the unit DiT on the embedded corpus,
checkpoints every few steps), then, at a random moment, sends SIGKILL to rank 0, to rank 1 or to the whole job,
or SIGTERM to the whole job (a preemption); a third of the trials instead wait for a checkpoint being written
(its folder there, its ``files.json`` not yet) and kill the job in the middle of it. The same command is rerun
until it exits 0; the trial passes when every logged per-step loss and the final validation NELBO equal the
uninterrupted run's exactly. A benchmark, not a test (one short trial runs in CI).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from data_prep.config import PrepareConfig, from_dict, save_resolved
from data_prep.prepare import prepare
from pipeline.config import Config
from pipeline.measure.machine import describe
from pipeline.measure.plots import read_metrics
from pipeline.runtime import integrity

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data_prep" / "corpus" / "shakespeare"
TARGETS = ("rank 0", "rank 1", "whole job", "whole job (SIGTERM)")
COMPARED = {"pretrain": ("train/loss_nats", "val/nelbo_nats"),
            "distill": ("student/loss", "discriminator/loss", "val/nelbo_nats")}
MAX_RERUNS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHON": sys.executable,
            "DS_ACCELERATOR": "cpu", **extra}


def deepspeed(cfg: Path, *launcher: str) -> list[str]:
    """The deepspeed launcher running ``launch/train.py`` on ``cfg`` (``launcher``: e.g. ``--num_gpus 2``)."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", *launcher, "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), str(ROOT / "launch" / "train.py"), "--config", str(cfg)]


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    """A job in its own session (so that the whole job can be signalled), its output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=environment(**env), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)


def wait(job: subprocess.Popen, timeout: float) -> int | None:
    """The job's exit code, or None (and the job killed) if it outlives ``timeout``."""
    try:
        return job.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        return None


def settings(stage: str, data: Path, out: Path, teacher: Path, steps: int) -> Config:
    cfg = {"run": {"name": f"soak-{stage}", "out_dir": str(out), "seed": 0},
           "data": {"path": str(data), "batch_size": 4},
           "model": {"size": "unit", "dropout": 0.1, "seq_len": 64, "vocab_size": 500},
           "optim": {"lr": 3e-3, "warmup_steps": 2},
           "train": {"max_steps": steps, "log_every": 1, "eval_every": steps, "eval_batches": 2,
                     "sample_every": 10 * steps, "sample_steps": [4], "checkpoint_every": 3, "ema": 0.99},
           "tracking": {"backend": "none"}}
    if stage == "distill":
        cfg.update(stage="distill", distill={"teacher": str(teacher), "rollout_rows": 8, "group_size": 4,
                                             "unfreeze_blocks": 1},
                   discriminator_optim={"lr": 1e-3, "warmup_steps": 2})
        cfg["data"].pop("batch_size")
    return from_dict(Config, cfg)


def prepare_inputs(out: Path, stages: list[str]) -> tuple[Path, Path]:
    """The dataset, and for distillation a teacher (one process, 40 steps)."""
    data, teacher = out / "data", out / "teacher"
    if not (data / "manifest.json").exists():
        prepare(PrepareConfig(inputs=[str(CORPUS / "macbeth.txt"), str(CORPUS / "tempest.txt")], out=str(data),
                              tokenizer="spm:500", seq_len=64, val_fraction=0.1, min_doc_chars=2000, shard_mb=0.05),
                log=lambda _: None)
    if "distill" in stages and not (teacher / "checkpoints" / "latest").exists():
        cfg = save_resolved(settings("pretrain", data, teacher, teacher, 40), out, "teacher.yaml")
        subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(cfg)],
                       env=environment(), check=True, capture_output=True)
    return data, teacher


def same_run(out: Path, reference: Path, stage: str) -> str:
    """"" when ``out`` logged exactly the reference's metrics, else the first difference."""
    ran, ref = read_metrics(out / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")
    for step in sorted(ref):
        for key in COMPARED[stage]:
            if key in ref[step] and ran.get(step, {}).get(key) != ref[step][key]:
                return f"step {step} {key}: {ran.get(step, {}).get(key)} != {ref[step][key]}"
    return ""


def kill(job: subprocess.Popen, target: str) -> None:
    """Signal the target; a job already ending (its processes gone or zombies) is left to end."""
    try:
        if target.startswith("whole job"):
            os.killpg(job.pid, signal.SIGTERM if "SIGTERM" in target else signal.SIGKILL)
            return
        for process in psutil.Process(job.pid).children(recursive=True):
            if f"--local_rank={target[-1]}" in process.cmdline():
                process.send_signal(signal.SIGKILL)
                return
    except (psutil.Error, ProcessLookupError):
        pass


def checkpoint_being_written(out: Path) -> bool:
    root = out / "checkpoints"
    return root.is_dir() and any(integrity.read_checkpoint_manifest(d) is None for d in integrity.step_dirs(root))


def first_step(out: Path, job: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the job has logged its first step (or ended)."""
    deadline = time.time() + timeout
    while not (out / "metrics.jsonl").exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.005)


def training_seconds(cfg: Path, out: Path, log: Path) -> float:
    """Run the uninterrupted reference (afresh); returns the seconds from its first logged step to its exit."""
    shutil.rmtree(out, ignore_errors=True)
    job = start(deepspeed(cfg, "--num_gpus", "2"), log)
    first_step(out, job)
    begin = time.time()
    assert wait(job, 600) == 0, log.read_text()[-3000:]
    return time.time() - begin


def trial(stage: str, cfg_path: Path, out: Path, reference: Path, rng: random.Random, run_s: float,
          always_during_save: bool = False) -> dict:
    """One killed and rerun job; returns what was done and whether it ended as the reference did."""
    log = out.parent / f"{out.name}.log"
    shutil.rmtree(out, ignore_errors=True)
    log.unlink(missing_ok=True)
    target = rng.choice(TARGETS)
    during_save = rng.random() < 1 / 3 or always_during_save
    delay = rng.uniform(0.05, 0.9) * run_s
    job = start(deepspeed(cfg_path, "--num_gpus", "2"), log)
    metrics = out / "metrics.jsonl"
    first_step(out, job)
    started = time.time()
    while job.poll() is None and time.time() < started + 300:
        if (checkpoint_being_written(out) if during_save else time.time() - started >= delay):
            kill(job, target)
            break
        time.sleep(0.002)
    killed_at = len(read_metrics(metrics)) if metrics.exists() else 0
    first = wait(job, 120)
    record = {"stage": stage, "target": target, "during_checkpoint": during_save, "killed_after_steps": killed_at,
              "first_exit": first, "reruns": 0, "hit": first != 0}
    code = first
    while code != 0 and record["reruns"] < MAX_RERUNS:
        record["reruns"] += 1
        code = wait(start(deepspeed(cfg_path, "--num_gpus", "2"), log), 300)
    record["finished"] = code == 0
    record["difference"] = same_run(out, reference, stage) if code == 0 else "did not finish"
    record["passed"] = record["finished"] and not record["difference"]
    return record


def soak(stages: list[str], trials: int, out: Path, seed: int, steps: dict[str, int],
         always_during_save: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data, teacher = prepare_inputs(out, stages)
    results = {"machine": describe(), "trials": [], "summary": {}}
    for stage in stages:
        reference = out / stage / "reference"
        cfg = save_resolved(settings(stage, data, reference, teacher, steps[stage]), out / stage, "reference.yaml")
        run_s = training_seconds(cfg, reference, out / stage / "reference.log")
        for k in range(trials):
            where = out / stage / f"trial{k:03d}"
            run = settings(stage, data, where, teacher, steps[stage])
            cfg_k = save_resolved(run, out / stage, f"{where.name}.yaml")
            record = trial(stage, cfg_k, where, reference, random.Random(f"{seed}-{stage}-{k}"), run_s,
                           always_during_save)
            results["trials"].append(record)
            during = " during a checkpoint" if record["during_checkpoint"] else ""
            print(f"{stage} trial {k}: {record['target']}{during} after {record['killed_after_steps']} steps, "
                  f"{record['reruns']} rerun(s): {'PASS' if record['passed'] else 'FAIL ' + record['difference']}",
                  flush=True)
        mine = [r for r in results["trials"] if r["stage"] == stage]
        results["summary"][stage] = {"trials": len(mine), "passed": sum(r["passed"] for r in mine),
                                     "killed": sum(r["hit"] for r in mine),
                                     "during_checkpoint": sum(r["during_checkpoint"] and r["hit"] for r in mine)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/bench/soak.py", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="per stage")
    parser.add_argument("--stages", nargs="+", choices=sorted(COMPARED), default=["pretrain", "distill"])
    parser.add_argument("--out", default="runs/soak", help="scratch directory (data, teacher, runs)")
    parser.add_argument("--seed", type=int, default=0, help="draws each trial's target and moment")
    parser.add_argument("--pretrain-steps", type=int, default=60)
    parser.add_argument("--distill-steps", type=int, default=24)
    parser.add_argument("--during-checkpoint", action="store_true",
                        help="kill every trial while a checkpoint is being written (a moment every run has)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results = soak(args.stages, args.trials, Path(args.out), args.seed,
                   {"pretrain": args.pretrain_steps, "distill": args.distill_steps}, args.during_checkpoint)
    for stage, s in results["summary"].items():
        print(f"{stage}: {s['passed']} of {s['trials']} trials resumed to the uninterrupted run bit for bit "
              f"({s['killed']} killed before the end, {s['during_checkpoint']} of them during a checkpoint)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(s["passed"] == s["trials"] for s in results["summary"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
