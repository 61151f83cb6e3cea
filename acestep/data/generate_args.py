"""What every family's generate.py reads the same way: the lyrics (text, or a file named on the command line) and
the duration (within the planner's bounds)."""

from __future__ import annotations

import math
from pathlib import Path

from acestep.core.errors import AcestepError, InputError
from acestep.data.sidecars import normalize_newlines

LYRICS_FILE_SUFFIXES = (".txt", ".lrc")
MAX_DURATION_S = 3600.0  # stage 3 keeps at most --max_duration seconds per song (default 360); the planner's bound


def read_lyrics(argument: str) -> str:
    """`--lyrics`: an argument that names an existing file is read as UTF-8 text; one line that ends in .txt
    or .lrc (any case) but names no file is an error rather than being sung; anything else is the lyrics."""
    if "\n" not in argument and len(argument) < 4096:
        path = Path(argument)
        try:
            is_file = path.is_file()
        except OSError:  # a name too long or invalid for this file system is lyrics text
            is_file = False
        if is_file:
            try:
                return normalize_newlines(path.read_text(encoding="utf-8-sig"))
            except UnicodeDecodeError as error:
                raise InputError(path, f"lyrics file is not UTF-8 (byte {error.start}); save it as UTF-8") from None
            except OSError as error:
                raise InputError(path, f"cannot read the lyrics file ({error.strerror or error})") from None
        if path.suffix.lower() in LYRICS_FILE_SUFFIXES:
            raise InputError(path, "lyrics file not found (pass the lyrics text itself, or an existing file)")
    return normalize_newlines(argument)


def check_duration(seconds: float) -> None:
    """--duration within the planner's bounds (more than 0, at most MAX_DURATION_S; nan and inf refused), so a
    typo is one line instead of an allocation failure."""
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_DURATION_S:
        raise AcestepError(f"--duration must be more than 0 and at most {MAX_DURATION_S:g} seconds, not {seconds}")
