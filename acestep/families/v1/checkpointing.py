"""--gradient_checkpointing auto: the planner's fewest checkpointed blocks for the run to fit the card."""

from __future__ import annotations

import dataclasses

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


def resolve_auto(config: TrainConfig, transformer: torch.nn.Module, ssl: bool, gpu: bool,
                 compute_dtype: torch.dtype) -> tuple[TrainConfig, str]:
    """`config` with auto replaced by the fewest blocks that fit, and the line that says so (the planner's figure
    included). All blocks, with a warning, when not even that fits."""
    from acestep.families.v1.plan import PlanRequest, estimate, fewest_checkpointed_blocks
    gb = card_gb(config, gpu)
    model_config = {key: transformer.config[key] for key in transformer.config if not key.startswith("_")}
    lora = {"lora_config": config.lora_config_path} if config.lora_config_path else {}
    request = PlanRequest(
        duration=config.max_duration or DEFAULT_DURATION, batch_size=config.batch_size, gpu_gb=gb,
        optimizer=config.optimizer,
        base_dtype="fp8" if config.base_dtype == "fp8" else DTYPE_NAMES[compute_dtype], ssl=ssl,
        device="cuda" if gpu else "cpu", release_unused_weights=config.release_unused_weights,
        transformer_config=model_config, **lora,
    )
    blocks = model_config["num_layers"]
    count = fewest_checkpointed_blocks(request)
    crop = f"{request.duration:g} s crops" + ("" if config.max_duration else " (no --max_duration: planned for 360 s)")
    if count is None:
        plan = estimate(dataclasses.replace(request, checkpointed_blocks=blocks))
        line = (f"Gradient checkpointing auto: {blocks} of {blocks} blocks; even so the planner's "
                f"{plan.device_bytes / 1e9:.2f} GB for {crop} does not fit {gb:g} GB (python -m acestep.plan)")
        count = blocks
    else:
        plan = estimate(dataclasses.replace(request, checkpointed_blocks=count))
        line = (f"Gradient checkpointing auto: {count} of {blocks} blocks (the first ones), the fewest that fit "
                f"{gb:g} GB at {crop}: planner {plan.device_bytes / 1e9:.2f} GB")
    return dataclasses.replace(config, gradient_checkpointing=str(count)), line
