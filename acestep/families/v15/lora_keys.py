"""ACE-Step 1.5's LoRA key styles, handed to the LoRA tools (acestep.lora.naming) when the package is imported.

Module names inside our tools are the diffusers DiT's (`layers.0.self_attn.to_q`).
v15_comfyui:   `base_model.model.layers.0.self_attn.q_proj.lora_A.weight`: the official trainer's PEFT keys on the
               original decoder names, which ComfyUI maps onto `diffusion_model.decoder.*` (and diffusers converts)
v15_diffusers: `transformer.layers.0.self_attn.to_q.lora_A.weight` (AceStepPipeline.load_lora_weights)
Neither has `.alpha`: ComfyUI then applies 1.0, diffusers alpha = rank; the scale is baked in.
Facts: shared/reference/lora-format.md section 5b; ComfyUI comfy/lora.py `model_lora_keys_unet` (ACEStep15).
"""

from __future__ import annotations

from collections.abc import Sequence

from acestep.lora.keys import PEFT_PREFIX, bare_keys
from acestep.lora.naming import KeyNaming, Keys

from .names import to_diffusers_name, to_original_name

NAME = "ace-step-1.5"
DIFFUSERS_PREFIX = "transformer."  # AceStepPipeline's component
COMFYUI_PREFIX = "diffusion_model.decoder."  # where ComfyUI keeps the DiT of the original checkpoint
STYLES = {"v15_comfyui": ("comfyui",), "v15_diffusers": ("diffusers",)}
FILE_PREFIXES = tuple(prefix + "layers." for prefix in (PEFT_PREFIX, DIFFUSERS_PREFIX, COMFYUI_PREFIX))


def original_name(module: str) -> str:
    """DiT module `layers.0.self_attn.to_q` -> `layers.0.self_attn.q_proj` (names that agree pass through)."""
    return to_original_name(f".{module}.").strip(".")


def diffusers_name(module: str) -> str:
    """The inverse of original_name."""
    return to_diffusers_name(f".{module}.").strip(".")


def owns(modules: Sequence[str]) -> bool:
    """The 1.5 DiT's modules all live under `layers.N`."""
    return bool(modules) and all(module.startswith("layers.") for module in modules)


def keys(module: str, style: str) -> Keys:
    if style == "v15_comfyui":
        return bare_keys(PEFT_PREFIX + original_name(module))
    return bare_keys(DIFFUSERS_PREFIX + module)


def spelled_in(tensor_keys: Sequence[str]) -> str | None:
    stems = [key for key in tensor_keys if key.startswith(FILE_PREFIXES)]
    if stems and len(stems) == len(tensor_keys):
        return "v15_diffusers" if stems[0].startswith(DIFFUSERS_PREFIX) else "v15_comfyui"
    return None


HELP = ("1.5: v15_comfyui (default; base_model.model.<original name>, ComfyUI), v15_diffusers (transformer.* keys for "
        "AceStepPipeline.load_lora_weights).")
NAMING = KeyNaming(NAME, STYLES, owns, keys, spelled_in, prefixes=(COMFYUI_PREFIX, DIFFUSERS_PREFIX),
                   model_name=diffusers_name, help=HELP)
