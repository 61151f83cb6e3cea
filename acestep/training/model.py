"""The model being trained, for every family: the frozen base transformer in 16 bits plus fp32 LoRA factors from a
PEFT config."""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path

import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from acestep.core.errors import AcestepError
from acestep.lora import LoraSettings, load_adapter, settings_from_metadata
from acestep.lora.io import bare_peft_keys

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PRECISION_FOR_DTYPE = {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed", torch.float32: "32-true"}


def resolve_base_dtype(name: str, on_gpu: bool) -> torch.dtype:
    """The dtype the base is loaded and computed in. auto: bf16 where the GPU supports it, else fp16; fp32 on the
    CPU (16-bit CPU matmuls are slow). fp8: loaded in 16 bits (bf16 unless the GPU lacks it), then quantized."""
    if name == "fp8":
        return torch.float16 if on_gpu and not torch.cuda.is_bf16_supported() else torch.bfloat16
    if name != "auto":
        return DTYPES[name]
    if not on_gpu:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def attach_lora(model: torch.nn.Module, settings: LoraSettings, adapter_name: str) -> list[str]:
    """Add the adapter (PEFT freezes everything else) and hold its factors in fp32; returns trainable names."""
    try:
        model.add_adapter(settings.peft_config(), adapter_name=adapter_name)
    except ValueError as error:
        raise AcestepError(f"LoRA config does not fit the model: {error}") from error
    names = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            param.data = param.data.float()
            names.append(name)
    if not names:
        raise AcestepError(f"LoRA target_modules {list(settings.target_modules)} match no layer of the model")
    for module in model.modules():
        plain = hasattr(module, "cast_input_dtype_enabled") and hasattr(module, "lora_A") and not module.lora_variant
        if plain and all(isinstance(d, torch.nn.Identity) for d in module.lora_dropout.values()):
            module._cast_input_dtype = types.MethodType(_cast_input_unless_autocast, module)
    return names


def _cast_input_unless_autocast(layer: torch.nn.Module, x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """PEFT casts a LoRA layer's 16-bit input to the fp32 factors' dtype, and autocast casts it straight back:
    a new 16-bit copy of the input per LoRA layer, each kept for backward (5 copies of the hidden states in every
    recomputed block). In a plain LoRA layer without dropout (the only ones given this method) under autocast
    the cast changes no value, so it is skipped there and the layers share their input; elsewhere PEFT's cast
    stands."""
    if x is None or x.dtype == dtype or torch.is_autocast_enabled(x.device.type):
        return x
    return x.to(dtype)


def adapter_state_dict(model: torch.nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """PEFT's bare keys (`<module path>.lora_A.weight`, no adapter name), as the upstream pipelines load them."""
    return {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}


def base_weight_lookup(model: torch.nn.Module) -> Callable[[str], torch.Tensor]:
    """Module path -> the frozen base weight under its adapter (a DoRA's ComfyUI file is computed from it)."""
    return lambda name: model.get_submodule(name).get_base_layer().weight


def load_trained_adapter(model: torch.nn.Module, path: str | Path, adapter_name: str = "default") -> LoraSettings:
    """Attach an un-baked adapter written by the trainer, at its trained scale (settings from its header)."""
    tensors, metadata = load_adapter(path)
    tensors = bare_peft_keys(tensors)
    settings = settings_from_metadata(metadata)
    if settings is None:
        raise AcestepError(f"{path}: no LoRA settings in the header (a baked file? load it with strength 1 instead)")
    attach_lora(model, settings, adapter_name)
    result = set_peft_model_state_dict(model, tensors, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise AcestepError(f"{path}: tensors that match no layer of the model: {', '.join(unexpected[:5])}")
    return settings
