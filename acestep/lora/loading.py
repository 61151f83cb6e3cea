"""Put LoRA files into the transformer at a chosen strength, whatever their origin.

Each file's trained scale (1 for baked files, alpha/rank from `.alpha` tensors, our header, diffusers'
header, or a config the user names) is multiplied into its factors first; PEFT then applies
`strength` alone, so strength 1.0 always means "as trained" and several LoRAs add up.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch
from torch import nn

from acestep.core.errors import InputError
from acestep.lora import LoraSettings, module_scales
from acestep.lora.adapters import apply_adapter, file_kind, read_adapter
from acestep.lora.bake import scale_into_factors
from acestep.lora.io import read_lora, settings_from_metadata

log = logging.getLogger(__name__)


def parse_lora(spec: str) -> tuple[str, float]:
    """PATH or PATH:STRENGTH (a Windows drive colon is not a strength); nan and inf are refused (they render noise)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and not tail.startswith(("\\", "/")):
        try:
            strength = float(tail)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(strength):
            raise InputError(head, f"LoRA strength must be a finite number (e.g. 0.8), not {tail}")
        return head, strength
    return spec, 1.0


def lora_state_dict(path: str | Path, settings: LoraSettings | None = None) -> dict:
    """PEFT-keyed factors with the trained scale inside, from any file or folder our LoRA tools read (a step
    folder of any version, a PEFT adapter folder, a baked or kohya file)."""
    lora = read_lora(path)
    if not lora.baked and settings is None and settings_from_metadata(lora.metadata) is None and all(
        module.alpha is None for module in lora.modules.values()
    ):
        log.warning("%s: no rank/alpha in the file; assuming it is baked (scale 1). Pass a LoRA config if it is "
                    "a raw adapter from another trainer.", path)
        scales = module_scales(lora, settings, fallback=1.0)
    else:
        scales = module_scales(lora, settings)
    tensors = {}
    for name, module in scale_into_factors(lora.modules, scales).items():
        tensors[f"{name}.lora_A.weight"] = module.down
        tensors[f"{name}.lora_B.weight"] = module.up
    return tensors


def adapter_name_for(path: str | Path, taken: set[str]) -> str:
    base = re.sub(r"[^0-9A-Za-z_]", "_", Path(path).stem) or "lora"
    name, index = base, 1
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    return name


def merge_into_weights(transformer: nn.Module, path: str | Path, strength: float) -> None:
    """A DoRA / LoHa / LoKr file changes the transformer's weights in place, at `strength`, by ComfyUI's rule."""
    def weight(name: str) -> torch.Tensor:
        try:
            return transformer.get_submodule(name).weight
        except AttributeError as error:
            raise InputError(Path(path), f"{name} is no layer of this transformer") from error

    adapter = read_adapter(path, base_weight=weight)
    changed = apply_adapter({name: weight(name) for name in adapter.modules}, adapter, strength)
    with torch.no_grad():
        for name, value in changed.items():
            weight(name).copy_(value)


def check_shapes(transformer: nn.Module, path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Every factor pair fits its layer (in and out features), else one line naming the first misfit: a LoRA
    trained on another model size would otherwise fail deep inside PEFT with a size-mismatch traceback."""
    for key, down in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[: -len(".lora_A.weight")]
        up = tensors[f"{name}.lora_B.weight"]
        try:
            layer = transformer.get_submodule(name)
        except AttributeError:
            continue  # names the model lacks are PEFT's to report
        if not isinstance(layer, nn.Linear):
            continue
        want = (layer.in_features, layer.out_features)
        have = (down.shape[-1], up.shape[0])
        if have != want:
            raise InputError(Path(path), f"{name} is {have[0]} -> {have[1]} in the LoRA but {want[0]} -> {want[1]} "
                             "in this model; the LoRA was trained for another model (size or family)")


def load_loras(
    transformer: nn.Module, loras: list[tuple[str | Path, float]], settings: LoraSettings | None = None
) -> list[str]:
    """Load every LoRA (path, strength) as its own adapter and activate them together; returns adapter names.

    Other adapter types are merged into the weights first (before any LoRA layer wraps them), at their strength.
    """
    kinds = [file_kind(path) for path, _ in loras]
    for (path, strength), kind in zip(loras, kinds):
        if kind != "lora":
            merge_into_weights(transformer, path, float(strength))
    plain = [lora for lora, kind in zip(loras, kinds) if kind == "lora"]
    names: list[str] = []
    for path, _ in plain:
        name = adapter_name_for(path, set(names))
        tensors = lora_state_dict(path, settings)
        check_shapes(transformer, path, tensors)
        transformer.load_lora_adapter(tensors, prefix=None, adapter_name=name)
        names.append(name)
    if names:
        transformer.set_adapters(names, [float(strength) for _, strength in plain])
    return names
