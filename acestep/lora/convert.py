"""Rewrite a LoRA in another key spelling (one of its family's styles, `naming.key_styles()`), with its scale baked in.

Any input spelling is read (kohya names are resolved against the transformer's module paths). The output holds
the same delta W at strength 1: un-baked inputs get their trained scale baked in, `.alpha` becomes the rank.
"""

from __future__ import annotations

from pathlib import Path

from .bake import module_scales, provenance, save_baked, scale_into_factors, style_for
from .io import check_output_file, read_lora
from .settings import LoraSettings


def convert_file(
    src: str | Path,
    dst: str | Path,
    style: str | None = "kohya",
    settings: LoraSettings | None = None,
    already_baked: bool = False,
    overwrite: bool = False,
) -> Path:
    """`already_baked`: a file without scale information holds its scale already (e.g. another tool baked it).

    `style` None: the family's ComfyUI spelling.
    """
    check_output_file(src, dst, overwrite)
    lora = read_lora(src)
    style = style_for(lora, style)
    scales = module_scales(lora, settings, fallback=1.0 if already_baked else None)
    factors = scale_into_factors(lora.modules, scales)
    return save_baked(factors, dst, style, provenance(lora, scales, f"convert {lora.style} -> {style}", settings),
                      lora.base_model, lora.family)
