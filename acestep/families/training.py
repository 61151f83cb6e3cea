"""The trainer CLI's family layer: which family --checkpoint_dir holds, and that family's training parts.

Every family hands the shared trainer (acestep.training.run) the same `TrainingParts`; a dataset of another family
than the checkpoint's is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from acestep.data.preprocessed import dataset_family
from acestep.families import V1, resolve
from acestep.families.base import check_same_family
from acestep.training import cli
from acestep.training.config import TrainConfig, given_flags
from acestep.training.config import parse_config as parse_options
from acestep.training.family import TrainingParts
from acestep.training.run import TrainResult, preflight
from acestep.training.run import run_training as run_with_parts


def training_parts_for(config: TrainConfig) -> TrainingParts:
    """The parts of the family of --checkpoint_dir (ACE-Step v1 when none is given)."""
    if config.checkpoint_dir is None:
        family = None
    else:
        family, checkpoint = resolve(config.checkpoint_dir, config.dit)
        print(checkpoint.describe())
    if family is None or family.NAME == V1:
        found = dataset_family(config.dataset_path) if config.dataset_path else None
        if found is not None:
            check_same_family(found, V1, f"the dataset {config.dataset_path}", "--checkpoint_dir (ACE-Step v1)")
        from acestep.families.v1.training import training_parts

        return training_parts(config)
    return family.training_parts(config, checkpoint)


def run_training(config: TrainConfig, transformer: Any = None, dataset: Any = None, base_model: str | None = None,
                 parts: TrainingParts | None = None) -> TrainResult:
    """Train per `config`: on `parts`, or on the parts of the family of --checkpoint_dir (ACE-Step v1 by default;
    tests and the demo may pass a ready v1 transformer or dataset)."""
    if parts is None:
        preflight(config)
        overrides = {k: v for k, v in (("transformer", transformer), ("dataset", dataset), ("base_model", base_model))
                     if v is not None}
        if overrides:  # ready v1 objects: no checkpoint to look at
            from acestep.families.v1.training import training_parts

            parts = training_parts(config, **overrides)
        else:
            parts = training_parts_for(config)
    return run_with_parts(config, parts)


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The trainer's options, with --preset applied (the fastest settings the planner says fit the card)."""
    config = parse_options(argv)
    if config.preset:
        from acestep.presets import apply_preset

        config = apply_preset(config, given_flags(argv))
        config.validate()
    return config


def main(argv: list[str] | None = None,
         build_parts: Callable[[TrainConfig], TrainingParts] = training_parts_for) -> None:
    """`python trainer_new.py ...`: train a LoRA for the family of --checkpoint_dir."""
    cli.main(argv, build_parts=build_parts, parse=parse_config)
