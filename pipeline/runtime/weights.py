"""Dense weights out of a training checkpoint: the EMA a stage keeps per rank, consolidated across ZeRO-3 partitions.

Every rank's side file holds the EMA shadow of its *local* parameter partitions, in ``model.parameters()``
order. Under ZeRO 0–2 each rank holds whole tensors; under ZeRO-3 rank r holds elements
[r·⌈n/W⌉, (r+1)·⌈n/W⌉) of the flattened, zero-padded tensor, so concatenating the ranks' pieces in order and
dropping the padding gives the dense tensor back. Reads files only: no process group, no DeepSpeed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from models.tensor_parallel import join_shards
from pipeline.runtime.checkpoint import CheckpointError, latest_tag


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory, its ``checkpoints/`` folder or one ``step_N`` folder → the step folder to read."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        tag = latest_tag(root) if root.is_dir() else None
        if tag is not None:
            return root / tag
    if (path / "meta.json").is_file():
        return path
    raise CheckpointError(f"{path}: not a checkpoint (no checkpoints/latest, latest or meta.json there)")


def read_meta(step_dir: Path) -> dict:
    try:
        return json.loads((step_dir / "meta.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{step_dir / 'meta.json'}: missing or unreadable ({err})") from None


def consolidate(pieces: list[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """One tensor from its per-rank pieces (one whole copy, or ZeRO-3's flat partitions in rank order)."""
    numel = shape.numel()
    if len(pieces) == 1 or pieces[0].numel() == numel:
        return pieces[0].reshape(shape).clone()
    return torch.cat([p.reshape(-1) for p in pieces])[:numel].reshape(shape).clone()


def ema_state_dict(step_dir: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's EMA weights as a dense state dict for ``model`` (whose names and shapes it takes;
    ``model`` may live on the meta device). Every rank file must be present and readable.

    Under tensor parallelism T, rank r holds tensor-parallel shard r mod T of data-parallel rank r // T: each
    shard is consolidated over the data-parallel ranks, then the shards are joined as the checkpoint's
    ``split`` layout says (``models.tensor_parallel``)."""
    meta = read_meta(step_dir)
    world, ranks = meta["world_size"], meta.get("tensor_parallel", 1)
    shadows = []
    for rank in range(world):
        side = step_dir / f"rank{rank:05d}.pt"
        try:
            shadows.append(torch.load(side, weights_only=True, map_location="cpu")["ema"]["shadow"])
        except FileNotFoundError:
            raise CheckpointError(f"{side}: missing (incomplete checkpoint)") from None
        except Exception as err:
            raise CheckpointError(f"{side}: unreadable, truncated or corrupt ({err.__class__.__name__})") from err
    named = list(model.named_parameters())
    if any(len(s) != len(named) for s in shadows):
        raise CheckpointError(f"{step_dir}: the EMA holds {len(shadows[0])} tensors, the model has {len(named)}")
    split = next((meta["split"][e] for e in ("model", "student") if e in meta.get("split", {})), {})
    dense = {}
    for i, (name, p) in enumerate(named):
        dim, size, qkv = split.get(name, (0, None, False))
        shape = list(p.shape)
        if size is not None:
            shape[dim] = -(-size // ranks)  # this shard's rows (the vocabulary padded to a multiple of T)
        shards = [consolidate([s[i] for s in shadows[r::ranks]], torch.Size(shape)) for r in range(ranks)]
        dense[name] = shards[0] if size is None else join_shards(shards, dim, size, qkv)
    return dense
