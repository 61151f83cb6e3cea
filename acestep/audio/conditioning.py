"""Training-side conditioning of a decoded song, in the reference order, with named rejections.

Order (data-side.md 1.2): crop at the native rate, mono -> stereo, first two channels, resample to 48 kHz,
clamp, pad to 3 s, silence check. The reference silently swaps a rejected song for a random other one;
here every rejection is an `InputError` with the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from acestep.core.errors import InputError

from .decode import load_audio
from .resample import resample

TRAINING_SAMPLE_RATE = 48000
MIN_SECONDS = 3.0
DEFAULT_MAX_SECONDS = 360.0
# The reference drops a clip when more than 95 % of its time steps are exactly zero in both channels. We also
# treat samples below -80 dBFS as silent, so dithered or noise-floor "silence" is caught too.
SILENT_FRACTION = 0.95
SILENCE_LEVEL = 1e-4

log = logging.getLogger(__name__)


def to_stereo(samples: np.ndarray) -> np.ndarray:
    """Mono is duplicated; channels beyond the first two are dropped."""
    if samples.shape[0] == 1:
        return np.repeat(samples, 2, axis=0)
    return samples[:2]


def condition_training_audio(
    samples: np.ndarray,
    sample_rate: int,
    source: str | Path = "<array>",
    max_duration: float = DEFAULT_MAX_SECONDS,
    target_sr: int = TRAINING_SAMPLE_RATE,
) -> torch.Tensor:
    """Decoded samples -> [2, T] float32 at `target_sr`, or InputError naming why the song cannot be used."""
    if not np.isfinite(samples).all():
        raise InputError(source, "audio contains NaN or infinite samples")
    max_native = int(round(max_duration * sample_rate))
    if samples.shape[1] > max_native:
        log.warning(
            "%s: %.1f s long, cropped to the first %.0f s (--max_duration)", source, samples.shape[1] / sample_rate, max_duration
        )
        samples = samples[:, :max_native]
    stereo = np.clip(resample(to_stereo(samples), sample_rate, target_sr), -1.0, 1.0)
    min_samples = int(MIN_SECONDS * target_sr)
    if stereo.shape[1] < min_samples:
        stereo = np.pad(stereo, ((0, 0), (0, min_samples - stereo.shape[1])))
    silent = (np.abs(stereo) < SILENCE_LEVEL).all(axis=0).mean()
    if silent > SILENT_FRACTION:
        raise InputError(source, f"near-silent audio ({silent:.0%} of the song below -80 dBFS)")
    return torch.from_numpy(np.ascontiguousarray(stereo, dtype=np.float32))


def prepare_training_audio(
    path: str | Path, max_duration: float = DEFAULT_MAX_SECONDS, target_sr: int = TRAINING_SAMPLE_RATE
) -> torch.Tensor:
    """Decode and condition one song for DC-AE encoding: [2, T] float32 at 48 kHz."""
    samples, sample_rate = load_audio(path)
    return condition_training_audio(samples, sample_rate, path, max_duration, target_sr)
