"""Every command the README, ``docs/``, the launch scripts and the configs' headers quote still parses with the real argument parser
of its tool, and the configs it names still load with its ``--set`` overrides: a renamed flag, module, script
or config key fails here instead of in a user's shell."""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from pipeline.config import Config, EvaluateConfig, load_config
from pipeline.stages.sweep import SweepConfig

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = sorted((ROOT / "launch").rglob("*.sh")) + sorted((ROOT / "launch").rglob("*.sbatch"))
CONFIGS = sorted((ROOT / "launch" / "configs").rglob("*.yaml")) + sorted((ROOT / "launch" / "recipes").rglob("*.yaml"))
# programs a page may quote that are not this project's (installers, viewers, the shell itself)
FOREIGN = {"pip", "mlflow", "cat", "ls", "cd", "export", "git", "sbatch", "srun", "scontrol", "nvidia-smi", "tail",
           "echo", "source", "duplicates", "head", "du", "df"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # e.g. DIR, STEP, L in a synopsis
# `python -m pipeline` commands whose --config is checked to load, and as what
PIPELINE_CONFIGS = {"train": Config, "sweep": SweepConfig, "evaluate": EvaluateConfig, "validate": Config,
                    "plan-memory": Config}


class Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace):
        super().__init__()
        self.parser, self.namespace = parser, namespace


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined and ``# comments`` removed."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.split(" #", 1)[0].strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def page_commands(page: Path) -> list[str]:
    blocks = re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    return [line for block in blocks for line in logical_lines(block)]


def script_commands(script: Path) -> list[str]:
    """The project commands a launch script runs (from ``python -m``/``deepspeed``/``python launch/`` on), with
    the script's literal variables (``NAME=value`` or ``NAME="${NAME:-value}"``) filled in and the pass-through
    arrays (``"$@"``, ``"${ARRAY[@]}"``) dropped."""
    text = script.read_text()
    values = dict(re.findall(r'^([A-Z_]+)=(?:"\$\{[A-Z_]+:-)?([\w./-]+)\}?"?$', text, flags=re.M))
    found = []
    for line in logical_lines(text):
        match = re.search(r"\b(python -m (pipeline|data_prep)\b|deepspeed |python launch/)", line)
        if not match:
            continue
        command = line[match.start():]
        if line[:match.start()].endswith("$("):
            command = command.split(")", 1)[0]
        command = re.split(r" \|\| | && | \| |; ", command)[0]
        command = re.sub(r'"\$(@|\{[A-Z_]+\[@\]\})"', " ", command)
        found.append(re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: values.get(m.group(1), m.group(0)), command))
    return found


def header_command(config: Path) -> list[str]:
    """The command a config's first comment line gives to run it (text after `` (`` or ``: `` is prose)."""
    first = config.read_text().splitlines()[0]
    match = re.match(r"^# ((python|deepspeed|bash) .*)$", first)
    return [re.split(r" \(|: ", match.group(1))[0].strip()] if match else []


def synopsis_to_argv(command: str) -> list[str]:
    """A quoted command as argv: optional ``[...]`` groups and ``...`` dropped, leading VAR=value removed."""
    command = re.sub(r"\[[^\[\]]*\]", " ", command).replace("…", " ").replace("...", " ")
    argv = shlex.split(command)
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv.pop(0)
    if argv and argv[0].endswith("/python"):
        argv[0] = "python"
    return argv


def number_options(parser: argparse.ArgumentParser) -> set[str]:
    """Option strings whose values are numbers, in the parser and its sub-parsers."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= number_options(sub)
        elif action.type in (int, float):
            found |= set(action.option_strings)
    return found


def parse_with(main, args: list[str], monkeypatch) -> Parsed:
    """Run ``main(args)`` only as far as its argument parser; returns the parser and what it parsed."""
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        numbers = number_options(self)
        args = [("1" if PLACEHOLDER.match(a) and i and args[i - 1] in numbers else a) for i, a in enumerate(args)]
        raise Parsed(self, original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    try:
        main(args)
    except Parsed as parsed:
        return parsed
    except SystemExit as stop:
        raise AssertionError(f"the parser refused it (exit {stop.code}); see its message above") from None
    finally:
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
    raise AssertionError("the tool ran without parsing its arguments")


def check_configs(parsed: Parsed, cls) -> None:
    """The ``--config`` a command names loads with the command's ``--set`` overrides."""
    config = getattr(parsed.namespace, "config", None)
    if cls is None or not config or PLACEHOLDER.match(config) or "$" in config:
        return
    path = ROOT / config
    assert path.is_file(), f"--config {config}: no such file"
    load_config(path, getattr(parsed.namespace, "overrides", []), cls)


def run_launch_script(argv: list[str], monkeypatch) -> None:
    script = next((a for a in argv if a.startswith("launch/") and a.endswith(".py")), None)
    assert script, "no launch/*.py script in it"
    assert (ROOT / script).is_file(), f"{script}: no such file"
    args = argv[argv.index(script) + 1:]
    if script == "launch/train.py":  # the thin launcher of `python -m pipeline train`
        run_pipeline_command(["train", *args], monkeypatch)
        return
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    parse_with(module.main, args, monkeypatch)


def run_pipeline_command(args: list[str], monkeypatch) -> None:
    parsed = parse_with(importlib.import_module("pipeline.cli").main, args, monkeypatch)
    check_configs(parsed, PIPELINE_CONFIGS.get(args[0] if args else None))


def check(command: str, monkeypatch) -> None:
    argv = synopsis_to_argv(command)
    program = argv[0]
    if program in ("deepspeed", "torchrun") or (program == "python" and argv[1].startswith("launch/")):
        run_launch_script(argv, monkeypatch)
    elif program == "python" and argv[1] == "-m":
        if argv[2] == "pipeline":
            run_pipeline_command(argv[3:], monkeypatch)
            return
        module = {"data_prep": "data_prep.__main__"}.get(argv[2], argv[2])
        try:
            main = importlib.import_module(module).main
        except ModuleNotFoundError:
            raise AssertionError(f"python -m {argv[2]}: no module {module}") from None
        parse_with(main, argv[3:], monkeypatch)
    elif program == "bash":
        script = ROOT / argv[1]
        assert script.is_file(), f"{argv[1]}: no such script"
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
    else:
        assert program in FOREIGN, f"'{program}': not a command of this project nor a known outside tool"


QUOTED = [(f"{page.relative_to(ROOT)}", command) for page in PAGES for command in page_commands(page)]
RUN = [(f"{script.relative_to(ROOT)}", command) for script in SCRIPTS for command in script_commands(script)]
RUN += [(f"{config.relative_to(ROOT)}", command) for config in CONFIGS for command in header_command(config)]


def test_pages_quote_commands():
    """The README's two commands are among those found: the extraction itself works."""
    readme = [c for page, c in QUOTED if page == "README.md"]
    assert "bash launch/quickstart.sh" in readme and "bash launch/test.sh" in readme


@pytest.mark.parametrize("where,command", QUOTED + RUN, ids=[f"{w}:{c[:60]}" for w, c in QUOTED + RUN])
def test_quoted_command_parses(where, command, monkeypatch):
    check(command, monkeypatch)


def test_a_renamed_flag_is_caught(monkeypatch):
    """The negative control: a flag the parser does not know, and a config key that does not exist, fail."""
    with pytest.raises(AssertionError, match="refused"):
        check("python -m pipeline convert --checkpoint runs/x --out b --no-such-flag", monkeypatch)
    with pytest.raises(AssertionError, match="no module"):
        check("python -m pipeline.convert --checkpoint runs/x --out b", monkeypatch)
    with pytest.raises(AssertionError, match="without parsing"):
        check("python -m pipeline no-such-command --out b", monkeypatch)
    from data_prep.config import ConfigError

    with pytest.raises(ConfigError, match="batch_sise"):
        check("python -m pipeline train --config launch/configs/pretrain_tiny.yaml --set data.batch_sise=3", monkeypatch)
    with pytest.raises(ConfigError, match="batch_sise"):
        check("deepspeed launch/train.py --config launch/configs/pretrain_tiny.yaml --set data.batch_sise=3", monkeypatch)
