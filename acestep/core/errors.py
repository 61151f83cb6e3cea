"""Errors the toolkit raises on purpose, so stages can report them as one line per file."""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class AcestepError(Exception):
    """Base class: a problem the user can fix, shown without a traceback by the CLIs."""


class InputError(AcestepError):
    """One input file (audio, sidecar, lyrics) cannot be used; stages skip it and report the reason."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(AcestepError):
    """A checkpoint folder or file is missing parts or does not match the model."""


TEMP_NAME = r"\.tmp-[0-9a-f]{8}"  # acestep.core.atomic.temp_sibling's mark, in a temp folder's name
WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC)


def os_error_line(error: OSError) -> str | None:
    """One line for the OS errors a user fixes (no permission, read-only or full disk); None for the rest."""
    if error.errno not in WRITE_ERRNOS:
        return None
    if error.errno == errno.ENOSPC:  # the folder, not our temp file's name: that file is gone
        folder = f" into {re.sub(TEMP_NAME, '', os.path.dirname(error.filename))}" if error.filename else ""
        return f"disk full: cannot write{folder} ({error.strerror or error}); free some space or choose a folder " \
               "on another disk"
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}; choose a writable output folder or fix its permissions"


@contextmanager
def one_line_errors() -> Iterator[None]:
    """For CLI mains: our errors and unwritable outputs end the program with one `error: ...` line."""
    try:
        yield
    except AcestepError as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        line = os_error_line(error)
        if line is None:
            raise
        sys.exit(f"error: {line}")
