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
from typing import Any

from acestep.lora import models as lora_models

from .blocks import BLOCKS
from .checkpoint import NAME, V15Checkpoint, recognizes, resolve

__all__ = ["BLOCKS", "NAME", "TRANSFORMER", "V15Checkpoint", "generate_main", "model_renderer", "plan_request",
           "recognizes", "renderer", "resolve", "song_stages", "training_parts", "write_tiny"]


def _model_class() -> Any:
    from acestep.core.dependencies import require_diffusers_for_v15

    require_diffusers_for_v15()  # an older diffusers has no AceStep classes: one line naming the fix
    from diffusers import AceStepTransformer1DModel

    return AceStepTransformer1DModel


TRANSFORMER = lora_models.TransformerKind(NAME, "AceStepTransformer1DModel", _model_class)
lora_models.register(TRANSFORMER)


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
