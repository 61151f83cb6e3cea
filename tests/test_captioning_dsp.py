"""BPM and key detection with librosa (optional extra), on synthetic signals whose tempo and key are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from acestep.captioning.dsp import DSP_SAMPLE_RATE, MISSING_LIBROSA, best_key, require_librosa
from acestep.core.errors import AcestepError

NOTE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def tone(midi: int, seconds: float, sr: int = DSP_SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return np.sin(2 * np.pi * 440.0 * 2 ** ((midi - 69) / 12) * t) * np.exp(-3.0 * t)


def chord_progression_in_a_minor(sr: int = DSP_SAMPLE_RATE) -> np.ndarray:
    """i - iv - V - i (Am, Dm, E, Am), one chord per 0.5 s beat: 120 BPM with the beats on the chord onsets."""
    chords = [(57, 60, 64), (62, 65, 69), (52, 56, 59), (57, 60, 64)] * 4
    return np.concatenate([sum(tone(note, 0.5, sr) for note in chord) / 3 for chord in chords]).astype(
        np.float32
    )


def test_missing_librosa_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "librosa", None)
    with pytest.raises(AcestepError) as err:
        require_librosa()
    assert str(err.value) == MISSING_LIBROSA


@pytest.mark.parametrize(("tonic", "mode"), [("C", "major"), ("G", "major"), ("A", "minor"), ("D", "minor")])
def test_best_key_on_the_profiles_themselves(tonic: str, mode: str) -> None:
    from acestep.captioning.dsp import MAJOR_PROFILE, MINOR_PROFILE

    chroma = np.roll(MAJOR_PROFILE if mode == "major" else MINOR_PROFILE, NOTE[tonic])
    key, confidence = best_key(chroma)
    assert key == f"{tonic} {mode}" and confidence == pytest.approx(1.0)
    assert best_key(np.ones(12)) == ("unknown", 0.0)


@pytest.mark.slow  # the first librosa beat tracking JIT-compiles with numba (~25 s on a cold cache)
def test_estimate_on_a_synthetic_song() -> None:
    pytest.importorskip("librosa")
    from acestep.captioning.dsp import estimate_bpm_key

    info = estimate_bpm_key(chord_progression_in_a_minor())
    assert info["key"] == "A minor"
    assert info["bpm"] == pytest.approx(120.0, rel=0.05)


@pytest.mark.slow
def test_bpm_key_sidecar_through_the_runner(tmp_path: Path) -> None:
    pytest.importorskip("librosa")
    from acestep.captioning.runner import RunOptions, caption_folder

    audio = tmp_path / "song.wav"
    sf.write(audio, chord_progression_in_a_minor(), DSP_SAMPLE_RATE)
    (tmp_path / "song_prompt.txt").write_text("kept\n", encoding="utf-8")

    def no_model():
        raise AssertionError("bpm/key must not need the captioning model")

    (report,) = caption_folder(tmp_path, no_model, RunOptions(bpm_key=True), progress=False)
    info = json.loads((tmp_path / "song_bpm_key.json").read_text(encoding="utf-8"))
    assert info["key"] == "A minor" and info["bpm"] == pytest.approx(120.0, rel=0.05)
    assert report.bpm_key == f"{info['bpm']:g} bpm, A minor" and report.prompt == "kept"
    assert (tmp_path / "song_prompt.txt").read_text(encoding="utf-8") == "kept\n"  # never into the tags


def click_track(bpm: float, beats: int, accent_every: int, sr: int = DSP_SAMPLE_RATE) -> np.ndarray:
    """Clicks on every beat; every `accent_every`-th one louder and higher, as a bar's first beat."""
    period = 60.0 / bpm
    out = np.zeros(int((beats * period + 1.0) * sr), np.float32)
    t = np.arange(int(0.05 * sr)) / sr
    for beat in range(beats):
        first = beat % accent_every == 0
        click = (1.0 if first else 0.25) * np.sin(2 * np.pi * (1500.0 if first else 1000.0) * t) * np.exp(-40 * t)
        start = int(beat * period * sr)
        out[start : start + len(t)] += click.astype(np.float32)
    return out


@pytest.mark.parametrize(
    ("pattern", "meter"),
    [((3, 1, 1), "3"), ((3, 1, 1, 1), "4"), ((3, 1, 2, 1), "4"), ((3, 1), "4"), ((1,), "")],
)
def test_meter_of_beats_on_accent_patterns(pattern: tuple[int, ...], meter: str) -> None:
    from acestep.captioning.dsp import meter_of_beats

    rng = np.random.default_rng(0)
    strengths = np.tile(np.array(pattern, float), 48 // len(pattern))
    # any starting beat (an upbeat first) and a little noise
    noisy = np.roll(strengths, 1) + 0.1 * rng.standard_normal(strengths.size)
    assert meter_of_beats(noisy if pattern != (1,) else strengths) == meter
    assert meter_of_beats(strengths[:15]) == ""  # fewer than four bars of 4: nothing said


@pytest.mark.slow
@pytest.mark.parametrize(("accent_every", "meter"), [(3, "3"), (4, "4"), (2, "4")])
@pytest.mark.parametrize("bpm", [100.0, 140.0])
def test_time_signature_of_a_click_track(accent_every: int, meter: str, bpm: float) -> None:
    pytest.importorskip("librosa")
    from acestep.captioning.dsp import estimate_bpm_key

    info = estimate_bpm_key(click_track(bpm, 48, accent_every))
    assert info["timesignature"] == meter and info["bpm"] == pytest.approx(bpm, rel=0.05)
