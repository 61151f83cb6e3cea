"""The log-mel front-end shared by the DC-AE encoder and the vocoder (data-side.md 2.2), in plain torch."""

from __future__ import annotations

import math

import torch
from torch import nn

SAMPLE_RATE = 44100
N_FFT = 2048
HOP = 512
N_MELS = 128
F_MIN = 40.0
F_MAX = 16000.0
LOG_FLOOR = 1e-5
MEL_MIN, MEL_MAX = -11.0, 3.0

_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(freq: float) -> float:
    if freq < _MIN_LOG_HZ:
        return freq / _F_SP
    return _MIN_LOG_MEL + math.log(freq / _MIN_LOG_HZ) / _LOGSTEP


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    linear = mel * _F_SP
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))
    return torch.where(mel >= _MIN_LOG_MEL, log, linear)


def slaney_mel_filterbank(
    n_freqs: int = N_FFT // 2 + 1, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE,
    f_min: float = F_MIN, f_max: float = F_MAX,
) -> torch.Tensor:
    """[n_freqs, n_mels] triangular filters on the Slaney mel scale with Slaney area normalisation.

    Built in float32 like torchaudio's `melscale_fbanks`, which the reference uses: the model was trained on
    this exact matrix (a float64 build differs by up to 4e-5 and changes every log-mel value a little).
    """
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float32)
    mel_points = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2, dtype=torch.float32)
    f_points = _mel_to_hz(mel_points)
    f_diff = f_points[1:] - f_points[:-1]
    slopes = f_points[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    filters = torch.clamp(torch.minimum(down, up), min=0.0)
    filters *= (2.0 / (f_points[2 : n_mels + 2] - f_points[:n_mels]))[None, :]
    return filters


class LogMelSpectrogram(nn.Module):
    """Waveform [..., T] at 44.1 kHz -> natural-log mel [..., 128, floor(T / 512)]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("filterbank", slaney_mel_filterbank(), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        shape = wav.shape
        flat = wav.reshape(-1, shape[-1]).float()
        pad = (N_FFT - HOP) // 2
        flat = torch.nn.functional.pad(flat[:, None], (pad, pad), mode="reflect")[:, 0]
        spec = torch.stft(flat, N_FFT, HOP, N_FFT, self.window.float(), center=False, return_complex=True)
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-6)
        # one matmul per waveform, so a batch or a stereo pair gives each channel's mono result bit for bit
        # (a batched matmul picks other kernels for long inputs and differs by ~4e-7)
        filterbank = self.filterbank.float()
        mel = torch.stack([frames.transpose(0, 1) @ filterbank for frames in magnitude]).transpose(-1, -2)
        log_mel = torch.log(torch.clamp(mel, min=LOG_FLOOR))
        return log_mel.reshape(*shape[:-1], N_MELS, log_mel.shape[-1]).to(wav.dtype)


def normalize_mel(log_mel: torch.Tensor) -> torch.Tensor:
    """(m - min) / (max - min) mapped to [-1, 1] without clipping: y = (m + 4) / 7."""
    return (log_mel - MEL_MIN) / (MEL_MAX - MEL_MIN) * 2.0 - 1.0


def denormalize_mel(y: torch.Tensor) -> torch.Tensor:
    return (y + 1.0) / 2.0 * (MEL_MAX - MEL_MIN) + MEL_MIN
