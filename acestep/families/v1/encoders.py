"""The models stage 3 runs, bundled behind small protocols so the orchestration can be tested with fakes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch


class LatentEncoder(Protocol):
    def encode(
        self, wavs: torch.Tensor, wav_lengths: torch.Tensor | None = None, sr: int = 48000
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class PromptEncoder(Protocol):
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


class LyricEncoder(Protocol):
    def encode(
        self, lyrics: str, mode: str = "training", fallback_language: str | None = None
    ) -> list[int]: ...


class SSLExtractor(Protocol):
    def extract(
        self, wavs: torch.Tensor, wav_lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]: ...


@dataclass
class SongEncoders:
    """Everything that turns one filename row into tensors; `ssl` is None when the SSL loss is off."""

    load_audio: Callable[[Path, float], torch.Tensor]  # (path, max_duration) -> [2, T] float32 @ 48 kHz
    format_prompt: Callable[..., str]  # (tags, order=..., seed=...) -> prompt text
    dcae: LatentEncoder
    text: PromptEncoder
    lyrics: LyricEncoder
    ssl: SSLExtractor | None
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto" is bf16 on a GPU that has it (as the fork), else float32: fp16 risks overflow in UMT5."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_encoders(
    checkpoint_dir: str | None,
    device: str = "auto",
    dtype: str = "auto",
    ssl: bool = True,
    lyrics_vocab: str | None = None,
) -> SongEncoders:
    """Load the DC-AE, UMT5, the lyric tokenizer and (optionally) MERT + mHuBERT from a checkpoint."""
    from acestep.audio import prepare_training_audio
    from acestep.families.v1.checkpoint import resolve_checkpoint
    from acestep.families.v1.lyrics import LyricTokenizer, resolve_lyrics_vocab
    from acestep.families.v1.models.dcae import MusicDCAE
    from acestep.families.v1.text_encoder import TextEncoder, format_prompt

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    paths = resolve_checkpoint(checkpoint_dir)
    vocab = lyrics_vocab or paths.lyrics_vocab or resolve_lyrics_vocab(checkpoint_dir=paths.root)
    dcae = MusicDCAE.from_pretrained(paths.dcae, torch_dtype=torch_dtype).to(torch_device).eval()
    extractor = None
    if ssl:
        from acestep.families.v1.models.ssl import SSLFeatureExtractor

        extractor = SSLFeatureExtractor.from_pretrained(
            paths.mert, paths.mhubert, torch_dtype=torch_dtype, device=torch_device
        )
    return SongEncoders(
        load_audio=lambda path, max_duration: prepare_training_audio(path, max_duration=max_duration),
        format_prompt=format_prompt,
        dcae=dcae,
        text=TextEncoder.from_pretrained(paths.text_encoder, torch_dtype=torch_dtype, device=torch_device),
        lyrics=LyricTokenizer.from_file(vocab),
        ssl=extractor,
        device=torch_device,
        dtype=torch_dtype,
    )
