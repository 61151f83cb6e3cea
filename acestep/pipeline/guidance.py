"""Classifier-free guidance as the reference pipeline applies it: the guidance interval, plain CFG and APG.

APG (adaptive projected guidance) keeps only the part of the guidance direction orthogonal to the conditional
prediction, after a momentum average and a norm clip; it is the reference default because plain CFG at scale
15 over-saturates music latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
APG_DIMS = (-1, -2)


def guidance_window(num_steps: int, interval: float) -> range:
    """Step indices that get guidance: the middle `interval` fraction of the schedule (0.5 -> 15..44 of 60)."""
    start = math.floor(num_steps * (1.0 - interval) / 2.0)
    end = math.floor(num_steps * (interval / 2.0 + 0.5))
    return range(start, end)


def guidance_scale_at(
    step: int, window: range, scale: float, min_scale: float, decay: float
) -> float:
    """The scale at `step` inside the window, decayed linearly towards `min_scale` when `decay` > 0."""
    if decay <= 0 or len(window) < 2:
        return scale
    progress = (step - window.start) / (len(window) - 1)
    return scale - (scale - min_scale) * progress * decay


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain classifier-free guidance."""
    return uncond + scale * (cond - uncond)


@dataclass
class MomentumBuffer:
    """Running guidance direction shared across steps: r <- d + momentum * r."""

    momentum: float = APG_MOMENTUM
    running: torch.Tensor | None = None

    def update(self, delta: torch.Tensor) -> torch.Tensor:
        self.running = delta if self.running is None else delta + self.momentum * self.running
        return self.running


def apg(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    buffer: MomentumBuffer | None = None,
    norm_threshold: float = APG_NORM_THRESHOLD,
    eta: float = 0.0,
) -> torch.Tensor:
    """Adaptive projected guidance over the last two dims (16 x T) per (batch, channel)."""
    delta = cond - uncond
    if buffer is not None:
        delta = buffer.update(delta)
    if norm_threshold > 0:
        norm = delta.norm(p=2, dim=APG_DIMS, keepdim=True)
        delta = delta * torch.clamp(norm_threshold / norm, max=1.0)
    direction = torch.nn.functional.normalize(cond.double(), dim=APG_DIMS)
    delta64 = delta.double()
    parallel = (delta64 * direction).sum(dim=APG_DIMS, keepdim=True) * direction
    orthogonal = delta64 - parallel
    guided = (orthogonal + eta * parallel).to(delta.dtype)
    return cond + (scale - 1.0) * guided
