"""Disk cost of an ACE-Step 1.5 preprocessed dataset at the published tensor sizes, measured by writing random
rows of those shapes through the real storage code (`python -m acestep.families.v15.sizing`)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from acestep.core.cli_help import make_parser
from acestep.data.sizing import stored_bytes_per_second

from .encode import EncodedV15Song, SongText, features_for_v15_record

LATENT_RATE = 25.0  # Oobleck: 48 kHz / 1920
ACOUSTIC = 64  # latent channels
TEXT_WIDTH = 1024  # Qwen3-Embedding-0.6B
ENCODER_WIDTH = 2048  # condition encoder output (2B and XL: the XL's encoder is 2048 wide too)
TEXT_TOKENS = 96  # SFT prompt: instruction + caption + 4 metadata lines
LYRIC_TOKENS = 600  # a sung song's lyrics in Qwen tokens (order of magnitude; 0 for instrumentals)
TIMBRE_TOKENS = 1  # the timbre encoder's pooled token


def published_song(seconds: float, store: str, lyric_tokens: int = LYRIC_TOKENS) -> EncodedV15Song:
    frames = math.ceil(seconds * LATENT_RATE)
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "target_latents": torch.randn(frames, ACOUSTIC, generator=gen),
        "context_latents": torch.randn(frames, 2 * ACOUSTIC, generator=gen),
    }
    if store == "outputs":
        length = TEXT_TOKENS + lyric_tokens + TIMBRE_TOKENS
        tensors["encoder_hidden_states"] = torch.randn(length, ENCODER_WIDTH, generator=gen)
        tensors["encoder_attention_mask"] = torch.ones(length, dtype=torch.bool)
    else:
        tensors["text_hidden_states"] = torch.randn(TEXT_TOKENS, TEXT_WIDTH, generator=gen)
        tensors["text_attention_mask"] = torch.ones(TEXT_TOKENS, dtype=torch.bool)
        tensors["lyric_hidden_states"] = torch.randn(lyric_tokens, TEXT_WIDTH, generator=gen)
        tensors["lyric_attention_mask"] = torch.ones(lyric_tokens, dtype=torch.bool)
    text = SongText(caption="rock, guitar", lyrics="la " * lyric_tokens, language="en")
    return EncodedV15Song(0, "published-shapes", "published-shapes.wav", frames / LATENT_RATE, text, "", tensors)


def measure_bytes_per_second(seconds: float, store: str, folder: Path) -> tuple[float, float]:
    """(bytes on disk, raw tensor bytes) per second of audio for one published-size 1.5 song."""
    song = published_song(seconds, store)
    return stored_bytes_per_second(song.to_record(), song.duration, features_for_v15_record, folder)


def main(argv: list[str] | None = None) -> None:
    make_parser("ACE-Step 1.5: bytes on disk per second of audio, condition-encoder outputs or inputs stored "
                "(30-240 s songs, published shapes).", "python -m acestep.families.v15.sizing").parse_args(argv)
    print(f"ACE-Step 1.5, {LYRIC_TOKENS} lyric tokens, {TEXT_TOKENS} prompt tokens")
    print("seconds  condition store  MB on disk per s of audio  (tensor bytes only)")
    for seconds in (30.0, 60.0, 120.0, 180.0, 240.0):
        for store in ("outputs", "inputs"):
            with tempfile.TemporaryDirectory() as tmp:
                disk, raw = measure_bytes_per_second(seconds, store, Path(tmp))
            print(f"{seconds:7.0f}  {store:<15}  {disk / 1e6:.4f}                     ({raw / 1e6:.4f})")


if __name__ == "__main__":
    main()
