"""LoRA files: settings, reading/writing with metadata, alpha baking, inspect, resize, merge and key conversion."""

from .bake import bake_file, module_scales
from .convert import convert_file
from .inspect import LoraReport, ModuleReport, format_report, inspect_lora
from .io import (
    WEIGHTS_NAME,
    LoraFile,
    LoraModule,
    load_adapter,
    read_lora,
    save_adapter,
    settings_from_metadata,
)
from .keys import STYLES
from .merge import merge_file
from .resize import METHODS, ResizedModule, rank_advice, resize_file
from .settings import LoraSettings

__all__ = [
    "METHODS",
    "STYLES",
    "WEIGHTS_NAME",
    "LoraFile",
    "LoraModule",
    "LoraReport",
    "LoraSettings",
    "ModuleReport",
    "ResizedModule",
    "bake_file",
    "convert_file",
    "format_report",
    "inspect_lora",
    "load_adapter",
    "merge_file",
    "module_scales",
    "rank_advice",
    "read_lora",
    "resize_file",
    "save_adapter",
    "settings_from_metadata",
]
