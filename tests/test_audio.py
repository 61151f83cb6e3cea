"""Audio decoding across formats and the training-side conditioning rules, with named rejections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from data_helpers import write_with_pyav

from acestep.audio import condition_training_audio, load_audio, prepare_training_audio
from acestep.core.errors import InputError


def tone(seconds: float, rate: int, channels: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wave * (1 + 0.1 * c) for c in range(channels)])


@pytest.mark.parametrize(
    ("suffix", "rate", "channels"),
    [(".wav", 44100, 2), (".flac", 22050, 1), (".ogg", 48000, 2), (".mp3", 44100, 2), (".opus", 48000, 1),
     (".m4a", 44100, 2), (".aac", 32000, 2)],
)
def test_formats_decode(tmp_path: Path, suffix: str, rate: int, channels: int) -> None:
    path = tmp_path / f"song{suffix}"
    samples = tone(1.0, rate, channels)
    if suffix in (".wav", ".flac", ".ogg"):
        sf.write(path, samples.T, rate)
    else:
        codec = {".mp3": "libmp3lame", ".opus": "libopus", ".m4a": "aac", ".aac": "aac"}[suffix]
        container = {".opus": "ogg", ".aac": "adts", ".m4a": "mp4"}.get(suffix)
        write_with_pyav(path, samples, rate, codec, container)
    decoded, decoded_rate = load_audio(path)
    assert decoded.dtype == np.float32
    assert decoded_rate == rate
    assert decoded.shape[0] == channels
    # Lossy codecs add encoder delay/padding: within 0.1 s of the written length.
    assert abs(decoded.shape[1] - rate) < 0.1 * rate
    assert 0.15 < np.abs(decoded).max() < 0.7  # lossy codecs overshoot a little


def test_missing_empty_and_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_audio(tmp_path / "nope.wav")
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty file") as error:
        load_audio(empty)
    assert error.value.path.endswith("empty.mp3")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match="cannot decode") as error:
        load_audio(corrupt)
    assert "corrupt.flac" in str(error.value)


def test_conditioning_resamples_to_stereo_48k(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    sf.write(path, tone(4.0, 22050, 1).T, 22050)
    wav = prepare_training_audio(path)
    assert wav.shape == (2, 4 * 48000)
    assert wav.dtype.is_floating_point
    assert np.allclose(wav[0].numpy(), wav[1].numpy())


def test_conditioning_keeps_stereo_and_clamps(tmp_path: Path) -> None:
    path = tmp_path / "two.wav"
    samples = tone(3.5, 48000, 2)
    samples[0, :100] = 1.5  # out of range, written as float
    sf.write(path, samples.T, 48000, subtype="FLOAT")
    wav = prepare_training_audio(path)
    assert wav.shape == (2, int(3.5 * 48000))
    assert wav.abs().max() <= 1.0
    assert np.allclose(wav[1].numpy(), samples[1], atol=1e-6)


def test_surround_is_downmixed_by_itu_bs775_and_noted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "five_one.wav"
    channels = [tone(3.5, 48000, 1, freq)[0] * 0.5 for freq in (200, 300, 400, 50, 500, 600)]  # L R C LFE Ls Rs
    sf.write(path, np.stack(channels).T, 48000, subtype="FLOAT")
    with caplog.at_level("WARNING"):
        wav = prepare_training_audio(path).numpy()
    left, right, centre, _lfe, left_s, right_s = channels
    assert np.allclose(wav[0], left + 0.7071 * (centre + left_s), atol=1e-5)  # the centre is no longer lost
    assert np.allclose(wav[1], right + 0.7071 * (centre + right_s), atol=1e-5)  # the LFE is left out
    assert "five_one.wav: 6 channels (5.1) downmixed to stereo by ITU-R BS.775" in caplog.text
    loud = tmp_path / "loud.wav"  # full-scale surround would clip: scaled down as a whole, never clipped
    sf.write(loud, np.full((48000 * 3, 6), 0.9, dtype=np.float32), 48000, subtype="FLOAT")
    assert np.allclose(prepare_training_audio(loud).numpy(), 1.0, atol=1e-6)


def test_short_songs_are_padded_to_three_seconds(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    sf.write(path, tone(1.0, 48000, 2).T, 48000)
    wav = prepare_training_audio(path)
    assert wav.shape == (2, 3 * 48000)
    assert wav[:, 48000:].abs().max() == 0


def test_long_songs_are_cropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, tone(5.0, 16000, 2).T, 16000)
    with caplog.at_level("WARNING"):
        wav = prepare_training_audio(path, max_duration=4.0)
    assert wav.shape == (2, 4 * 48000)
    assert "cropped" in caplog.text and "long.wav" in caplog.text


def test_silent_songs_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((48000 * 4, 2), dtype=np.float32), 48000)
    with pytest.raises(InputError, match="near-silent") as error:
        prepare_training_audio(path)
    assert "silent.wav" in str(error.value)


@pytest.mark.parametrize("samples", [132_301, 539_446, 1_000_003])
def test_conditioning_resamples_to_the_reference_length(samples: int) -> None:
    """torchaudio's rule: ceil of 160 n / 147 (44.1 -> 48 kHz, rates over their gcd), rounded to float32 first."""
    expected = int(np.ceil(np.float32(160 * samples / 147)))
    wav = condition_training_audio(tone(samples / 44100, 44100, 2)[:, :samples], 44100)
    assert wav.shape == (2, expected)
