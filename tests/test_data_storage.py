"""Storage size at the published model's tensor shapes, written through the real storage code."""

from __future__ import annotations

from pathlib import Path

import pytest

from acestep.data.sizing import MERT, MHUBERT, latent_frames, measure_bytes_per_second, ssl_frames

FORK_BYTES_PER_SECOND = 467_000  # data-side.md section 7, measured on the fork's float32 layout


@pytest.mark.parametrize(("seconds", "frames"), [(30, 323), (60, 646), (240, 2584), (360, 3876)])
def test_latent_frames_follow_the_reference_table(seconds: int, frames: int) -> None:
    assert latent_frames(seconds * 48000) == frames  # data-side.md section 2.8


def test_ssl_frames_follow_the_reference_chunking() -> None:
    assert ssl_frames(5 * 48000, MERT) == 374 and ssl_frames(30 * 48000, MHUBERT) == 1499
    assert ssl_frames(60 * 48000, MERT) == 12 * 374 and ssl_frames(60 * 48000, MHUBERT) == 2 * 1499
    assert ssl_frames(48000 * 7, MERT) == 374 + 2 * 24000 // 320  # a 2 s tail keeps ceil(len/320) frames


def test_published_size_bytes_per_second(tmp_path: Path) -> None:
    with_ssl, raw = measure_bytes_per_second(60.0, ssl=True, folder=tmp_path / "ssl")
    analytic = (646 * 128 + 24 * 768 + 4488 * 1024 + 2998 * 768) * 2 + 600 * (4 + 1)
    assert raw == pytest.approx(analytic / 60, rel=1e-3)
    assert with_ssl == pytest.approx(raw, rel=0.01)  # Arrow adds little beyond the tensors
    assert with_ssl <= 0.25e6 and with_ssl < FORK_BYTES_PER_SECOND / 1.9
    without_ssl, _ = measure_bytes_per_second(60.0, ssl=False, folder=tmp_path / "plain")
    assert without_ssl <= 0.01e6
