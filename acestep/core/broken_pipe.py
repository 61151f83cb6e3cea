"""Keep a long run going when its console goes away.

`trainer.py ... | tee log.txt` and Ctrl-C: tee dies first, and the next print raises BrokenPipeError wherever
it happens (in the Ctrl-C handler, in the progress bar), ending the run before it saves. A closed terminal makes
writes fail with EIO. Once a standard stream fails that way, its file descriptor is pointed at the null device:
every later write (ours, the libraries', the interpreter's final flush) succeeds and goes nowhere, and the run
saves as it would have. What a user needs afterwards is also written to a file in the run folder.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, TextIO

# EPIPE: the reader left; EIO: the terminal was closed; EINVAL: what Windows says for a pipe without reader.
GONE = (errno.EPIPE, errno.EIO, errno.EBADF, *((errno.EINVAL,) if sys.platform == "win32" else ()))


class GuardedStream:
    """A text stream whose write and flush never fail because the reader left."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False

    def _gone(self) -> None:
        """Point the stream's descriptor at the null device (the buffered text goes there too)."""
        self.broken = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except OSError as error:
                if error.errno not in GONE:
                    raise
                self._gone()
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as error:
            if error.errno not in GONE:
                raise
            self._gone()
            try:
                self._stream.flush()
            except OSError:
                pass

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def isatty(self) -> bool:
        return not self.broken and self._stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_std_streams() -> None:
    """Wrap sys.stdout and sys.stderr (idempotent); call at the start of a long-running command line."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, GuardedStream):
            setattr(sys, name, GuardedStream(stream))
