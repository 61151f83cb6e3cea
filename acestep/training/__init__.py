"""Stage 4: LoRA training on the preprocessed dataset (PEFT + Lightning), with the objective a model family hands
in (acestep.training.family)."""

import importlib
from typing import Any

# name -> submodule, imported on first use: `trainer_new.py --help` parses its flags without Lightning or torch
_WHERE = {
    "TrainConfig": "config", "build_parser": "config", "parse_config": "config",
    "adapter_state_dict": "model", "attach_lora": "model", "load_trained_adapter": "model",
    "TrainResult": "run", "run_training": "run", "summary_text": "run",
}

__all__ = [
    "TrainConfig",
    "TrainResult",
    "adapter_state_dict",
    "attach_lora",
    "build_parser",
    "load_trained_adapter",
    "parse_config",
    "run_training",
    "summary_text",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
