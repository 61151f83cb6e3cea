"""The seam: what every model family hands the machinery (data/, training/, lora/), and what the CLI layer asks of it.

A family is a package, acestep/families/<name>/, whose module-level names implement `ModelFamily`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from acestep.core.errors import AcestepError

if TYPE_CHECKING:
    from acestep.training.family import ModelBlocks


@runtime_checkable
class Checkpoint(Protocol):
    """A resolved checkpoint: which family, which layout, where; `describe()` is the one line shown to users."""

    family: str
    layout: str
    root: Path

    def describe(self) -> str: ...


@runtime_checkable
class ModelFamily(Protocol):
    """What every family package exposes (module-level names; `acestep.families.v1`, `acestep.families.v15`).

    - `NAME`: "ace-step-v1" / "ace-step-1.5" (recorded in dataset manifests and LoRA headers)
    - checkpoint: `recognizes(files)` (does this listing, relative posix paths two levels deep, hold one of its
      layouts) and `resolve(checkpoint_dir, dit=None)` (the `Checkpoint`, or a one-line CheckpointError)
    - `song_stages(checkpoint, args)`: stage 3's per-song encoder (`acestep.data.preprocess.SongStages`)
    - `training_parts(config, checkpoint)`: `acestep.training.family.TrainingParts` for the shared trainer
    - `BLOCKS`: its `acestep.training.family.ModelBlocks`: the block list that checkpointing, fp8 and compile act on
      and the module prefixes fp8 stores (the same object its training parts hand the trainer)
    - `TRANSFORMER`: its transformer as the LoRA tools see it (`acestep.lora.models.TransformerKind`: its class, its
      checkpoint layouts for `lora merge`), and
      `KEY_NAMING`: its LoRA key styles per consumer (`acestep.lora.naming.KeyNaming`, in its lora_keys.py); both
      registered on import
    - planner terms: the family's `plan` module (`estimate(request)`, `format_plan(plan)`), and
      `plan_request(checkpoint)`: the planner's request for the checkpoint's model (acestep.families.v1.plan; --preset fits it)
    - generation: `generate_main(argv)` (generate.py), `renderer(checkpoint, device, dtype, steps)`, and
      `model_renderer(...)`: the renderer and the transformer it renders with (the evaluation switches LoRAs on it)
    - `write_tiny(root, seed=0, overwrite=False)`: a tiny random checkpoint; returns the folder to pass as
      --checkpoint_dir (tests, the demo)
    """

    NAME: str
    BLOCKS: ModelBlocks
    TRANSFORMER: Any
    KEY_NAMING: Any

    def recognizes(self, files: set[str]) -> bool: ...

    def resolve(self, checkpoint_dir: str | Path | None, dit: str | None = None) -> Checkpoint: ...

    def song_stages(self, checkpoint: Any, args: argparse.Namespace) -> Any: ...

    def training_parts(self, config: Any, checkpoint: Any) -> Any: ...

    def plan_request(self, checkpoint: Any) -> Any: ...

    def generate_main(self, argv: list[str]) -> None: ...

    def renderer(self, checkpoint: Any, device: str, dtype: str, steps: int | None) -> Any: ...

    def model_renderer(self, checkpoint: Any, device: str, dtype: str, steps: int | None) -> tuple[Any, Any]: ...

    def write_tiny(self, root: str | Path, seed: int = 0, overwrite: bool = False) -> Path: ...


class FamilyMismatch(AcestepError):
    """Two inputs of one run belong to different model families (e.g. a v1 dataset and a 1.5 checkpoint)."""


def check_same_family(found: str, expected: str, what: str, against: str) -> None:
    """Refuse, in one line, to combine inputs of two families (`what` holds `found`, `against` holds `expected`)."""
    if found != expected:
        raise FamilyMismatch(f"{what} is {found}, but {against} is {expected}; use inputs of one model family")
