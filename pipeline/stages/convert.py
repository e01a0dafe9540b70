"""The conversion stage: a training checkpoint → an inference bundle (``pipeline/bundle.py`` has the layout).

``python -m pipeline convert --checkpoint DIR [--tag STEP] --out BUNDLE [--online] [--tokenizer DIR]``
``python -m pipeline convert --from-mdlm PATH --tokenizer gpt2:RANKS_FILE --out BUNDLE`` (``mdlm_import.py``)

DIR is a run directory, its ``checkpoints/`` folder or one ``step_N`` folder; ``--tag`` picks a step of the
run instead of the latest. The EMA weights are consolidated from the per-rank files (ZeRO-3 partitions
included); the discriminator and the online student come from the DeepSpeed engine files (``zero_to_fp32``
under ZeRO-3); tensor-parallel shards are joined into the dense layout. A distillation bundle leaves the
teacher out. Runs on one CPU process, without DeepSpeed's process group. The bundle is written beside its final
place and renamed into it, so it is whole or absent; an existing bundle is kept if identical and refused
otherwise. Nothing a checkpoint holds can run code: its tensor files are read weights-only
(``pipeline/runtime/safe_load.py``) and its saved config's ``data.path`` is never fetched (the checkpoint
carries its tokenizer).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import json
import sys
import tempfile
from pathlib import Path

import torch

from data_prep.config import ConfigError
from data_prep.tokenizers import TokenizerError, load_tokenizer
from models.tensor_parallel import join_shards
from pipeline.bundle import FORMAT, MODEL_KEYS, BundleError, new_discriminator, new_dit, write_bundle
from pipeline.config import Config, is_remote, load_config
from pipeline.runtime import integrity
from pipeline.runtime.checkpoint import CheckpointError, tag_for
from pipeline.runtime.distributed import import_deepspeed
from pipeline.runtime.safe_load import load_tensors, weights_only_loads
from pipeline.runtime.weights import ema_state_dict, read_meta, resolve_checkpoint

log = logging.getLogger(__name__)


def engine_state_dict(step_dir: Path, engine: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """An engine's fp32 weights and buffers from DeepSpeed's files: the saved module under ZeRO 0–2 (whole fp32
    tensors: the weights are fp32, bf16 is autocast only), the partitions merged by ``zero_to_fp32`` under
    ZeRO-3. Under tensor parallelism each rank's files (``mp_rank_RR``) are read through a view that names them
    rank 00 (``zero_to_fp32`` reads one model-parallel rank only), then the shards are joined as the checkpoint's
    ``split`` layout says."""
    folder = step_dir / engine
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: missing (the checkpoint has no {engine} engine)")
    meta = read_meta(step_dir)
    ranks = meta.get("tensor_parallel", 1)
    if ranks == 1:
        return _read_engine(step_dir, engine, zero_stage)
    shards = []
    for rank in range(ranks):
        with tempfile.TemporaryDirectory() as view:
            (Path(view) / engine).mkdir()
            for file in folder.glob(f"*mp_rank_{rank:02d}_*"):
                (Path(view) / engine / file.name.replace(f"mp_rank_{rank:02d}", "mp_rank_00")).symlink_to(file.resolve())
            shards.append(_read_engine(Path(view), engine, zero_stage, shown=folder))
    split = meta["split"][engine]
    return {name: join_shards([s[name] for s in shards], *split[name]) if name in split else value
            for name, value in shards[0].items()}


def _read_engine(step_dir: Path, engine: str, zero_stage: int, shown: Path | None = None) -> dict[str, torch.Tensor]:
    folder = step_dir / engine
    try:
        if zero_stage < 3:
            state = load_tensors(folder / "mp_rank_00_model_states.pt")["module"]
        else:
            import_deepspeed()
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            with contextlib.redirect_stdout(io.StringIO()), weights_only_loads():
                state = get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag=engine)
        # megatron's layers add "*._extra_state" entries (None): not weights
        return {k: v for k, v in state.items() if torch.is_tensor(v) and not k.endswith("._extra_state")}
    except Exception as err:  # DeepSpeed and torch raise many kinds; name the folder whatever it was
        raise CheckpointError(f"{shown or folder}: cannot read the {engine} engine "
                              f"({err.__class__.__name__}: {err})") from err


def _step_dir(checkpoint: Path, tag: int | None) -> Path:
    if tag is None:
        return resolve_checkpoint(checkpoint)
    for root in (checkpoint / "checkpoints", checkpoint, checkpoint.parent):
        if (root / tag_for(tag) / "meta.json").is_file():
            return root / tag_for(tag)
    raise CheckpointError(f"{checkpoint}: no checkpoint of step {tag} ({tag_for(tag)}/meta.json not found)")


def checkpoint_tokenizer(step_dir: Path, cfg: Config, given: str | Path | None) -> Path:
    """The tokenizer folder the checkpoint carries; for one written before checkpoints carried it, ``given`` or
    the local dataset its config names. A remote ``data.path`` (a URL, a ``pipe:`` command) is never fetched
    or run: a checkpoint from elsewhere must not make convert run a command."""
    if (step_dir / "tokenizer").is_dir():
        return step_dir / "tokenizer"
    if given is not None:
        return Path(given)
    if is_remote(cfg.data.path):
        raise CheckpointError(f"{step_dir} carries no tokenizer (written before checkpoints did) and its data.path "
                              f"is remote ({cfg.data.path[:80]}): convert never fetches or runs what a saved config "
                              "names; pass --tokenizer with the dataset's tokenizer folder")
    return Path(cfg.data.path) / "tokenizer"


def convert(checkpoint: str | Path, out: str | Path, tag: int | None = None, online: bool = False,
            log=log.info, tokenizer: str | Path | None = None) -> Path:
    """Write the bundle of ``checkpoint`` to ``out``; returns ``out``. ``tokenizer``: the dataset's tokenizer folder,
    for a checkpoint that carries none."""
    step_dir, out = _step_dir(Path(checkpoint), tag), Path(out)
    if integrity.predates_checksums(step_dir):
        log(f"warning: {step_dir} predates checksums (no {integrity.MANIFEST}): converted unverified")
    elif damaged := integrity.problems(step_dir):
        raise CheckpointError(f"{step_dir} is damaged: {'; '.join(damaged)} (python -m pipeline verify-checkpoints "
                              f"{step_dir.parent} checks them all)")
    meta = read_meta(step_dir)
    try:
        cfg: Config = load_config(step_dir / "config.yaml")
    except ConfigError as err:
        raise CheckpointError(f"{step_dir / 'config.yaml'}: {err}") from None
    kind = {("model",): "teacher", ("discriminator", "student"): "student"}.get(tuple(meta["engines"]))
    if kind is None:
        raise CheckpointError(f"{step_dir}: engines {meta['engines']} are neither a pre-training nor a distillation "
                              "checkpoint")
    if kind == "teacher" and cfg.model.causal:
        kind = "judge"  # an autoregressive model trained by the same stage
    tokenizer = checkpoint_tokenizer(step_dir, cfg, tokenizer)
    try:
        tok = load_tokenizer(tokenizer)
    except TokenizerError as err:
        raise CheckpointError(f"the run's tokenizer ({tokenizer}): {err}") from None
    if meta.get("tokenizer", tok.fingerprint) != tok.fingerprint or tok.vocab_size != cfg.model.vocab_size:
        raise CheckpointError(f"{tokenizer} (fingerprint {tok.fingerprint}, V = {tok.vocab_size}) is not the tokenizer "
                              f"the checkpoint was trained with ({meta.get('tokenizer')}, V = {cfg.model.vocab_size})")
    model = {k: getattr(cfg.model, k) for k in MODEL_KEYS}
    if kind == "student" and cfg.distill.latent:
        # the latent-conditioned student (our extension, spec §11)
        model["latent_dim"], model["latent_input"] = cfg.distill.latent, cfg.distill.latent_input
    with torch.device("meta"):
        shapes = new_dit(model)
    weights = {"model.safetensors": ema_state_dict(step_dir, shapes)}
    manifest = {"format": FORMAT, "kind": kind, "source": str(step_dir.resolve()), "step": meta["step"],
                "model": model, "tokenizer": json.loads((tokenizer / "tokenizer.json").read_text())}
    if kind == "student":
        settings = {"unfreeze_blocks": cfg.distill.unfreeze_blocks, "sigma_to": cfg.distill.sigma_to}
        with torch.device("meta"):
            disc = new_discriminator(model, settings)
        state = engine_state_dict(step_dir, "discriminator", cfg.train.zero_stage)
        expected = set(disc.state_dict())
        if set(state) != expected:
            raise CheckpointError(f"{step_dir / 'discriminator'}: tensors {sorted(set(state) ^ expected)[:4]} do not fit "
                                  "the configured discriminator")
        weights["discriminator.safetensors"] = state
        manifest["discriminator"] = settings
        manifest["sampling"] = {"order": cfg.distill.rollout_order}  # the order it was distilled for
        if cfg.distill.latent:
            manifest["sampling"]["latent_redraw"] = cfg.distill.latent_redraw
    if online:
        weights["online.safetensors"] = engine_state_dict(step_dir, "student" if kind == "student" else "model",
                                                          cfg.train.zero_stage)

    if write_bundle(out, weights, manifest, {"tokenizer": tokenizer, "config.yaml": step_dir / "config.yaml"}, log):
        log(f"wrote {out}: {kind} bundle of step {meta['step']} from {step_dir} ({', '.join(sorted(weights))})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline convert", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run directory, checkpoints/ folder or step_N folder")
    source.add_argument("--from-mdlm", help="an upstream MDLM model directory or Lightning .ckpt (mdlm_import.py)")
    parser.add_argument("--tag", type=int, help="the step to convert (default: the latest)")
    parser.add_argument("--online", action="store_true", help="also keep the online (non-EMA) weights")
    parser.add_argument("--tokenizer", help="with --from-mdlm: gpt2:RANKS_FILE (or another tokenizer spec); with "
                        "--checkpoint: the dataset's tokenizer folder, for a checkpoint that carries none")
    parser.add_argument("--heads", type=int, help="with --from-mdlm: attention heads, if its config lacks them")
    parser.add_argument("--seq-len", type=int, help="with --from-mdlm: sequence length (default: its config, or 1024)")
    parser.add_argument("--out", required=True, help="bundle directory to create")
    args = parser.parse_args(argv)
    try:
        if args.from_mdlm:
            from pipeline.stages.mdlm_import import import_mdlm

            if not args.tokenizer:
                parser.error("--from-mdlm needs --tokenizer (e.g. gpt2:PATH/gpt2.tiktoken)")
            import_mdlm(args.from_mdlm, args.tokenizer, args.out, args.heads, args.seq_len)
        else:
            convert(args.checkpoint, args.out, args.tag, args.online, tokenizer=args.tokenizer)
    except (CheckpointError, BundleError, TokenizerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

