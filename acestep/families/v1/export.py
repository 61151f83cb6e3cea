"""The files of one saved v1 training step, the PEFT adapter and its baked ComfyUI file (the trainer's
`StepFileWriter` for v1, handed in through `TrainingParts.write_step_files`), and how to use them (`summary`)."""

from __future__ import annotations

from pathlib import Path

import torch

from acestep.families.v1.lora_keys import NAME as V1_FAMILY
from acestep.lora import LoraSettings, bake_file, save_adapter
from acestep.lora.adapters import BaseWeight, file_kind, save_comfyui_file
from acestep.lora.io import ADAPTER_DIR, PEFT_CONFIG_NAME
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


def pipeline_lines(comfyui_file: Path | None) -> list[str]:
    """How the upstream pipeline loads the file; a DoRA / LoHa / LoKr file goes to our generate.py instead."""
    if comfyui_file is not None and comfyui_file.is_file() and file_kind(comfyui_file) != "lora":
        return [f"  generate.py: --lora {comfyui_file}:1.0 (the upstream ACE-Step pipeline loads plain LoRA only)."]
    return ["  ACE-Step pipeline: put that same file in a folder as pytorch_lora_weights.safetensors and call",
            "    load_lora(folder) with weight 1.0."]


def usage_lines(step_dir: Path) -> list[str]:
    """How to use a saved v1 step folder, for the end-of-run summary."""
    comfy = next(iter(sorted(step_dir.glob("*-comfyui.safetensors"))), None)
    return [
        f"  ComfyUI: copy {comfy} into ComfyUI/models/loras and load it at strength 1.0.",
        *pipeline_lines(comfy),
        f"  PEFT / diffusers: {step_dir / ADAPTER_DIR} is the un-baked adapter at its trained scale "
        "(PeftModel.from_pretrained(model, folder), or load_lora_adapter(folder, "
        "weight_name='adapter_model.safetensors', prefix='base_model.model')).",
    ]
