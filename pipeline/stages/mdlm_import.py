"""Public MDLM teachers (the ``kuleshov-group/mdlm`` / DUO DiT) as inference bundles.

``python -m pipeline convert --from-mdlm PATH --tokenizer gpt2:RANKS_FILE --out BUNDLE [--heads H] [--seq-len L]``

PATH is a model directory (``model.safetensors`` or ``pytorch_model.bin``, with the ``config.json`` the
Hugging Face mixin writes) or a Lightning ``.ckpt`` file, whose EMA (``ema.shadow_params``, in the order of
the backbone's parameters) is taken when present. Upstream names equal ours except the token embedding
(``vocab_embed.embedding`` here ``vocab_embed.weight``); the fused qkv is [Q; K; V] with heads contiguous in
both; the rotary ``inv_freq`` buffer is recomputed, not stored. Dimensions are read from the shapes; the
number of heads and the sequence length come from the config (or ``--heads`` / ``--seq-len``).

Files from strangers are read without running code (``pipeline/runtime/safe_load.py``): what a ``.ckpt``
pickles besides tensors (an omegaconf config, a tokenizer) arrives as inert stand-ins, and a file that names
``os``, ``sys`` and the like is refused.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from data_prep.tokenizers import build_tokenizer
from pipeline.bundle import FORMAT, BundleError, new_dit, write_bundle
from pipeline.runtime.checkpoint import CheckpointError
from pipeline.runtime.safe_load import Opaque, UnsafeFileError, load_tensors

log = logging.getLogger(__name__)

RENAMES = {"vocab_embed.embedding": "vocab_embed.weight"}
DROPPED = ("rotary_emb.inv_freq",)


def from_upstream(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream DiT names → ours (a ``backbone.`` prefix, as Lightning saves it, is removed)."""
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    return {RENAMES.get(k, k): v for k, v in state.items() if k not in DROPPED and not k.startswith("noise.")}


def to_upstream(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours → upstream names (the inverse of ``from_upstream``; tests build upstream files with it)."""
    inverse = {v: k for k, v in RENAMES.items()}
    return {inverse.get(k, k): v for k, v in state.items()}


def plain(obj):
    """An upstream config as plain data. Read without running code, its objects arrive as ``Opaque``: an omegaconf
    container keeps its items in ``_content``, a value node its value in ``_val``, a dict subclass its items."""
    if isinstance(obj, Opaque):
        state = obj.state if isinstance(obj.state, dict) else {}
        return plain(state["_content"] if "_content" in state else state["_val"] if "_val" in state else dict(obj))
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def _nested(config: dict, *keys: str):
    for key in keys:
        config = config.get(key) if isinstance(config, dict) else None
    return config


def read_upstream(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict with upstream names, upstream model config or {}) from a model directory or a .ckpt."""
    if path.is_file():
        try:
            ckpt = load_tensors(path)
        except UnsafeFileError as err:
            raise CheckpointError(str(err)) from None
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable Lightning checkpoint ({err.__class__.__name__})") from err
        state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
        shadow = (ckpt.get("ema") or {}).get("shadow_params")
        if shadow:  # the EMA, in the order of the backbone's parameters (buffers are not in it)
            names = [k for k in state if not k.endswith("inv_freq")]
            if len(shadow) < len(names):
                raise CheckpointError(f"{path}: the EMA holds {len(shadow)} tensors, the backbone {len(names)}")
            state.update(zip(names, shadow))
        config = _nested(plain(ckpt.get("hyper_parameters", {})), "config", "model") or {}
        return state, dict(config)
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    config = _nested(config, "config", "model") or {}
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(path / "model.safetensors"), config
    if (path / "pytorch_model.bin").is_file():
        try:
            return load_tensors(path / "pytorch_model.bin"), config
        except UnsafeFileError as err:
            raise CheckpointError(str(err)) from None
    raise CheckpointError(f"{path}: no model.safetensors, pytorch_model.bin or .ckpt file there")


def import_mdlm(path: str | Path, tokenizer: str, out: str | Path, heads: int | None = None,
                seq_len: int | None = None, log=log.info) -> Path:
    """Write a teacher bundle from an upstream MDLM model; returns ``out``."""
    path, out = Path(path), Path(out)
    upstream, config = read_upstream(path)
    state = from_upstream(upstream)
    if "vocab_embed.weight" not in state:
        raise CheckpointError(f"{path}: no vocab_embed.embedding: not an MDLM DiT state dict")
    outputs, hidden = state["vocab_embed.weight"].shape
    heads = heads or config.get("n_heads")
    seq_len = seq_len or config.get("length") or 1024
    if heads is None:
        raise CheckpointError(f"{path}: the number of heads is not in its config: pass --heads")
    model = {"vocab_size": outputs - 1, "hidden_size": hidden,
             "num_layers": len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
             "num_heads": heads, "cond_dim": state["sigma_map.mlp.0.weight"].shape[0], "seq_len": seq_len}
    tok = build_tokenizer(tokenizer, iter(()))
    if tok.vocab_size != model["vocab_size"]:
        raise BundleError(f"--tokenizer {tokenizer}: {tok.vocab_size} tokens, the model has {model['vocab_size']} "
                          "(+ [MASK])")
    with torch.device("meta"):
        expected = new_dit(model).state_dict()
    wrong = sorted(set(state) ^ set(expected)) + [k for k in expected if k in state and
                                                  state[k].shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{path}: does not map onto the DiT ({', '.join(wrong[:4])}...)")
    manifest = {"format": FORMAT, "kind": "teacher", "source": str(path.resolve()), "step": None, "model": model,
                "tokenizer": tok.describe()}
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(Path(tmp) / "tokenizer")
        write_bundle(out, {"model.safetensors": state}, manifest, {"tokenizer": Path(tmp) / "tokenizer"}, log)
    log(f"{out}: teacher bundle imported from {path} ({model['num_layers']} x {hidden}, {heads} heads, "
        f"V = {model['vocab_size']} + [MASK], L = {seq_len})")
    return out
