"""The trainer CLI's family layer: which family --checkpoint_dir holds, and that family's training parts.

Every family hands the shared trainer (acestep.training.run) the same `TrainingParts`; a dataset of another family
than the checkpoint's is refused in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from acestep.families import V1, resolve
from acestep.families.base import check_same_family
from acestep.training import cli
from acestep.training.config import TrainConfig, given_flags
from acestep.training.config import parse_config as parse_options

if TYPE_CHECKING:
    from acestep.training.family import TrainingParts
    from acestep.training.run import TrainResult


def training_parts_for(config: TrainConfig) -> TrainingParts:
    """The parts of the family of --checkpoint_dir (ACE-Step v1 when none is given)."""
    if config.checkpoint_dir is None:
        family = None
    else:
        family, checkpoint = resolve(config.checkpoint_dir, config.dit)
        print(checkpoint.describe())
    if family is None or family.NAME == V1:
        from acestep.data.preprocessed import dataset_family

        found = dataset_family(config.dataset_path) if config.dataset_path else None
        if found is not None:
            check_same_family(found, V1, f"the dataset {config.dataset_path}", "--checkpoint_dir (ACE-Step v1)")
        from acestep.families.v1.training import training_parts

        return training_parts(config)
    return family.training_parts(config, checkpoint)


def plan_model_for(config: TrainConfig) -> Any:
    """The planner's request for the model of --checkpoint_dir (what --preset fits); None: the published v1."""
    if config.checkpoint_dir is None:
        return None
    family, checkpoint = resolve(config.checkpoint_dir, config.dit)
    return family.plan_request(checkpoint)


def with_evaluation(config: TrainConfig, parts: TrainingParts) -> TrainingParts:
    """--eval_every: the listening evaluation of the saved steps (acestep.evaluation) joins the family's callbacks."""
    if config.eval_every <= 0:
        return parts
    from acestep.evaluation.during_training import eval_callback

    return dataclasses.replace(parts, callbacks=[*parts.callbacks, eval_callback(config)])


def parts_with_evaluation(config: TrainConfig) -> TrainingParts:
    """The family's parts for the trainer CLI, with --eval_every's callback."""
    return with_evaluation(config, training_parts_for(config))


def run_training(config: TrainConfig, transformer: Any = None, dataset: Any = None, base_model: str | None = None,
                 parts: TrainingParts | None = None) -> TrainResult:
    """Train per `config`: on `parts`, or on the parts of the family of --checkpoint_dir (ACE-Step v1 by default;
    tests and the demo may pass a ready v1 transformer or dataset)."""
    from acestep.training.lock import run_folder_lock
    from acestep.training.run import preflight
    from acestep.training.run import run_training as run_with_parts

    config.validate()
    with run_folder_lock(config.run_dir):  # before any check of the folder: a second trainer refuses at once
        if parts is None:
            preflight(config)
            overrides = {k: v for k, v in (("transformer", transformer), ("dataset", dataset),
                                           ("base_model", base_model)) if v is not None}
            if overrides:  # ready v1 objects: no checkpoint to look at
                from acestep.families.v1.training import training_parts

                parts = training_parts(config, **overrides)
            else:
                parts = training_parts_for(config)
        return run_with_parts(config, with_evaluation(config, parts))


def parse_config(argv: list[str] | None = None,
                 plan_model: Callable[[TrainConfig], Any] = plan_model_for) -> TrainConfig:
    """The trainer's options, with --preset applied (the fastest settings the planner says fit the card for the
    model `plan_model` names: by default the family's request for --checkpoint_dir)."""
    config = parse_options(argv)
    if config.preset:
        from acestep.presets import apply_preset

        config = apply_preset(config, given_flags(argv), plan_model(config))
        config.validate()
    return config


def main(argv: list[str] | None = None,
         build_parts: Callable[[TrainConfig], TrainingParts] = parts_with_evaluation) -> None:
    """`python trainer_new.py ...`: train a LoRA for the family of --checkpoint_dir."""
    cli.main(argv, build_parts=build_parts, parse=parse_config)
