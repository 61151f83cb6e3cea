"""Side files next to each audio file: `<stem>_prompt.txt` (comma-separated tags), `<stem>_lyrics.txt` and the
optional `<stem>_bpm_key.json` (stage 1 --bpm_key: {"bpm": 120.0, "key": "A minor", ...})."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from acestep.core.errors import InputError

PROMPT_SUFFIX = "_prompt.txt"
LYRICS_SUFFIX = "_lyrics.txt"
BPM_KEY_SUFFIX = "_bpm_key.json"
INSTRUMENTAL_MARKERS = frozenset({"", "[inst]", "[instrumental]"})


def prompt_path(audio: Path) -> Path:
    return audio.with_name(audio.stem + PROMPT_SUFFIX)


def lyrics_path(audio: Path) -> Path:
    return audio.with_name(audio.stem + LYRICS_SUFFIX)


def bpm_key_path(audio: Path) -> Path:
    return audio.with_name(audio.stem + BPM_KEY_SUFFIX)


def read_music_metadata(audio: Path) -> dict:
    """BPM, key, time signature and language from `<stem>_bpm_key.json`, where known: {"bpm": float | None,
    "keyscale": str, "timesignature": str, "language": str} ("" = unknown). The captioner writes "bpm", "key" and,
    when it can tell, "timesignature" (e.g. "4"), and "language" (e.g. "en") with --transcriber; both may be added
    by hand."""
    path = bpm_key_path(audio)
    text = read_sidecar(path)
    if not text:
        return {"bpm": None, "keyscale": "", "timesignature": "", "language": ""}
    try:
        info = json.loads(text)
        bpm = info.get("bpm")
        bpm = float(bpm) if bpm is not None and float(bpm) > 0 else None
    except (ValueError, TypeError, AttributeError) as err:
        raise InputError(path, f"not a JSON object with a numeric bpm ({err})") from None
    return {
        "bpm": bpm,
        "keyscale": str(info.get("keyscale") or info.get("key") or "").strip(),
        "timesignature": str(info.get("timesignature") or info.get("time_signature") or "").strip(),
        "language": str(info.get("language") or "").strip(),
    }


def read_sidecar(path: Path) -> str | None:
    """Text of a side file stripped of surrounding whitespace, with "\n" line ends; None when absent.

    UTF-8 only (a BOM is tolerated) because the fork reads UTF-8; guessing another encoding would
    silently turn lyrics into mojibake and then into [UNK] tokens.
    """
    if not path.is_file():
        return None
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(path, "text is UTF-16; re-save it as UTF-8")
    try:
        return normalize_newlines(raw.decode("utf-8-sig")).strip()
    except UnicodeDecodeError as err:
        raise InputError(
            path,
            f"text is not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); re-save it as UTF-8",
        ) from None


def normalize_newlines(text: str) -> str:
    """Windows (CRLF) and old Mac (CR) line ends as "\n": generation never feeds a "\r", so training must not."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_tags(prompt: str) -> list[str]:
    """Comma-separated tags, stripped, empty pieces dropped (the fork kept a lone "" for an empty prompt)."""
    return [tag.strip() for tag in prompt.split(",") if tag.strip()]


def is_instrumental(lyrics: str) -> bool:
    """No lyrics, or only the instrumental marker: the song trains the instrumental path."""
    return lyrics.strip().lower() in INSTRUMENTAL_MARKERS
