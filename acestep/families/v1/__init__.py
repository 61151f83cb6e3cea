"""ACE-Step v1 (3.5B) as a model family: everything particular to it lives in this package.

- checkpoint.py   the published `ACE-Step/ACE-Step-v1-3.5B` layout (local folder or hub download)
- models/         the transformer, DC-AE, vocoder, lyric encoder, SSL models
- lyrics/         the lyric tokenizer; text_encoder.py the UMT5 prompt encoder
- encoders.py     stage 3: the models it runs and the per-song encoder (`SongPipeline`)
- training.py     the trainer's parts (model, songs, fp8 / auto checkpointing, samples); probe.py a bare step
- songs.py        the stored songs as the trainer draws them (crop) and their batches (`collate_songs`)
- objective.py    the flow-matching objective and the trainer's step; export.py a step folder's files
- blocks.py       `BLOCKS`: where checkpointing per block, fp8 and compile act
- plan.py         the planner's terms (`--gradient_checkpointing auto` resolves with them in training.py)
- pipeline/, generate.py      sampling; samples.py audio samples during training
- tiny.py         a tiny random checkpoint in the published layout (tests, demo)
The module-level names below are the interface of `acestep.families.base.ModelFamily`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acestep.families.v1 import lora_keys
from acestep.families.v1.blocks import BLOCKS
from acestep.families.v1.checkpoint import PARTS, V1Checkpoint, resolve_checkpoint
from acestep.lora import models as lora_models
from acestep.lora import naming as lora_naming

if TYPE_CHECKING:
    from acestep.data.preprocess import SongStages
    from acestep.training.config import TrainConfig
    from acestep.training.family import TrainingParts

__all__ = ["BLOCKS", "KEY_NAMING", "NAME", "TRANSFORMER", "V1Checkpoint", "generate_main", "model_renderer", "plan_request",
           "recognizes", "renderer", "resolve", "song_stages", "training_parts", "write_tiny"]
NAME = lora_keys.NAME


def _model_class() -> Any:
    from acestep.families.v1.models import ACEStepTransformer2DModel

    return ACEStepTransformer2DModel


def _published_config() -> dict[str, Any]:
    from acestep.families.v1.models.configs import PUBLISHED_TRANSFORMER_CONFIG

    return dict(PUBLISHED_TRANSFORMER_CONFIG)


def _published_modules() -> list[str]:
    """Every module path of the published transformer (built on `meta`): kohya names map back to them."""
    import torch

    with torch.device("meta"):
        model = _model_class()(**_published_config())
    return [name for name, _ in model.named_modules() if name]


TRANSFORMER = lora_models.TransformerKind(NAME, "ACEStepTransformer2DModel", _model_class, _published_config,
                                          _published_modules, folders=(PARTS["transformer"][0],))
lora_models.register(TRANSFORMER)
KEY_NAMING = lora_keys.NAMING  # its LoRA key styles per consumer
lora_naming.register(KEY_NAMING)


def recognizes(files: set[str]) -> bool:
    transformer_folder = PARTS["transformer"][0]
    return f"{transformer_folder}/config.json" in files or transformer_folder in files


def resolve(checkpoint_dir: str | Path | None, dit: str | None = None) -> V1Checkpoint:
    return V1Checkpoint(resolve_checkpoint(checkpoint_dir))


def song_stages(checkpoint: V1Checkpoint, args: argparse.Namespace) -> SongStages:
    """The v1 encoders (DC-AE, UMT5, lyric tokenizer, optional MERT/mHuBERT) for stage 3's options."""
    from acestep.families.v1.encoders import v1_song_stages

    return v1_song_stages(argparse.Namespace(**{**vars(args), "checkpoint_dir": str(checkpoint.root)}))


def training_parts(config: TrainConfig, checkpoint: V1Checkpoint | None = None) -> TrainingParts:
    """The trainer's parts: the transformer of --checkpoint_dir, the stored songs of --dataset_path."""
    from acestep.families.v1.training import training_parts as build

    return build(config)


def generate_main(argv: list[str]) -> None:
    """generate.py for v1 checkpoints."""
    from acestep.families.v1.generate import main

    main(argv)


def renderer(checkpoint: V1Checkpoint, device: str, dtype: str, steps: int | None) -> Any:
    """(prompt, lyrics, duration, seed) -> (wav, sample rate), for the regularization songs."""
    from acestep.families.v1.generate import renderer as build

    return build(checkpoint, device, dtype, steps)


def model_renderer(checkpoint: V1Checkpoint, device: str, dtype: str, steps: int | None) -> tuple[Any, Any]:
    """`renderer` and the transformer it renders with (a LoRA switched on it changes what it renders: the
    evaluation)."""
    from acestep.families.v1.generate import model_renderer as build

    return build(checkpoint, device, dtype, steps)


def write_tiny(root: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """A tiny random checkpoint in the published layout (tests, the demo); the folder to pass as --checkpoint_dir."""
    from acestep.families.v1.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(root, seed, overwrite)


def plan_request(checkpoint: V1Checkpoint) -> Any:
    """The planner's request for this checkpoint's transformer (its config; the weights are not read)."""
    from acestep.families.v1.plan import PlanRequest

    config = _model_class().load_config(checkpoint.paths.transformer)
    return PlanRequest(transformer_config={k: v for k, v in config.items() if not k.startswith("_")})
