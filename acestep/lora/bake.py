"""Bake the trained LoRA scale into the weights so every loader applies it exactly once.

ComfyUI applies alpha/rank only from `.alpha` tensors (else 1.0) and ignores the header; the upstream pipeline
(diffusers/PEFT) uses scale 1 when the file carries no PEFT config. So a file whose factors already hold
sqrt(s) each (s = alpha/sqrt(r) with rsLoRA, alpha/r without) and whose header holds no PEFT config gives the
trained delta W at strength 1 in both. Facts: shared/reference/lora-format.md section 6.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from acestep.core.cli_help import make_parser
from acestep.core.errors import AcestepError, InputError, one_line_errors

from .io import (
    DIFFUSERS_METADATA,
    META_BAKED_SCALE,
    META_BASE_MODEL,
    META_FAMILY,
    LoraFile,
    LoraModule,
    check_output_file,
    read_lora,
    save_safetensors_atomic,
    settings_from_metadata,
    weights_path,
)
from .keys import factor_keys
from .naming import key_style_help, key_styles, naming_for, naming_of_style, readers_of, unmarked_naming
from .settings import LoraSettings


def module_scales(
    lora: LoraFile, settings: LoraSettings | None = None, fallback: float | None = None
) -> dict[str, float]:
    """The scale each module was trained with: 1 if baked, else `.alpha`/rank, else from the header or `settings`,
    else `fallback` (an error when None).

    The file's own header wins over `settings` (it records what was really trained).
    """
    if lora.baked:
        return dict.fromkeys(lora.modules, 1.0)
    settings = settings_from_metadata(lora.metadata) or settings
    scales = {}
    for name, module in lora.modules.items():
        if module.alpha is not None:
            scales[name] = module.alpha / module.rank
        elif settings is not None:
            scales[name] = settings.module_scale(name, module.rank)
        elif fallback is not None:
            scales[name] = fallback
        else:
            raise InputError(lora.path, "the file does not say its rank/alpha/rsLoRA; pass --lora_config_path "
                             "(e.g. config/lora_config.json, the config it was trained with)")
    return scales


def scale_into_factors(modules: dict[str, LoraModule], scales: dict[str, float]) -> dict[str, LoraModule]:
    """sqrt(|s|) on each factor (sign on up), multiplied in fp32 and stored in the factor's own dtype."""
    baked = {}
    for name, module in modules.items():
        root = math.sqrt(abs(scales[name]))
        sign = -1.0 if scales[name] < 0 else 1.0
        baked[name] = LoraModule(
            down=(module.down.float() * root).to(module.down.dtype),
            up=(module.up.float() * (sign * root)).to(module.up.dtype),
        )
    return baked


def neutral_metadata(
    ranks: dict[str, int], style: str, provenance: dict, base_model: str | None, family: str | None = None
) -> dict[str, str]:
    """A header no loader turns into a second scale; provenance under our own key (also the 'baked' marker)."""
    metadata = {"format": "pt", META_BAKED_SCALE: json.dumps(provenance, sort_keys=True)}
    if base_model:
        metadata[META_BASE_MODEL] = base_model
    if family:
        metadata[META_FAMILY] = family
    distinct = sorted(set(ranks.values()))
    if "diffusers" in readers_of(style) and len(distinct) > 1:
        # Without a config diffusers takes the first module's rank as alpha for all: spell out alpha = rank.
        first = next(iter(ranks.values()))
        metadata[DIFFUSERS_METADATA] = json.dumps({
            "r": first, "lora_alpha": first, "use_rslora": False, "use_dora": False,
            "target_modules": sorted(ranks), "rank_pattern": ranks, "alpha_pattern": ranks,
        })
    if "kohya" in readers_of(style) and len(distinct) == 1:
        # Read by kohya-style tools only; alpha = dim matches the `.alpha` tensors (scale 1).
        metadata["ss_network_dim"] = metadata["ss_network_alpha"] = str(distinct[0])
    return metadata


def save_baked(
    modules: dict[str, LoraModule], dst: str | Path, style: str, provenance: dict, base_model: str | None = None,
    family: str | None = None,
) -> Path:
    """Write factors that already hold their scale, in one key style, with `.alpha = rank` where the style has it.

    `dst` may be an existing folder: the file is then `dst/pytorch_lora_weights.safetensors`, the name the upstream
    pipeline's load_lora looks for.
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        down_key, up_key, alpha_key = factor_keys(name, style)
        tensors[down_key] = module.down
        tensors[up_key] = module.up
        if alpha_key is not None:
            # alpha = rank makes ComfyUI's alpha/rank exactly 1: the scale is already in the weights.
            tensors[alpha_key] = torch.tensor(float(module.rank))
    ranks = {name: module.rank for name, module in modules.items()}
    owner = naming_of_style(style)
    if owner is not None and not owner.unmarked:  # only the unmarked family's files may leave it out
        family = owner.family
    metadata = neutral_metadata(ranks, style, provenance, base_model, family)
    return save_safetensors_atomic(tensors, weights_path(dst), metadata)


def style_for(lora: LoraFile, style: str | None) -> str:
    """The requested key style, or the family's default; a style of another family is refused in one line."""
    naming = naming_for(lora.family) or unmarked_naming()
    if style is None:
        return naming.default_style
    if style not in key_styles():
        raise AcestepError(f"unknown key style {style!r}; choose one of {', '.join(key_styles())}")
    if style not in naming.styles:
        raise InputError(lora.path, f"a {lora.family or naming.family} LoRA cannot be written in the {style} key style "
                         f"(styles for it: {', '.join(naming.styles)})")
    return style


def provenance(lora: LoraFile, scales: dict[str, float], action: str, settings: LoraSettings | None = None) -> dict:
    """What was done to which scales, for people reading the header later."""
    record: dict = {"action": action, "scale_min": min(scales.values()), "scale_max": max(scales.values())}
    settings = settings_from_metadata(lora.metadata) or settings
    if settings is not None and not lora.baked:
        record.update(r=settings.r, lora_alpha=settings.lora_alpha, use_rslora=settings.use_rslora)
    return record


def bake_file(
    src: str | Path, dst: str | Path, settings: LoraSettings | None = None, style: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the baked copy of `src` (file or folder) to `dst` atomically; refuse a file that is baked already,
    `dst` = `src`, and an existing `dst` unless `overwrite`.

    `style` None: the family's ComfyUI spelling (its naming's default style).
    """
    check_output_file(src, dst, overwrite)
    lora = read_lora(src)
    style = style_for(lora, style)
    if lora.baked:
        raise InputError(lora.path, "already baked (alpha is in the weights); baking again would apply it twice")
    scales = module_scales(lora, settings)
    baked = scale_into_factors(lora.modules, scales)
    return save_baked(baked, dst, style, provenance(lora, scales, "bake", settings), lora.base_model, lora.family)


def main(argv: list[str] | None = None) -> None:
    """add_alpha_in_lora.py: the reference fork's flag names (the script loads the families first: their styles)."""
    parser = make_parser("Bake LoRA alpha into the weights (load it at strength 1.0).", "add_alpha_in_lora.py")
    parser.add_argument("--input_name", required=True, help="LoRA .safetensors file or a folder holding one")
    parser.add_argument("--output_name", required=True, help="where to write the baked .safetensors file")
    parser.add_argument("--lora_config_path", help="LoRA config JSON, for files that do not carry their settings (default: the file's header)")
    parser.add_argument("--key_style", choices=key_styles(), default=None, help=key_style_help())
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    with one_line_errors():
        settings = LoraSettings.from_json(args.lora_config_path) if args.lora_config_path else None
        out = bake_file(args.input_name, args.output_name, settings, args.key_style, args.overwrite)
    print(f"baked LoRA written to {out} (load it at strength 1.0)")
