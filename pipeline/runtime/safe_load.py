"""Tensor files are read by torch's weights-only unpickler, never by a full one.

A pickle can name any function (``os.system``) and the full unpickler calls it, so a checkpoint from a stranger
would run their code. Torch's weights-only unpickler builds only tensors, containers and the types allowed to it.
Two policies on top of it:

- ``load_tensors``: a file only its tensors are wanted from (an upstream MDLM ``.ckpt``, an engine's model
  states): every other class or function it names becomes an inert ``Opaque`` that keeps the data it was given
  and calls nothing;
- ``weights_only_loads()``: DeepSpeed's own ``torch.load`` calls (resuming, merging ZeRO-3 partitions) made
  weights-only, with the DeepSpeed data types its checkpoints hold allowed; a file naming anything else is
  refused by name.
"""
from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import torch
from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals


class UnsafeFileError(ValueError):
    """A tensor file names a function or class that loading it would call."""


class Opaque(dict):
    """Stands in for a class or function a file names that is not a tensor type: whatever it is given (call
    arguments, pickled state, items) is kept as data, nothing is called. A dict, so mapping-like objects keep
    their items."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.state, self.items_ = args, None, []

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items_.append(item)

    def extend(self, items):
        self.items_.extend(items)


def deepspeed_types() -> list:
    """The plain data types DeepSpeed's checkpoints pickle (loss scaling, ZeRO stage, parameter fragments)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _unsafe_globals(path) -> list[str]:
    try:
        return get_unsafe_globals_in_checkpoint(path)
    except ValueError:  # not torch.save's zip format (the legacy format or not a torch file): nothing to list
        return []


def _refused(f, err: pickle.UnpicklingError) -> UnsafeFileError:
    """The error for a file torch's weights-only unpickler stopped at, naming what it names."""
    names = ", ".join(_unsafe_globals(f) if isinstance(f, (str, Path)) else [])
    why = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), str(err).splitlines()[0])
    return UnsafeFileError(f"{f}: not loaded, as loading it could run code it names ({names or why}); a checkpoint "
                           "holds tensors and plain data only")


def load_tensors(path: str | Path, map_location="cpu"):
    """``torch.load`` of a file only its tensors are wanted from: any other type it names is an ``Opaque``
    (``os``, ``sys`` and the like are refused outright by torch)."""
    stand_ins = [(Opaque, name) for name in _unsafe_globals(path)]
    try:
        with safe_globals(stand_ins):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refused(path, err) from None


@contextlib.contextmanager
def weights_only_loads():
    """Within: every ``torch.load`` (DeepSpeed's included) is weights-only, DeepSpeed's data types allowed; a
    file naming another type raises ``UnsafeFileError`` with the file and the names."""
    original = torch.load

    def load(f, map_location=None, *args, weights_only=None, **kwargs):
        try:
            return original(f, map_location, *args, weights_only=True, **kwargs)
        except pickle.UnpicklingError as err:
            raise _refused(f, err) from None

    torch.load = load
    try:
        with safe_globals(deepspeed_types()):
            yield
    finally:
        torch.load = original
