"""Training-side conditioning of a decoded song, in the reference order, with named rejections.

Order (data-side.md 1.2): crop at the native rate, mono -> stereo, surround downmixed (the reference keeps the
first two channels, which drops centre and LFE of a 5.1 file), resample to 48 kHz,
clamp, pad to 3 s, silence check. The reference silently swaps a rejected song for a random other one;
here every rejection is an `InputError` with the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from acestep.core.errors import InputError

from .decode import load_audio
from .resample import resample

if TYPE_CHECKING:  # loaded with the first song, so stage 2 and `--help` need no torch
    import torch

TRAINING_SAMPLE_RATE = 48000
MIN_SECONDS = 3.0
DEFAULT_MAX_SECONDS = 360.0
# The reference drops a clip when more than 95 % of its time steps are exactly zero in both channels. We also
# treat samples below -80 dBFS as silent, so dithered or noise-floor "silence" is caught too.
SILENT_FRACTION = 0.95
SILENCE_LEVEL = 1e-4

log = logging.getLogger(__name__)


# ITU-R BS.775 downmix to two channels: centre and surrounds at -3 dB (0.7071) into their side, LFE left out.
# Rows: (gain into left, gain into right) per input channel in the WAV / FFmpeg order of each layout.
_C = 0.7071
DOWNMIX = {
    3: ("L R C", ((1, 0), (0, 1), (_C, _C))),
    4: ("quad", ((1, 0), (0, 1), (_C, 0), (0, _C))),
    5: ("5.0", ((1, 0), (0, 1), (_C, _C), (_C, 0), (0, _C))),
    6: ("5.1", ((1, 0), (0, 1), (_C, _C), (0, 0), (_C, 0), (0, _C))),
    8: ("7.1", ((1, 0), (0, 1), (_C, _C), (0, 0), (_C, 0), (0, _C), (_C, 0), (0, _C))),
}


def to_stereo(samples: np.ndarray, source: str | Path = "<array>") -> np.ndarray:
    """Mono is duplicated; surround (3, 4, 5, 6 or 8 channels) is downmixed by ITU-R BS.775 and scaled down
    only if the sum would clip; other channel counts keep their first two. Anything but mono and stereo is noted."""
    channels = samples.shape[0]
    if channels == 1:
        return np.repeat(samples, 2, axis=0)
    if channels == 2:
        return samples
    if channels not in DOWNMIX:
        log.warning("%s: %d channels; kept the first two (no standard downmix for this count)", source, channels)
        return samples[:2]
    layout, gains = DOWNMIX[channels]
    stereo = np.asarray(gains, dtype=np.float32).T @ samples
    peak = float(np.abs(stereo).max(initial=0.0))
    if peak > 1.0:
        stereo /= peak
    log.warning("%s: %d channels (%s) downmixed to stereo by ITU-R BS.775 (centre and surrounds at -3 dB%s)%s",
                source, channels, layout, ", LFE left out" if channels in (6, 8) else "",
                f", scaled by {1 / peak:.3f} to stay below full scale" if peak > 1.0 else "")
    return stereo


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
    stereo = np.clip(resample(to_stereo(samples, source), sample_rate, target_sr), -1.0, 1.0)
    min_samples = int(MIN_SECONDS * target_sr)
    if stereo.shape[1] < min_samples:
        stereo = np.pad(stereo, ((0, 0), (0, min_samples - stereo.shape[1])))
    silent = (np.abs(stereo) < SILENCE_LEVEL).all(axis=0).mean()
    if silent > SILENT_FRACTION:
        raise InputError(source, f"near-silent audio ({silent:.0%} of the song below -80 dBFS)")
    import torch

    return torch.from_numpy(np.ascontiguousarray(stereo, dtype=np.float32))


def prepare_training_audio(
    path: str | Path, max_duration: float = DEFAULT_MAX_SECONDS, target_sr: int = TRAINING_SAMPLE_RATE
) -> torch.Tensor:
    """Decode and condition one song for DC-AE encoding: [2, T] float32 at 48 kHz."""
    samples, sample_rate = load_audio(path)
    return condition_training_audio(samples, sample_rate, path, max_duration, target_sr)
