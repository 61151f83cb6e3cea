"""Reading and writing LoRA files: PEFT's bare key names plus our metadata in the safetensors header.

The file is what the upstream pipeline loads (`<folder>/pytorch_lora_weights.safetensors`, keys like
`transformer_blocks.0.attn.to_q.lora_A.weight`). Our header keys start with `acestep_` so no loader reads them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import AcestepError
from .settings import LoraSettings

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
META_SETTINGS = "acestep_lora_settings"
META_BASE_MODEL = "acestep_base_model"
META_STEP = "acestep_step"
META_BAKED_SCALE = "acestep_lora_baked_scale"
DIFFUSERS_METADATA = "lora_adapter_metadata"


def weights_path(path: str | Path) -> Path:
    """A .safetensors file, or a folder holding pytorch_lora_weights.safetensors."""
    path = Path(path)
    return path / WEIGHTS_NAME if path.is_dir() else path


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write next to the target, then rename: a crash never leaves a half-written adapter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, temp, metadata=metadata)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return path


def save_adapter(
    state_dict: dict[str, torch.Tensor],
    folder: str | Path,
    settings: LoraSettings,
    base_model: str = "ACE-Step/ACE-Step-v1-3.5B",
    step: int | None = None,
) -> Path:
    """Write `folder/pytorch_lora_weights.safetensors` (un-baked, as trained) with our metadata."""
    metadata = {
        "format": "pt",
        META_SETTINGS: json.dumps(settings.to_peft_kwargs(), sort_keys=True),
        META_BASE_MODEL: base_model,
    }
    if step is not None:
        metadata[META_STEP] = str(step)
    return save_safetensors_atomic(state_dict, Path(folder) / WEIGHTS_NAME, metadata)


def load_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a LoRA file or folder; clear error when it is missing or unreadable."""
    file = weights_path(path)
    if not file.is_file():
        raise AcestepError(f"{file}: LoRA file not found")
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # noqa: BLE001 - safetensors raises several error types for bad files
        raise AcestepError(f"{file}: not a readable safetensors LoRA file: {error}") from error
    return tensors, metadata


def settings_from_metadata(metadata: dict[str, str]) -> LoraSettings | None:
    """Our own settings if we wrote the file, else diffusers' `lora_adapter_metadata`, else None."""
    for key in (META_SETTINGS, DIFFUSERS_METADATA):
        if key in metadata:
            return LoraSettings.from_dict(json.loads(metadata[key]))
    return None


def module_pairs(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path -> (A [r, in], B [out, r]) for every module with both PEFT factors."""
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            b = tensors.get(f"{module}.lora_B.weight")
            if b is None:
                raise AcestepError(f"{module}: lora_A without lora_B")
            pairs[module] = (a, b)
    return pairs
