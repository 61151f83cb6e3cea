"""Stage 4: LoRA training on the preprocessed dataset (PEFT + Lightning), with the objective a model family hands
in (acestep.training.family)."""

from acestep.core.lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _WHERE)
