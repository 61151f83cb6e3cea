"""Every command line's --help: each flag has a help text and shows its default, required flags say so, and
the usage line names the program as it was started (`trainer_new.py`, `python -m acestep.plan`).

The entry points are found on disk (top-level and bench scripts, `acestep` modules with a `__main__` guard or
a `__main__.py`), so a new command line is checked without being listed here."""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAIN_GUARD = 'if __name__ == "__main__":'


def _entry_points() -> list[tuple[str, str]]:
    """("script", relative path) and ("module", dotted name) for every command line of the repository."""
    entries = []
    for path in sorted([*REPO.glob("*.py"), *REPO.glob("bench/*.py")]):
        if MAIN_GUARD in path.read_text(encoding="utf-8"):
            entries.append(("script", path.relative_to(REPO).as_posix()))
    for path in sorted((REPO / "acestep").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if path.name == "__main__.py":
            entries.append(("module", ".".join(parts[:-1])))
        elif MAIN_GUARD in path.read_text(encoding="utf-8"):
            entries.append(("module", ".".join(parts)))
    return entries


def _params() -> list:
    return [pytest.param(kind, name, id=name) for kind, name in _entry_points()]


def _run_help(kind: str, name: str, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture) -> tuple[argparse.ArgumentParser, str]:
    """Run the entry point with --help in this process, as `python SCRIPT` or `python -m MODULE` would."""
    parsers: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def recording(self: argparse.ArgumentParser, *args, **kwargs):
        parsers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", recording)
    monkeypatch.setattr(sys, "path", list(sys.path))  # bench scripts extend it
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: "found in sys.modules" for imported modules
        if kind == "script":
            runpy.run_path(str(REPO / name), run_name="__main__")
        else:
            runpy.run_module(name, run_name="__main__", alter_sys=True)
    assert exit_info.value.code in (0, None), capsys.readouterr()
    assert parsers, f"{name} --help built no argparse parser"
    return parsers[-1], capsys.readouterr().out  # the one that printed the help (generate.py peeks first)


def _block(help_text: str, key: str) -> str | None:
    """The help text of the action listed as `key` (its first option string or positional name)."""
    lines = help_text.splitlines()
    for i, line in enumerate(lines):
        rest = line[2 + len(key):2 + len(key) + 1]
        if line.startswith("  " + key) and not line[2].isspace() and rest in ("", " ", ","):
            block = [line]
            for follow in lines[i + 1:]:
                if len(follow) - len(follow.lstrip()) <= 2:
                    break
                block.append(follow)
            return " ".join(" ".join(block).split())
    return None


def _default_problems(parser: argparse.ArgumentParser, help_text: str) -> list[str]:
    problems = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if not choice.help:
                    problems.append(f"subcommand {choice.dest}: no help text")
            for sub_name, sub in action.choices.items():
                if not sub.prog.startswith(parser.prog + " "):
                    problems.append(f"subcommand {sub_name}: prog {sub.prog!r}")
                problems += [f"{sub_name} {p}" for p in _default_problems(sub, sub.format_help())]
            continue
        key = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
        if not action.help or action.help == argparse.SUPPRESS:
            problems.append(f"{key}: no help text")
            continue
        block = _block(help_text, key)
        if block is None:
            problems.append(f"{key}: not listed in --help")
        elif action.option_strings and action.required:
            if "required" not in block:
                problems.append(f"{key}: required but not marked so: {block!r}")
        elif not action.option_strings and action.nargs not in ("?", "*"):
            continue  # a required positional has no default
        elif action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            continue  # a switch: not given is its default
        elif "default" not in block.lower() and "required unless" not in block:
            problems.append(f"{key}: default {action.default!r} not shown: {block!r}")
    return problems


@pytest.mark.parametrize(("kind", "name"), _params())
def test_help_shows_every_flag_with_its_default(kind: str, name: str, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    parser, text = _run_help(kind, name, monkeypatch, capsys)
    expected_prog = Path(name).name if kind == "script" else f"python -m {name}"
    assert text.startswith(f"usage: {expected_prog} "), text.splitlines()[0]
    assert _default_problems(parser, text) == []


def test_the_finder_sees_the_known_entry_points() -> None:
    names = {name for _, name in _entry_points()}
    assert {"trainer_new.py", "demo.py", "generate.py", "bench/train_step.py", "acestep.lora", "acestep.plan",
            "acestep.tiny_checkpoint", "acestep.data.report"} <= names


def test_a_missing_default_is_caught() -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--steps", type=int, default=60, help="sampling steps")
    parser.add_argument("--name", required=True, help="a name")
    parser.add_argument("--out")
    assert _default_problems(parser, parser.format_help()) == [
        "--steps: default 60 not shown: '--steps STEPS sampling steps'",
        "--name: required but not marked so: '--name NAME a name'",
        "--out: no help text",
    ]


def test_python_dash_m_names_itself() -> None:
    """A real `python -m` start: the usage line can be copied into a shell."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "acestep.tiny_checkpoint", "--help"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m acestep.tiny_checkpoint ")


# `--help` answers without the heavy libraries (they took 2-12 s to import).
LIGHT_HELP = ["demo.py", "trainer_new.py", "convert2hf_dataset_new.py", "add_alpha_in_lora.py",
              "generate_prompts_lyrics.py", "generate_prompts_lyrics_llamacpp.py", "generate.py",
              "preprocess_dataset_new.py"]
HEAVY = ("torch", "transformers", "diffusers", "datasets", "lightning", "peft")
IMPORTS_AFTER_HELP = """
import runpy, sys
sys.argv = [*sys.argv[1:], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
print("LOADED", " ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _heavy_after_help(*argv: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", IMPORTS_AFTER_HELP, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    loaded = done.stdout.rsplit("LOADED ", 1)[1].split()
    return [name for name in HEAVY if name in loaded]


@pytest.mark.parametrize("script", LIGHT_HELP)
def test_help_loads_no_heavy_library(script: str) -> None:
    assert _heavy_after_help(script) == []


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_generate_help_for_a_1_5_checkpoint_loads_no_heavy_library(tiny_v15_checkpoint: Path, layout: str) -> None:
    """generate.py hands a 1.5 folder to the 1.5 generator, whose parser shows its own flags."""
    assert _heavy_after_help("generate.py", "--checkpoint_dir", str(tiny_v15_checkpoint / layout)) == []
