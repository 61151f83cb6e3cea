"""Bake the trained LoRA scale into the weights so every loader applies it exactly once.

ComfyUI applies alpha/rank only from `.alpha` tensors (else 1.0) and ignores the header; the upstream pipeline
(diffusers/PEFT) uses scale 1 when the file carries no PEFT config. So a file whose factors already hold
sqrt(s) each (s = alpha/sqrt(r) with rsLoRA, alpha/r without) and whose header holds no PEFT config gives the
trained delta W at strength 1 in both. Facts: shared/reference/lora-format.md section 6.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from ..errors import AcestepError
from .io import (
    DIFFUSERS_METADATA,
    META_BAKED_SCALE,
    META_BASE_MODEL,
    load_adapter,
    module_pairs,
    save_safetensors_atomic,
    settings_from_metadata,
)
from .settings import LoraSettings

KEY_STYLES = ("peft", "diffusion_model", "kohya")


def baked_key_names(module: str, style: str) -> tuple[str, str, str | None]:
    """(A key, B key, alpha key or None) for a module path in the requested key style."""
    if style == "peft":
        return f"{module}.lora_A.weight", f"{module}.lora_B.weight", None
    if style == "diffusion_model":
        prefix = f"diffusion_model.{module}"
        return f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight", f"{prefix}.alpha"
    prefix = "lora_unet_" + module.replace(".", "_")
    return f"{prefix}.lora_down.weight", f"{prefix}.lora_up.weight", f"{prefix}.alpha"


def bake_tensors(
    tensors: dict[str, torch.Tensor], settings: LoraSettings, style: str = "peft"
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Scaled factors (fp32 multiply, stored dtype kept) and the per-module ranks read from the shapes."""
    if style not in KEY_STYLES:
        raise AcestepError(f"unknown key style {style!r}; choose one of {', '.join(KEY_STYLES)}")
    baked: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for module, (a, b) in module_pairs(tensors).items():
        rank = a.shape[0]
        root = math.sqrt(settings.module_scale(module, rank))
        a_key, b_key, alpha_key = baked_key_names(module, style)
        baked[a_key] = (a.float() * root).to(a.dtype)
        baked[b_key] = (b.float() * root).to(b.dtype)
        if alpha_key is not None:
            # alpha = rank makes ComfyUI's alpha/rank exactly 1: the scale is already in the weights.
            baked[alpha_key] = torch.tensor(float(rank))
        ranks[module] = rank
    if not ranks:
        raise AcestepError("no LoRA factors (*.lora_A.weight / *.lora_B.weight) found in the file")
    return baked, ranks


def neutral_metadata(settings: LoraSettings, ranks: dict[str, int], base_model: str | None) -> dict[str, str]:
    """A header that no loader turns into a second scale; provenance under our own keys."""
    metadata = {
        "format": "pt",
        META_BAKED_SCALE: json.dumps({"r": settings.r, "lora_alpha": settings.lora_alpha,
                                      "use_rslora": settings.use_rslora, "scale": settings.scale}),
    }
    if base_model:
        metadata[META_BASE_MODEL] = base_model
    distinct = sorted(set(ranks.values()))
    if len(distinct) > 1:
        # diffusers would otherwise take the first module's rank as alpha for all: spell out alpha = rank.
        first = next(iter(ranks.values()))
        metadata[DIFFUSERS_METADATA] = json.dumps({
            "r": first, "lora_alpha": first, "use_rslora": False, "use_dora": False,
            "target_modules": sorted(ranks), "rank_pattern": ranks, "alpha_pattern": ranks,
        })
    return metadata


def is_baked(metadata: dict[str, str]) -> bool:
    return META_BAKED_SCALE in metadata


def bake_file(
    src: str | Path, dst: str | Path, settings: LoraSettings | None = None, style: str = "peft"
) -> Path:
    """Write the baked copy of `src` to `dst` atomically; refuse a file that is baked already."""
    tensors, metadata = load_adapter(src)
    if is_baked(metadata):
        raise AcestepError(f"{src}: already baked (alpha is in the weights); baking again would apply it twice")
    settings = settings_from_metadata(metadata) or settings
    if settings is None:
        raise AcestepError(
            f"{src}: the file does not say its rank/alpha/rsLoRA; pass --lora_config_path (e.g. config/lora_config.json)"
        )
    baked, ranks = bake_tensors(tensors, settings, style)
    return save_safetensors_atomic(baked, Path(dst), neutral_metadata(settings, ranks, metadata.get(META_BASE_MODEL)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Bake LoRA alpha into the weights (loads at strength 1 in ComfyUI).")
    parser.add_argument("--input_name", required=True, help="LoRA .safetensors file or a folder holding one")
    parser.add_argument("--output_name", required=True, help="where to write the baked .safetensors file")
    parser.add_argument("--lora_config_path", help="LoRA config JSON, for files that do not carry their settings")
    parser.add_argument("--key_style", choices=KEY_STYLES, default="peft",
                        help="peft: bare names (ComfyUI + upstream); diffusion_model / kohya: prefixed, with .alpha")
    args = parser.parse_args(argv)
    settings = LoraSettings.from_json(args.lora_config_path) if args.lora_config_path else None
    try:
        out = bake_file(args.input_name, args.output_name, settings, args.key_style)
    except AcestepError as error:
        sys.exit(f"error: {error}")
    print(f"baked LoRA written to {out} (load it at strength 1.0)")
