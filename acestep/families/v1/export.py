"""The files of one saved v1 training step: the PEFT adapter and its baked ComfyUI file (the trainer's
`StepFileWriter` for v1, handed in through `TrainingParts.write_step_files`)."""

from __future__ import annotations

from pathlib import Path

import torch

from acestep.lora import LoraSettings, bake_file, save_adapter
from acestep.lora.adapters import BaseWeight, save_comfyui_file
from acestep.lora.io import ADAPTER_DIR, PEFT_CONFIG_NAME
from acestep.lora.keys import V1_FAMILY
from acestep.training.callbacks import baked_file_name


def write_step_files(tensors: dict[str, torch.Tensor], folder: Path, step: int, *, settings: LoraSettings,
                     base_model: str, exp_name: str, base_weight: BaseWeight | None = None) -> list[Path]:
    """Write one step's files into `folder` (a temp folder the trainer renames when complete): adapter/ and
    EXP-stepN-comfyui.safetensors (a LoRA baked from the adapter; DoRA / LoHa / LoKr written from the tensors, a
    DoRA's from `base_weight`, the frozen weights)."""
    folder = Path(folder)
    weights = save_adapter(tensors, folder / ADAPTER_DIR, settings, base_model, step, V1_FAMILY)
    comfyui = folder / baked_file_name(exp_name, step)
    if settings.adapter_type == "lora":
        bake_file(weights, comfyui)
    else:
        save_comfyui_file(tensors, comfyui, settings, "peft", {"action": "train", "step": step}, base_model,
                          V1_FAMILY, base_weight)
    return [weights, weights.with_name(PEFT_CONFIG_NAME), comfyui]
