"""Lyrics the user already has: tags inside the audio file (mutagen) and `.lrc` files beside it.

These beat any transcription, so the captioner looks here first and reports where the words came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mutagen
from mutagen.id3 import ID3
from mutagen.mp4 import MP4

from acestep.captioning.parse import normalise_lyrics
from acestep.core.errors import InputError

VORBIS_LYRICS_KEYS = ("lyrics", "unsyncedlyrics")
MP4_LYRICS_ATOM = "\xa9lyr"
_LRC_METADATA = re.compile(r"^\[(?:ar|ti|al|au|by|offset|length|re|ve|tool|#)\s*:[^\]]*\]\s*$", re.I)


@dataclass(frozen=True)
class FoundLyrics:
    """Lyrics text plus where it came from, e.g. "lrc file", "ID3 USLT", "FLAC LYRICS", "MP4 ©lyr", "model"."""

    text: str
    source: str


def find_user_lyrics(audio: Path) -> FoundLyrics | None:
    """A `.lrc` beside the audio first (the user made it for this purpose), then tags in the file."""
    lrc = lrc_path(audio)
    if lrc is not None:
        text = read_lrc(lrc)
        if text:
            return FoundLyrics(text, f"lrc file ({lrc.name})")
    return read_embedded_lyrics(audio)


def lrc_path(audio: Path) -> Path | None:
    """`<stem>.lrc` in the audio's folder, any case of the extension (Windows users write `.LRC`)."""
    for candidate in (audio.with_suffix(".lrc"), audio.with_suffix(".LRC")):
        if candidate.is_file():
            return candidate
    return None


def read_lrc(path: Path) -> str:
    """Lyrics of an LRC file: timestamps and `[ar:...]`-style header lines removed."""
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(path, "LRC file is not UTF-8; re-save it as UTF-8") from None
    lines = [line for line in raw.splitlines() if not _LRC_METADATA.match(line.strip())]
    return normalise_lyrics("\n".join(lines))


def read_embedded_lyrics(audio: Path) -> FoundLyrics | None:
    """Unsynced or synced lyrics stored in the file's tags; None when there are none (or no tags)."""
    try:
        tagged = mutagen.File(audio)
    except mutagen.MutagenError:
        return None
    if tagged is None or tagged.tags is None:
        return None
    tags = tagged.tags
    if isinstance(tags, ID3):
        return _from_id3(tags)
    if isinstance(tagged, MP4):
        return _first_text(tags.get(MP4_LYRICS_ATOM), "MP4 ©lyr")
    for key in VORBIS_LYRICS_KEYS:
        found = _first_text(tags.get(key), f"{type(tagged).__name__} {key.upper()}")
        if found is not None:
            return found
    return None


def _from_id3(tags: ID3) -> FoundLyrics | None:
    for frame in tags.getall("USLT"):
        found = _first_text([frame.text], "ID3 USLT")
        if found is not None:
            return found
    for frame in tags.getall("SYLT"):
        found = _first_text(["\n".join(text.strip() for text, _time in frame.text)], "ID3 SYLT")
        if found is not None:
            return found
    return None


def _first_text(values: object, source: str) -> FoundLyrics | None:
    """First non-empty value, cleaned like an LRC file (embedded lyrics are often LRC text)."""
    if not values:
        return None
    for value in values if isinstance(values, list) else [values]:
        text = normalise_lyrics(str(value))
        if text:
            return FoundLyrics(text, source)
    return None
