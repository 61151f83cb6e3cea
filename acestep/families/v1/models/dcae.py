"""`MusicDCAE`: stereo audio <-> scaled DC-AE latents [B, 8, 16, T] (data-side.md section 2).

Encode: resample to 44.1 kHz, pad to a multiple of 4096 samples, log-mel per channel, normalise, run the
diffusers `AutoencoderDC` encoder one song at a time, then (e + 1.9091) * 0.1786. Decode reverses it and
runs the vocoder once per channel.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderDC
from torch import nn

from acestep.audio.resample import resample, resampled_length

from .mel import HOP, LogMelSpectrogram, denormalize_mel, normalize_mel
from .vocoder import ADaMoSHiFiGANV1

DCAE_SAMPLE_RATE = 44100
LATENT_SCALE = 0.1786
LATENT_SHIFT = -1.9091
DOWNSAMPLE = 8
SAMPLES_PER_LATENT = HOP * DOWNSAMPLE  # 4096 at 44.1 kHz
# Overlapped decode (reference decode_overlap), for memory only: latent windows of 512 frames with hop 256,
# then vocoder blocks of 512 mel frames that start every 260096 samples (block minus twice the 1024-sample
# overlap), joined by a 128-sample linear cross-fade that ends 1024 samples before the previous block's end.
WINDOW_LATENTS = 512
WINDOW_HOP = 256
VOCODER_BLOCK_MELS = 512
VOCODER_OVERLAP = 1024
VOCODER_HOP = VOCODER_BLOCK_MELS * HOP - 2 * VOCODER_OVERLAP  # 260096 samples
CROSSFADE = 128
# The reference pads the last vocoder block with log-mel 0 (not with silence, which is about -11.5).
VOCODER_PAD_MEL = 0.0


def resample_batch(wavs: torch.Tensor, source_rate: int, target_rate: int) -> torch.Tensor:
    """[..., T] resampled with soxr HQ to the reference's length (`acestep.audio.resampled_length`)."""
    if source_rate == target_rate:
        return wavs
    flat = wavs.detach().float().cpu().reshape(-1, wavs.shape[-1]).numpy()
    out = resample(flat, source_rate, target_rate)
    return torch.from_numpy(out).reshape(*wavs.shape[:-1], out.shape[-1]).to(wavs.device, wavs.dtype)


def latent_length_for_samples(num_samples: int, sample_rate: int = 48000) -> int:
    """Encoded latent frames: the 44.1 kHz length padded up to whole 4096-sample frames (30 s at 48 kHz -> 323)."""
    return math.ceil(resampled_length(num_samples, sample_rate, DCAE_SAMPLE_RATE) / SAMPLES_PER_LATENT)


def decoded_length(latent_frames: int, sample_rate: int = DCAE_SAMPLE_RATE) -> int:
    """Samples that whole-song decode returns: 4096 per frame at 44.1 kHz, then the resampler's length rule."""
    return resampled_length(latent_frames * SAMPLES_PER_LATENT, DCAE_SAMPLE_RATE, sample_rate)


def overlapped_decoded_length(latent_frames: int, sample_rate: int = DCAE_SAMPLE_RATE) -> int:
    """The reference's overlapped decode truncates to int(4096 T * sr / 44100) (floor, not the resampler's ceil)."""
    return int(latent_frames * SAMPLES_PER_LATENT * sample_rate / DCAE_SAMPLE_RATE)


class MusicDCAE(nn.Module):
    """DC-AE plus (optionally) the vocoder, with the reference's scale/shift and length rules."""

    def __init__(self, dcae: AutoencoderDC, vocoder: ADaMoSHiFiGANV1 | None = None) -> None:
        super().__init__()
        self.dcae = dcae
        self.vocoder = vocoder
        self.mel = LogMelSpectrogram()

    @classmethod
    def from_pretrained(
        cls, dcae_dir: str | Path, vocoder_dir: str | Path | None = None, torch_dtype: torch.dtype = torch.float32
    ) -> MusicDCAE:
        dcae = AutoencoderDC.from_pretrained(str(dcae_dir), torch_dtype=torch_dtype).eval()
        vocoder = None
        if vocoder_dir is not None:
            vocoder = ADaMoSHiFiGANV1.from_pretrained(str(vocoder_dir), torch_dtype=torch_dtype).eval()
        return cls(dcae, vocoder)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.dcae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.dcae.parameters()).device

    @torch.no_grad()
    def encode(
        self, wavs: torch.Tensor, wav_lengths: torch.Tensor | None = None, sr: int = 48000
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 2, T] at `sr` -> (latents [B, 8, 16, ceil(T'/4096)], valid latent lengths [B])."""
        if wav_lengths is None:
            wav_lengths = torch.full((wavs.shape[0],), wavs.shape[-1], dtype=torch.long)
        audio = resample_batch(wavs, sr, DCAE_SAMPLE_RATE)
        padded = math.ceil(audio.shape[-1] / SAMPLES_PER_LATENT) * SAMPLES_PER_LATENT
        audio = torch.nn.functional.pad(audio, (0, padded - audio.shape[-1]))
        mels = normalize_mel(self.mel(audio.to(self.device).float()))
        latents = [
            self.dcae.encoder(mel[None].to(self.dtype)) for mel in mels
        ]
        latents = (torch.cat(latents, dim=0).float() - LATENT_SHIFT) * LATENT_SCALE
        lengths = torch.floor(wav_lengths.float() / sr * DCAE_SAMPLE_RATE / SAMPLES_PER_LATENT).long()
        return latents, lengths

    def _decode_mel(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [1, 8, 16, T] -> log-mel [2, 128, 8T] (not normalised).

        The un-scaling and de-normalisation run in the model's dtype, as in the reference (in bfloat16 too).
        """
        raw = latents.to(self.dtype) / LATENT_SCALE + LATENT_SHIFT
        return denormalize_mel(self.dcae.decoder(raw))[0]

    def _decode_mel_overlapped(self, latents: torch.Tensor) -> torch.Tensor:
        """Long songs in 512-frame latent windows keeping the central parts (reference decode_overlap stage 1)."""
        total = latents.shape[-1]
        margin = (WINDOW_LATENTS - WINDOW_HOP) // 2 * DOWNSAMPLE  # 1024 mel frames
        pieces = []
        starts = list(range(0, max(total - WINDOW_LATENTS, 0) + WINDOW_HOP, WINDOW_HOP))
        for index, start in enumerate(starts):
            mel = self._decode_mel(latents[..., start : start + WINDOW_LATENTS])
            first, last = index == 0, start + WINDOW_LATENTS >= total
            begin = 0 if first else margin
            end = mel.shape[-1] if last else mel.shape[-1] - margin
            pieces.append(mel[..., begin:end])
            if last:
                break
        return torch.cat(pieces, dim=-1)[..., : total * DOWNSAMPLE]

    def _vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """[2, 128, F] -> [2, 512 F]: the vocoder is mono and runs once per channel."""
        return self.vocoder.decode(mel.to(self.device))[:, 0].float()

    def _vocode_block(self, mel: torch.Tensor, first_frame: int) -> torch.Tensor:
        """One 512-frame vocoder block; a short last block is padded with log-mel 0 like the reference's."""
        chunk = mel[..., first_frame : first_frame + VOCODER_BLOCK_MELS]
        if chunk.shape[-1] < VOCODER_BLOCK_MELS:
            chunk = torch.nn.functional.pad(chunk, (0, VOCODER_BLOCK_MELS - chunk.shape[-1]), value=VOCODER_PAD_MEL)
        return self._vocode(chunk)

    def _vocode_overlapped(self, mel: torch.Tensor) -> torch.Tensor:
        """Vocoder blocks every VOCODER_HOP samples (reference decode_overlap stage 2).

        Each block drops its last VOCODER_OVERLAP samples; the next block's samples [overlap - 128, overlap)
        cross-fade into the last 128 kept ones, and its own first `overlap` samples are dropped. The result can
        run past the song (the padded last block); `decode` truncates it.
        """
        total = mel.shape[-1] * HOP
        fade_in = torch.linspace(0, 1, CROSSFADE, device=mel.device)
        fade_out = torch.linspace(1, 0, CROSSFADE, device=mel.device)
        pieces = [self._vocode_block(mel, 0)[:, :-VOCODER_OVERLAP]]
        start = VOCODER_HOP
        while start < total:
            block = self._vocode_block(mel, start // HOP)
            previous = pieces.pop()
            head = block[:, VOCODER_OVERLAP - CROSSFADE : VOCODER_OVERLAP]
            pieces += [previous[:, :-CROSSFADE], previous[:, -CROSSFADE:] * fade_out + head * fade_in]
            last = start + VOCODER_HOP >= total
            pieces.append(block[:, VOCODER_OVERLAP:] if last else block[:, VOCODER_OVERLAP:-VOCODER_OVERLAP])
            start += VOCODER_HOP
        return torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, sr: int = DCAE_SAMPLE_RATE, overlapped: bool = False
    ) -> list[torch.Tensor]:
        """Scaled latents [B, 8, 16, T] -> list of stereo waveforms [2, decoded_length(T, sr)].

        Whole-song decode, as the reference's default. `overlapped=True` decodes in windows to bound memory
        (reference decode_overlap); its output differs slightly at window seams and is
        `overlapped_decoded_length(T, sr)` long.
        """
        if self.vocoder is None:
            raise RuntimeError("MusicDCAE was loaded without a vocoder; pass vocoder_dir to decode audio")
        outputs = []
        for item in latents:
            frames = item.shape[-1]
            if overlapped:
                wav = self._vocode_overlapped(self._decode_mel_overlapped(item[None].to(self.device)))
                wav = resample_batch(wav.cpu(), DCAE_SAMPLE_RATE, sr)[:, : overlapped_decoded_length(frames, sr)]
            else:
                wav = resample_batch(self._vocode(self._decode_mel(item[None].to(self.device))).cpu(),
                                     DCAE_SAMPLE_RATE, sr)
            outputs.append(wav)
        return outputs


# music_dcae_f8c8/config.json of ACE-Step/ACE-Step-v1-3.5B (shared/reference/music_dcae_f8c8_config.json).
PUBLISHED_DCAE_CONFIG: dict[str, Any] = {
    "in_channels": 2,
    "latent_channels": 8,
    "attention_head_dim": 32,
    "encoder_block_types": ["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
    "decoder_block_types": ["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
    "encoder_block_out_channels": [128, 256, 512, 1024],
    "decoder_block_out_channels": [128, 256, 512, 1024],
    "encoder_layers_per_block": [2, 2, 3, 3],
    "decoder_layers_per_block": [3, 3, 3, 3],
    "encoder_qkv_multiscales": [[], [], [5], [5]],
    "decoder_qkv_multiscales": [[], [], [5], [5]],
    "downsample_block_type": "Conv",
    "upsample_block_type": "interpolate",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}


def tiny_dcae_config() -> dict[str, Any]:
    """An AutoencoderDC with the published family (2 -> 8 channels, downsampling 8) and tiny widths."""
    return {
        **PUBLISHED_DCAE_CONFIG,
        "attention_head_dim": 8,
        "encoder_block_out_channels": [8, 8, 16, 16],
        "decoder_block_out_channels": [8, 8, 16, 16],
        "encoder_layers_per_block": [1, 1, 1, 1],
        "decoder_layers_per_block": [1, 1, 1, 1],
    }
