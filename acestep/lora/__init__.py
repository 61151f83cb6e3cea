"""LoRA files: settings, reading/writing with metadata, alpha baking, inspect, resize, merge and key conversion."""

from acestep.core.lazy import lazy_exports

# name -> submodule, imported on first use: `from acestep.lora.keys import ...` and `--help` need no torch
_WHERE = {
    "bake_file": "bake", "module_scales": "bake", "convert_file": "convert",
    "LoraReport": "inspect", "ModuleReport": "inspect", "format_report": "inspect", "inspect_lora": "inspect",
    "WEIGHTS_NAME": "io", "LoraFile": "io", "LoraModule": "io", "load_adapter": "io", "read_lora": "io",
    "save_adapter": "io", "settings_from_metadata": "io", "key_styles": "naming", "merge_file": "merge",
    "METHODS": "resize", "ResizedModule": "resize", "rank_advice": "resize", "resize_file": "resize",
    "LoraSettings": "settings",
}

__all__ = [
    "METHODS",
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
    "key_styles",
    "load_adapter",
    "merge_file",
    "module_scales",
    "rank_advice",
    "read_lora",
    "resize_file",
    "save_adapter",
    "settings_from_metadata",
]

__getattr__ = lazy_exports(__name__, _WHERE)
