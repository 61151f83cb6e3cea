"""The family-agnostic part of the memory planner: bytes per dtype and optimizer, the GPU's own overhead, DDP's
buckets, and the verdict every family's plan (acestep/families/<name>/plan.py) prints."""

from __future__ import annotations

from typing import Any

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# Optimizer state per trainable parameter: AdamW two fp32 moments; bitsandbytes AdamW8bit two uint8 moments
# (+ block statistics, < 1 %); Prodigy two moments, `s` and the initial copy `p0`.
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16}
CUDA_CONTEXT_GB = 0.5
ALLOCATOR_SLACK = 0.05


class DeviceFit:
    """The verdict of any plan (v1 or 1.5) that has `parts` (bytes of each term of the peak) and a `request`
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
