"""--gradient_checkpointing auto, the family-agnostic part: the card's memory and the names the planner uses
(each family resolves auto with its own planner: acestep/families/<name>/training.py)."""

from __future__ import annotations

import torch

from acestep.core.errors import AcestepError
from acestep.training.config import TrainConfig

DEFAULT_DURATION = 360.0  # without --max_duration: stage 3 keeps at most 360 s per song by default
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def card_gb(config: TrainConfig, gpu: bool) -> float:
    """--vram_gb, or the memory of the CUDA card the run trains on."""
    if config.vram_gb is not None:
        return config.vram_gb
    if gpu and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 1e9
    raise AcestepError("--gradient_checkpointing auto needs --vram_gb N here (no CUDA card to read its memory from)")
