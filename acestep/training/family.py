"""What a model family hands the trainer: the machinery (loop, resume, saving, logging) stays family-agnostic.

The CLI layer builds `TrainingParts` for the family it detected (acestep/families/<name>/training.py); nothing in
training/ imports a family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # names for the annotations only: the trainer's `--help` loads no torch or Lightning
    import torch
    from lightning.pytorch.callbacks import Callback
    from torch import nn
    from torch.utils.data import Dataset

    from acestep.lora import LoraSettings

    from .optim import OptimizerRecipe
    from .validation import FixedPointLoss


class StepObjective(Protocol):
    """The loss of one micro-batch; song i's random draws come from `generators[i]`, seeded by its slot in the run's
    order, so 2 DDP processes x batch 1 take the step 1 process x batch 2 takes."""

    def __call__(
        self, transformer: torch.nn.Module, batch: dict[str, Any], generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


# (PEFT state dict of the adapter, folder to write into, optimizer step, base_weight=module path -> its frozen base
# weight, which a DoRA's ComfyUI file needs) -> files written
StepFileWriter = Callable[..., list[Path]]


@dataclass(frozen=True)
class ModelBlocks:
    """Where --gradient_checkpointing, --base_dtype fp8 and --compile act in a family's model, by module name.

    All three change modules in place and rename none, so the saved adapter's keys are the same with or without them.
    """

    block_list: str  # the model's attribute holding its nn.ModuleList of transformer blocks, in forward order
    fp8_prefixes: tuple[str, ...]  # module-name prefixes whose Linear / pointwise Conv1d weights fp8 stores

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        from torch import nn

        blocks = getattr(model, self.block_list, None)
        if not isinstance(blocks, nn.ModuleList):
            raise ValueError(f"{type(model).__name__} has no block list {self.block_list!r}")
        return blocks


# (the run's config, GPU GB to plan for, "cuda" / "cpu", the planner's base dtype name) -> the family's planner
# request for the model being trained (it has .plan(), .block_count and checkpointed_blocks)
PlanRequestFor = Callable[[Any, float, str, str], Any]


@dataclass
class TrainingParts:
    """A family's model, data and objective, and how it writes a step folder."""

    family: str
    transformer: torch.nn.Module
    songs: Dataset  # items by acestep.training.data.Draw
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    step: StepObjective  # the loss of one micro-batch
    settings: LoraSettings
    base_model: str
    write_step_files: StepFileWriter  # the files of a saved step folder (adapter, ComfyUI file, ...)
    blocks: ModelBlocks  # what checkpointing per block, fp8 and compile act on
    recipe: OptimizerRecipe  # the family's optimizer defaults, for what the user leaves unset
    callbacks: list[Callback] = field(default_factory=list)  # e.g. audio samples during training
    summary: Callable[[Path], list[str]] | None = None  # how to use a saved step folder, in lines
    fixed_loss: FixedPointLoss | None = None  # the validation loss at a given noise level and noise (--val_songs)
    val_songs: Dataset | None = None  # held-out songs (--val_songs / --val_dataset), items by Draw
    reg_songs: Dataset | None = None  # regularization songs (--reg_dataset), items by Draw
    resolved: dict[str, Any] = field(default_factory=dict)  # config fields the family filled in (train_config.json)
    notes: list[str] = field(default_factory=list)  # what the family's objective uses, for the run summary
    plan_request: PlanRequestFor | None = None  # the planner's request for this model (auto checkpointing)
