"""Audio input: decoding any common format and conditioning songs the way the reference trainer does."""

from .conditioning import (
    MIN_SECONDS,
    TRAINING_SAMPLE_RATE,
    condition_training_audio,
    prepare_training_audio,
    to_stereo,
)
from .decode import AUDIO_EXTENSIONS, load_audio
from .resample import resample, resampled_length

__all__ = [
    "AUDIO_EXTENSIONS",
    "MIN_SECONDS",
    "TRAINING_SAMPLE_RATE",
    "condition_training_audio",
    "load_audio",
    "prepare_training_audio",
    "resample",
    "resampled_length",
    "to_stereo",
]
