"""Versions of libraries that only some commands need, checked where those commands start, so an old install
fails in one line that names what to install (pyproject.toml pins the same versions)."""

from __future__ import annotations

from acestep.core.errors import AcestepError

MIN_DIFFUSERS_V15 = "0.42.0"  # the first diffusers with AceStepPipeline and the ACE-Step 1.5 models


def installed_diffusers() -> str:
    from importlib.metadata import version

    return version("diffusers")


def require_diffusers_for_v15() -> None:
    """ACE-Step 1.5 runs on diffusers' own AceStep classes; an older diffusers would fail on an import deep inside
    a stage, so every 1.5 command asks here first."""
    from packaging.version import Version

    installed = installed_diffusers()
    if Version(installed) < Version(MIN_DIFFUSERS_V15):
        raise AcestepError(f"ACE-Step 1.5 needs diffusers {MIN_DIFFUSERS_V15} or newer (installed: {installed}); "
                           f"install it with: pip install \"diffusers>={MIN_DIFFUSERS_V15}\"")
