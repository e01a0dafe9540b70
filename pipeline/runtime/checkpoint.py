"""Checkpoints: DeepSpeed engine files plus per-rank side files, published by one atomic ``latest`` pointer.

Layout under ``{run.out_dir}/checkpoints``: ``step_NNNNNNNN/`` holds one folder per engine (DeepSpeed's
``save_checkpoint`` files, tagged with the engine's name), ``rankNNNNN.pt`` per rank (RNG states, EMA
partition, data position, counters), ``meta.json``, the resolved ``config.yaml`` and the dataset's ``tokenizer/``. ``files.json`` (``integrity``) the size and sha256 of every
other file. ``latest`` is written by rank 0 after every rank has finished, by rename, so a crash while saving
leaves the previous checkpoint in force; then all but the newest ``train.keep_checkpoints`` are deleted. A
resume verifies the checkpoint first: a damaged newest one is moved aside (``step_N.damaged``) and the run goes
on from the newest intact one, or stops naming both under ``train.resume: strict``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import yaml

from data_prep.atomic import atomic_path, atomic_write_bytes
from data_prep.config import flatten, save_resolved, to_dict
from pipeline.config import Config
from pipeline.runtime import integrity
from pipeline.runtime.dataset import dataset_tokenizer_dir, read_dataset_manifest
from pipeline.runtime.safe_load import weights_only_loads

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the file and the reason."""


def checkpoint_root(cfg: Config) -> Path:
    return Path(cfg.run.out_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def latest_tag(root: Path) -> str | None:
    pointer = root / "latest"
    return pointer.read_text().strip() if pointer.exists() else None


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()),
                                                     *np_state[2:]], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def model_signature(cfg: Config) -> dict:
    m = cfg.model
    signature = {k: getattr(m, k) for k in ("hidden_size", "num_layers", "num_heads", "cond_dim", "vocab_size", "seq_len")}
    return {**signature, "causal": True} if m.causal else signature


def _gather(obj) -> list:
    """Every rank's ``obj``, in rank order (collective)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def save(cfg: Config, engines: dict, step: int, rank: int, world_size: int, side: dict) -> Path:
    """Save every engine (collective) and this rank's side state, hash the files (each rank a share), then
    publish ``latest`` and delete what ``train.keep_checkpoints`` does not keep. A write that fails on any rank
    (a full disk) removes the partial folder and raises ``CheckpointError`` on every rank."""
    root = checkpoint_root(cfg)
    tag = tag_for(step)
    directory = root / tag
    if rank == 0:  # a manifest left by an earlier save of this step no longer describes it
        (directory / integrity.MANIFEST).unlink(missing_ok=True)
    _barrier()

    def write() -> None:
        for name, engine in engines.items():
            engine.save_checkpoint(str(directory), tag=name, save_latest=False)
        directory.mkdir(parents=True, exist_ok=True)
        if rank == 0:  # the checkpoint carries its tokenizer: converting it never reads what data.path names
            shutil.copytree(dataset_tokenizer_dir(cfg.data.path, cfg.data.retries), directory / "tokenizer",
                            dirs_exist_ok=True)
        with atomic_path(directory / f"rank{rank:05d}.pt") as tmp:
            torch.save({**side, "step": step, "rng": rng_state()}, tmp)

    _all_written(root, directory, step, rank, _attempt(write))
    names = [n for n in integrity.listing(directory) if n not in RANK0_FILES]
    shares = _gather(integrity.describe(directory, names[rank::world_size]))

    def publish() -> None:
        save_resolved(cfg, directory)
        manifest = read_dataset_manifest(cfg.data.path, cfg.data.retries)
        meta = {"step": step, "world_size": world_size, "tensor_parallel": cfg.model.tensor_parallel,
                "engines": sorted(engines), "model": model_signature(cfg), "checksums": integrity.MANIFEST,
                "tokenizer": manifest["tokenizer"]["fingerprint"], "data": data_identity(manifest)}
        if cfg.model.tensor_parallel > 1:  # how each engine's tensors split, for reading the files back dense
            from models.tensor_parallel import layout

            meta["split"] = {name: {k: [p.dim, p.size, p.qkv] for k, p in layout(engine.module).items()}
                             for name, engine in engines.items()}
        atomic_write_bytes(directory / "meta.json", json.dumps(meta, indent=1).encode())
        files = {k: v for share in shares for k, v in share.items()}
        integrity.write_manifest(directory, {**files, **integrity.describe(directory, list(RANK0_FILES))})
        atomic_write_bytes(root / "latest", tag.encode())
        _retain(root, tag, cfg.train.keep_checkpoints)

    _all_written(root, directory, step, rank, _attempt(publish) if rank == 0 else None)
    return directory


def _attempt(write: Callable[[], None]) -> str | None:
    """Run ``write``; what went wrong (a full disk shows as OSError or as torch's "unexpected pos"), or None."""
    try:
        write()
        return None
    except (OSError, RuntimeError) as err:
        return f"{err.__class__.__name__}: {str(err).strip()[:300]}"


def _all_written(root: Path, directory: Path, step: int, rank: int, failure: str | None) -> None:
    """Collective: if any rank failed to write its part, the partial folder is removed and every rank raises
    ``CheckpointError`` (a full disk named as such, with the size a checkpoint needs); ``latest`` still names
    the previous checkpoint."""
    failures = [f for f in _gather(failure) if f]
    if not failures:
        return
    previous = latest_tag(root)
    if rank == 0:
        shutil.rmtree(directory, ignore_errors=True)
    _barrier()
    kept = f"{previous} stays the latest checkpoint" if previous else "the run has no checkpoint yet"
    held = (integrity.read_checkpoint_manifest(root / previous) or {}) if previous else {}
    need = sum(size for size, _ in held.values())
    free = shutil.disk_usage(root if root.exists() else root.parent).free
    if any("No space left" in f or "unexpected pos" in f for f in failures) or free < need:
        raise CheckpointError(f"no space left on {root} ({free / 2**20:,.0f} MiB free, a checkpoint of this run takes "
                              f"about {need / 2**20:,.0f} MiB): step {step} was not saved and its partial folder was "
                              f"removed; {kept}. Free space and run the same command to resume")
    raise CheckpointError(f"step {step} was not saved ({failures[0]}); its partial folder was removed, {kept}")


RANK0_FILES = ("config.yaml", "meta.json")
# Settings a resumed run applies when they change: its length, what it logs and keeps, where it reads the same
# data from and how it tracks. Any other change would be recorded in config.yaml without taking effect (the
# optimizer, scheduler and RNG states come from the checkpoint): a resume with one is refused.
APPLIED_ON_RESUME = ("run.out_dir", "data.path", "data.num_workers", "data.retries", "data.source", "train.max_steps",
                     "train.log_every", "train.eval_every", "train.eval_batches", "train.sample_every",
                     "train.sample_steps", "train.sample_count", "train.exact_judge", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.resume", "train.max_nonfinite", "train.max_loss_ratio",
                     "tracking.")


def data_identity(manifest: dict) -> str:
    """What the run trains on, independent of where the data lie: the sha256 of the manifest's splits (every
    shard's name, size and sha256) and tokenizer."""
    content = {"splits": manifest["splits"], "tokenizer": manifest["tokenizer"]}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def check_unchanged(cfg: Config, directory: Path, meta: dict) -> None:
    """Refuse a resume whose data or settings differ from the checkpoint's in a way it would not apply."""
    manifest = read_dataset_manifest(cfg.data.path, cfg.data.retries)
    if meta.get("tokenizer", manifest["tokenizer"]["fingerprint"]) != manifest["tokenizer"]["fingerprint"]:
        raise CheckpointError(f"{directory} was trained with tokenizer {meta['tokenizer']}, data.path {cfg.data.path} "
                              f"holds tokenizer {manifest['tokenizer']['fingerprint']}: resume on the same data, or "
                              "use another run.out_dir")
    identity = data_identity(manifest)
    if meta.get("data", identity) != identity:
        raise CheckpointError(f"{directory} was trained on other data than data.path {cfg.data.path} holds (its shards "
                              "differ from the checkpoint's): resume on the same data, or use another run.out_dir")
    try:
        saved = flatten(yaml.safe_load((directory / "config.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"{directory / 'config.yaml'}: unreadable ({err.__class__.__name__})") from None
    now = flatten(to_dict(cfg))
    changed = [f"{k}: {saved[k]!r} there, {now[k]!r} now" for k in sorted(set(saved) & set(now))
               if saved[k] != now[k] and not k.startswith(APPLIED_ON_RESUME)]
    if changed:
        raise CheckpointError(f"cannot resume {directory} with changed settings ({'; '.join(changed)}): the "
                              "checkpoint's optimizer, schedule and random states would override them. Restore "
                              "them, or start a new run.out_dir")


def _retain(root: Path, latest: str, keep: int) -> None:
    """Delete complete checkpoints beyond the newest ``keep`` (0: none); never ``latest``'s."""
    if keep == 0:
        return
    complete = [d for d in integrity.step_dirs(root) if integrity.read_checkpoint_manifest(d) is not None]
    for directory in complete[keep:]:
        if directory.name != latest:
            shutil.rmtree(directory, ignore_errors=True)


def _intact(cfg: Config, root: Path, tag: str, rank: int, world_size: int) -> Path:
    """The checkpoint to resume from: ``latest``'s if it verifies, else (``train.resume: fallback``) the newest
    older complete one that does, the damaged ones moved aside; every rank reaches the same answer. A ``latest``
    that names no checkpoint folder of this run (a missing step, a path elsewhere) counts as damage too: the
    newest intact checkpoint is taken."""
    newest = root / tag
    pointer_ok = re.fullmatch(r"step_\d{8}", tag) is not None and newest.is_dir()
    if pointer_ok and integrity.predates_checksums(newest):
        if rank == 0:
            log.warning(f"checkpoint {newest.name} predates checksums (no {integrity.MANIFEST}); resuming from it "
                        "unverified")
        return newest
    older = [d for d in integrity.step_dirs(root)
             if (d.name < tag or not pointer_ok) and integrity.read_checkpoint_manifest(d) is not None]
    candidates = ([newest] if pointer_ok else []) + older
    damaged: list[tuple[Path, str]] = []
    directory = None
    for candidate in candidates:
        found = [p for share in _gather(integrity.problems(candidate, rank, world_size)) for p in share]
        if not found:
            directory = candidate
            break
        damaged.append((candidate, found[0]))
    pointer = None if pointer_ok else f"{root / 'latest'} names {tag[:80]!r}, not a checkpoint folder of this run"
    if (damaged or pointer) and (cfg.train.resume == "strict" or directory is None):
        what = "; ".join(([pointer] if pointer else []) + [f"{d.name}: {why}" for d, why in damaged])
        instead = (f"the newest intact checkpoint is {directory.name} (train.resume: fallback resumes from it)"
                   if directory else "no older checkpoint is intact: start a new run.out_dir")
        raise CheckpointError(f"cannot resume: {what}; {instead}")
    if (damaged or pointer) and rank == 0:
        if pointer:
            log.warning(f"{pointer}; resuming from {directory.name}")
        for bad, why in damaged:
            aside = bad.with_name(bad.name + ".damaged")
            n = 1
            while aside.exists():
                aside, n = bad.with_name(f"{bad.name}.damaged{n}"), n + 1
            bad.rename(aside)
            log.warning(f"checkpoint {bad.name} is damaged ({why}); moved to {aside.name}, "
                        f"resuming from {directory.name}")
        atomic_write_bytes(root / "latest", directory.name.encode())
    _barrier()
    return directory


def load(cfg: Config, engines: dict, rank: int, world_size: int) -> dict | None:
    """Resume from ``latest`` if there is one: engines restored in place; returns this rank's side state."""
    root = checkpoint_root(cfg)
    tag = latest_tag(root)
    if tag is None:
        return None
    directory = _intact(cfg, root, tag, rank, world_size)
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory / 'meta.json'}: missing or unreadable ({err})") from None
    if meta["model"] != model_signature(cfg):
        diff = {k: (meta["model"].get(k), v) for k, v in model_signature(cfg).items() if meta["model"].get(k) != v}
        raise CheckpointError(f"{directory} holds another model ({', '.join(f'{k}: {a} there, {b} now' for k, (a, b) in diff.items())}); "
                              f"use another run.out_dir")
    if meta.get("tensor_parallel", 1) != cfg.model.tensor_parallel:
        raise CheckpointError(f"{directory} was written with model.tensor_parallel = {meta.get('tensor_parallel', 1)}, "
                              f"this job has {cfg.model.tensor_parallel}: resume with the same value")
    if meta["world_size"] != world_size:
        raise CheckpointError(f"{directory} was written by {meta['world_size']} ranks, this job has {world_size}: "
                              "the data position, the ZeRO partitions and the EMA shards need the same number. "
                              f"Relaunch with {meta['world_size']} ranks (e.g. a hostfile with that many slots in "
                              "all) to resume, or start a new run.out_dir; as distill.teacher, this checkpoint (or its "
                              "bundle from python -m pipeline convert) loads at any number of ranks")
    if meta["engines"] != sorted(engines):
        raise CheckpointError(f"{directory} holds engines {meta['engines']}, this stage needs {sorted(engines)}")
    check_unchanged(cfg, directory, meta)
    for name, engine in engines.items():
        try:
            with weights_only_loads():
                path, _ = engine.load_checkpoint(str(directory), tag=name, load_optimizer_states=True,
                                                 load_lr_scheduler_states=True)
        except Exception as err:  # DeepSpeed raises many kinds; name the checkpoint whatever it was
            raise CheckpointError(f"{directory / name}: cannot load the {name} engine "
                                  f"({err.__class__.__name__}: {err})") from err
        if path is None:
            raise CheckpointError(f"{directory / name}: the {name} engine's files are missing")
    side_file = directory / f"rank{rank:05d}.pt"
    try:
        side = torch.load(side_file, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{side_file}: missing (incomplete checkpoint)") from None
    except Exception as err:
        raise CheckpointError(f"{side_file}: unreadable, truncated or corrupt ({err.__class__.__name__})") from err
    set_rng_state(side["rng"])
    return side
