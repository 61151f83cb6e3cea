"""The family-agnostic part of the memory planner: bytes per dtype and optimizer, the GPU's own overhead, DDP's
buckets, and the verdict every family's plan (acestep/families/<name>/plan.py) prints."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from acestep.lora import LoraSettings

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# --base_dtype fp8: the blocks' (and SSL projectors', timestep modulation's) linear weights take 1 byte (+ an
# fp32 scale per output channel); every other weight, and all computation, stays 16-bit (acestep.training.fp8).
FP8 = "fp8"
DEFAULT_DURATION = 360.0  # without --max_duration: stage 3 keeps at most 360 s per song (both families)
# Optimizer state per trainable parameter: AdamW two fp32 moments; bitsandbytes AdamW8bit two uint8 moments
# (+ block statistics, < 1 %); Prodigy two moments, `s` and the initial copy `p0`.
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16}
CUDA_CONTEXT_GB = 0.5
ALLOCATOR_SLACK = 0.05


class DeviceFit:
    """The verdict of any family's plan that has `parts` (bytes of each term of the peak) and a `request`
    with `device` and `gpu_gb`."""

    parts: dict[str, int]
    request: Any

    @property
    def tensor_bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def device_bytes(self) -> int:
        """What the GPU must hold: tensors plus allocator slack and the CUDA context (none on the CPU)."""
        if self.request.device != "cuda":
            return self.tensor_bytes
        return int(self.tensor_bytes * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_GB * 1e9)

    @property
    def fits(self) -> bool:
        return self.device_bytes <= self.request.gpu_gb * 1e9

    def breakdown_lines(self, width: int) -> list[str]:
        """The plan's terms, the tensor peak, the CUDA overhead on a GPU and the verdict, names padded to `width`."""
        lines = [f"  {name:<{width}s} {value / 1e9:7.2f} GB" for name, value in self.parts.items()]
        lines.append(f"  {'tensors at the peak':<{width}s} {self.tensor_bytes / 1e9:7.2f} GB")
        if self.request.device == "cuda":
            lines.append(f"  {'+ CUDA context and allocator slack':<{width}s} "
                         f"{(self.device_bytes - self.tensor_bytes) / 1e9:7.2f} GB")
        verdict = "fits" if self.fits else "does NOT fit"
        lines.append(f"Estimated peak {self.device_bytes / 1e9:.2f} GB: {verdict} in {self.request.gpu_gb:g} GB.")
        return lines


def ddp_parts(devices: int, lora_params: int) -> dict[str, int]:
    """What DDP adds on each GPU: buckets the size of the fp32 LoRA gradients, which it all-reduces."""
    return {"DDP gradient buckets (fp32)": lora_params * 4} if devices > 1 else {}


def ddp_line(devices: int, batch_size: int) -> list[str]:
    """The plan's line on several GPUs: the figures are per GPU, the step takes N times the songs."""
    if devices <= 1:
        return []
    return [f"Per GPU, each of the {devices} GPUs (DDP: every GPU holds a full copy of the base and one micro-batch); "
            f"songs per optimizer step: {batch_size} x {devices} = {batch_size * devices} (the crop length "
            "does not scale)"]


def compute_bytes(base_dtype: str) -> int:
    """Bytes of a 16/32-bit value the step computes in: an fp8 base computes (and keeps its other weights) in 16 bits."""
    return 2 if base_dtype == FP8 else DTYPE_BYTES[base_dtype]


# The functions below take any family's planner request (its `plan_request`): a frozen dataclass with
# duration, rank, batch_size, gpu_gb, optimizer, base_dtype, lora_config, device and checkpointed_blocks, whose
# `plan()` is that family's estimate (a DeviceFit) and `block_count` its number of transformer blocks.
def fewest_checkpointed_blocks(request: Any) -> int | None:
    """--gradient_checkpointing auto: the fewest blocks to checkpoint (the first ones) for the run to fit, or None
    when even checkpointing all of them does not."""
    for count in range(request.block_count + 1):
        if replace(request, checkpointed_blocks=count).plan().fits:
            return count
    return None


def checkpointing_text(request: Any) -> str:
    """How many blocks the request checkpoints, in words."""
    blocks = request.block_count
    count = blocks if request.checkpointed_blocks is None else request.checkpointed_blocks
    return f"{count} of {blocks} blocks"


def longest_duration_that_fits(request: Any) -> float | None:
    """The longest crop (whole seconds) for which the plan fits, or None if not even 10 s does."""
    low, high = 10, int(request.duration)
    if not replace(request, duration=low).plan().fits:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if replace(request, duration=middle).plan().fits else (low, middle - 1)
    return float(low)


def fix_options(request: Any) -> list[tuple[str, dict]]:
    """The trainer's options that lower the request's memory, each as (flag text, request changes)."""
    options: list[tuple[str, dict]] = []
    settings = LoraSettings.from_json(request.lora_config)
    if getattr(request, "release_unused_weights", True) is False:
        options.append(("--release_unused_weights (the default)", {"release_unused_weights": True}))
    if request.base_dtype != FP8 and settings.adapter_type != "dora":  # DoRA needs the 16-bit base (refused)
        options.append(("--base_dtype fp8 (the blocks' linear weights in 1 byte, computed in bf16)",
                        {"base_dtype": FP8}))
    if request.optimizer != "adamw8bit" and request.device == "cuda":
        options.append(("--optimizer adamw8bit (pip install bitsandbytes)", {"optimizer": "adamw8bit"}))
    if request.checkpointed_blocks is not None and request.checkpointed_blocks < request.block_count:
        options.append(("--gradient_checkpointing all", {"checkpointed_blocks": None}))
    if request.batch_size > 1:
        options.append((f"--batch_size 1 --accumulate_grad_batches {request.batch_size}", {"batch_size": 1}))
    rank = request.rank or settings.r
    options += [(f"a LoRA config with r {lower}", {"rank": lower}) for lower in (32, 16, 8) if lower < rank]
    if getattr(request, "ssl", False):
        options.append(("--no-use_ssl (or a dataset without SSL features)", {"ssl": False}))
    return options


def suggestions(request: Any) -> list[str]:
    """Options of the trainer that bring the run within the GPU, each checked by estimating it; when no single
    one is enough, all of them together with the longest crop that then fits."""
    options = fix_options(request)
    found = [text for text, changes in options if replace(request, **changes).plan().fits]
    longest = longest_duration_that_fits(request)
    if longest is not None and longest < request.duration:
        found.append(f"--max_duration {longest:.0f} (random crops of that length)")
    if found or not options:
        return found
    # The ranks are alternatives: keep the smallest when combining.
    combined = replace(request, **{k: v for _, changes in options for k, v in changes.items()})
    longest = longest_duration_that_fits(combined)
    if longest is None:
        return []
    texts = [text for text, changes in options if "rank" not in changes or changes["rank"] == combined.rank]
    crop = f"; --max_duration {longest:.0f}" if longest < request.duration else ""
    return ["all together: " + "; ".join(texts) + crop]


def fix_lines(plan: DeviceFit) -> list[str]:
    """The plan's closing line when it does not fit: what makes it fit."""
    if plan.fits:
        return []
    found = suggestions(plan.request)
    return ["Each of these makes it fit: " + "; ".join(found) if found else
            "Nothing tried makes it fit (shorter crops, lower rank, fp8 base, 8-bit optimizer, no SSL)."]
