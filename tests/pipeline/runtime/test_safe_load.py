"""Files from strangers never run code: each hole a downloaded checkpoint could open (a pickle that calls
``os.system``, an engine file behind recomputed checksums, a ``pipe:`` command in a saved config, a resumed run)
is built here as an attacker would, and no marker file may appear."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.runtime import integrity
from pipeline.runtime.checkpoint import CheckpointError
from pipeline.runtime.distributed import run_ranks
from pipeline.runtime.safe_load import Opaque, UnsafeFileError, load_tensors, weights_only_loads
from pipeline.stages.convert import convert, main
from tests.pipeline.stages.test_pretrain import _run_pretrain, settings

STEP = "step_00000020"  # the session teacher's checkpoint


class Shell:
    """Unpickled by a full unpickler, runs ``touch MARKER`` (through ``os.system``, which torch blocks)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Exec:
    """The same through ``builtins.exec`` (a module torch does not block: it must become an inert stand-in)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def deepspeed_load(path: Path):
    """A file read the way DeepSpeed reads checkpoints on resume (its torch engine asks for a full unpickler)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    return TorchCheckpointEngine().load(str(path), map_location="cpu")


def recompute_checksums(step_dir: Path) -> None:
    """What an attacker does after editing a checkpoint: files.json is a checksum, not a signature."""
    integrity.write_manifest(step_dir, integrity.describe(step_dir, integrity.listing(step_dir)))


def test_a_file_that_names_os_system_is_refused_by_name(tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": Shell(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeFileError, match=r"evil.ckpt: not loaded, as loading it could run code it names "
                                              r"\(posix.system\)"):
        load_tensors(tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeFileError, match="posix.system"), weights_only_loads():
        deepspeed_load(tmp_path / "evil.ckpt")
    assert torch.load is not None and torch.load.__module__ == "torch.serialization"  # restored
    assert not marker.exists()


def test_other_types_arrive_as_inert_stand_ins_that_keep_their_data(tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "x": Exec(marker)}, tmp_path / "odd.ckpt")
    loaded = load_tensors(tmp_path / "odd.ckpt")
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(3.0))
    assert isinstance(loaded["x"], Opaque) and loaded["x"].args == (f"open({str(marker)!r}, 'w').close()",)
    assert not marker.exists()
    with pytest.raises(UnsafeFileError, match="builtins.exec"), weights_only_loads():  # resuming: refused
        deepspeed_load(tmp_path / "odd.ckpt")
    assert not marker.exists()


@pytest.mark.distributed
def test_every_file_of_a_checkpoint_loads_weights_only(teacher):
    with weights_only_loads():
        for path in sorted((teacher / "checkpoints" / STEP).rglob("*.pt")):
            assert isinstance(deepspeed_load(path), dict), path


@pytest.fixture
def downloaded(teacher, tmp_path):
    """A copy of the session teacher's run, as a user would download it."""
    run = tmp_path / "run"
    shutil.copytree(teacher, run)
    return run


@pytest.mark.distributed
def test_convert_runs_nothing_a_checkpoint_names(downloaded, tiny_data, tmp_path, capsys):
    step, marker = downloaded / "checkpoints" / STEP, tmp_path / "MARKER"
    states = step / "model" / "mp_rank_00_model_states.pt"
    good = states.read_bytes()
    torch.save({**torch.load(states, weights_only=True), "x": Shell(marker)}, states)
    recompute_checksums(step)
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt: not loaded, as loading it could run code "
                                              r"it names \(posix.system\)"):
        convert(downloaded, tmp_path / "b", online=True, log=lambda _: None)
    (step / "files.json").unlink()  # no checksums at all: damage, not an older checkpoint
    with pytest.raises(CheckpointError, match="files.json: missing"):
        convert(downloaded, tmp_path / "b", online=True, log=lambda _: None)
    assert not marker.exists() and not (tmp_path / "b").exists()

    states.write_bytes(good)  # a saved config whose data.path is a command: never run, the tokenizer is carried
    config = (step / "config.yaml").read_text().replace(f"path: {tiny_data}", f"path: 'pipe:touch {marker}; cat {{}}'")
    assert "pipe:" in config
    (step / "config.yaml").write_text(config)
    recompute_checksums(step)
    assert convert(downloaded, tmp_path / "b", log=lambda _: None) == tmp_path / "b"
    assert not marker.exists()

    shutil.rmtree(step / "tokenizer")  # as written before checkpoints carried their tokenizer
    (step / "files.json").unlink()
    meta = json.loads((step / "meta.json").read_text())
    del meta["checksums"]
    (step / "meta.json").write_text(json.dumps(meta))
    assert main(["--checkpoint", str(downloaded), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "carries no tokenizer" in err and "pass --tokenizer with the dataset's tokenizer folder" in err
    assert not marker.exists() and not (tmp_path / "c").exists()
    assert main(["--checkpoint", str(downloaded), "--out", str(tmp_path / "c"), "--tokenizer",
                 str(tiny_data / "tokenizer")]) == 0


@pytest.mark.distributed
def test_resuming_a_downloaded_run_runs_nothing_its_engine_files_name(downloaded, tiny_data, tmp_path):
    step, marker = downloaded / "checkpoints" / STEP, tmp_path / "MARKER"
    states = step / "model" / "mp_rank_00_model_states.pt"
    torch.save({**torch.load(states, weights_only=True), "x": Exec(marker)}, states)
    recompute_checksums(step)
    result = run_ranks(_run_pretrain, 1, settings(tiny_data, downloaded, train__max_steps=21,
                                                  train__checkpoint_every=20, train__eval_every=20, train__ema=0.9))[0]
    assert "cannot load the model engine" in result["error"] and "builtins.exec" in result["error"]
    assert not marker.exists()
