"""What the LoRA tools need to know of a family's transformer, handed in by the family: lora/ imports no model code.

Each family registers its transformer once, when its package is imported (acestep/families/<name>/__init__.py),
with its LoRA key naming (naming.py) and the checkpoint layouts `lora merge` reads and writes;
the CLI layer imports the families (`acestep.families.load_all`) before it runs a LoRA tool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from acestep.core.errors import CheckpointError


@dataclass(frozen=True)
class PackedLayout:
    """A checkpoint folder whose one weights file holds the transformer under a key prefix, beside other models'
    weights (the layout an official app reads). `lora merge` writes a folder of the same layout: that file merged,
    every other file copied."""

    folder: str  # what users call such a folder, in messages
    marks: tuple[str, ...]  # the files that together make a folder one of these (the weights file among them)
    weights: str  # the file holding the weights
    prefix: str  # the transformer's keys in it start with this
    model_name: Callable[[str], str]  # a transformer key of the file, prefix removed -> the model's
    use: str = ""  # said after a merged folder is written: how to use it ("{name}": the folder's name)


@dataclass(frozen=True)
class TransformerKind:
    """One family's transformer as the LoRA tools see it."""

    family: str
    class_name: str  # "_class_name" in the transformer folder's config.json
    model_class: Callable[[], Any]  # the class (imported on use); `from_config` builds it on the meta device
    published_config: Callable[[], dict[str, Any]] | None = None  # config of a bare .safetensors file
    published_modules: Callable[[], Iterable[str]] | None = None  # module paths: kohya names map back to them
    folders: tuple[str, ...] = ()  # the sub-folder(s) of a checkpoint root holding its transformer folder
    #                                (config.json + diffusion_pytorch_model safetensors)
    packed: PackedLayout | None = None  # a layout of its checkpoints that packs the transformer into one file


_KINDS: dict[str, TransformerKind] = {}


def register(kind: TransformerKind) -> None:
    _KINDS[kind.class_name] = kind


def registered() -> list[TransformerKind]:
    return list(_KINDS.values())


def transformer_folders() -> tuple[str, ...]:
    """Every registered family's transformer sub-folder names of a checkpoint root."""
    return tuple(folder for kind in _KINDS.values() for folder in kind.folders)


def packed_layouts() -> list[tuple[str, PackedLayout]]:
    """(family, layout) of every registered family with a packed checkpoint layout."""
    return [(kind.family, kind.packed) for kind in _KINDS.values() if kind.packed is not None]


def kind_for_config(config: dict[str, Any]) -> TransformerKind:
    """The registered transformer a config names (a config without `_class_name`: the published default)."""
    name = config.get("_class_name")
    if name in _KINDS:
        return _KINDS[name]
    if name is None:
        return default_kind()
    raise CheckpointError(f"transformer class {name!r} is not one of {', '.join(_KINDS) or 'the known families'}")


def default_kind() -> TransformerKind:
    """The family whose published config a bare .safetensors file is read with (ACE-Step v1)."""
    for kind in _KINDS.values():
        if kind.published_config is not None:
            return kind
    raise CheckpointError("no transformer config: pass --config (no model family is loaded)")
