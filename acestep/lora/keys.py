"""LoRA key spellings: read any spelling ComfyUI or diffusers writes; write those ComfyUI and diffusers map.

ACE-Step v1:
peft:            `transformer_blocks.0.attn.to_q.lora_A.weight` (bare path; ComfyUI + upstream pipeline)
diffusion_model: `diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight` + `.alpha` (ComfyUI only)
kohya:           `lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight` + `.alpha` (ComfyUI, kohya tools)
ACE-Step 1.5 (module names inside our tools are the diffusers DiT's, `layers.0.self_attn.to_q`):
v15_comfyui:     `base_model.model.layers.0.self_attn.q_proj.lora_A.weight`: the official trainer's PEFT keys on the
                 original decoder names, which ComfyUI maps onto `diffusion_model.decoder.*` (and diffusers converts)
v15_diffusers:   `transformer.layers.0.self_attn.to_q.lora_A.weight` (AceStepPipeline.load_lora_weights)
Facts: shared/reference/lora-format.md sections 1 and 5b; ComfyUI comfy/lora.py `model_lora_keys_unet` (ACEStep15).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from acestep.lora.v15_names import to_diffusers_name, to_original_name

from .models import registered

V1_STYLES = ("peft", "diffusion_model", "kohya")
V15_STYLES = ("v15_comfyui", "v15_diffusers")
STYLES = V1_STYLES + V15_STYLES
V1_FAMILY = "ace-step-v1"
V15_FAMILY = "ace-step-1.5"
DEFAULT_STYLE = {V1_FAMILY: "peft", V15_FAMILY: "v15_comfyui"}
KOHYA_PREFIX = "lora_unet_"
PEFT_PREFIX = "base_model.model."

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
# Tensor names of the other adapter types (ComfyUI's and PEFT's names agree), and DoRA's extra tensors.
HADA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
MAGNITUDE = "lora_magnitude_vector"  # PEFT's DoRA magnitude m [out]
DORA_SCALE = "dora_scale"  # ComfyUI's DoRA magnitude
# Prefixes some tools put before the module path; stripped on reading.
PATH_PREFIXES = ("diffusion_model.decoder.", "diffusion_model.", PEFT_PREFIX, "transformer.")


def adapter_kind(keys: Iterable[str]) -> str:
    """The adapter type the tensor names show: lora, dora, loha or lokr."""
    suffixes = {key.removesuffix(".weight").rsplit(".", 1)[-1] for key in keys}
    if suffixes & set(HADA):
        return "loha"
    if suffixes & set(LOKR):
        return "lokr"
    if suffixes & {DORA_SCALE, MAGNITUDE}:
        return "dora"
    return "lora"


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


def v15_original_name(module: str) -> str:
    """DiT module `layers.0.self_attn.to_q` -> `layers.0.self_attn.q_proj` (names that agree pass through)."""
    return to_original_name(f".{module}.").strip(".")


def v15_diffusers_name(module: str) -> str:
    """The inverse of v15_original_name."""
    return to_diffusers_name(f".{module}.").strip(".")


def detect_family(modules: Iterable[str]) -> str | None:
    """ACE-Step 1.5 DiT modules live under `layers.N`, v1's under `transformer_blocks.N` / `lyric_encoder`."""
    modules = list(modules)
    if modules and all(m.startswith("layers.") for m in modules):
        return V15_FAMILY
    if any(m.startswith(("transformer_blocks.", "lyric_encoder.")) for m in modules):
        return V1_FAMILY
    return None


def detect_style(keys: Iterable[str]) -> str:
    keys = list(keys)
    stems = [key for key in keys if key.startswith(("base_model.model.layers.", "transformer.layers.",
                                                    "diffusion_model.decoder.layers."))]
    if stems and len(stems) == len(keys):
        return "v15_diffusers" if stems[0].startswith("transformer.") else "v15_comfyui"
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
    if style in V15_STYLES:  # no .alpha: ComfyUI then applies 1.0, diffusers alpha = rank; the scale is baked in
        stem = PEFT_PREFIX + v15_original_name(module) if style == "v15_comfyui" else f"transformer.{module}"
        return f"{stem}.lora_A.weight", f"{stem}.lora_B.weight", None
    raise ValueError(f"unknown key style {style!r}; choose one of {', '.join(STYLES)}")


def kohya_lookup_for(module_names: Iterable[str]) -> dict[str, str]:
    return {kohya_name(name): name for name in module_names}


def published_kohya_lookup() -> dict[str, str]:
    """kohya name -> module path for every module of the published transformers the families registered."""
    return _published_lookup(tuple(kind.class_name for kind in registered()))


@functools.cache
def _published_lookup(kinds: tuple[str, ...]) -> dict[str, str]:
    return kohya_lookup_for(name for kind in registered() if kind.class_name in kinds
                            and kind.published_modules is not None for name in kind.published_modules())
