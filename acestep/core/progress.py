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
        self._line_open = False  # a status line was written and not yet ended
        self._printed_final = False
        self._closing = False
        self._resetting = False
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write a line when the interval has passed, when done, or when closing."""
        if msg == "" or self._resetting:  # erasing, or the zero state of a reset: nothing worth a line
            return False
        now = time.monotonic()
        finished = self.total is not None and self.n >= self.total
        if self._printed_final:
            return True
        if not (finished or self._closing or msg is not None) and now - self._last_line_at < self._line_interval:
            return True
        self.fp.write(("\n" if self._line_open else "") + (msg if msg is not None else self.__str__()))
        self.fp.flush()
        self._line_open = True
        self._printed_final = finished or self._closing
        self._last_line_at = now
        return True

    def reset(self, total: float | None = None) -> None:
        """No line for the zeroed bar: the caller sets its real position next and refreshes."""
        self._resetting = True
        try:
            super().reset(total)
        finally:
            self._resetting = False

    def clear(self, nolock: bool = False) -> None:
        """End the open line, so a message written between updates (tqdm.write) starts a line of its own."""
        if self._line_open and not self.disable:
            self.fp.write("\n")
            self._line_open = False

    def close(self) -> None:
        if self.disable:
            return
        self._closing = True
        if self.leave or self.leave is None:
            self.display()
        self.clear()
        self.leave = False  # the last line is written and ended: tqdm has nothing left to print
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
