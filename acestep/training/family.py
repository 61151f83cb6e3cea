"""What a model family hands the trainer: the machinery (loop, resume, saving, logging) stays family-agnostic.

The CLI layer builds `TrainingParts` for the family it detected (acestep/families/<name>/training.py); nothing in
training/ imports a family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset

from acestep.lora import LoraSettings

from .validation import FixedPointLoss


class StepObjective(Protocol):
    """The loss of one micro-batch; every random draw comes from `generator` (seeded per micro-batch)."""

    def __call__(
        self, transformer: torch.nn.Module, batch: dict[str, Any], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


# (PEFT state dict of the adapter, folder to write into, optimizer step, base_weight=module path -> its frozen base
# weight, which a DoRA's ComfyUI file needs) -> files written
StepFileWriter = Callable[..., list[Path]]


@dataclass
class TrainingParts:
    """A family's model, data and objective, and how it writes a step folder."""

    family: str
    transformer: torch.nn.Module
    songs: Dataset  # items by acestep.training.data.Draw
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    step: StepObjective | None  # None: the trainer's own flow-matching step on v1-shaped batches
    settings: LoraSettings
    base_model: str
    write_step_files: StepFileWriter | None  # None: the trainer's v1 step folder (PEFT adapter + ComfyUI file)
    callbacks: list[Callback] = field(default_factory=list)  # e.g. audio samples during training
    summary: Callable[[Path], list[str]] | None = None  # how to use a saved step folder, in lines
    fixed_loss: FixedPointLoss | None = None  # the validation loss at a given noise level and noise
    val_songs: Dataset | None = None  # held-out songs (--val_songs / --val_dataset), items by Draw
    reg_songs: Dataset | None = None  # regularization songs (--reg_dataset), items by Draw
    config: Any = None  # the TrainConfig with what the family resolved (e.g. auto checkpointing); None: unchanged
    notes: list[str] = field(default_factory=list)  # what the family chose, printed and repeated in the summary
