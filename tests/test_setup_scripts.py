"""setup.sh with a stand-in venv python (nothing is downloaded), and setup.ps1 step for step beside it.

PowerShell does not run here; the Windows script is checked to run the same Python steps with the same
Python snippets, in the same order, as the shell script that this test runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SH = (REPO / "setup.sh").read_text(encoding="utf-8")
PS1 = (REPO / "setup.ps1").read_text(encoding="utf-8")
BASH = pytest.mark.skipif(sys.platform == "win32", reason="setup.sh is the Linux/macOS script")

FAKE_PYTHON = """#!/usr/bin/env bash
# Logs every call; runs -c snippets with the real interpreter; pretends pip and venv succeed.
printf '%s\\n' "$*" >> "$SETUP_LOG"
if [ "$1" = "-c" ]; then
  if [ -n "${NO_TORCH:-}" ] && [[ "$2" == *find_spec* ]] && [ ! -e "$SETUP_LOG.torch" ]; then exit 1; fi
  exec "$REAL_PYTHON" "$@"
fi
if [[ "$*" == *"pip install -q torch"* ]]; then touch "$SETUP_LOG.torch"; fi
exit 0
"""


def _run_setup(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    repo = tmp_path / "clone"
    (repo / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(REPO / "setup.sh", repo / "setup.sh")
    fake = repo / ".venv" / "bin" / "python"
    fake.write_text(FAKE_PYTHON, encoding="utf-8")
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    done = subprocess.run(["bash", "setup.sh", *args], cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SETUP_LOG": str(log), "REAL_PYTHON": sys.executable, **env})
    return done, log.read_text(encoding="utf-8").splitlines(), repo


@BASH
def test_setup_installs_torch_spec_then_pins_it_without_importing_torch_early(tmp_path: Path) -> None:
    spec = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
    done, calls, repo = _run_setup(tmp_path, "--dev", NO_TORCH="1", TORCH_SPEC=spec)
    assert done.returncode == 0, done.stderr
    assert "NumPy" not in done.stderr and done.stderr == ""
    pip = [c for c in calls if c.startswith("-m pip install")]
    assert pip == ["-m pip install -q --upgrade pip", f"-m pip install -q {spec}",
                   '-m pip install -q -c .venv/torch-constraint.txt -e .[dev]']
    import importlib.metadata

    version = importlib.metadata.version("torch").split("+")[0]
    assert (repo / ".venv" / "torch-constraint.txt").read_text(encoding="utf-8") == f"torch=={version}\n"
    first_import = next(i for i, c in enumerate(calls) if "import torch" in c)
    assert first_import > calls.index('-m pip install -q -c .venv/torch-constraint.txt -e .[dev]')
    lines = done.stdout.splitlines()
    assert [line[:5] for line in lines[:-1]] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]  # a line per step
    assert spec in lines[2] and "[dev]" in lines[4]
    assert lines[-1].startswith("setup done: torch ")


@BASH
def test_setup_without_dev_leaves_out_the_test_tools(tmp_path: Path) -> None:
    done, calls, _ = _run_setup(tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls[-2:-1] == ["-m pip install -q -c .venv/torch-constraint.txt -e ."]
    assert "[dev]" not in done.stdout
    wrong = subprocess.run(["bash", str(REPO / "setup.sh"), "--test"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and wrong.stderr.startswith("usage: bash setup.sh [--dev]")


def test_dev_tools_are_an_extra_and_the_editable_install_needs_no_finder() -> None:
    """pytest and ruff only with --dev; `package-dir = {"" = "."}` makes setuptools write a plain .pth entry instead
    of an import finder, which it announces with an "Editable installation" warning."""
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    dependencies = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "pytest" not in dependencies and "ruff" not in dependencies
    assert re.search(r'^dev = \["pytest', pyproject, re.MULTILINE)
    assert re.search(r'^package-dir = \{"" = "."\}$', pyproject, re.MULTILINE)


@BASH
def test_setup_keeps_an_installed_torch(tmp_path: Path) -> None:
    done, calls, _ = _run_setup(tmp_path)
    assert done.returncode == 0, done.stderr
    assert not any(c.startswith("-m pip install -q torch") for c in calls)


def _python_steps(text: str, venv_python: str) -> list[str]:
    """The arguments of each call of the venv python, with variables and quoting made comparable."""
    names = {"$TORCH_SPEC": "TORCH_SPEC", "@TorchArgs": "TORCH_SPEC", "$EXTRAS": "EXTRAS", "$Extras": "EXTRAS", '"$HAS_TORCH"': "HAS_TORCH",
             "$HasTorch": "HAS_TORCH", '"$PIN_TORCH"': "PIN_TORCH", "$PinTorch": "PIN_TORCH"}
    steps = []
    for match in re.finditer(re.escape(venv_python) + r" (-[^|;}\n)]*)", text):
        step = match.group(1).strip()
        for name, plain in names.items():
            step = step.replace(name, plain)
        steps.append(step.replace("\\", "/").replace("''", "'").replace('"', "'"))
    return steps


def test_powershell_script_runs_the_same_steps() -> None:
    assert _python_steps(SH, '"$VENV_PY"') == _python_steps(PS1, "$VenvPy")
    assert len(_python_steps(SH, '"$VENV_PY"')) == 6
    for sh_name, ps_name in (("HAS_TORCH", "HasTorch"), ("PIN_TORCH", "PinTorch")):
        sh_snippet = re.search(rf'^{sh_name}="(.*)"$', SH, re.MULTILINE).group(1)
        ps_snippet = re.search(rf"^\${ps_name} = '(.*)'$", PS1, re.MULTILINE).group(1).replace("''", "'")
        assert sh_snippet == ps_snippet
    for default in ("torch==2.13.0", "TORCH_SPEC", "-m venv .venv", '"--dev"', '"[dev]"'):
        assert default.strip('"') in SH and default in PS1
    sh_steps = [text.replace("$TORCH_SPEC", "SPEC").replace("$EXTRAS", "EXTRAS")
                for text in re.findall(r'^step \d "(.*)"$', SH, re.MULTILINE)]
    ps_steps = [text.replace("$TorchSpec", "SPEC").replace("$Extras", "EXTRAS")
                for text in re.findall(r'^Step \d "(.*)"$', PS1, re.MULTILINE)]
    assert sh_steps == ps_steps and len(sh_steps) == 5


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = re.search(r"Run the tests \(what CI runs\):\n\n```bash\n(.*)\n```", readme).group(1)
    assert command == "bash setup.sh --dev && .venv/bin/python -m pytest"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == command

