"""The pre-training stage end to end on the tiny dataset: learning, ZeRO-3 vs one process, resume, bad input."""
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from data_prep.config import from_dict, save_resolved
from pipeline.config import Config
from pipeline.measure.plots import read_metrics
from pipeline.runtime.distributed import run_ranks
from pipeline.runtime.engine import build_model
from pipeline.runtime.weights import ema_state_dict, resolve_checkpoint
from pipeline.stages.train import main as train_main
from tests.conftest import one_process, run_killed_and_resumed, train_command


def settings(tiny_data, out, **changes) -> dict:
    """The unit DiT on the tiny dataset: a step takes milliseconds."""
    cfg = {
        "run": {"name": "t", "out_dir": str(out), "seed": 0},
        "data": {"path": str(tiny_data), "batch_size": 4},
        "model": {"size": "unit", "dropout": 0.0, "seq_len": 64, "vocab_size": 500},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"max_steps": 6, "log_every": 1, "eval_every": 3, "eval_batches": 2, "sample_every": 1000,
                  "sample_steps": [8], "checkpoint_every": 3, "ema": 0.99},
        "tracking": {"backend": "none"},
    }
    for key, value in changes.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


def _run_pretrain(rank, world_size, cfg_dict):
    from pipeline.runtime.distributed import setup
    from pipeline.stages.pretrain import pretrain

    cfg = from_dict(Config, cfg_dict)
    try:
        return pretrain(cfg, setup(cfg.model.tensor_parallel))
    except RuntimeError as err:
        return {"error": str(err)}


def metrics(out: Path) -> dict[int, dict]:
    return read_metrics(out / "metrics.jsonl")


@pytest.mark.distributed
def test_loss_falls_on_the_tiny_corpus(tiny_data, tmp_path):
    cfg = settings(tiny_data, tmp_path, train__max_steps=60, train__log_every=10, train__eval_every=60,
                   train__sample_every=60, optim__lr=1e-2)
    result = run_ranks(_run_pretrain, 1, cfg)[0]
    logged = metrics(tmp_path)
    first, last = logged[10]["train/loss_nats"], logged[60]["train/loss_nats"]
    assert last < first - 0.5, (first, last)
    assert result["val/nelbo_nats"] < 6.0  # log(500) = 6.2 is the NELBO of a uniform denoiser
    assert result["val/bits_per_token"] == pytest.approx(result["val/nelbo_nats"] / 0.6931471805599453)
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "checkpoints" / "latest").read_text() == "step_00000060"


@pytest.mark.distributed
def test_gradient_accumulation_steps_the_schedule_once_per_optimizer_step(tiny_data, tmp_path):
    cfg = settings(tiny_data, tmp_path, train__grad_accum=3, train__max_steps=5, optim__warmup_steps=10,
                   train__checkpoint_every=5)
    result = run_ranks(_run_pretrain, 1, cfg)[0]
    logged = metrics(tmp_path)
    for step in range(1, 6):  # after s optimizer steps the warm-up factor is (s + 1) / 10
        assert logged[step]["train/lr"] == pytest.approx(3e-3 * (step + 1) / 10)
    assert result["step"] == 5
    state = torch.load(tmp_path / "checkpoints" / "step_00000005" / "rank00000.pt", weights_only=True)
    assert state["loader"]["position"] == 15  # three micro-batches per step


@pytest.mark.distributed
def test_zero3_on_two_ranks_matches_one_process(tiny_data, tmp_path):
    one = settings(tiny_data, tmp_path / "one", data__batch_size=4, train__zero_stage=0)
    two = settings(tiny_data, tmp_path / "two", data__batch_size=2, train__zero_stage=3)
    r1 = run_ranks(_run_pretrain, 1, one)[0]
    r2 = run_ranks(_run_pretrain, 2, two)
    assert "error" not in r1 and all("error" not in r for r in r2)
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for step in range(1, 7):  # same global batches, same masks: the losses agree to float32 round-off
        assert a[step]["train/loss_nats"] == pytest.approx(b[step]["train/loss_nats"], abs=2e-5), step
    for step in (3, 6):  # validation runs on the EMA weights, so this also checks the EMA under ZeRO-3
        assert a[step]["val/nelbo_nats"] == pytest.approx(b[step]["val/nelbo_nats"], abs=2e-5), step
    assert a[6]["train/loss_nats"] != a[1]["train/loss_nats"]
    # the EMA partitions of the two ZeRO-3 ranks consolidate into the one process's dense EMA weights
    with torch.device("meta"):
        shapes = build_model(from_dict(Config, one).model)
    dense = ema_state_dict(resolve_checkpoint(tmp_path / "one"), shapes)
    merged = ema_state_dict(resolve_checkpoint(tmp_path / "two"), shapes)
    assert dense.keys() == merged.keys() == dict(shapes.named_parameters()).keys()
    for name in dense:
        assert torch.allclose(dense[name], merged[name], atol=1e-5), name


@pytest.mark.distributed
def test_killed_run_resumes_to_the_same_losses(tiny_data, tmp_path):
    paths = {}
    for name in ("reference", "killed"):
        cfg = from_dict(Config, settings(tiny_data, tmp_path / name, train__max_steps=40, train__checkpoint_every=4,
                                         train__eval_every=20, model__dropout=0.1))
        paths[name] = save_resolved(cfg, tmp_path, f"{name}.yaml")
    run_killed_and_resumed(paths["reference"], paths["killed"], tmp_path / "killed")
    ref, resumed = metrics(tmp_path / "reference"), metrics(tmp_path / "killed")
    for step in range(5, 41):
        assert resumed[step]["train/loss_nats"] == ref[step]["train/loss_nats"], step
    assert resumed[40]["val/nelbo_nats"] == ref[40]["val/nelbo_nats"]


def _run_with_losses_times(rank, world_size, cfg_dict, steps, factor):
    """Pre-training whose loss is multiplied by ``factor`` (nan, or a large finite number) on the given (1-based)
    training steps."""
    import pipeline.stages.pretrain as stage

    real, calls = stage.loss_terms, []

    def loss_terms(*args, **kwargs):
        terms = real(*args, **kwargs)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) in steps:
                return terms * factor
        return terms

    stage.loss_terms = loss_terms
    try:
        return _run_pretrain(rank, world_size, cfg_dict)
    finally:
        stage.loss_terms = real


@pytest.mark.distributed
def test_a_non_finite_step_is_skipped_and_counted(tiny_data, tmp_path):
    cfg = settings(tiny_data, tmp_path, train__max_steps=6, train__checkpoint_every=1000)
    result = run_ranks(_run_with_losses_times, 1, cfg, {3}, float("nan"))[0]
    assert result["train/skipped_steps"] == 1 and result["step"] == 6
    logged = metrics(tmp_path)
    assert all(math.isfinite(logged[s]["train/loss_nats"]) for s in (1, 2, 4, 5, 6))
    reference = metrics_of_clean_run(tiny_data, tmp_path / "clean")
    assert logged[2]["train/loss_nats"] == reference[2]["train/loss_nats"]
    # the skipped step changed nothing: step 4 sees step 2's weights, so it differs from the clean run's step 4
    assert logged[4]["train/loss_nats"] != reference[4]["train/loss_nats"]


def metrics_of_clean_run(tiny_data, out):
    run_ranks(_run_pretrain, 1, settings(tiny_data, out, train__max_steps=6, train__checkpoint_every=1000))
    return metrics(out)


@pytest.mark.distributed
def test_the_run_stops_after_too_many_non_finite_steps_in_a_row(tiny_data, tmp_path):
    """At every ZeRO stage: ZeRO-1/2 skip an overflowing step inside DeepSpeed, without calling the guarded
    optimizer, and it must be counted all the same."""
    stages = (0, 1, 2, 3)
    runs = [(_run_with_losses_times, (settings(tiny_data, tmp_path / f"zero{z}", train__max_steps=20,
                                               train__max_nonfinite=3, train__checkpoint_every=2, train__zero_stage=z),
                                      set(range(5, 30)), float("nan"))) for z in stages]
    for zero_stage, result in zip(stages, run_ranks(one_process, 1, runs)[0]):
        assert "stopping at step 7: 3 consecutive train steps had non-finite loss or gradients" in result["error"]
        assert "train.max_nonfinite = 3" in result["error"], zero_stage
        # skipped steps leave the weights alone, so the checkpoint of step 6 holds step 4's weights
        assert (tmp_path / f"zero{zero_stage}" / "checkpoints" / "latest").read_text() == "step_00000006"


@pytest.mark.distributed
def test_a_finite_loss_that_blows_up_stops_the_run_before_it_is_saved(tiny_data, tmp_path):
    cfg = settings(tiny_data, tmp_path, train__max_steps=12, train__checkpoint_every=2, train__keep_checkpoints=1)
    result = run_ranks(_run_with_losses_times, 1, cfg, set(range(7, 20)), 1e6)[0]
    assert "stopping at step 8: the train loss diverged (mean " in result["error"]
    assert "train.max_loss_ratio = 100); this model was not saved" in result["error"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000006"  # kept: no diverged one replaced it
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000006"]


def test_bad_configs_fail_before_training(tiny_data, tmp_path, capsys, monkeypatch):
    cfg = from_dict(Config, settings(tiny_data, tmp_path / "run"))
    path = save_resolved(cfg, tmp_path, "ok.yaml")
    assert train_main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 ranks on cpu = 1 tensor-parallel x 1 data-parallel, ZeRO stage 0" in out
    assert "4 sequences per data-parallel rank x 1 accumulation x 1 ranks" in out
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert train_main(["--config", str(path), "--dry-run", "--set", "model.tensor_parallel=2"]) == 0
    assert "4 ranks on cpu = 2 tensor-parallel x 2 data-parallel" in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "3")
    cases = [
        (["--set", "model.tensor_parallel=2"], "model.tensor_parallel: 2 does not divide the job's 3 ranks"),
        (["--set", "model.tensor_parallel=4"], "model.tensor_parallel: 4 does not divide model.num_heads = 2"),
        (["--set", "model.num_heads=3"], "does not split into model.num_heads = 3"),
        (["--set", "model.seq_len=128"], "seq_len 64 differs from model.seq_len 128"),
        (["--set", f"data.path={tmp_path / 'nowhere'}"], "manifest.json not found"),
        (["--set", "train.grad_acum=2"], "unknown key 'train.grad_acum'"),
    ]
    for extra, message in cases:
        assert train_main(["--config", str(path), "--dry-run", *extra]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "64")  # a hostfile with more slots than the validation split has batches
    assert train_main(["--config", str(path), "--dry-run"]) == 2
    assert "one batch of 4 for at most 47 data-parallel ranks, but the job has 64 ranks" in capsys.readouterr().err


@pytest.mark.distributed
def test_unusable_checkpoints_are_refused_with_the_reason(tiny_data, tmp_path):
    cfg = from_dict(Config, settings(tiny_data, tmp_path / "run", train__max_steps=3))
    path = save_resolved(cfg, tmp_path, "run.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(train_command(path), env=env, check=True, capture_output=True)
    other = subprocess.run(train_command(path) + ["--set", "model.hidden_size=64"], env=env,
                           capture_output=True, text=True)
    assert other.returncode == 2
    assert "holds another model (hidden_size: 32 there, 64 now)" in other.stderr
    side = tmp_path / "run" / "checkpoints" / "step_00000003" / "rank00000.pt"
    side.write_bytes(side.read_bytes()[:100])
    truncated = subprocess.run(train_command(path) + ["--set", "train.max_steps=6"], env=env,
                               capture_output=True, text=True)
    assert truncated.returncode == 2
    assert "cannot resume: step_00000003: " in truncated.stderr and "rank00000.pt: 100 bytes" in truncated.stderr
    assert "no older checkpoint is intact: start a new run.out_dir" in truncated.stderr


@pytest.mark.distributed
def test_mlflow_run_has_params_metrics_artifacts_and_survives_resume(tiny_data, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = settings(tiny_data, tmp_path / "run", train__max_steps=4, train__checkpoint_every=2, train__sample_every=2,
                   tracking__backend="mlflow")
    cfg["tracking"].update(uri=uri, experiment="tests")
    run_ranks(_run_pretrain, 1, cfg)
    cfg["train"]["max_steps"] = 6
    run_ranks(_run_pretrain, 1, cfg)  # resumes from step 4 into the same MLflow run

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model.size"] == "unit" and run.data.params["train.zero_stage"] == "0"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_nats")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert {m.step for m in client.get_metric_history(run.info.run_id, "val/nelbo_nats")} == {3, 4, 6}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "samples", "curves.png"} <= artifacts
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert samples == {f"samples/step_0000000{s}_8steps.txt" for s in (2, 4, 6)}
