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
MIN_METER_BARS = 4  # bars of 4 beats a song needs before its time signature is estimated
MIN_METER_CONTRAST = 0.5  # the accented bar position's lead over the others, in standard deviations of all beats
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
    """{"bpm": float, "key": "A minor", "key_confidence": float, "timesignature": "4"} for a mono float32 signal.

    BPM from librosa's beat tracker; key by correlating the mean chroma with the 24 rotated
    Krumhansl-Kessler profiles (confidence = best Pearson correlation); time signature from the onset
    strength at the beats (`meter_of_beats`), left out when the song has too few beats to tell.
    """
    librosa = require_librosa()
    onsets = librosa.onset.onset_strength(y=wav, sr=sample_rate)
    tempo, beats = librosa.beat.beat_track(onset_envelope=onsets, sr=sample_rate)
    chroma = librosa.feature.chroma_cqt(y=wav, sr=sample_rate).mean(axis=1)
    key, confidence = best_key(chroma)
    info = {
        "bpm": round(float(np.atleast_1d(tempo)[0]), 1),
        "key": key,
        "key_confidence": round(confidence, 3),
    }
    meter = meter_of_beats(onsets[np.asarray(beats, dtype=int)])
    if meter:
        info["timesignature"] = meter
    return info


def meter_of_beats(strengths: np.ndarray) -> str:
    """Beats per bar, "3" or "4", as ACE-Step 1.5 writes a time signature; "" when it cannot be told.

    The beats are grouped into bars of 3 and of 4 from every starting beat; the bar length under which one
    position stands out most (its mean onset strength above the other positions' mean, in units of the
    spread of all beats) wins. Bars of 4 also carry songs accented every 2 beats. Too few bars, or no
    position standing out (a flat click), says nothing.
    """
    strengths = np.asarray(strengths, dtype=np.float64)
    spread = float(strengths.std())
    if len(strengths) < MIN_METER_BARS * 4 or spread == 0.0:
        return ""
    contrast = {}
    for beats_per_bar in (4, 3):
        bars = strengths[: len(strengths) // beats_per_bar * beats_per_bar].reshape(-1, beats_per_bar)
        positions = bars.mean(axis=0)
        loudest = int(positions.argmax())
        contrast[beats_per_bar] = (positions[loudest] - np.delete(positions, loudest).mean()) / spread
    best = max(contrast, key=contrast.get)
    return str(best) if contrast[best] >= MIN_METER_CONTRAST else ""


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
