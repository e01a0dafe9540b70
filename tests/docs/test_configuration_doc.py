"""``docs/configuration.md``'s key reference names every key of every config kind, and only keys that exist: a
field added to a config dataclass without a row, or a row left behind by a removed field, fails here."""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

from data_prep.config import PrepareConfig
from pipeline.config import Config, EvaluateConfig
from pipeline.stages.sweep import SweepConfig

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
REFERENCE = "## Key reference"
# the reference's "### ..." headings, each the table(s) of one config kind
KINDS = {"Training config": Config, "Preparation config": PrepareConfig, "Evaluation config": EvaluateConfig,
         "Sweep config": SweepConfig}
# a dotted YAML key: section.key, key, or list.[]key for the dataclasses inside a list (grid.shapes[].num_heads)
KEY = re.compile(r"^[a-z_][a-z0-9_]*(\[\])?(\.[a-z_][a-z0-9_]*(\[\])?)*$")


def _dataclass_inside(tp):
    """The dataclass a field holds: itself, inside Optional[...], or as the elements of list[...]; else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _dataclass_inside(inner[0]) if len(inner) == 1 else None
    return tp if dataclasses.is_dataclass(tp) else None


def config_keys(cls: type, prefix: str = "") -> set[str]:
    """Every key of ``cls`` as written in YAML: nested sections as ``section.key``; a list of dataclasses as its
    own key plus ``key[].field`` for the fields of its elements."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, name = hints[f.name], prefix + f.name
        if _dataclass_inside(tp):
            keys |= config_keys(_dataclass_inside(tp), name + ".")
            continue
        keys.add(name)
        if typing.get_origin(tp) is list and _dataclass_inside(typing.get_args(tp)[0]):
            keys |= config_keys(_dataclass_inside(typing.get_args(tp)[0]), name + "[].")
    return keys


def documented_keys(text: str) -> dict[str, list[str]]:
    """Per config kind, the backticked keys in the first column of the reference's tables."""
    assert REFERENCE in text, f"{DOC.relative_to(ROOT)}: no '{REFERENCE}' section"
    found: dict[str, list[str]] = {}
    kind = None
    for line in text.split(REFERENCE, 1)[1].splitlines():
        if line.startswith("## "):
            break
        if line.startswith("### "):
            kind = next((k for k in KINDS if line[4:].startswith(k)), None)
            assert kind, f"{DOC.relative_to(ROOT)}: heading {line!r} is not one of {', '.join(KINDS)}"
            found.setdefault(kind, [])
            continue
        if not line.startswith("|") or re.match(r"^\|[\s:|-]+\|$", line):
            continue
        first = line.split("|")[1]
        for key in re.findall(r"`([^`]+)`", first):
            if KEY.match(key):
                assert kind, f"{DOC.relative_to(ROOT)}: key `{key}` before the first config-kind heading"
                found[kind].append(key)
    return found


def test_the_walk_reaches_nested_keys():
    """The negative control of the walk: sections, nested sections and list elements are all expanded."""
    assert {"stage", "data.batch_size", "distill.teacher", "discriminator_optim.lr"} <= config_keys(Config)
    assert {"tracking.uri", "control_steps"} <= config_keys(EvaluateConfig)
    assert {"grid.shapes", "grid.shapes[].hidden_size", "tracking.experiment", "set"} <= config_keys(SweepConfig)
    assert "data" not in config_keys(Config) and "grid" not in config_keys(SweepConfig)


def test_reference_lists_every_key_and_only_real_ones():
    documented = documented_keys(DOC.read_text())
    problems = []
    for kind, cls in KINDS.items():
        keys, rows = config_keys(cls), documented.get(kind)
        if rows is None:
            problems.append(f"no '### {kind}' heading")
            continue
        missing = sorted(keys - set(rows))
        unknown = sorted(set(rows) - keys)
        repeated = sorted({key for key in rows if rows.count(key) > 1})
        if missing:
            problems.append(f"{kind} ({cls.__name__}): missing " + ", ".join(f"`{k}`" for k in missing))
        if unknown:
            problems.append(f"{kind} ({cls.__name__}): not a field " + ", ".join(f"`{k}`" for k in unknown))
        if repeated:
            problems.append(f"{kind} ({cls.__name__}): more than one row for " + ", ".join(f"`{k}`" for k in repeated))
    assert not problems, f"{DOC.relative_to(ROOT)} key reference:\n  " + "\n  ".join(problems)
