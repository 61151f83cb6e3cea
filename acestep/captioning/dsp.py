"""Optional BPM and key estimate with librosa (extra `dsp`), written to its own sidecar, never into the tags.

librosa is imported only when --bpm_key asks for it, so the captioner runs without it.
"""

from __future__ import annotations

import numpy as np

from acestep.core.errors import AcestepError

DSP_SAMPLE_RATE = 22_050
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Krumhansl-Kessler key profiles (probe-tone ratings, Krumhansl 1990), index 0 = tonic.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MISSING_LIBROSA = (
    "--bpm_key needs librosa, which is not installed: pip install 'acestep-lora-trainer[dsp]' "
    "(or pip install librosa)"
)


def require_librosa():
    """The librosa module, or an AcestepError telling the user how to get it."""
    try:
        import librosa
    except ImportError:
        raise AcestepError(MISSING_LIBROSA) from None
    return librosa


def estimate_bpm_key(wav: np.ndarray, sample_rate: int = DSP_SAMPLE_RATE) -> dict:
    """{"bpm": float, "key": "A minor", "key_confidence": float} for a mono float32 signal.

    BPM from librosa's beat tracker; key by correlating the mean chroma with the 24 rotated
    Krumhansl-Kessler profiles (confidence = best Pearson correlation).
    """
    librosa = require_librosa()
    tempo, _beats = librosa.beat.beat_track(y=wav, sr=sample_rate)
    chroma = librosa.feature.chroma_cqt(y=wav, sr=sample_rate).mean(axis=1)
    key, confidence = best_key(chroma)
    return {
        "bpm": round(float(np.atleast_1d(tempo)[0]), 1),
        "key": key,
        "key_confidence": round(confidence, 3),
    }


def best_key(chroma: np.ndarray) -> tuple[str, float]:
    """The major/minor key whose profile correlates best with a 12-bin chroma vector (C first)."""
    if float(np.std(chroma)) == 0.0:
        return "unknown", 0.0
    best = ("unknown", -1.0)
    for tonic in range(12):
        rotated = np.roll(chroma, -tonic)
        for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
            score = float(np.corrcoef(rotated, profile)[0, 1])
            if score > best[1]:
                best = (f"{PITCH_CLASSES[tonic]} {mode}", score)
    return best
