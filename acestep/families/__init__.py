"""The family registry: which model generation (ACE-Step v1, ACE-Step 1.5) a checkpoint folder or a dataset holds.

Each family is a package, acestep/families/<name>/, that hands the machinery the interface in `base.ModelFamily`.
The machinery (data/, training/, lora/) never imports this package: the CLI layer picks the family, from the
checkpoint folder (`detect`) or from a dataset's manifest (`get`), and hands the family's parts down.
Adding a family: its folder, one line in FAMILIES below, and its tiny checkpoint (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from acestep.core.errors import AcestepError, CheckpointError
from acestep.families.base import Checkpoint, FamilyMismatch, ModelFamily, check_same_family  # noqa: F401 (re-exported)

V1 = "ace-step-v1"  # each family's NAME (acestep/families/<name>/lora_keys.py), as headers and manifests record it
V15 = "ace-step-1.5"
# name -> the family's package; the one line a new family adds
FAMILIES = {V1: "acestep.families.v1", V15: "acestep.families.v15"}
FAMILY_NAMES = tuple(FAMILIES)


def get(name: str) -> ModelFamily:
    """The family package for a recorded name ("ace-step-v1", "ace-step-1.5")."""
    if name not in FAMILIES:
        raise AcestepError(f"unknown model family {name!r}; known: {', '.join(FAMILY_NAMES)}")
    return importlib.import_module(FAMILIES[name])  # type: ignore[return-value]


def all_families() -> list[ModelFamily]:
    """Every family, imported: each registers its transformer with the LoRA tools (acestep.lora.models)."""
    return [get(name) for name in FAMILY_NAMES]


def load_all() -> None:
    """What a CLI calls before a LoRA tool reads a file of any family."""
    all_families()


def list_folder(root: Path, depth: int = 2) -> set[str]:
    """Relative posix paths of files and folders under `root`, `depth` levels deep (cheap: no recursion past it)."""
    found: set[str] = set()

    def walk(folder: Path, prefix: str, level: int) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            name = prefix + entry.name
            found.add(name)
            if level + 1 < depth and entry.is_dir():
                walk(Path(entry.path), name + "/", level + 1)

    walk(root, "", 0)
    return found


def list_repo(repo_id: str) -> set[str]:
    """File names of a hub repo (no download); offline or unknown repos fail in one line."""
    from huggingface_hub import HfApi

    try:
        return set(HfApi().list_repo_files(repo_id))
    except Exception as error:  # noqa: BLE001 - network, auth and offline errors all mean the same to the user
        raise CheckpointError(
            f"{repo_id}: cannot list the hub repo ({type(error).__name__}); download it and pass the folder"
        ) from None


def is_repo_id(value: str) -> bool:
    return value.count("/") == 1 and not Path(value).drive and not value.startswith((".", "~", "/"))


def _identify(files: Iterable[str], where: str) -> ModelFamily:
    listing = set(files)
    matches = [family for family in all_families() if family.recognizes(listing)]
    if not matches:
        raise CheckpointError(
            f"{where}: not an ACE-Step checkpoint (looked for ace_step_transformer/ (v1), model_index.json with "
            "transformer/ and condition_encoder/ (1.5 diffusers), or a DiT folder with model.safetensors, config.json "
            "and silence_latent.pt next to vae/ and Qwen3-Embedding-0.6B/ (1.5 original))"
        )
    return matches[0]


def detect(checkpoint_dir: str | Path | None) -> ModelFamily:
    """The family of a checkpoint folder or hub repo id; None means v1's default cache (today's behaviour)."""
    if checkpoint_dir is None:
        return get(V1)
    path = Path(checkpoint_dir).expanduser()
    if path.is_dir():
        return _identify(list_folder(path), str(path))
    if is_repo_id(str(checkpoint_dir)):
        return _identify(list_repo(str(checkpoint_dir)), str(checkpoint_dir))
    raise CheckpointError(f"{checkpoint_dir}: checkpoint folder not found")


def resolve(checkpoint_dir: str | Path | None, dit: str | None = None) -> tuple[ModelFamily, Checkpoint]:
    """detect + the family's resolver: the one call the CLIs make for --checkpoint_dir [--dit]."""
    family = detect(checkpoint_dir)
    if dit is not None and family.NAME != V15:
        raise CheckpointError(f"--dit {dit} names an ACE-Step 1.5 DiT folder, but {checkpoint_dir} is {family.NAME}")
    return family, family.resolve(checkpoint_dir, dit=dit)


def song_stages_for_args(args: argparse.Namespace) -> Any:
    """Stage 3's family layer: the family of --checkpoint_dir [--dit], refused if --output_dir already holds
    another family's songs, and that family's SongStages."""
    from acestep.data.preprocessed import dataset_family

    family, checkpoint = resolve(args.checkpoint_dir, getattr(args, "dit", None))
    print(checkpoint.describe())
    existing = dataset_family(args.output_dir)
    if existing is not None:
        check_same_family(existing, family.NAME, f"{args.output_dir} (already preprocessed)", "--checkpoint_dir")
    return family.song_stages(checkpoint, args)
