"""Find a checkpoint in the published `ACE-Step/ACE-Step-v1-3.5B` layout: a local folder or a hub download."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from acestep.core.errors import CheckpointError

from .models.ssl import MERT_REPO, MHUBERT_REPO

REPO_ID = "ACE-Step/ACE-Step-v1-3.5B"
DEFAULT_CACHE = Path.home() / ".cache" / "ace-step" / "checkpoints"
PARTS = {
    "transformer": ("ace_step_transformer", "diffusion_pytorch_model*.safetensors*"),
    "dcae": ("music_dcae_f8c8", "diffusion_pytorch_model*.safetensors*"),
    "vocoder": ("music_vocoder", "diffusion_pytorch_model*.safetensors*"),
    "text_encoder": ("umt5-base", "model*.safetensors*"),
}


@dataclass(frozen=True)
class CheckpointPaths:
    root: Path
    transformer: Path
    dcae: Path
    vocoder: Path
    text_encoder: Path
    lyrics_vocab: Path | None
    mert: str
    mhubert: str


def missing_parts(root: Path) -> list[str]:
    """Human-readable list of what the folder lacks (each part needs config.json and weights)."""
    missing = []
    for folder, weights in PARTS.values():
        part = root / folder
        if not (part / "config.json").is_file():
            missing.append(f"{folder}/config.json")
        if not any(part.glob(weights)):
            missing.append(f"{folder}/{weights.replace('*.safetensors*', '.safetensors')}")
    return missing


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


def damaged_weight_files(root: Path) -> list[str]:
    """Every weight file of the checkpoint that is cut short or unreadable, with the reason."""
    files = [f for folder in [*(f for f, _ in PARTS.values()), "mert", "mhubert"]
             for f in sorted((root / folder).glob("*.safetensors"))]
    return [f"{file} ({problem})" for file in files if (problem := safetensors_problem(file))]


def _paths(root: Path) -> CheckpointPaths:
    vocab = root / "lyric_tokenizer" / "vocab.json"
    return CheckpointPaths(
        root=root,
        **{name: root / folder for name, (folder, _) in PARTS.items()},
        lyrics_vocab=vocab if vocab.is_file() else None,
        mert=str(root / "mert") if (root / "mert" / "config.json").is_file() else MERT_REPO,
        mhubert=str(root / "mhubert") if (root / "mhubert" / "config.json").is_file() else MHUBERT_REPO,
    )


def download_snapshot(repo_id: str, cache_dir: Path) -> Path:
    from huggingface_hub import snapshot_download  # progress bars are huggingface_hub's own

    try:
        return Path(snapshot_download(repo_id, cache_dir=str(cache_dir)))
    except Exception as error:  # noqa: BLE001 - network, auth and offline errors all mean the same to the user
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise CheckpointError(
            f"cannot download {repo_id}{offline}: {error}. Download it elsewhere and pass --checkpoint_dir FOLDER"
        ) from error


def resolve_checkpoint(dir_or_repo: str | Path | None = None, download: bool = True) -> CheckpointPaths:
    """A folder in the published layout, a hub repo id, or None for the default cache (downloaded if absent)."""
    if dir_or_repo is None:
        root = DEFAULT_CACHE
        if missing_parts(root):
            if not download:
                raise CheckpointError(f"no checkpoint in {root}; pass --checkpoint_dir or allow the download")
            root = download_snapshot(REPO_ID, DEFAULT_CACHE)
    else:
        path = Path(dir_or_repo).expanduser()
        if path.exists():
            root = path
        elif download and str(dir_or_repo).count("/") == 1 and not Path(str(dir_or_repo)).drive:
            root = download_snapshot(str(dir_or_repo), DEFAULT_CACHE)
        else:
            raise CheckpointError(f"{dir_or_repo}: checkpoint folder not found")
    missing = missing_parts(root)
    if missing:
        raise CheckpointError(
            f"{root}: checkpoint is incomplete, missing {', '.join(missing)}. "
            f"Get the full checkpoint from https://huggingface.co/{REPO_ID} (or pass the repo id to download it)"
        )
    damaged = damaged_weight_files(root)
    if damaged:
        raise CheckpointError(
            f"damaged weight file(s), probably an interrupted download or copy: {'; '.join(damaged)}. "
            "Download or copy those files again"
        )
    return _paths(root)
