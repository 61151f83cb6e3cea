"""Shared fixtures: the reference folder and the tiny checkpoint that every loading test uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from acestep import families

REPO_ROOT = Path(__file__).resolve().parents[1]
families.load_all()  # as the command lines do: every family registers its transformer with the LoRA tools


def _reference_dir() -> Path:
    """$ACESTEP_REFERENCE_DIR, else `../shared/reference` beside the clone."""
    if "ACESTEP_REFERENCE_DIR" in os.environ:
        return Path(os.environ["ACESTEP_REFERENCE_DIR"])
    return REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`../shared/reference` (or $ACESTEP_REFERENCE_DIR); tests that need it skip where it is absent."""
    path = _reference_dir()
    if not path.is_dir():
        pytest.skip(f"reference folder not present at {path}")
    return path


@pytest.fixture(scope="session")
def lyrics_vocab_path(reference_dir: Path) -> Path:
    """The real lyric vocabulary (never committed); skip where this machine lacks it."""
    path = reference_dir / "lyrics_vocab.json"
    if not path.is_file():
        pytest.skip(f"real lyric vocabulary not present at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny checkpoint in the published layout, written once per test session."""
    from acestep.families.v1.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny_checkpoint")
    write_tiny_checkpoint(root)
    return root


@pytest.fixture()
def read_only_folder(tmp_path: Path):
    """A folder no output can be written into: chmod 0555 for ordinary users; root ignores modes, so there it
    is a path under /sys, where the kernel refuses to create anything (EPERM/EACCES) even for root."""
    import stat
    import sys

    if sys.platform == "win32":
        pytest.skip("POSIX permissions")
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        yield folder
        folder.chmod(0o755)
    elif Path("/sys/kernel").is_dir():
        yield Path("/sys/acestep-read-only-test")
    else:
        pytest.skip("running as root without sysfs: no folder refuses writes")


@pytest.fixture(scope="session")
def tiny_v15_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ACE-Step 1.5 checkpoint: ROOT/original (Ace-Step1.5 layout) and ROOT/diffusers, once per session."""
    from acestep.families.v15.tiny import write_tiny_v15_checkpoint

    root = tmp_path_factory.mktemp("tiny_v15_checkpoint")
    write_tiny_v15_checkpoint(root)
    return root


@pytest.fixture(scope="session")
def tiny_v15_xl_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny XL-shaped ACE-Step 1.5 checkpoint (DiT wider than its condition encoder), both layouts, once."""
    from acestep.families.v15.tiny import write_tiny_v15_checkpoint

    root = tmp_path_factory.mktemp("tiny_v15_xl_checkpoint")
    write_tiny_v15_checkpoint(root, xl=True)
    return root
