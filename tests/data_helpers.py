"""Shared helpers for the data-stage tests: generated audio in several formats and small fake encoders."""

from __future__ import annotations

import math
import random
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch

from acestep.core.errors import InputError
from acestep.families.v1.lyrics import UnsupportedLyricsLanguage

SOUNDFILE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}
AV_CODECS = {
    ".mp3": ("mp3", "mp3"),
    ".m4a": ("ipod", "aac"),
    ".aac": ("adts", "aac"),
    ".opus": ("opus", "libopus"),
}


def tone(seconds: float, sr: int, channels: int, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    """[samples, channels] float32; channel c is a little detuned so channels differ."""
    t = np.arange(int(round(seconds * sr))) / sr
    columns = [amplitude * np.sin(2 * math.pi * freq * (1 + 0.01 * c) * t) for c in range(channels)]
    return np.stack(columns, axis=1).astype(np.float32)


def write_with_pyav(path: Path, samples: np.ndarray, rate: int, codec: str, container: str | None = None) -> None:
    """Encode [channels, n] float samples with PyAV (mp3/aac/opus: formats libsndfile may lack)."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        size = stream.codec_context.frame_size or 1024  # encoders want whole frames
        for start in range(0, samples.shape[1], size):
            chunk = np.ascontiguousarray(samples[:, start : start + size], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def write_audio(
    path: Path,
    seconds: float = 1.0,
    sr: int = 48000,
    channels: int = 2,
    freq: float = 440.0,
    silent: bool = False,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = tone(seconds, sr, channels, freq, amplitude=0.0 if silent else 0.3)
    suffix = path.suffix.lower()
    if suffix in SOUNDFILE_FORMATS:
        sf.write(path, data, sr, format=SOUNDFILE_FORMATS[suffix])
        return path
    container_format, codec = AV_CODECS[suffix]
    write_with_pyav(path, data.T, sr, codec, container_format)
    return path


class SimulatedKill(BaseException):
    """Stands for a kill -9 / power loss mid-run: not an Exception, so no per-song handler swallows it."""


def fake_load_audio(path: Path, max_duration: float) -> torch.Tensor:
    """48 kHz wav files only; 'broken' content raises like the real loader."""
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:
        raise InputError(path, f"cannot decode ({err})") from None
    wav = torch.from_numpy(data.T.copy())
    if wav.shape[0] == 1:
        wav = wav.repeat(2, 1)
    if wav.abs().max() == 0:
        raise InputError(path, "silent")
    return wav[:2, : int(max_duration * sr)]


def fake_format_prompt(tags: list[str], order: str = "as_written", seed: int | None = None) -> str:
    tags = list(tags)
    if order == "shuffle":
        random.Random(seed).shuffle(tags)
    return ", ".join(tags)


def reference_latent_length(n_samples_48k: int) -> int:
    """docs: T_lat = ceil(ceil(T48 * 147 / 160) / 4096) (data-side.md section 7)."""
    return math.ceil(math.ceil(n_samples_48k * 147 / 160) / 4096)


class FakeDCAE:
    """Latents of the reference length whose values depend on the audio; can simulate a crash."""

    def __init__(self, kill_after: int | None = None) -> None:
        self.calls = 0
        self.kill_after = kill_after

    def encode(self, wavs: torch.Tensor, wav_lengths: torch.Tensor | None = None, sr: int = 48000):
        if self.kill_after is not None and self.calls >= self.kill_after:
            raise SimulatedKill(f"killed after {self.calls} songs")
        self.calls += 1
        frames = reference_latent_length(wavs.shape[-1])
        picks = wavs[0, 0, (torch.arange(frames) * 997) % wavs.shape[-1]].float()
        grid = torch.arange(8 * 16, dtype=torch.float32).reshape(8, 16, 1) / 64
        return (grid + picks).unsqueeze(0), torch.tensor([frames])


class FakeText:
    """Hidden states [B, L, 8]; a prompt has one token per tag plus EOS, padded to the batch maximum."""

    width = 8

    def encode(self, prompts: list[str]):
        lengths = [len(p.split(",")) + 1 for p in prompts]
        hidden = torch.zeros(len(prompts), max(lengths), self.width)
        mask = torch.zeros(len(prompts), max(lengths), dtype=torch.long)
        for i, (prompt, length) in enumerate(zip(prompts, lengths)):
            gen = torch.Generator().manual_seed(sum(map(ord, prompt)))
            hidden[i, :length] = torch.randn(length, self.width, generator=gen)
            hidden[i, length:] = 99.0  # padding garbage that must never be stored
            mask[i, :length] = 1
        return hidden, mask


class FakeLyrics:
    def encode(self, lyrics: str, mode: str = "training", fallback_language: str | None = None) -> list[int]:
        if "svenska" in lyrics and fallback_language is None:
            raise UnsupportedLyricsLanguage("sv")
        if not lyrics.strip():
            return [0]
        return [261] + [3 + ord(c) % 200 for c in lyrics]


class FakeSSL:
    """75 and 50 frames per second of 48 kHz audio, 16- and 12-wide."""

    def extract(self, wavs: torch.Tensor, wav_lengths: torch.Tensor):
        mert, hubert = [], []
        for wav, length in zip(wavs, wav_lengths):
            seconds = int(length) / 48000
            level = float(wav[:, : int(length)].abs().mean())
            mert.append(torch.full((math.ceil(seconds * 75), 16), level))
            hubert.append(torch.full((math.ceil(seconds * 50), 12), -level))
        return mert, hubert
