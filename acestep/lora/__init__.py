"""LoRA files: settings, reading/writing with metadata, and alpha baking for ComfyUI and the upstream pipeline."""

from .bake import bake_file, bake_tensors, is_baked
from .io import WEIGHTS_NAME, load_adapter, module_pairs, save_adapter, settings_from_metadata
from .settings import LoraSettings

__all__ = [
    "WEIGHTS_NAME",
    "LoraSettings",
    "bake_file",
    "bake_tensors",
    "is_baked",
    "load_adapter",
    "module_pairs",
    "save_adapter",
    "settings_from_metadata",
]
