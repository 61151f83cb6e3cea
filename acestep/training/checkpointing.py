"""Gradient checkpointing of the first N blocks for any family's model, and --gradient_checkpointing auto: the
planner's fewest checkpointed blocks for the run to fit the card."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from acestep.core.errors import AcestepError
from acestep.training.config import TrainConfig

DEFAULT_DURATION = 360.0  # without --max_duration: stage 3 keeps at most 360 s per song by default
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def checkpoint_first_blocks(model: nn.Module, blocks: Sequence[nn.Module], count: int | None) -> None:
    """Recompute the first `count` of `blocks` in backward (None: all of them, 0: none).

    A model that counts its checkpointed blocks itself (it has `set_checkpointed_blocks`) is told the count; any
    other diffusers model gets a checkpoint function that wraps the chosen blocks and runs the rest as they are.
    No module is wrapped or renamed, so the adapter's key names stay those of the plain model.
    """
    total = len(blocks)
    if count is not None and not 0 <= count <= total:
        raise AcestepError(f"the model has {total} blocks: cannot checkpoint {count}")
    if count == 0:
        if getattr(model, "gradient_checkpointing", False):
            model.disable_gradient_checkpointing()
        return
    model.enable_gradient_checkpointing()
    if hasattr(model, "set_checkpointed_blocks"):
        model.set_checkpointed_blocks(count)
        return
    chosen = {id(block) for block in list(blocks)[:total if count is None else count]}

    def run_block(block: nn.Module, *args: Any) -> Any:
        if id(block) in chosen:
            return checkpoint(block.__call__, *args, use_reentrant=False)
        return block(*args)

    model.enable_gradient_checkpointing(run_block)


def card_gb(config: TrainConfig, gpu: bool) -> float:
    """--vram_gb, or the memory of the CUDA card the run trains on."""
    if config.vram_gb is not None:
        return config.vram_gb
    if gpu and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 1e9
    raise AcestepError("--gradient_checkpointing auto needs --vram_gb N here (no CUDA card to read its memory from)")


def resolve_auto(config: TrainConfig, request: Any) -> tuple[TrainConfig, str]:
    """`config` with auto replaced by the fewest blocks that fit `request` (any family's planner request, its
    gpu_gb the card), and the line that says so (the planner's figure included). All blocks, with a warning, when
    not even that fits."""
    from acestep.training.planner import fewest_checkpointed_blocks  # the planner imports acestep.lora

    blocks, gb = request.block_count, request.gpu_gb
    count = fewest_checkpointed_blocks(request)
    crop = f"{request.duration:g} s crops" + ("" if config.max_duration else " (no --max_duration: planned for 360 s)")
    if count is None:
        plan = dataclasses.replace(request, checkpointed_blocks=blocks).plan()
        line = (f"Gradient checkpointing auto: {blocks} of {blocks} blocks; even so the planner's "
                f"{plan.device_bytes / 1e9:.2f} GB for {crop} does not fit {gb:g} GB (python -m acestep.plan)")
        count = blocks
    else:
        plan = dataclasses.replace(request, checkpointed_blocks=count).plan()
        line = (f"Gradient checkpointing auto: {count} of {blocks} blocks (the first ones), the fewest that fit "
                f"{gb:g} GB at {crop}: planner {plan.device_bytes / 1e9:.2f} GB")
    return dataclasses.replace(config, gradient_checkpointing=str(count)), line
