"""Conversion to inference bundles: the bundle reproduces the training engines (ZeRO-0 and ZeRO-3 on 2 ranks),
and bad checkpoints or bundles are refused with the file named."""
import json
import shutil

import pytest
import torch

from data_prep.config import from_dict
from pipeline.bundle import BundleError, load_bundle
from pipeline.config import Config
from pipeline.runtime.checkpoint import CheckpointError
from pipeline.runtime.distributed import run_ranks
from pipeline.stages.convert import convert, main
from tests.pipeline.stages.test_distill import distill_settings

PROBE_ROWS = 3


def _probe(cfg: Config):
    """Fixed inputs: half-masked token rows and σ values for the discriminator."""
    g = torch.Generator().manual_seed(7)
    z = torch.randint(0, cfg.model.vocab_size, (PROBE_ROWS, cfg.model.seq_len), generator=g)
    z = torch.where(torch.rand(z.shape, generator=g) < 0.5, cfg.model.vocab_size, z)
    return z, torch.rand(PROBE_ROWS, generator=g)


def _train_and_probe(rank, world_size, cfg_dict):
    """Distil, reload the checkpoint into fresh engines, and return their logits on the probe."""
    from pipeline.runtime.data import loader_from_config
    from pipeline.runtime.distributed import setup
    from pipeline.runtime.loop import resume
    from pipeline.stages.distill import build_distiller, distill

    cfg, d = from_dict(Config, cfg_dict), setup()
    distill(cfg, d)
    run = build_distiller(cfg, d)
    loader = loader_from_config(cfg, "train", rank, world_size)
    resume(cfg, d, {"student": run.student, "discriminator": run.disc}, run.guard, run.ema, loader)
    z, sigma = _probe(cfg)
    run.student.eval()
    run.disc.eval()
    with torch.no_grad():
        online = run.student(z, torch.zeros(PROBE_ROWS))
        with run.ema.swapped_in():
            ema = run.student(z, torch.zeros(PROBE_ROWS))
        disc = run.disc(z, sigma)
    return {"online": online, "ema": ema, "disc": disc}


@pytest.mark.distributed
@pytest.mark.parametrize("world_size,zero_stage", [(1, 0), (2, 3)])
def test_bundle_gives_the_training_engines_logits(tiny_data, teacher, tmp_path, world_size, zero_stage):
    cfg = distill_settings(tiny_data, teacher, tmp_path / "run", train__max_steps=2, train__checkpoint_every=2,
                           train__zero_stage=zero_stage, distill__rollout_rows=16 // world_size)
    engines = run_ranks(_train_and_probe, world_size, cfg)[0]
    bundle = load_bundle(convert(tmp_path / "run", tmp_path / "bundle", online=True, log=lambda _: None))
    assert bundle.manifest["kind"] == "student" and bundle.manifest["step"] == 2
    z, sigma = _probe(from_dict(Config, cfg))
    with torch.no_grad():
        assert torch.allclose(bundle.model(z, torch.zeros(PROBE_ROWS)), engines["ema"], atol=1e-5)
        assert torch.allclose(bundle.online(z, torch.zeros(PROBE_ROWS)), engines["online"], atol=1e-5)
        assert torch.allclose(bundle.discriminator(z, sigma), engines["disc"], atol=1e-5)
    assert not torch.allclose(engines["ema"], engines["online"])  # the EMA and the online weights differ


@pytest.mark.distributed
def test_teacher_bundle_and_what_is_refused(teacher, tmp_path, capsys):
    out = tmp_path / "teacher_bundle"
    bundle = load_bundle(convert(teacher, out, log=lambda _: None))
    assert bundle.manifest["kind"] == "teacher" and bundle.discriminator is None and bundle.online is None
    assert set(bundle.manifest["files"]) == {"model.safetensors", "config.yaml", "tokenizer/tokenizer.json",
                                             "tokenizer/spm.model"}
    assert convert(teacher, out, log=lambda _: None) == out  # the same bundle again: kept
    assert main(["--checkpoint", str(teacher), "--tag", "20", "--out", str(tmp_path / "other" / "b")]) == 0
    assert main(["--checkpoint", str(teacher), "--tag", "7", "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint of step 7" in capsys.readouterr().err

    (out / "config.yaml").write_text((out / "config.yaml").read_text() + "\n# edited\n")
    with pytest.raises(BundleError, match="config.yaml: corrupt or changed"):
        load_bundle(out)
    with pytest.raises(BundleError, match="exists and is another bundle"):  # never overwritten
        convert(teacher, out, log=lambda _: None)
    (out / "config.yaml").unlink()
    with pytest.raises(BundleError, match="config.yaml: missing from the bundle"):
        load_bundle(out)

    shutil.rmtree(out)
    convert(teacher, out, log=lambda _: None)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["tokenizer"]["fingerprint"] = "0" * 32
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match the weights"):
        load_bundle(out)


@pytest.mark.distributed
def test_a_truncated_engine_file_is_named(tiny_data, teacher, tmp_path):
    from tests.pipeline.stages.test_distill import _run_distill

    run_ranks(_run_distill, 1, distill_settings(tiny_data, teacher, tmp_path / "run", train__max_steps=1,
                                                train__checkpoint_every=1))
    states = tmp_path / "run" / "checkpoints" / "step_00000001" / "discriminator" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"step_00000001 is damaged: .*discriminator/mp_rank_00_model_states"
                                              r".pt: 200 bytes, .* \(truncated\?\)"):
        convert(tmp_path / "run", tmp_path / "bundle", log=lambda _: None)
    step = states.parents[1]
    (step / "files.json").unlink()  # a checkpoint this version wrote always has its checksums
    with pytest.raises(CheckpointError, match=r"files.json: missing \(the save did not finish, or it was deleted\)"):
        convert(tmp_path / "run", tmp_path / "bundle", log=lambda _: None)
    meta = json.loads((step / "meta.json").read_text())
    del meta["checksums"]  # as written before checkpoints carried checksums: read unverified, with a warning
    (step / "meta.json").write_text(json.dumps(meta))
    logged = []
    with pytest.raises(CheckpointError, match="discriminator: cannot read the discriminator engine"):
        convert(tmp_path / "run", tmp_path / "bundle", log=logged.append)
    assert logged == [f"warning: {step} predates checksums (no files.json): converted unverified"]
    assert not (tmp_path / "bundle").exists()  # nothing half-written
