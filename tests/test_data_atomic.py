"""Atomic file writes: replace in one step, leave nothing behind on failure, keep ordinary permissions."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import acestep.core.atomic as atomic
from acestep.core.atomic import TEMP_MARK, OutputError, atomic_write_bytes, atomic_write_json, replace_folder


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


def windows_sharing_violation(fail_times: int, calls: list, real=os.replace):
    """os.replace as Windows behaves while another process holds the destination open, `fail_times` times."""
    def replace(src, dst):
        calls.append(Path(dst).name)
        if len(calls) <= fail_times:
            raise PermissionError(13, "The process cannot access the file because it is being used by another "
                                      "process", str(dst), 32)
        real(src, dst)
    return replace


def test_replace_retries_with_backoff_while_a_reader_holds_the_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "lora.safetensors"
    atomic_write_bytes(target, b"old")
    calls: list = []
    waits: list = []
    monkeypatch.setattr(atomic.os, "replace", windows_sharing_violation(3, calls))
    monkeypatch.setattr(atomic.time, "sleep", waits.append)
    with open(target, "rb") as reader:  # a reader (ComfyUI) holds the old file open
        atomic_write_bytes(target, b"new")
        assert reader.read() == b"old"
    assert target.read_bytes() == b"new" and len(calls) == 4
    assert waits == [0.05, 0.1, 0.2]  # doubling waits
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


def test_replace_gives_up_in_one_line_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "lora.safetensors"
    atomic_write_bytes(target, b"old")
    calls: list = []
    monkeypatch.setattr(atomic.os, "replace", windows_sharing_violation(100, calls))
    monkeypatch.setattr(atomic.time, "sleep", lambda s: None)
    with pytest.raises(OutputError, match="another program keeps it open") as info:
        atomic_write_bytes(target, b"new")
    assert "\n" not in str(info.value) and len(calls) == atomic.REPLACE_ATTEMPTS
    assert target.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


def test_folder_swap_retries_and_restores_on_failure(tmp_path: Path, monkeypatch) -> None:
    dest, new = tmp_path / "data", tmp_path / "data.tmp-1"
    dest.mkdir()
    (dest / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    calls: list = []
    monkeypatch.setattr(atomic.time, "sleep", lambda s: None)
    monkeypatch.setattr(atomic.os, "replace", windows_sharing_violation(2, calls))
    replace_folder(new, dest)
    assert (dest / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
