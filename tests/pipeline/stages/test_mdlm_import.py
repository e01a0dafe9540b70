"""Importing upstream MDLM teachers: state dicts with the upstream names and layouts, as files of both kinds."""
import contextlib
import json
import os
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from models.dit import DiT
from pipeline.bundle import BundleError, load_bundle
from pipeline.runtime.checkpoint import CheckpointError
from pipeline.stages.convert import main
from pipeline.stages.mdlm_import import import_mdlm, to_upstream
from tests.conftest import write_tiny_gpt2_ranks


@pytest.fixture
def upstream(tmp_path):
    """Our DiT with random weights everywhere, its upstream state dict, and a GPT-2-format ranks file."""
    ranks = write_tiny_gpt2_ranks(tmp_path / "tiny.tiktoken")
    torch.manual_seed(0)
    model = DiT(len(ranks) + 1, 32, 2, 4, 16, dropout=0.0).eval()  # V = ranks + <|endoftext|>
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    state = to_upstream(model.state_dict())
    state["rotary_emb.inv_freq"] = torch.ones(4)  # a buffer upstream keeps in its state dict
    return model, state, f"gpt2:{tmp_path / 'tiny.tiktoken'}"


def probe(model_or_bundle, vocab):
    z = torch.randint(0, vocab + 1, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model_or_bundle(z, torch.zeros(2))


def test_model_directory_imports_to_the_same_logits(upstream, tmp_path):
    model, state, tokenizer = upstream
    directory = tmp_path / "mdlm-owt"
    directory.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps({"config": {"model": {"n_heads": 4, "length": 16}},
                                                       "vocab_size": model.vocab_size + 1}))
    assert "vocab_embed.embedding" in state and "vocab_embed.weight" not in state
    assert main(["--from-mdlm", str(directory), "--tokenizer", tokenizer, "--out", str(tmp_path / "b")]) == 0
    bundle = load_bundle(tmp_path / "b")
    assert bundle.manifest["model"] == {"vocab_size": model.vocab_size, "hidden_size": 32, "num_layers": 2,
                                        "num_heads": 4, "cond_dim": 16, "seq_len": 16}
    assert torch.allclose(probe(bundle.model, model.vocab_size), probe(model, model.vocab_size), atol=1e-6)


@contextlib.contextmanager
def lightning_types():
    """Stand-ins for what an upstream .ckpt pickles besides tensors, shaped as it pickles them: an omegaconf
    config (items in ``_content``, values in ``_val`` nodes) and a tokenizer object. Their modules exist only
    while the file is written: reading it must need none of them."""
    class DictConfig:
        def __init__(self, content):
            self._content, self._parent = content, None

    class AnyNode:
        def __init__(self, value):
            self._val, self._parent = value, None

    class Tokenizer:
        def __reduce__(self):
            return Tokenizer, ()

    made = {"stub_omegaconf.dictconfig": DictConfig, "stub_omegaconf.nodes": AnyNode,
            "stub_transformers.tokenization": Tokenizer}
    modules = {name: types.ModuleType(name) for name in ("stub_omegaconf", "stub_transformers", *made)}
    for module, cls in made.items():
        cls.__module__, cls.__qualname__ = module, cls.__name__
        setattr(modules[module], cls.__name__, cls)
    assert not set(modules) & set(sys.modules)
    sys.modules.update(modules)
    try:
        yield DictConfig, AnyNode, Tokenizer
    finally:
        for name in modules:
            del sys.modules[name]


def test_lightning_checkpoint_imports_its_ema(upstream, tmp_path):
    model, state, tokenizer = upstream
    ema = {k: v * 0.5 for k, v in model.state_dict().items()}
    names = [k for k in state if k != "rotary_emb.inv_freq"]
    ordered = {**{k: state[k] for k in names[:5]}, "rotary_emb.inv_freq": state["rotary_emb.inv_freq"],
               **{k: state[k] for k in names[5:]}}  # buffers sit between parameters, as registered upstream
    with lightning_types() as (DictConfig, AnyNode, Tokenizer):
        config = DictConfig({"model": DictConfig({"n_heads": AnyNode(4), "length": AnyNode(16)})})
        torch.save({"state_dict": {f"backbone.{k}": v for k, v in ordered.items()},
                    "ema": {"shadow_params": [v * 0.5 for k, v in ordered.items() if k != "rotary_emb.inv_freq"]},
                    "hyper_parameters": {"config": config, "tokenizer": Tokenizer()}}, tmp_path / "last.ckpt")
    bundle = load_bundle(import_mdlm(tmp_path / "last.ckpt", tokenizer, tmp_path / "b", log=lambda _: None))
    assert bundle.manifest["model"]["num_heads"] == 4 and bundle.manifest["model"]["seq_len"] == 16
    ema_model = DiT(model.vocab_size, 32, 2, 4, 16, dropout=0.0).eval()
    ema_model.load_state_dict(ema)
    assert torch.allclose(probe(bundle.model, model.vocab_size), probe(ema_model, model.vocab_size), atol=1e-6)


def test_what_cannot_be_imported_is_refused(upstream, tmp_path):
    model, state, tokenizer = upstream
    directory = tmp_path / "m"
    directory.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="the number of heads is not in its config: pass --heads"):
        import_mdlm(directory, tokenizer, tmp_path / "b", log=lambda _: None)
    with pytest.raises(BundleError, match="the model has"):
        import_mdlm(directory, "protein", tmp_path / "b", heads=4, log=lambda _: None)
    state.pop("blocks.1.attn_out.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not map onto the DiT"):
        import_mdlm(directory, tokenizer, tmp_path / "b", heads=4, log=lambda _: None)
    assert not (tmp_path / "b").exists()


def test_a_checkpoint_that_would_run_code_is_refused(upstream, tmp_path, capsys):
    model, state, tokenizer = upstream
    marker = tmp_path / "MARKER"

    class Shell:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}, "hyper_parameters": Shell()},
               tmp_path / "evil.ckpt")
    assert main(["--from-mdlm", str(tmp_path / "evil.ckpt"), "--tokenizer", tokenizer, "--heads", "4",
                 "--out", str(tmp_path / "b")]) == 2
    assert "evil.ckpt: not loaded, as loading it could run code it names (posix.system)" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "b").exists()
