"""ACE-Step 1.5 (2B turbo/base/sft, XL 4B) as a model family, on diffusers' own classes (AceStepPipeline,
AceStepTransformer1DModel, AceStepConditionEncoder, AutoencoderOobleck) and a Qwen3 text encoder.

- checkpoint.py  both layouts (diffusers folder/repo, original `Ace-Step1.5` folder converted in memory)
- encode.py      stage 3: what the DiT is fed (VAE latents, condition-encoder states, context latents)
- tiny.py        a tiny random checkpoint in both layouts (tests, demo)
- objective.py, training.py, export.py, generate.py, plan.py: training, LoRA files, rendering, planner
The module-level names below are the interface of `acestep.families.base.ModelFamily`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acestep.lora import models as lora_models
from acestep.lora import naming as lora_naming

from . import lora_keys
from .blocks import BLOCKS
from .files import DIT_FILES, DIT_PREFIX, DIT_WEIGHTS, TEXT_ENCODER_FOLDER, TRANSFORMER_FOLDER
from .lora_keys import NAME

if TYPE_CHECKING:
    from .checkpoint import V15Checkpoint

__all__ = ["BLOCKS", "KEY_NAMING", "NAME", "TRANSFORMER", "generate_main", "model_renderer", "plan_request",
           "recognizes", "renderer", "resolve", "song_stages", "training_parts", "write_tiny"]


def _model_class() -> Any:
    from acestep.core.dependencies import require_diffusers_for_v15

    require_diffusers_for_v15()  # an older diffusers has no AceStep classes: one line naming the fix
    from diffusers import AceStepTransformer1DModel

    return AceStepTransformer1DModel


# the original layout's DiT folder, as `lora merge` reads it and writes a merged copy the official app lists
ORIGINAL_DIT = lora_models.PackedLayout(
    folder="DiT folder", marks=DIT_FILES, weights=DIT_WEIGHTS, prefix=DIT_PREFIX, model_name=lora_keys.diffusers_name,
    use=f"put it beside the checkpoint's vae/ and {TEXT_ENCODER_FOLDER}/ (the official app lists it there; here: "
        "--checkpoint_dir THAT_FOLDER --dit {name})")
TRANSFORMER = lora_models.TransformerKind(NAME, "AceStepTransformer1DModel", _model_class,
                                          folders=(TRANSFORMER_FOLDER,), packed=ORIGINAL_DIT)
lora_models.register(TRANSFORMER)
KEY_NAMING = lora_keys.NAMING  # its LoRA key styles per consumer
lora_naming.register(KEY_NAMING)


def recognizes(files: set[str]) -> bool:
    """A 1.5 checkpoint in either layout (checkpoint.py; imported here, so importing the family needs no torch)."""
    from .checkpoint import recognizes as check

    return check(files)


def resolve(checkpoint_dir: str | Path | None, dit: str | None = None) -> V15Checkpoint:
    """A local folder or hub repo id in either layout; `dit` picks the DiT folder of the original layout."""
    from .checkpoint import resolve as find

    return find(checkpoint_dir, dit)


def song_stages(checkpoint: V15Checkpoint, args: argparse.Namespace) -> Any:
    """Stage 3's encoder for 1.5 (acestep.data.preprocess.SongStages)."""
    from .encode import song_stages_from_args

    return song_stages_from_args(checkpoint, args)


def training_parts(config: Any, checkpoint: V15Checkpoint) -> Any:
    """The trainer's parts (acestep.training.family.TrainingParts): DiT, stored songs, objective, step writer."""
    from .training import parts_from_config

    return parts_from_config(config, checkpoint)


def generate_main(argv: list[str]) -> None:
    """generate.py for 1.5 checkpoints (AceStepPipeline)."""
    from .generate import main

    main(argv)


def renderer(checkpoint: V15Checkpoint, device: str, dtype: str, steps: int | None) -> Any:
    """(prompt, lyrics, duration, seed) -> (wav, sample rate), for the regularization songs."""
    from .generate import renderer as build

    return build(checkpoint, device, dtype, steps)


def model_renderer(checkpoint: V15Checkpoint, device: str, dtype: str, steps: int | None) -> tuple[Any, Any]:
    """`renderer` and the DiT it renders with (a LoRA switched on it changes what it renders: the evaluation)."""
    from .generate import model_renderer as build

    return build(checkpoint, device, dtype, steps)


def write_tiny(root: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """A tiny random checkpoint (both layouts under `root`); the diffusers folder to pass as --checkpoint_dir."""
    from .tiny import write_tiny_v15_checkpoint

    return write_tiny_v15_checkpoint(root, seed, overwrite)[1]
def plan_request(checkpoint: V15Checkpoint) -> Any:
    """The planner's request for this checkpoint's DiT (its config; the weights are not read)."""
    from .plan import request_for_checkpoint

    return request_for_checkpoint(checkpoint)
