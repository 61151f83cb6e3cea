"""Reading and writing LoRA files: PEFT's bare key names plus our metadata in the safetensors header.

The file is what the upstream pipeline loads (`<folder>/pytorch_lora_weights.safetensors`, keys like
`transformer_blocks.0.attn.to_q.lora_A.weight`). Our header keys start with `acestep_` so no loader reads them.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import InputError
from .keys import V15_FAMILY, detect_family, detect_style, module_path, split_key, v15_diffusers_name
from .settings import LoraSettings

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_FILE = Path("adapter") / "adapter_model.safetensors"
META_SETTINGS = "acestep_lora_settings"
META_BASE_MODEL = "acestep_base_model"
META_STEP = "acestep_step"
META_BAKED_SCALE = "acestep_lora_baked_scale"
META_FAMILY = "acestep_family"  # "ace-step-v1" / "ace-step-1.5" (LAYOUT.md)
DIFFUSERS_METADATA = "lora_adapter_metadata"


def weights_path(path: str | Path) -> Path:
    """A .safetensors file, or a folder holding pytorch_lora_weights.safetensors."""
    path = Path(path)
    return path / WEIGHTS_NAME if path.is_dir() else path


def source_path(path: str | Path) -> Path:
    """The LoRA file to read for `path`: a file, a folder's pytorch_lora_weights.safetensors, or else a step
    folder's PEFT adapter (adapter/adapter_model.safetensors, LAYOUT.md)."""
    file = weights_path(path)
    adapter = Path(path) / ADAPTER_FILE
    return adapter if Path(path).is_dir() and not file.is_file() and adapter.is_file() else file


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write next to the target, then rename: a crash never leaves a half-written adapter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # not mkstemp: it would make the file 0600
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(temp), metadata=metadata)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def save_adapter(
    state_dict: dict[str, torch.Tensor],
    folder: str | Path,
    settings: LoraSettings,
    base_model: str = "ACE-Step/ACE-Step-v1-3.5B",
    step: int | None = None,
    family: str | None = None,
    file_name: str = WEIGHTS_NAME,
) -> Path:
    """Write `folder/<file_name>` (un-baked, as trained) with our metadata."""
    metadata = adapter_metadata(settings, base_model, step, family)
    return save_safetensors_atomic(state_dict, Path(folder) / file_name, metadata)


def adapter_metadata(settings: LoraSettings, base_model: str, step: int | None, family: str | None) -> dict[str, str]:
    """Our header of an un-baked adapter: its settings (so every tool knows the scale), base model, step, family."""
    metadata = {
        "format": "pt",
        META_SETTINGS: json.dumps(settings.to_peft_kwargs(), sort_keys=True),
        META_BASE_MODEL: base_model,
    }
    if step is not None:
        metadata[META_STEP] = str(step)
    if family is not None:
        metadata[META_FAMILY] = family
    return metadata


def load_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a LoRA file or folder; clear error when it is missing or unreadable."""
    file = source_path(path)
    if not file.is_file():
        raise InputError(file, "LoRA file not found")
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # noqa: BLE001 - safetensors raises several error types for bad files
        raise InputError(file, f"not a readable safetensors LoRA file: {error}") from error
    return tensors, metadata


def settings_from_metadata(metadata: dict[str, str]) -> LoraSettings | None:
    """Our own settings if we wrote the file, else diffusers' `lora_adapter_metadata`, else None."""
    for key in (META_SETTINGS, DIFFUSERS_METADATA):
        if key in metadata:
            return LoraSettings.from_dict(json.loads(metadata[key]))
    return None


@dataclass
class LoraModule:
    """One adapted layer: dW = scale * up @ down (flattened for conv layers)."""

    down: torch.Tensor  # lora_A [r, in, *kernel]
    up: torch.Tensor  # lora_B [out, r, *1]
    alpha: float | None = None  # from a `<key>.alpha` tensor (ComfyUI's alpha / rank), if the file has one

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self, scale: float = 1.0) -> torch.Tensor:
        """scale * up @ down in fp32, with shape [out, in * kernel]."""
        return scale * (self.up.float().flatten(1) @ self.down.float().flatten(1))


@dataclass
class LoraFile:
    path: Path
    modules: dict[str, LoraModule]
    metadata: dict[str, str]
    style: str

    @property
    def baked(self) -> bool:
        return META_BAKED_SCALE in self.metadata

    @property
    def base_model(self) -> str | None:
        return self.metadata.get(META_BASE_MODEL)

    @property
    def family(self) -> str | None:
        """The model family from the header, else from the module names (None when neither tells)."""
        return self.metadata.get(META_FAMILY) or detect_family(self.modules)


def read_lora(path: str | Path, kohya_lookup: dict[str, str] | None = None) -> LoraFile:
    """Any supported key spelling -> module path -> factors; a clear error for keys we cannot use.

    `kohya_lookup` maps kohya names to module paths (default: the published transformer's modules).
    """
    tensors, metadata = load_adapter(path)
    file = source_path(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        split = split_key(key)
        if split is None:
            raise InputError(file, f"unsupported tensor {key!r} (only LoRA down/up factors and .alpha are handled)")
        stem, role = split
        module = module_path(stem, kohya_lookup)
        if module is None:
            raise InputError(file, f"{key!r} names no module of the ACE-Step transformer")
        parts.setdefault(module, {})[role] = tensor
    if (metadata.get(META_FAMILY) or detect_family(parts)) == V15_FAMILY:
        parts = {v15_diffusers_name(module): roles for module, roles in parts.items()}  # original names -> ours
    modules = {}
    for module, roles in parts.items():
        if "down" not in roles or "up" not in roles:
            raise InputError(file, f"{module}: needs both LoRA factors, found only {sorted(roles)}")
        down, up = roles["down"], roles["up"]
        if up.shape[1] != down.shape[0]:
            raise InputError(file, f"{module}: factor shapes {tuple(up.shape)} x {tuple(down.shape)} do not chain")
        alpha = roles.get("alpha")
        modules[module] = LoraModule(down, up, None if alpha is None else float(alpha.float().item()))
    if not modules:
        raise InputError(file, "no LoRA factors in the file")
    return LoraFile(file, modules, metadata, detect_style(tensors))
