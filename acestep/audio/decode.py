"""Decode audio files to float32 arrays: libsndfile (wav, flac, ogg, mp3) first, PyAV for the rest (m4a, aac, opus)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from acestep.core.errors import InputError

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")


def _decode_with_soundfile(path: Path) -> tuple[np.ndarray, int]:
    data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sample_rate)


def _decode_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av  # imported here: only files libsndfile cannot read need it

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise InputError(path, "no audio stream in the file")
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels or 1
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=stream.codec_context.sample_rate)
        chunks: list[np.ndarray] = []
        for frame in container.decode(stream):
            for converted in resampler.resample(frame):
                chunks.append(converted.to_ndarray())
        for converted in resampler.resample(None):
            chunks.append(converted.to_ndarray())
        sample_rate = int(stream.codec_context.sample_rate)
    if not chunks:
        return np.zeros((channels, 0), dtype=np.float32), sample_rate
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), sample_rate


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples [channels, n] float32, sample rate). Raises InputError for missing, corrupt or empty files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)")
    errors: list[str] = []
    for decoder in (_decode_with_soundfile, _decode_with_pyav):
        try:
            samples, sample_rate = decoder(path)
        except InputError:
            raise
        except Exception as error:  # noqa: BLE001 - each decoder fails in its own way; report both
            errors.append(f"{decoder.__name__.removeprefix('_decode_with_')}: {str(error).strip() or type(error).__name__}")
            continue
        if samples.shape[1] == 0:
            raise InputError(path, "the file decodes to no audio samples")
        if sample_rate <= 0:
            raise InputError(path, f"invalid sample rate {sample_rate}")
        return samples, sample_rate
    raise InputError(path, "cannot decode audio (" + "; ".join(errors) + ")")
