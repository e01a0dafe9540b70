"""Checkpoints that survive damage: checksums written with every checkpoint, a damaged newest one moved aside
and the run resumed from the newest intact one (or stopped, naming both, under train.resume: strict), retention,
verify-checkpoints, and conversion refusing a damaged checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.config import from_dict, save_resolved
from pipeline.config import Config
from pipeline.measure.plots import read_metrics
from pipeline.runtime import integrity
from launch.bench.soak import deepspeed, environment
from tests.conftest import ROOT, train_command
from tests.pipeline.stages.test_distill import distill_settings
from tests.pipeline.stages.test_pretrain import settings

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(path: Path, *overrides: str, ranks: int = 1) -> subprocess.CompletedProcess:
    """The training command (one process, or 2 ranks under the deepspeed launcher) with ``--set`` overrides."""
    sets = [f"--set={o}" for o in overrides]
    if ranks == 1:
        return subprocess.run(train_command(path, *sets), env=ENV, capture_output=True, text=True)
    return subprocess.run([*deepspeed(path, "--num_gpus", str(ranks)), *sets], env=environment(), cwd=ROOT,
                          capture_output=True, text=True)


def truncate(step_dir: Path, engine: str, name: str | None = None) -> Path:
    """Cut one of the engine's files (``name``, else its largest) to a third, as a full disk or a killed copy
    would."""
    files = [p for p in (step_dir / engine).iterdir() if p.is_file()]
    victim = step_dir / engine / name if name else max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    return victim


def steps_kept(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())


def check_fallback(tmp_path: Path, config: Path, engine: str, compared: list[str], ranks: int = 1,
                   damaged: str | None = None, strict: bool = True) -> None:
    """The damaged-checkpoint case: 16 steps with checkpoints every 4 (3 kept), a file of the newest one cut
    short, then the same command, which must name the file, resume from step 12 and log steps 13-16 exactly as
    the undamaged run did."""
    assert train(config, ranks=ranks).returncode == 0
    run = tmp_path / "run"
    undamaged = read_metrics(run / "metrics.jsonl")
    victim = truncate(run / "checkpoints" / "step_00000016", engine, damaged)
    verify = subprocess.run([sys.executable, "-m", "pipeline", "verify-checkpoints", str(run)], env=ENV,
                            capture_output=True, text=True, cwd=ROOT)
    assert verify.returncode == 1 and f"FAIL step_00000016\n     {victim}: " in verify.stdout
    assert "OK   step_00000012" in verify.stdout and "2 of 3 checkpoints intact" in verify.stdout

    if strict:
        stopped = train(config, "train.resume=strict", ranks=ranks)
        assert stopped.returncode == 2, stopped.stderr[-2000:]
        assert f"cannot resume: step_00000016: {victim}: " in stopped.stderr
        assert ("the newest intact checkpoint is step_00000012 (train.resume: fallback resumes from it)"
                in stopped.stderr)
        assert (run / "checkpoints" / "step_00000016").is_dir()  # strict moves nothing

    resumed = train(config, ranks=ranks)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (f"WARNING: checkpoint step_00000016 is damaged ({victim}: " in resumed.stderr
            and "moved to step_00000016.damaged, resuming from step_00000012" in resumed.stderr)
    assert "resuming at step 12" in resumed.stderr
    assert (run / "checkpoints" / "step_00000016.damaged" / engine / victim.name).exists()  # kept, not deleted
    # retention (keep 3) neither counts nor deletes the damaged one
    assert steps_kept(run) == ["step_00000008", "step_00000012", "step_00000016", "step_00000016.damaged"]
    got = read_metrics(run / "metrics.jsonl")
    for step in range(13, 17):
        for key in compared:
            assert got[step].get(key) == undamaged[step].get(key), (step, key)


@pytest.mark.distributed
def test_pretraining_on_two_ranks_resumes_from_the_newest_intact_checkpoint(tiny_data, tmp_path):
    """Rank 1's ZeRO-3 optimizer partition of the newest checkpoint cut short, as found by a user."""
    cfg = from_dict(Config, settings(tiny_data, tmp_path / "run", train__max_steps=16, train__checkpoint_every=4,
                                     train__eval_every=8, train__zero_stage=3, data__batch_size=2))
    check_fallback(tmp_path, save_resolved(cfg, tmp_path, "run.yaml"), "model", ["train/loss_nats", "val/nelbo_nats"],
                   ranks=2, damaged="zero_pp_rank_1_mp_rank_00_optim_states.pt")
    files = integrity.read_checkpoint_manifest(tmp_path / "run" / "checkpoints" / "step_00000016")
    assert {"meta.json", "config.yaml", "rank00000.pt", "rank00001.pt"} <= set(files)
    assert files == integrity.describe(tmp_path / "run" / "checkpoints" / "step_00000016", sorted(files))
    # conversion names a damaged checkpoint instead of reading it
    victim = truncate(tmp_path / "run" / "checkpoints" / "step_00000016", "model")
    convert = subprocess.run([sys.executable, "-m", "pipeline", "convert", "--checkpoint", str(tmp_path / "run"),
                              "--out", str(tmp_path / "bundle")], env=ENV, capture_output=True, text=True, cwd=ROOT)
    assert convert.returncode == 2 and f"{victim}: " in convert.stderr and "truncated" in convert.stderr
    assert not (tmp_path / "bundle").exists()


@pytest.mark.distributed
def test_distillation_resumes_from_the_newest_intact_checkpoint(tiny_data, teacher, tmp_path):
    cfg = from_dict(Config, distill_settings(tiny_data, teacher, tmp_path / "run", train__max_steps=16,
                                             train__checkpoint_every=4, train__eval_every=8))
    check_fallback(tmp_path, save_resolved(cfg, tmp_path, "run.yaml"), "discriminator",
                   ["student/loss", "discriminator/loss", "val/nelbo_nats"], strict=False)  # strict: as pre-training


def test_problems_name_missing_truncated_and_changed_files(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 10)
    (tmp_path / "c").write_bytes(b"z")
    integrity.write_manifest(tmp_path, integrity.describe(tmp_path, integrity.listing(tmp_path)))
    assert integrity.problems(tmp_path) == []
    (tmp_path / "a").write_bytes(b"x" * 4)
    (tmp_path / "sub" / "b").write_bytes(b"Y" * 10)
    (tmp_path / "c").unlink()
    assert integrity.problems(tmp_path) == [f"{tmp_path / 'a'}: 4 bytes, 10 when it was written (truncated?)",
                                            f"{tmp_path / 'c'}: missing",
                                            f"{tmp_path / 'sub' / 'b'}: sha256 differs from when it was written "
                                            f"(damaged)"]
    # each of two ranks checks its share (file k is rank k mod 2's), and together they check everything
    shares = [integrity.problems(tmp_path, rank, 2) for rank in (0, 1)]
    assert [len(share) for share in shares] == [2, 1]
    assert sorted(shares[0] + shares[1]) == sorted(integrity.problems(tmp_path))


def _resume_with_latest(rank, world_size, run_dict, pointer, strict_dict):
    """``latest`` set to ``pointer``, then a strict resume and a fallback one: (strict's result, fallback's)."""
    from tests.pipeline.stages.test_pretrain import _run_pretrain

    (Path(run_dict["run"]["out_dir"]) / "checkpoints" / "latest").write_text(pointer)
    return _run_pretrain(rank, world_size, strict_dict), _run_pretrain(rank, world_size, run_dict)


@pytest.mark.distributed
def test_a_latest_that_names_no_checkpoint_falls_back_to_the_newest_intact_one(tiny_data, tmp_path):
    """``latest`` naming a step that does not exist, or a folder outside the run: the newest intact checkpoint is
    taken (``latest`` rewritten to it), or under strict the run stops naming the pointer."""
    from pipeline.runtime.distributed import run_ranks
    from tests.conftest import one_process
    from tests.pipeline.stages.test_pretrain import _run_pretrain

    run = tmp_path / "run"
    latest = run / "checkpoints" / "latest"
    cfg, strict = (settings(tiny_data, run, train__max_steps=6, **extra) for extra in ({}, {"train__resume": "strict"}))
    pointers = ("step_00000099", "../../elsewhere")
    first, *resumed = run_ranks(one_process, 1, [(_run_pretrain, (cfg,))] +
                                [(_resume_with_latest, (cfg, p, strict)) for p in pointers])[0]
    assert "error" not in first
    for pointer, (stopped, fell_back) in zip(pointers, resumed):
        assert stopped["error"] == (f"cannot resume: {latest} names {pointer!r}, not a checkpoint folder of this run; "
                                    "the newest intact checkpoint is step_00000006 (train.resume: fallback resumes "
                                    "from it)")
        assert "error" not in fell_back
    assert latest.read_text() == "step_00000006"
    assert steps_kept(run) == ["step_00000003", "step_00000006"]


def _resume_on(rank, world_size, cfg_dict, manifest_path, manifest):
    """Write ``manifest`` (the data as changed), then resume: what the run returns."""
    from tests.pipeline.stages.test_pretrain import _run_pretrain

    Path(manifest_path).write_text(manifest)
    return _run_pretrain(rank, world_size, cfg_dict)


@pytest.mark.distributed
def test_a_resume_with_other_data_or_settings_it_would_not_apply_is_refused(tiny_data, teacher, tmp_path):
    """The session teacher (20 steps) resumed: on data whose tokenizer or shards were replaced, or with a
    learning rate the restored optimizer would override, it stops naming what changed; a longer run applies."""
    import json
    import shutil

    from pipeline.runtime.distributed import run_ranks
    from tests.conftest import one_process

    run, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(teacher, run)
    shutil.copytree(tiny_data, data)
    same = {"train__checkpoint_every": 20, "train__eval_every": 20, "train__ema": 0.9}
    original = (tiny_data / "manifest.json").read_text()
    tokenizer, shards = json.loads(original), json.loads(original)
    tokenizer["tokenizer"]["fingerprint"] = "0" * 32
    shards["splits"]["train"]["shards"][0]["sha256"] = "f" * 64

    def resume(manifest, **changes):
        return _resume_on, (settings(data, run, train__max_steps=21, **{**same, **changes}),
                            str(data / "manifest.json"), manifest)

    results = run_ranks(one_process, 1, [resume(json.dumps(tokenizer)), resume(json.dumps(shards)),
                                         resume(original, optim__lr=1e6), resume(original)])[0]
    assert "was trained with tokenizer" in results[0]["error"] and "holds tokenizer 00000000" in results[0]["error"]
    assert f"was trained on other data than data.path {data} holds" in results[1]["error"]
    assert "changed settings (optim.lr: 0.003 there, 1000000.0 now)" in results[2]["error"]
    assert "new run.out_dir" in results[2]["error"]
    assert "error" not in results[3]  # a longer run, on the same data at another path
    assert (run / "checkpoints" / "latest").read_text() == "step_00000021"


def _run_on_a_full_disk(rank, world_size, cfg_dict, full_from):
    """Pre-training whose disk fills up at the checkpoint of step ``full_from``: torch.save fails as it does
    then (a RuntimeError from the zip writer), and the disk reports 1 MiB free."""
    import shutil as shutil_module

    import torch

    from tests.pipeline.stages.test_pretrain import _run_pretrain

    real_save, real_usage = torch.save, shutil_module.disk_usage

    def save(obj, f, *args, **kwargs):
        if f"step_{full_from:08d}" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4048")
        return real_save(obj, f, *args, **kwargs)

    def disk_usage(path):
        return real_usage(path)._replace(free=2**20)

    torch.save, shutil_module.disk_usage = save, disk_usage
    try:
        return _run_pretrain(rank, world_size, cfg_dict)
    finally:
        torch.save, shutil_module.disk_usage = real_save, real_usage


def _probe_checkpoints(rank, world_size, cfg_dict):
    """What the run's checkpoints folder holds, then the run resumed: its result with ``kept`` and ``latest``."""
    from tests.pipeline.stages.test_pretrain import _run_pretrain

    root = Path(cfg_dict["run"]["out_dir"]) / "checkpoints"
    found = {"kept": sorted(p.name for p in root.iterdir()), "latest": (root / "latest").read_text()}
    return {**_run_pretrain(rank, world_size, cfg_dict), **found}


@pytest.mark.distributed
def test_a_full_disk_while_checkpointing_is_named_and_keeps_the_last_checkpoint(tiny_data, tmp_path):
    from pipeline.runtime.distributed import run_ranks
    from tests.conftest import one_process

    run = tmp_path / "run"
    cfg = settings(tiny_data, run, train__max_steps=6)
    full, resumed = run_ranks(one_process, 1, [(_run_on_a_full_disk, (cfg, 6)), (_probe_checkpoints, (cfg,))])[0]
    error = full["error"]
    assert error.startswith(f"no space left on {run / 'checkpoints'} (1 MiB free, a checkpoint of this run takes "
                            "about ") and "step 6 was not saved and its partial folder was removed" in error
    assert "step_00000003 stays the latest checkpoint. Free space and run the same command to resume" in error
    assert resumed["kept"] == ["latest", "step_00000003"] and resumed["latest"] == "step_00000003"
    assert resumed["step"] == 6 and steps_kept(run) == ["step_00000003", "step_00000006"]


@pytest.mark.distributed
def test_an_output_folder_that_cannot_be_written_is_an_error_not_a_traceback(tiny_data, tmp_path):
    """What a rerun on a still-full disk meets first (writing config.yaml), shown with a folder under a file."""
    (tmp_path / "file").write_text("")
    cfg = from_dict(Config, settings(tiny_data, tmp_path / "file" / "run"))
    result = train(save_resolved(cfg, tmp_path, "run.yaml"))
    assert result.returncode == 2 and "rank 0: error: [Errno 20] Not a directory" in result.stderr
    assert "Traceback" not in result.stderr
