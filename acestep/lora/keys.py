"""LoRA key spellings: read any spelling ComfyUI or diffusers writes, write the three that ComfyUI maps for ACE v1.

peft:            `transformer_blocks.0.attn.to_q.lora_A.weight` (bare path; ComfyUI + upstream pipeline)
diffusion_model: `diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight` + `.alpha` (ComfyUI only)
kohya:           `lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight` + `.alpha` (ComfyUI, kohya tools)
Facts: shared/reference/lora-format.md section 1.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

STYLES = ("peft", "diffusion_model", "kohya")
KOHYA_PREFIX = "lora_unet_"
# Longest first, so `.lora_A.default.weight` is not mistaken for something shorter.
FACTOR_SUFFIXES = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".alpha", "alpha"),
)
# Prefixes some tools put before the module path; stripped on reading.
PATH_PREFIXES = ("diffusion_model.", "base_model.model.", "transformer.")


def split_key(key: str) -> tuple[str, str] | None:
    """(stem, role) with role in down/up/alpha, or None for a key that is no LoRA factor."""
    for suffix, role in FACTOR_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def kohya_name(module: str) -> str:
    return KOHYA_PREFIX + module.replace(".", "_")


def module_path(stem: str, kohya_lookup: dict[str, str] | None) -> str | None:
    """The model's module path for a key stem; kohya names need a lookup because `_` is also inside names."""
    if stem.startswith(KOHYA_PREFIX):
        lookup = kohya_lookup if kohya_lookup is not None else published_kohya_lookup()
        return lookup.get(stem)
    for prefix in PATH_PREFIXES:
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


def detect_style(keys: Iterable[str]) -> str:
    keys = list(keys)
    if any(key.startswith(KOHYA_PREFIX) for key in keys):
        return "kohya"
    if any(key.startswith("diffusion_model.") for key in keys):
        return "diffusion_model"
    return "peft"


def factor_keys(module: str, style: str) -> tuple[str, str, str | None]:
    """(down key, up key, alpha key or None) of a module path in one of STYLES."""
    if style == "peft":
        return f"{module}.lora_A.weight", f"{module}.lora_B.weight", None
    if style == "diffusion_model":
        stem = f"diffusion_model.{module}"
        return f"{stem}.lora_A.weight", f"{stem}.lora_B.weight", f"{stem}.alpha"
    if style == "kohya":
        stem = kohya_name(module)
        return f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"
    raise ValueError(f"unknown key style {style!r}; choose one of {', '.join(STYLES)}")


def kohya_lookup_for(module_names: Iterable[str]) -> dict[str, str]:
    return {kohya_name(name): name for name in module_names}


@functools.cache
def published_kohya_lookup() -> dict[str, str]:
    """kohya name -> module path for every module of the published ACE-Step v1 transformer (built on `meta`)."""
    import torch

    from ..models import ACEStepTransformer2DModel
    from ..models.configs import PUBLISHED_TRANSFORMER_CONFIG

    with torch.device("meta"):
        model = ACEStepTransformer2DModel(**PUBLISHED_TRANSFORMER_CONFIG)
    return kohya_lookup_for(name for name, _ in model.named_modules() if name)
