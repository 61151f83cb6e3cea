"""Atomic writes for files and dataset folders, so a crash never leaves something half-written under a real name."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import datasets

TEMP_MARK = ".tmp-"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, flush to disk, then os.replace onto the real name.

    The temp file is opened normally (not with mkstemp), so the result gets the umask's permissions rather
    than 0600: files other users' tools (ComfyUI running as a service) can read.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def temp_sibling(path: Path) -> Path:
    """A fresh name beside `path` that readers ignore (they skip names containing TEMP_MARK)."""
    return path.with_name(f"{path.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}")


def atomic_save_dataset(dataset: datasets.Dataset, dest: Path) -> None:
    """save_to_disk into a temp sibling, then rename; an existing `dest` is swapped out and removed last.

    Directories cannot be os.replace'd onto a non-empty folder on Windows, hence the two renames.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(dest)
    try:
        dataset.save_to_disk(str(tmp))
        old = None
        if dest.exists():
            old = temp_sibling(dest)
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_temp_leftovers(folder: Path) -> list[Path]:
    """Delete what an interrupted atomic write left behind in `folder`; returns what was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for child in folder.iterdir():
        if TEMP_MARK in child.name:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed


def folder_size(path: Path) -> int:
    """Bytes of every file under `path` (what the data costs on disk)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
