"""Checkpoint files every family reads: the hub download into the shared cache and the whole-file check of a
.safetensors weight file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from acestep.core.errors import CheckpointError

DEFAULT_CACHE = Path.home() / ".cache" / "ace-step" / "checkpoints"


def safetensors_problem(file: Path) -> str | None:
    """Why a .safetensors file cannot be whole (cut short, empty, not safetensors), from its header and size alone."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_size > size - 8:
                return f"{size} bytes, too short for its header"
            header = json.loads(handle.read(header_size))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError):
        return "not a safetensors file (unreadable header)"
    expected = 8 + header_size + end
    if size != expected:
        return f"{size} bytes, its header says {expected}"
    return None


def download_snapshot(repo_id: str, cache_dir: Path) -> Path:
    from huggingface_hub import snapshot_download  # progress bars are huggingface_hub's own

    try:
        return Path(snapshot_download(repo_id, cache_dir=str(cache_dir)))
    except Exception as error:  # noqa: BLE001 - network, auth and offline errors all mean the same to the user
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise CheckpointError(
            f"cannot download {repo_id}{offline}: {error}. Download it elsewhere and pass --checkpoint_dir FOLDER"
        ) from error
