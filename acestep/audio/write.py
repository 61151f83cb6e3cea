"""Writing a rendered WAV: atomic, and a full disk said in one line with no temp file left behind."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch

from acestep.core.atomic import atomic_write_with


def write_wav(wav: torch.Tensor, sample_rate: int, path: Path) -> Path:
    """16-bit PCM of `wav` (channels, samples) through a temp file that a failed write removes.

    libsndfile reports a failed write without the OS error number; when the folder then has less room than the
    file needs, that is a full disk (errno ENOSPC), which atomic_write_with says in one line.
    """
    import soundfile as sf

    data = wav.T.numpy()

    def write(temp: Path) -> None:
        try:
            sf.write(str(temp), data, sample_rate, subtype="PCM_16", format="WAV")
        except (sf.SoundFileError, AssertionError) as error:
            if shutil.disk_usage(temp.parent).free < 2 * data.size + 4096:  # 16-bit samples plus the header
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temp)) from error
            raise

    return atomic_write_with(Path(path), write)
