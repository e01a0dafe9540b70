"""Typed YAML configs: dataclasses loaded from YAML, with unknown keys, wrong types and impossible combinations
refused at load time in a message that names the key and the file; ``--set a.b=value`` overrides applied before
validation; the resolved config saved next to every output (``save_resolved``). The machinery every command's
config uses, and ``PrepareConfig``, the config of ``python -m data_prep prepare``."""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from data_prep.atomic import atomic_write_bytes


class ConfigError(ValueError):
    """A config problem, with the offending key (and file) in the message."""


def check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name}: must be positive, got {value}")


def check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{name}: must be >= 0, got {value}")


@dataclass
class PrepareConfig:
    """Inputs of ``python -m data_prep prepare``; saved as ``prepare_config.yaml`` in the output directory."""

    inputs: list[str] = field(default_factory=list)
    # files whose every document goes to validation (a split made beforehand, e.g. proteins by identity cluster:
    # python -m data_prep proteins); inputs are still split by val_fraction (0: all training)
    val_inputs: list[str] = field(default_factory=list)
    out: str = ""
    tokenizer: str = "spm:4000"  # spm:VOCAB | gpt2:RANKS_FILE | protein
    spm_model_type: Literal["bpe", "unigram", "char"] = "bpe"
    seq_len: int = 1024
    val_fraction: float = 0.05
    min_doc_chars: int = 2000  # text files: blocks between blank lines are merged up to this size
    jsonl_field: str = "text"
    parquet_column: str = "text"
    shard_mb: float = 64.0  # text megabytes per shard (before tokenisation)
    spm_max_sentences: int = 2_000_000  # sentences sampled for SentencePiece training
    strict: bool = False  # fail on unreadable files and malformed records instead of skipping them
    workers: int = 1

    def validate(self) -> None:
        if not self.inputs:
            raise ConfigError("inputs: at least one input path is required")
        if not self.out:
            raise ConfigError("out: the output directory is required")
        if self.seq_len < 3:
            raise ConfigError(f"seq_len: {self.seq_len} is too small: a sequence is [BOS] + chunk + [EOS]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: {self.val_fraction} must be in [0, 1)")
        check_positive("min_doc_chars", self.min_doc_chars)
        check_positive("shard_mb", self.shard_mb)
        check_positive("workers", self.workers)
        check_positive("spm_max_sentences", self.spm_max_sentences)
        kind, _, arg = self.tokenizer.partition(":")
        if kind == "spm":
            if not arg.isdigit() or int(arg) < 300:
                raise ConfigError(f"tokenizer: '{self.tokenizer}' needs a vocabulary size >= 300 (256 byte pieces, "
                                  "specials and the corpus's characters), e.g. spm:4000")
        elif kind == "gpt2":
            if not arg or not Path(arg).is_file():
                raise ConfigError(f"tokenizer: '{self.tokenizer}': no GPT-2 ranks file at '{arg}'")
        elif not (kind == "protein" and not arg):
            raise ConfigError(f"tokenizer: '{self.tokenizer}' is not one of spm:VOCAB, gpt2:RANKS_FILE, protein")


# ------------------------------------------------------------------------------------------- machinery


def from_dict(cls: type, data: Any, source: str = "<dict>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, checking every key and type, then validate it."""
    if hasattr(cls, "with_stage_defaults") and isinstance(data, dict):
        try:
            data = cls.with_stage_defaults(data)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    obj = _build(cls, data, source, prefix)
    _validate_tree(obj, source)
    return obj


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix or '<top>'}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else f" (known: {', '.join(fields)})"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
    kwargs = {name: _coerce(hints[name], data[name], source, prefix + name) for name in fields if name in data}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, source, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise ConfigError(f"{source}: '{key}' must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(inner, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{source}: '{key}' must be {tp.__name__}, got {value!r}")
    if tp is float and not math.isfinite(value):  # no setting means anything at nan or inf
        raise ConfigError(f"{source}: '{key}' must be a finite number, got {value!r}")
    return value


def _validate_tree(obj: Any, source: str) -> None:
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            _validate_tree(child, source)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None


def apply_overrides(data: dict, overrides: list[str], cls: type) -> dict:
    """Apply ``a.b=value`` strings (values parsed as YAML) to a raw config dict; keys must exist in ``cls``."""
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. data.batch_size=16")
        keys = path.split(".")
        node, schema = data, cls
        for i, key in enumerate(keys):
            names = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
            if key not in names:
                raise ConfigError(f"--set {item!r}: unknown key '{'.'.join(keys[: i + 1])}'")
            if i == len(keys) - 1:
                try:
                    node[key] = yaml.safe_load(raw)
                except yaml.YAMLError as err:
                    problem = str(err).splitlines()[0]
                    raise ConfigError(f"--set {item!r}: the value of '{path}' is not valid YAML ({problem}); "
                                      f"quote it, e.g. {path}='\"{raw}\"'") from None
            else:
                schema = typing.get_type_hints(schema)[key]
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {item!r}: '{'.'.join(keys[: i + 1])}' is not a section")
    return data


def load_yaml(path: str | os.PathLike, cls: type, overrides: list[str] | None = None) -> Any:
    """Load a YAML file into ``cls``, apply ``--set`` overrides, check keys, types and cross-field rules."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    apply_overrides(data, overrides or [], cls)
    return from_dict(cls, data, source=str(path))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested sections as one level of ``section.key`` names (values kept as they are)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_dict(cfg: Any) -> dict:
    """The config as plain data, without the sections its stage does not read (``unread_sections``, for a class
    that has some)."""
    data = dataclasses.asdict(cfg)
    for key in cfg.unread_sections() if hasattr(cfg, "unread_sections") else ():
        data.pop(key)
    return data


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_resolved(cfg: Any, directory: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config next to a stage's outputs (atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    atomic_write_bytes(target, to_yaml(cfg).encode())
    return target
