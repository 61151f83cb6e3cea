"""One trainer per run folder: a lock file that says who holds it, so a second trainer refuses in one line.

Two trainers writing one run folder interleave their metrics and overwrite each other's steps without a word.
The lock is a file created with O_CREAT | O_EXCL (atomic on every OS and on network shares, no fcntl), holding
the pid, host, start time and command line of its owner. A lock left by a trainer that died (kill -9, power
loss) on this same host is taken over with a one-line note; one from another host is only named, since its pid
cannot be checked from here.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from acestep.core.errors import AcestepError

LOCK_FILE = "trainer.lock"
# Set by launchers in the processes they start (torchrun, Lightning's DDP children, SLURM tasks): only the first
# process of a run takes the lock, the others train beside it.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
_held: dict[Path, int] = {}  # lock files this process holds -> nesting depth (the CLI and run_training both lock)


class RunFolderLocked(AcestepError):
    """Another trainer holds the run folder."""


def is_first_process() -> bool:
    """False in the extra processes a multi-GPU launcher starts: they share the first process's lock."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (os.kill(pid, 0) would kill it on Windows)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        import ctypes
        from ctypes import wintypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.OpenProcess.restype = wintypes.HANDLE
        kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
        kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
        kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: alive, another user's
        code = wintypes.DWORD()
        try:
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def read_lock(path: Path) -> dict[str, Any]:
    """The owner a lock file names ({} when it is empty or unreadable, e.g. being written this instant)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "another trainer (the lock file does not say which)"
    return (f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}: "
            f"{owner.get('command', '?')}")


def _create(path: Path) -> bool:
    """Create the lock file with our details; False when it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)}
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(owner) + "\n")
    return True


def _is_stale(owner: dict[str, Any]) -> bool:
    return owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) and not pid_alive(
        owner["pid"])


def acquire(run_dir: Path) -> Path:
    """Take the run folder's lock (creating the folder); refuse in one line when a live trainer holds it."""
    path = Path(run_dir) / LOCK_FILE
    if path in _held:
        _held[path] += 1
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        if _create(path):
            _held[path] = 1
            return path
        owner = read_lock(path)
        if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            _held[path] = 1  # ours, left by an earlier call in this process that did not release it
            return path
        if not _is_stale(owner):
            raise RunFolderLocked(
                f"{run_dir}: another trainer is using this run folder ({describe(owner)}); wait for it to end or pick "
                f"another --exp_name (if that trainer is gone, delete {path})")
        # The owner died: move its lock aside (only one of two racing takers succeeds), then create ours.
        aside = path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            continue
        if read_lock(aside) != owner:  # a live trainer's fresh lock was moved instead: put it back, look again
            os.replace(aside, path)
            continue
        aside.unlink(missing_ok=True)
        print(f"Note: took over the lock of a trainer that is gone (pid {owner.get('pid')}, started "
              f"{owner.get('started')})", file=sys.stderr, flush=True)
    raise RunFolderLocked(f"{run_dir}: could not take the run folder's lock {path}; try again")


def release(path: Path) -> None:
    depth = _held.get(path, 0) - 1
    if depth > 0:
        _held[path] = depth
        return
    _held.pop(path, None)
    if read_lock(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold the lock for the block (the first process of a run only); an empty run folder it created is removed."""
    if not is_first_process():
        yield
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    path = acquire(run_dir)
    try:
        yield
    finally:
        release(path)
        if created and path not in _held:
            try:
                run_dir.rmdir()  # only when empty: a refused or failed start leaves no folder behind
            except OSError:
                pass
