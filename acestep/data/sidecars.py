"""Side files next to each audio file: `<stem>_prompt.txt` (comma-separated tags) and `<stem>_lyrics.txt`."""

from __future__ import annotations

import codecs
from pathlib import Path

from acestep.errors import InputError

PROMPT_SUFFIX = "_prompt.txt"
LYRICS_SUFFIX = "_lyrics.txt"
INSTRUMENTAL_MARKERS = frozenset({"", "[inst]", "[instrumental]"})


def prompt_path(audio: Path) -> Path:
    return audio.with_name(audio.stem + PROMPT_SUFFIX)


def lyrics_path(audio: Path) -> Path:
    return audio.with_name(audio.stem + LYRICS_SUFFIX)


def read_sidecar(path: Path) -> str | None:
    """Text of a side file stripped of surrounding whitespace, None when absent.

    UTF-8 only (a BOM is tolerated) because the fork reads UTF-8; guessing another encoding would
    silently turn lyrics into mojibake and then into [UNK] tokens.
    """
    if not path.is_file():
        return None
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(path, "text is UTF-16; re-save it as UTF-8")
    try:
        return raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError as err:
        raise InputError(
            path,
            f"text is not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); re-save it as UTF-8",
        ) from None


def split_tags(prompt: str) -> list[str]:
    """Comma-separated tags, stripped, empty pieces dropped (the fork kept a lone "" for an empty prompt)."""
    return [tag.strip() for tag in prompt.split(",") if tag.strip()]


def is_instrumental(lyrics: str) -> bool:
    """No lyrics, or only the instrumental marker: the song trains the instrumental path."""
    return lyrics.strip().lower() in INSTRUMENTAL_MARKERS
