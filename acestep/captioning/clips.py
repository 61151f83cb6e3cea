"""Audio as the captioning model hears it: 16 kHz mono, cut into pieces of at most 30 s.

Why 30 s: Qwen2.5-Omni's audio front end is Whisper's, and transformers' Omni processor truncates every
audio item to 30 s (3000 feature frames, 750 audio tokens). So tags come from one representative excerpt
(the middle of the song, past the intro, where the full arrangement usually plays), and lyrics come from
consecutive 30 s pieces transcribed one by one; each call then needs the same small, bounded memory,
which matters on 8-12 GB GPUs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soxr

from acestep.audio import load_audio

MODEL_SAMPLE_RATE = 16_000
PIECE_SECONDS = 30.0
MIN_PIECE_SECONDS = 1.0


def load_mono(path: Path, sample_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """float32 [samples] at `sample_rate`: channels averaged, then soxr high-quality resampling."""
    wav, sr = load_audio(path)
    mono = np.asarray(wav, dtype=np.float32).mean(axis=0)
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ").astype(np.float32)
    return np.clip(mono, -1.0, 1.0)


def middle_excerpt(
    wav: np.ndarray, sample_rate: int = MODEL_SAMPLE_RATE, seconds: float = PIECE_SECONDS
) -> np.ndarray:
    """The `seconds` around the middle of the song (all of it when shorter)."""
    length = int(round(seconds * sample_rate))
    if wav.shape[-1] <= length:
        return wav
    start = (wav.shape[-1] - length) // 2
    return wav[start : start + length]


def consecutive_pieces(
    wav: np.ndarray,
    sample_rate: int = MODEL_SAMPLE_RATE,
    seconds: float = PIECE_SECONDS,
    max_seconds: float | None = None,
) -> list[np.ndarray]:
    """Back-to-back pieces of `seconds` covering the song (up to `max_seconds`); a tail under 1 s is dropped."""
    if max_seconds is not None:
        wav = wav[: int(round(max_seconds * sample_rate))]
    step = int(round(seconds * sample_rate))
    pieces = [wav[start : start + step] for start in range(0, wav.shape[-1], step)]
    if len(pieces) > 1 and pieces[-1].shape[-1] < MIN_PIECE_SECONDS * sample_rate:
        pieces.pop()
    return pieces
