"""Seeded config fuzzing over every shipped config (training, evaluation, preparation, sweep): random ``--set``
overrides and YAML mutations either load or fail with a ``ConfigError`` that names the key; nothing else."""
import copy
import dataclasses
import random
import re
import typing
from pathlib import Path

import pytest
import yaml

from data_prep.config import ConfigError, PrepareConfig, from_dict
from pipeline.config import Config, EvaluateConfig, load_config
from pipeline.stages.sweep import SweepConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for folder in ("configs", "recipes") for p in (ROOT / "launch" / folder).rglob("*.yaml")
                 if p.name != "ablation.yaml")  # a recipe's ablation.yaml lists arms, not a stage
CLASSES = (Config, EvaluateConfig, PrepareConfig, SweepConfig)
VALUES = ["", "null", "0", "1", "-1", "3", "1.5", "-2.5", "1e-3", "3e-4", "1e400", "nan", "inf", "true", "false",
          "abc", "[]", "[1, 2]", "[a, b]", "{}", "{a: 1}", "[[1]]", "{stage: x}", "pretrain", "distill", "'1'",
          "[", "{", "]", ": :", "'", "- a", "!!python/object:os.system", "1_000", "0x10", "~"]
TRIALS = 1200  # over all configs


def schema_paths(cls: type, prefix: str = "") -> list[str]:
    """Every key path of a config class, sections included."""
    paths = []
    for f in dataclasses.fields(cls):
        paths.append(prefix + f.name)
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            paths += schema_paths(tp, prefix + f.name + ".")
    return paths


def config_class(path: Path) -> tuple[type, list[str]]:
    """The one class the shipped config loads as, with the overrides its command line adds (a preparation
    config's --out, and its --input where the config leaves inputs to the command line)."""
    fits = []
    raw = yaml.safe_load(path.read_text())
    for cls in CLASSES:
        base = (["out=/tmp/prepared"] if "out" not in raw else []) + (["inputs=[/tmp/in.fasta]"] if raw.get("inputs") == [] else [])
        base = base if cls is PrepareConfig else []
        try:
            load_config(path, base, cls=cls)
            fits.append((cls, base))
        except ConfigError:
            pass
    assert len(fits) == 1, f"{path} loads as {fits}"
    return fits[0]


def typo(rng: random.Random, name: str) -> str:
    i = rng.randrange(len(name))
    return name[:i] + rng.choice("abcxyz_") + name[i + 1:]


def override(rng: random.Random, paths: list[str]) -> tuple[str, str]:
    """A random ``--set`` item and the key it is about."""
    key = rng.choice(paths)
    if rng.random() < 0.15:
        key = typo(rng, key)
    elif rng.random() < 0.1:
        key += "." + rng.choice(["x", "seed", "path"])
    return f"{key}={rng.choice(VALUES)}", key


def mutate(rng: random.Random, data: dict) -> tuple[object, str]:
    """A random change of the raw YAML document and the key it touched ("<top>" for the document itself)."""
    data = copy.deepcopy(data)
    if rng.random() < 0.05:
        return rng.choice([[1, 2], "text", 3, [data]]), "<top>"
    node, key = data, None
    for _ in range(rng.randrange(1, 3)):
        candidates = [k for k in node] if isinstance(node, dict) else []
        if not candidates:
            break
        key = rng.choice(candidates)
        if isinstance(node[key], dict) and rng.random() < 0.6:
            node = node[key]
            continue
        break
    if key is None:
        return data, "<top>"
    action = rng.random()
    if action < 0.2:
        node.pop(key, None)
    elif action < 0.35:
        key = typo(rng, str(key))
        node[key] = 1
    else:
        node[key] = yaml.safe_load(rng.choice([v for v in VALUES if _parses(v)]))
    return data, str(key)


def _parses(text: str) -> bool:
    try:
        yaml.safe_load(text)
        return True
    except yaml.YAMLError:
        return False


def names_the_key(message: str, key: str, paths: list[str]) -> bool:
    """The message (without the file it names) names the key that changed or its section, or (a rule across
    fields) another key by its full path."""
    message = message.split(".yaml: ", 1)[-1]
    return any(re.search(rf"\b{re.escape(part)}\b", message) for part in key.split(".")) or "<top>" in message or any(f"{p}:" in message or f"'{p}'" in message
                                                        for p in paths if "." in p)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "launch")))
def test_random_overrides_and_mutations_load_or_name_the_key(path, tmp_path):
    cls, base = config_class(path)
    paths = schema_paths(cls)
    raw = yaml.safe_load(path.read_text())
    for item in base:
        key, _, value = item.partition("=")
        raw[key] = yaml.safe_load(value)
    rng = random.Random(str(path.relative_to(ROOT)))
    problems = []
    for trial in range(TRIALS // len(CONFIGS) + 1):
        if trial % 2:
            item, key = override(rng, paths)
            attempt = (lambda item=item: load_config(path, [*base, item], cls)), f"--set {item}"
        else:
            data, key = mutate(rng, raw)
            attempt = (lambda data=data: from_dict(cls, data, source=str(path))), f"mutation of {key}: {data!r}"[:300]
        try:
            attempt[0]()
        except ConfigError as err:
            if not names_the_key(str(err), key, paths):
                problems.append(f"{attempt[1]} -> ConfigError not naming '{key}': {err}")
        except Exception as err:  # noqa: BLE001 - the point: anything but ConfigError is a bug
            problems.append(f"{attempt[1]} -> {err.__class__.__name__}: {err}")
    assert not problems, "\n".join(problems[:10])
