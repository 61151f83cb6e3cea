"""Stage 4: LoRA training with flow matching on the preprocessed dataset (PEFT + Lightning)."""

from .config import TrainConfig, build_parser, parse_config
from .flow_matching import FlowMatchingObjective, combine_losses
from .model import adapter_state_dict, attach_lora, load_trained_adapter
from .run import TrainResult, run_training, summary_text

__all__ = [
    "FlowMatchingObjective",
    "TrainConfig",
    "TrainResult",
    "adapter_state_dict",
    "attach_lora",
    "build_parser",
    "combine_losses",
    "load_trained_adapter",
    "parse_config",
    "run_training",
    "summary_text",
]
