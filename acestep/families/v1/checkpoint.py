"""Find a checkpoint in the published `ACE-Step/ACE-Step-v1-3.5B` layout: a local folder or a hub download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from acestep.core.checkpoint_files import DEFAULT_CACHE, download_snapshot, safetensors_problem
from acestep.core.errors import CheckpointError
from acestep.families.v1.lora_keys import NAME as V1_FAMILY

REPO_ID = "ACE-Step/ACE-Step-v1-3.5B"
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


def damaged_weight_files(root: Path) -> list[str]:
    """Every weight file of the checkpoint that is cut short or unreadable, with the reason."""
    files = [f for folder in [*(f for f, _ in PARTS.values()), "mert", "mhubert"]
             for f in sorted((root / folder).glob("*.safetensors"))]
    return [f"{file} ({problem})" for file in files if (problem := safetensors_problem(file))]


def _paths(root: Path) -> CheckpointPaths:
    # imported here, so importing the family (for its LoRA key names) needs no torch
    from .models.ssl import MERT_REPO, MHUBERT_REPO

    vocab = root / "lyric_tokenizer" / "vocab.json"
    return CheckpointPaths(
        root=root,
        **{name: root / folder for name, (folder, _) in PARTS.items()},
        lyrics_vocab=vocab if vocab.is_file() else None,
        mert=str(root / "mert") if (root / "mert" / "config.json").is_file() else MERT_REPO,
        mhubert=str(root / "mhubert") if (root / "mhubert" / "config.json").is_file() else MHUBERT_REPO,
    )


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


@dataclass(frozen=True)
class V1Checkpoint:
    """A resolved v1 checkpoint (acestep.families.base.Checkpoint)."""

    paths: CheckpointPaths
    family: str = V1_FAMILY
    layout: str = "ACE-Step/ACE-Step-v1-3.5B"

    @property
    def root(self) -> Path:
        return self.paths.root

    def describe(self) -> str:
        return f"checkpoint: {self.family} ({self.layout} layout) in {self.root}"
