"""ACE-Step v1's LoRA key styles, handed to the LoRA tools (acestep.lora.naming) when the package is imported.

peft:            `transformer_blocks.0.attn.to_q.lora_A.weight` (bare path; ComfyUI + upstream pipeline)
diffusion_model: `diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight` + `.alpha` (ComfyUI only)
kohya:           `lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight` + `.alpha` (ComfyUI, kohya tools)
Facts: shared/reference/lora-format.md section 1; ComfyUI comfy/lora.py `model_lora_keys_unet`.
"""

from __future__ import annotations

from collections.abc import Sequence

from acestep.lora.keys import KOHYA_PREFIX, bare_keys, kohya_name
from acestep.lora.naming import KeyNaming, Keys

NAME = "ace-step-v1"
COMFYUI_PREFIX = "diffusion_model."
# the upstream pipeline loads peft files through diffusers' PEFT loader, so it reads their header as diffusers does
STYLES = {"peft": ("comfyui", "diffusers"), "diffusion_model": ("comfyui",), "kohya": ("comfyui", "kohya")}


def owns(modules: Sequence[str]) -> bool:
    """v1's transformer modules live under `transformer_blocks.N` and `lyric_encoder`."""
    return any(module.startswith(("transformer_blocks.", "lyric_encoder.")) for module in modules)


def keys(module: str, style: str) -> Keys:
    if style == "diffusion_model":
        stem = COMFYUI_PREFIX + module
        return f"{stem}.lora_A.weight", f"{stem}.lora_B.weight", f"{stem}.alpha"
    if style == "kohya":
        stem = kohya_name(module)
        return f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"
    return bare_keys(module)


def spelled_in(tensor_keys: Sequence[str]) -> str:
    """Files from before the family header are v1's, so any spelling that is not kohya or prefixed is peft."""
    if any(key.startswith(KOHYA_PREFIX) for key in tensor_keys):
        return "kohya"
    if any(key.startswith(COMFYUI_PREFIX) for key in tensor_keys):
        return "diffusion_model"
    return "peft"


HELP = ("v1: peft (default; bare names, ComfyUI + upstream pipeline), diffusion_model / kohya (prefixed names with "
        ".alpha = rank; ComfyUI, kohya tools).")
NAMING = KeyNaming(NAME, STYLES, owns, keys, spelled_in, prefixes=(COMFYUI_PREFIX,), unmarked=True, help=HELP)
