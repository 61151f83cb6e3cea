"""An ACE-Step 1.5 step folder (LAYOUT.md): one baked ComfyUI file, the PEFT adapter, the diffusers file.

  <exp>-step<N>-comfyui.safetensors          baked, `base_model.model.<original decoder name>` keys: ComfyUI maps these
                                             onto `diffusion_model.decoder.*` and, reading no header and finding no
                                             `.alpha`, applies scale 1.0, so strength 1.0 = the trained change
  adapter/adapter_model.safetensors          the trainable adapter at its true scale (PeftModel.save_pretrained keys)
  adapter/adapter_config.json                its LoraConfig (PeftModel / diffusers apply alpha/r from it)
  diffusers/pytorch_lora_weights.safetensors baked, `transformer.*` keys and no PEFT config in the header:
                                             AceStepPipeline.load_lora_weights at weight 1.0 = the trained change
"""

from __future__ import annotations

from pathlib import Path

import torch

from acestep.lora import WEIGHTS_NAME, LoraModule, LoraSettings, save_adapter
from acestep.lora.adapters import BaseWeight, save_comfyui_file
from acestep.lora.bake import save_baked, scale_into_factors
from acestep.lora.io import ADAPTER_DIR, DIFFUSERS_DIR, PEFT_CONFIG_NAME
from acestep.lora.keys import PEFT_PREFIX, V15_FAMILY, split_key


def comfyui_file_name(exp_name: str, step: int) -> str:
    return f"{exp_name}-step{step}-comfyui.safetensors"


def modules_from_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, LoraModule]:
    """PEFT state dict (`layers.0.self_attn.to_q.lora_A.weight`) -> module name -> factors."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        stem, role = split_key(key) or (key, "")
        parts.setdefault(stem.removeprefix(PEFT_PREFIX), {})[role] = tensor
    return {name: LoraModule(down=p["down"], up=p["up"]) for name, p in parts.items()}


def write_step_files(
    tensors: dict[str, torch.Tensor], folder: Path, step: int, settings: LoraSettings, base_model: str, exp_name: str,
    base_weight: BaseWeight | None = None,
) -> list[Path]:
    """Write the four files of one saved step into `folder` (a temp folder the trainer renames when complete).

    DoRA / LoHa / LoKr: the adapter and the ComfyUI file only (AceStepPipeline.load_lora_weights loads LoRA only);
    `base_weight` gives the frozen weights a DoRA's ComfyUI file is computed from.
    """
    folder = Path(folder)
    weights = save_adapter(tensors, folder / ADAPTER_DIR, settings, base_model, step, V15_FAMILY)
    written = [weights, weights.with_name(PEFT_CONFIG_NAME)]
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
        f"  PEFT adapter at its true scale: {step_dir / ADAPTER_DIR}",
        "  Continue training: run the same command again with --resume.",
    ]
