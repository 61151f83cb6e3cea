"""An ACE-Step 1.5 step folder (LAYOUT.md): one baked ComfyUI file, the PEFT adapter, the diffusers file, and the
PEFT adapter the official ACE-Step 1.5 app loads.

  <exp>-step<N>-comfyui.safetensors          baked, `base_model.model.<original decoder name>` keys: ComfyUI maps these
                                             onto `diffusion_model.decoder.*` and, reading no header and finding no
                                             `.alpha`, applies scale 1.0, so strength 1.0 = the trained change
  adapter/adapter_model.safetensors          the trainable adapter at its true scale (PeftModel.save_pretrained keys)
  adapter/adapter_config.json                its LoraConfig (PeftModel / diffusers apply alpha/r from it)
  diffusers/pytorch_lora_weights.safetensors baked, `transformer.*` keys and no PEFT config in the header:
                                             AceStepPipeline.load_lora_weights at weight 1.0 = the trained change
  official/adapter_model.safetensors         the adapter at its true scale on the ORIGINAL decoder names
  official/adapter_config.json               (`base_model.model.layers.0.self_attn.q_proj...`): the official app's
                                             handler wraps its `model.decoder` with PeftModel.from_pretrained(folder),
                                             which matches only those names (our adapter/ names raise
                                             NoMatchingPeftModuleError there) and applies the config's alpha / r
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch
from peft.utils.other import get_pattern_key

from acestep.core.atomic import atomic_write_json
from acestep.lora import WEIGHTS_NAME, LoraModule, LoraSettings, save_adapter
from acestep.lora.adapters import BaseWeight, group_peft_modules, save_comfyui_file
from acestep.lora.bake import save_baked, scale_into_factors
from acestep.lora.io import (
    ADAPTER_DIR,
    DIFFUSERS_DIR,
    OFFICIAL_DIR,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    adapter_metadata,
    peft_adapter_config,
    save_safetensors_atomic,
)
from acestep.lora.keys import PEFT_PREFIX, split_key

from .lora_keys import NAME as V15_FAMILY
from .lora_keys import original_name as v15_original_name


def comfyui_file_name(exp_name: str, step: int) -> str:
    return f"{exp_name}-step{step}-comfyui.safetensors"


def modules_from_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, LoraModule]:
    """PEFT state dict (`layers.0.self_attn.to_q.lora_A.weight`) -> module name -> factors."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        stem, role = split_key(key) or (key, "")
        parts.setdefault(stem.removeprefix(PEFT_PREFIX), {})[role] = tensor
    return {name: LoraModule(down=p["down"], up=p["up"]) for name, p in parts.items()}


def official_settings(settings: LoraSettings, modules: Iterable[str]) -> LoraSettings:
    """The settings on the original decoder names: every adapted module named in full (PEFT takes a name that equals
    the module path), and a rank or alpha that differs from r / lora_alpha listed for its module by name, so no
    pattern written for our names has to be translated."""
    original = {name: v15_original_name(name) for name in sorted(modules)}
    ranks = {original[name]: settings.module_rank(name) for name in original}
    alphas = {
        original[name]: settings.alpha_pattern.get(get_pattern_key(list(settings.alpha_pattern), name),
                                                   settings.lora_alpha)
        for name in original
    }
    return dataclasses.replace(
        settings, target_modules=tuple(original.values()),
        rank_pattern={name: rank for name, rank in ranks.items() if rank != settings.r},
        alpha_pattern={name: alpha for name, alpha in alphas.items() if alpha != settings.lora_alpha},
    )


def save_official_adapter(
    tensors: dict[str, torch.Tensor], folder: Path, settings: LoraSettings, base_model: str, step: int
) -> list[Path]:
    """`folder`/adapter_model.safetensors + adapter_config.json: the trained tensors (any adapter type, un-baked) on
    the original decoder names, with a config that names those modules. The header keeps our settings (our names),
    so our tools and generate.py read the folder at the same scale."""
    folder = Path(folder)
    bare = {key.removeprefix(PEFT_PREFIX): value for key, value in tensors.items()}
    renamed = {PEFT_PREFIX + v15_original_name(key): value for key, value in bare.items()}
    metadata = adapter_metadata(settings, base_model, step, V15_FAMILY)
    weights = save_safetensors_atomic(renamed, folder / PEFT_WEIGHTS_NAME, metadata)
    config = folder / PEFT_CONFIG_NAME
    atomic_write_json(config, peft_adapter_config(official_settings(settings, group_peft_modules(bare)), base_model))
    return [weights, config]


def write_step_files(
    tensors: dict[str, torch.Tensor], folder: Path, step: int, settings: LoraSettings, base_model: str, exp_name: str,
    base_weight: BaseWeight | None = None,
) -> list[Path]:
    """Write the files of one saved step into `folder` (a temp folder the trainer renames when complete).

    DoRA / LoHa / LoKr: the adapter and the ComfyUI file only (AceStepPipeline.load_lora_weights loads LoRA only);
    `base_weight` gives the frozen weights a DoRA's ComfyUI file is computed from.
    """
    folder = Path(folder)
    weights = save_adapter(tensors, folder / ADAPTER_DIR, settings, base_model, step, V15_FAMILY)
    written = [weights, weights.with_name(PEFT_CONFIG_NAME)]
    written += save_official_adapter(tensors, folder / OFFICIAL_DIR, settings, base_model, step)
    if settings.adapter_type != "lora":
        record = {"action": "train", "step": step}
        comfyui = folder / comfyui_file_name(exp_name, step)
        return [*written, save_comfyui_file(tensors, comfyui, settings, "v15_comfyui", record, base_model, V15_FAMILY,
                                            base_weight)]
    modules = modules_from_state_dict(tensors)
    scales = {name: settings.module_scale(name, module.rank) for name, module in modules.items()}
    baked = scale_into_factors(modules, scales)
    record = {"action": "train", "step": step, "r": settings.r, "lora_alpha": settings.lora_alpha,
              "use_rslora": settings.use_rslora, "scale_min": min(scales.values()), "scale_max": max(scales.values())}
    written.append(save_baked(baked, folder / comfyui_file_name(exp_name, step), "v15_comfyui", record, base_model))
    (folder / DIFFUSERS_DIR).mkdir(parents=True, exist_ok=True)
    written.append(save_baked(baked, folder / DIFFUSERS_DIR / WEIGHTS_NAME, "v15_diffusers", record, base_model))
    return written


def usage_lines(step_dir: Path) -> list[str]:
    """How to use a saved 1.5 step folder, for the end-of-run summary."""
    comfy = next(iter(sorted(step_dir.glob("*-comfyui.safetensors"))), None)
    diffusers = step_dir / DIFFUSERS_DIR
    return [
        f"  ComfyUI: copy {comfy} into ComfyUI/models/loras and load it at strength 1.0.",
        *([f"  diffusers: pipe.load_lora_weights('{diffusers}') at weight 1.0 (AceStepPipeline)."]
          if diffusers.is_dir() else []),
        f"  generate.py: --lora {comfy}:1.0 with a 1.5 --checkpoint_dir.",
        *([f"  official ACE-Step 1.5 app: load the LoRA folder {step_dir / OFFICIAL_DIR} (scale 1.0)."]
          if (step_dir / OFFICIAL_DIR).is_dir() else []),
        f"  PEFT adapter at its true scale: {step_dir / ADAPTER_DIR}",
    ]
