"""Atomic file writes: replace in one step, leave nothing behind on failure, keep ordinary permissions."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from acestep.data.atomic import TEMP_MARK, atomic_write_bytes, atomic_write_json


def test_replaces_the_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text(encoding="utf-8") == '{\n "a": 2\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_permissions_follow_the_umask(tmp_path: Path):
    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "lora.safetensors", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "lora.safetensors").stat().st_mode & 0o777 == 0o644
