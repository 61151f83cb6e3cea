"""Atomic writes for files and dataset folders, so a crash never leaves something half-written under a real name.

Folders are only ever replaced when they are ours: a dataset folder holds DATASET_MARKER, written with it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acestep.core.errors import AcestepError
from acestep.core.quiet import library_bars_off

if TYPE_CHECKING:  # a dataset arrives from the caller; `--help` loads no datasets
    import datasets

TEMP_MARK = ".tmp-"
DATASET_MARKER = "acestep_dataset.json"
TOOLKIT = "acestep-lora"
REPLACE_ATTEMPTS = 8
REPLACE_FIRST_DELAY_S = 0.05


class OutputError(AcestepError):
    """An output cannot be written (read-only folder, full disk): said in one line with the folder to fix."""


def output_error(path: Path, error: OSError) -> OutputError:
    reason = error.strerror or str(error)
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: cannot write here ({reason}); choose a writable output folder or fix its "
                           "permissions")
    if error.errno == errno.ENOSPC:
        return OutputError(f"disk full: cannot write into {path} ({reason}); free some space or choose a folder on "
                           "another disk")
    return OutputError(f"{path}: cannot write ({reason})")


def replace_with_retry(src: Path, dst: Path, attempts: int = REPLACE_ATTEMPTS,
                       first_delay: float = REPLACE_FIRST_DELAY_S) -> None:
    """os.replace, retried with doubling waits on PermissionError.

    Windows refuses to replace a file another process holds open (ComfyUI reading the last LoRA, a virus
    scanner) with PermissionError; the reader lets go within moments, so waiting beats failing the run.
    """
    delay = first_delay
    for attempt in range(attempts):
        try:
            os.replace(src, dst)
            return
        except PermissionError as error:
            if attempt == attempts - 1:
                raise OutputError(f"{dst}: cannot replace it, another program keeps it open or it is not writable "
                                  f"({error.strerror or error}); close that program (e.g. ComfyUI) or fix the "
                                  "folder's permissions, then run again") from error
            time.sleep(delay)
            delay *= 2


def readable_file_mode() -> int:
    """The mode open() gives a new file under the current umask (0644 with umask 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def make_readable(path: Path) -> None:
    """Give a file written by a library that creates 0600 files (safetensors) the umask's ordinary mode."""
    os.chmod(path, readable_file_mode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, flush to disk, then replace the real name.

    The temp file is opened normally (not with mkstemp), so the result gets the umask's permissions rather
    than 0600: files other users' tools (ComfyUI running as a service) can read.
    """
    atomic_write_with(path, lambda tmp: _write_bytes(tmp, data))


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_with(path: Path, write: Callable[[Path], Any]) -> Path:
    """`write(temp)` writes the file under a temp name beside `path`; then it gets ordinary permissions and
    replaces `path`. A failed write leaves `path` as it was; an unwritable folder is one OutputError line."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        make_readable(tmp)
        replace_with_retry(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, PermissionError) or error.errno in (errno.EROFS, errno.ENOSPC):
            raise output_error(path.parent, error) from error
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def temp_sibling(path: Path) -> Path:
    """A fresh name beside `path` that readers ignore (they skip names containing TEMP_MARK)."""
    return path.with_name(f"{path.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}")


def is_toolkit_dataset(folder: Path) -> bool:
    """True for a dataset folder this toolkit wrote (it holds our marker file)."""
    return (Path(folder) / DATASET_MARKER).is_file()


def check_dataset_destination(dest: Path, overwrite: bool) -> None:
    """Refuse, in one line, to replace anything but an empty folder or (with `overwrite`) one of our datasets."""
    dest = Path(dest)
    if not dest.exists():
        return
    if dest.is_dir() and not any(dest.iterdir()):
        return
    if not is_toolkit_dataset(dest):
        raise AcestepError(f"{dest}: exists and is not a dataset this toolkit wrote; refusing to replace it "
                           "(name a new output folder)")
    if not overwrite:
        raise AcestepError(f"{dest}: a dataset is already there; pass --overwrite to replace it")


def atomic_save_dataset(dataset: datasets.Dataset, dest: Path, kind: str, overwrite: bool = False) -> None:
    """save_to_disk into a temp sibling with our marker, then rename; see replace_folder for an existing `dest`.

    Only an empty folder or, with `overwrite`, a dataset this toolkit wrote is ever replaced.
    """
    dest = Path(dest)
    check_dataset_destination(dest, overwrite)
    tmp = temp_sibling(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with library_bars_off():  # the stage's own bar or summary line covers the save
            dataset.save_to_disk(str(tmp))
        atomic_write_json(tmp / DATASET_MARKER, {"written_by": TOOLKIT, "kind": kind})
        check_dataset_destination(dest, overwrite)  # again: the save can take long
        replace_folder(tmp, dest)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, PermissionError) or error.errno in (errno.EROFS, errno.ENOSPC):
            raise output_error(dest.parent, error) from error
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(new: Path, dest: Path) -> None:
    """Move the finished folder `new` onto `dest`; an existing `dest` is swapped out first and removed last.

    Directories cannot be os.replace'd onto a non-empty folder on Windows, hence the two renames. Callers
    decide beforehand that `dest` may go.
    """
    old = None
    if dest.exists():
        old = temp_sibling(dest)
        replace_with_retry(dest, old)
    try:
        replace_with_retry(new, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)  # put the previous folder back
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



def build_into(root: Path, names: tuple[str, ...], overwrite: bool, build: Callable[[Path], None]) -> Path:
    """Let `build` write the items `names` into a staging folder inside `root`, then move them into place.

    Items already in `root` are replaced only with `overwrite` (what the user has there is never replaced by
    accident); other files in `root` always stay. Files get ordinary permissions (safetensors writes 0600).
    """
    existing = [name for name in names if (root / name).exists()]
    if existing and not overwrite:
        raise AcestepError(f"{root}: already holds {', '.join(existing)}; pass --overwrite to replace them or "
                           "name a new folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".tmp-build-") as temp:
            staging = Path(temp)
            build(staging)
            for item in staging.iterdir():
                for file in [item, *item.rglob("*")] if item.is_dir() else [item]:
                    if file.is_file():
                        make_readable(file)
                target = root / item.name
                if target.is_dir():
                    replace_folder(item, target)
                else:
                    replace_with_retry(item, target)
    except OSError as error:
        if isinstance(error, PermissionError) or error.errno in (errno.EROFS, errno.ENOSPC):
            raise output_error(root, error) from error
        raise
    return root
