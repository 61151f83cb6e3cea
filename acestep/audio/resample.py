"""Resampling: soxr's high-quality filter, with the reference's output length.

The reference resamples with torchaudio's sinc/Hann filter, which rolls off to -2.6 dB at 20 kHz; soxr HQ is
flat to 20 kHz and needs no torch pin, so we keep it. The number of output samples is not ours to choose,
though: it decides latent frame counts and file lengths, so it follows torchaudio's rule exactly.
"""

from __future__ import annotations

import math

import numpy as np
import soxr


def resampled_length(num_samples: int, source_rate: int, target_rate: int) -> int:
    """torchaudio's Resample length: ceil(new * n / orig) with both rates divided by their gcd, the quotient
    rounded to float32 before the ceil (539,446 samples at 48 kHz -> 495,616 at 44.1 kHz, not 495,617)."""
    if source_rate == target_rate:
        return num_samples
    gcd = math.gcd(source_rate, target_rate)
    quotient = (target_rate // gcd) * num_samples / (source_rate // gcd)
    return math.ceil(float(np.float32(quotient)))


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """[channels, n] float32 resampled with soxr HQ, trimmed or zero-padded to `resampled_length`."""
    if source_rate == target_rate:
        return samples
    length = resampled_length(samples.shape[1], source_rate, target_rate)
    out = soxr.resample(np.ascontiguousarray(samples.T, dtype=np.float32), source_rate, target_rate, quality="HQ")
    out = np.asarray(out, dtype=np.float32).reshape(-1, samples.shape[0]).T[:, :length]
    if out.shape[1] < length:
        out = np.pad(out, ((0, 0), (0, length - out.shape[1])))
    return np.ascontiguousarray(out)
