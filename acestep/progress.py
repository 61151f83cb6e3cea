"""Progress bars that stay readable everywhere: a live bar on a terminal, one plain line per interval
when output goes to a log file or CI (redrawn bars would fill a log with carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _speaks_unicode(stream: TextIO) -> bool:
    """A cp1252 Windows console cannot print tqdm's block characters."""
    encoding = (getattr(stream, "encoding", None) or "ascii").lower().replace("-", "")
    return encoding in ("utf8", "utf16", "utf32")


class LineProgress(tqdm):
    """tqdm that writes a whole line at most every ``interval`` seconds (and at the end) instead of redrawing."""

    def __init__(self, *args: Any, interval: float = LOG_INTERVAL_S, **kwargs: Any) -> None:
        self._line_interval = interval
        self._last_line_at = -float("inf")
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write a line when the interval has passed, when done, or when closing; tqdm's close() ends it."""
        now = time.monotonic()
        finished = self.total is not None and self.n >= self.total
        closing = getattr(self, "_closing", False)
        if getattr(self, "_printed_final", False):
            return True
        if not (finished or closing or msg is not None) and now - self._last_line_at < self._line_interval:
            return True
        separator = "\n" if getattr(self, "_wrote_line", False) else ""
        self.fp.write(separator + (msg if msg is not None else self.__str__()))
        self.fp.flush()
        self._wrote_line = True
        self._printed_final = finished or closing
        self._last_line_at = now
        return True

    def close(self) -> None:
        self._closing = True
        super().close()


def progress(iterable: Any = None, *, desc: str, unit: str = "it", total: float | None = None,
             file: TextIO | None = None, interval: float = LOG_INTERVAL_S, disable: bool = False,
             **kwargs: Any) -> tqdm:
    """A progress bar for ``iterable``: live on a terminal, periodic lines otherwise."""
    stream = file if file is not None else sys.stderr
    options = dict(desc=desc, unit=unit, total=total, file=stream, disable=disable,
                   ascii=not _speaks_unicode(stream), dynamic_ncols=True, **kwargs)
    if _is_terminal(stream):
        return tqdm(iterable, **options)
    return LineProgress(iterable, interval=interval, **options)
