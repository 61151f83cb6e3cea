"""The captioner's outputs beside each audio file, written atomically, kept unless --overwrite.

Names come from `acestep.data.sidecars` so stage 2 reads exactly what this stage writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from acestep.core.atomic import atomic_write_json, atomic_write_text
from acestep.data.sidecars import BPM_KEY_SUFFIX, bpm_key_path, lyrics_path, prompt_path

__all__ = [
    "BPM_KEY_SUFFIX",
    "bpm_key_path",
    "wanted_outputs",
    "write_bpm_key",
    "write_caption",
    "write_lyrics",
    "write_prompt",
]


@dataclass(frozen=True)
class WantedOutputs:
    """Which sidecars this run must (re)write for one audio file."""

    prompt: bool
    lyrics: bool
    bpm_key: bool

    @property
    def any(self) -> bool:
        return self.prompt or self.lyrics or self.bpm_key


def wanted_outputs(audio: Path, lyrics: bool, bpm_key: bool, overwrite: bool) -> WantedOutputs:
    """An output is wanted when asked for and either missing or --overwrite was given."""
    return WantedOutputs(
        prompt=overwrite or not prompt_path(audio).exists(),
        lyrics=lyrics and (overwrite or not lyrics_path(audio).exists()),
        bpm_key=bpm_key and (overwrite or not bpm_key_path(audio).exists()),
    )


def write_prompt(audio: Path, tags: list[str]) -> Path:
    """`<stem>_prompt.txt`: the tags joined by ", " (stage 2 splits on commas)."""
    if not tags:
        raise ValueError("refusing to write an empty prompt")
    path = prompt_path(audio)
    atomic_write_text(path, ", ".join(tags) + "\n")
    return path


def write_caption(audio: Path, caption: str) -> Path:
    """`<stem>_prompt.txt` holding a prose caption as written (ACE-Step 1.5 encodes it whole)."""
    if not caption.strip():
        raise ValueError("refusing to write an empty prompt")
    path = prompt_path(audio)
    atomic_write_text(path, caption.strip() + "\n")
    return path


def write_lyrics(audio: Path, lyrics: str) -> Path:
    path = lyrics_path(audio)
    atomic_write_text(path, lyrics.strip() + "\n")
    return path


def write_bpm_key(audio: Path, info: dict) -> Path:
    path = bpm_key_path(audio)
    atomic_write_json(path, info)
    return path
