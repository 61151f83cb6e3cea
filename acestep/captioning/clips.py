"""Audio as the captioning model hears it: 16 kHz mono, cut into clips that fit one 30 s audio window.

Why 30 s: Qwen2.5-Omni's audio front end is Whisper's: 10 ms mel frames (hop 160 samples), windows of
3000 frames (30 s) that become 750 audio tokens. So tags come from one representative excerpt (the middle
of the song, past the intro, where the full arrangement usually plays), and lyrics come from consecutive
pieces transcribed one by one; each call then needs the same small, bounded memory (8-12 GB GPUs).

Why not exactly 30.0 s: the two runtimes cut the window differently.
- transformers' WhisperFeatureExtractor truncates a clip to 480,000 samples (30 s): longer is cut off.
- llama.cpp (tools/mtmd/mtmd-audio.cpp, whisper preprocessor) appends 30 s of zeros to the clip, makes
  (samples + 480,000) // 160 + 1 frames and keeps every full 3000-frame chunk. A clip of exactly 480,000
  samples makes 6001 frames: two chunks, the second one nothing but padding, so 1500 audio tokens
  instead of 750 (measured: 1224 prompt tokens for 29.9 s, 1974 for 30.0 s).
So a clip holds at most MAX_CLIP_SAMPLES = 479,839 samples (29.99 s): one window in both runtimes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soxr

from acestep.audio import load_audio

MODEL_SAMPLE_RATE = 16_000
PIECE_SECONDS = 30.0  # asked for; clips are then capped at MAX_CLIP_SAMPLES
MIN_PIECE_SECONDS = 1.0
HOP_SAMPLES = 160  # one mel frame per 10 ms
WINDOW_FRAMES = 3000  # one 30 s audio window: 750 audio tokens
LLAMA_CPP_PAD_SAMPLES = 30 * MODEL_SAMPLE_RATE  # llama.cpp appends 30 s of zeros before framing
TRANSFORMERS_MAX_SAMPLES = WINDOW_FRAMES * HOP_SAMPLES  # the feature extractor truncates past this


def llama_cpp_audio_windows(samples: int) -> int:
    """How many 750-token windows llama.cpp makes of a 16 kHz clip (full 3000-frame chunks only)."""
    frames = (samples + LLAMA_CPP_PAD_SAMPLES) // HOP_SAMPLES + 1
    return frames // WINDOW_FRAMES


# The largest clip llama.cpp keeps in one window: frames < 2 * WINDOW_FRAMES.
MAX_CLIP_SAMPLES = min(
    (2 * WINDOW_FRAMES - 1) * HOP_SAMPLES - 1 - LLAMA_CPP_PAD_SAMPLES, TRANSFORMERS_MAX_SAMPLES
)


def clip_samples(seconds: float, sample_rate: int = MODEL_SAMPLE_RATE) -> int:
    """Samples in a clip of `seconds`, capped so that it fills at most one audio window."""
    cap = MAX_CLIP_SAMPLES * sample_rate // MODEL_SAMPLE_RATE
    return min(int(round(seconds * sample_rate)), cap)


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
    """The `seconds` (capped to one audio window) around the middle of the song (all of it when shorter)."""
    length = clip_samples(seconds, sample_rate)
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
    """Back-to-back pieces of `seconds` (capped to one audio window) covering the song (up to `max_seconds`);
    a tail under 1 s is dropped."""
    if max_seconds is not None:
        wav = wav[: int(round(max_seconds * sample_rate))]
    step = clip_samples(seconds, sample_rate)
    pieces = [wav[start : start + step] for start in range(0, wav.shape[-1], step)]
    if len(pieces) > 1 and pieces[-1].shape[-1] < MIN_PIECE_SECONDS * sample_rate:
        pieces.pop()
    return pieces
