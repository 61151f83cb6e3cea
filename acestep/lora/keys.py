"""LoRA key spellings: read any spelling ComfyUI or diffusers writes; write those ComfyUI and diffusers map.

What is common to every family lives here (factor suffixes, the PEFT and kohya spellings of a module path, adapter
types); what one family's styles are and how they spell a module is its `naming.KeyNaming`
(acestep/families/<name>/lora_keys.py), asked through the functions below.
Facts: shared/reference/lora-format.md sections 1 and 5b; ComfyUI comfy/lora.py `model_lora_keys_unet`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from .models import registered
from .naming import Keys, key_styles, naming_for, naming_of_style, namings

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


def bare_keys(stem: str) -> Keys:
    """PEFT's factor names on a stem, without `.alpha` (PEFT keeps its scale in the config)."""
    return f"{stem}.lora_A.weight", f"{stem}.lora_B.weight", None


def kohya_name(module: str) -> str:
    return KOHYA_PREFIX + module.replace(".", "_")


def path_prefixes() -> tuple[str, ...]:
    """Prefixes some tools put before the module path (PEFT's, and each family's styles'), longest first."""
    found = {PEFT_PREFIX, *(prefix for naming in namings() for prefix in naming.prefixes)}
    return tuple(sorted(found, key=len, reverse=True))


def module_path(stem: str, kohya_lookup: dict[str, str] | None) -> str | None:
    """The model's module path for a key stem; kohya names need a lookup because `_` is also inside names."""
    if stem.startswith(KOHYA_PREFIX):
        lookup = kohya_lookup if kohya_lookup is not None else published_kohya_lookup()
        return lookup.get(stem)
    for prefix in path_prefixes():
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


def detect_family(modules: Iterable[str]) -> str | None:
    """The family whose naming owns these module paths (None when none does)."""
    modules = list(modules)
    return next((naming.family for naming in namings() if naming.owns(modules)), None)


def model_names(parts: dict[str, dict], family: str | None) -> dict[str, dict]:
    """Module paths as a file spells them -> the model's (a family whose files use other names renames them)."""
    naming = naming_for(family or detect_family(parts))
    if naming is None:
        return parts
    return {naming.model_name(module): roles for module, roles in parts.items()}


def detect_style(keys: Iterable[str]) -> str:
    """The style a file's tensor keys are spelled in (the unmarked family's answer is the last resort)."""
    keys = list(keys)
    for naming in namings():
        style = naming.spelled_in(keys)
        if style is not None:
            return style
    raise ValueError("no model family is loaded to tell the key style")


def factor_keys(module: str, style: str | None) -> Keys:
    """(down key, up key, alpha key or None) of a module path in one of key_styles(); None: PEFT's bare names."""
    if style is None:
        return bare_keys(module)
    naming = naming_of_style(style)
    if naming is None:
        raise ValueError(f"unknown key style {style!r}; choose one of {', '.join(key_styles())}")
    return naming.keys(module, style)


def kohya_lookup_for(module_names: Iterable[str]) -> dict[str, str]:
    return {kohya_name(name): name for name in module_names}


def published_kohya_lookup() -> dict[str, str]:
    """kohya name -> module path for every module of the published transformers the families registered."""
    return _published_lookup(tuple(kind.class_name for kind in registered()))


@functools.cache
def _published_lookup(kinds: tuple[str, ...]) -> dict[str, str]:
    return kohya_lookup_for(name for kind in registered() if kind.class_name in kinds
                            and kind.published_modules is not None for name in kind.published_modules())
