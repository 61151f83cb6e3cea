"""Disk cost of the preprocessed dataset at the published model's tensor sizes, measured by writing
random rows of those shapes through the real storage code (`python -m acestep.data.sizing`)."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from acestep.core.cli_help import make_parser
from acestep.data.preprocessed import EncodedSong, features_for_record, record_nbytes
from acestep.data.shards import PartWriter, ShardSpec

SAMPLE_RATE = 48000
TEXT_WIDTH = 768  # UMT5-base
MERT = (24000, 5 * 24000, 374, 1024)  # rate, chunk samples, frames per full chunk, width (data-side.md 6.1)
MHUBERT = (16000, 30 * 16000, 1499, 768)


def latent_frames(samples_48k: int) -> int:
    """Training-side rule: resample to 44.1 kHz, pad to a multiple of 4096 (data-side.md 2.8)."""
    return math.ceil(math.ceil(samples_48k * 147 / 160) / 4096)


def ssl_frames(samples_48k: int, model: tuple[int, int, int, int]) -> int:
    """Frames the reference keeps: per chunk ceil(len/320), capped at the full-chunk frame count."""
    rate, chunk, full, _ = model
    samples = samples_48k * rate // SAMPLE_RATE
    return sum(min(math.ceil(min(chunk, samples - s) / 320), full) for s in range(0, samples, chunk))


def published_song(seconds: float, ssl: bool, text_tokens: int = 24, lyric_tokens: int = 600) -> EncodedSong:
    samples = round(seconds * SAMPLE_RATE)
    gen = torch.Generator().manual_seed(0)
    return EncodedSong(
        row=0,
        key="published-shapes",
        filename="published-shapes.wav",
        prompt="rock, guitar",
        latents=torch.randn(8, 16, latent_frames(samples), generator=gen),
        text_hidden=torch.randn(text_tokens, TEXT_WIDTH, generator=gen),
        lyric_ids=list(range(lyric_tokens)),
        duration=samples / SAMPLE_RATE,
        mert=torch.randn(ssl_frames(samples, MERT), MERT[3], generator=gen) if ssl else None,
        mhubert=torch.randn(ssl_frames(samples, MHUBERT), MHUBERT[3], generator=gen) if ssl else None,
    )


def stored_bytes_per_second(
    record: dict[str, Any], seconds: float, make_features: Callable[[dict[str, Any]], Any], folder: Path
) -> tuple[float, float]:
    """(bytes on disk, raw tensor bytes) per second of audio of one stored row, written by the real shard writer."""
    writer = PartWriter(folder, ShardSpec(), {"sizing": True}, 1, make_features=make_features)
    writer.add(record, seconds, record_nbytes(record))
    writer.flush()
    return writer.progress.chunks[0].bytes / seconds, record_nbytes(record) / seconds


def measure_bytes_per_second(seconds: float, ssl: bool, folder: Path) -> tuple[float, float]:
    """(bytes on disk, raw tensor bytes) per second of audio for one published-size song."""
    song = published_song(seconds, ssl)
    return stored_bytes_per_second(song.to_record(), song.duration, features_for_record, folder)


def main(argv: list[str] | None = None) -> None:
    make_parser("Bytes on disk per second of audio, with and without SSL features (30/60/180 s songs).",
                "python -m acestep.data.sizing").parse_args(argv)
    print("seconds  ssl   MB on disk per s of audio  (tensor bytes only)")
    for seconds in (30.0, 60.0, 180.0):
        for ssl in (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                disk, raw = measure_bytes_per_second(seconds, ssl, Path(tmp))
            print(
                f"{seconds:7.0f}  {'on ' if ssl else 'off'}   {disk / 1e6:.4f}                     ({raw / 1e6:.4f})"
            )


if __name__ == "__main__":
    main()
