"""The trainer CLI's family layer: which family --checkpoint_dir holds, and that family's training parts.

v1 keeps the trainer's own default path (None here); 1.5 hands its DiT, stored songs, objective and step-folder
writer to the shared machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from acestep.families import V1, V15, check_same_family, resolve

if TYPE_CHECKING:
    from acestep.training.config import TrainConfig
    from acestep.training.family import TrainingParts


def training_parts_for(config: TrainConfig) -> TrainingParts | None:
    """None for ACE-Step v1 (the trainer builds v1 itself); the family's parts otherwise. A dataset of the
    other family is refused in one line."""
    checkpoint = None
    if config.checkpoint_dir is not None:
        family, checkpoint = resolve(config.checkpoint_dir, config.dit)
        print(checkpoint.describe())
    if checkpoint is None or family.NAME != V15:
        from acestep.data.preprocessed import dataset_family

        found = dataset_family(config.dataset_path)
        if found is not None:
            check_same_family(found, V1, f"the dataset {config.dataset_path}", "--checkpoint_dir (ACE-Step v1)")
        return None
    from acestep.families.v15.training import parts_from_config

    return parts_from_config(config, checkpoint)


def plan_model_for(config: TrainConfig) -> Any:
    """The planner's request for the model of --checkpoint_dir (what --preset fits); None: the published v1."""
    if config.checkpoint_dir is None:
        return None
    family, checkpoint = resolve(config.checkpoint_dir, config.dit)
    return family.plan_request(checkpoint)
