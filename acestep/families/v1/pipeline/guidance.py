"""Classifier-free guidance as the reference pipeline applies it: the guidance interval, plain CFG, APG,
CFG-Zero* ("cfg_star") and double-condition guidance (separate tag and lyric scales).

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
    guided = orthogonal.to(delta.dtype) + eta * parallel.to(delta.dtype)
    return cond + (scale - 1.0) * guided


def cfg_star(
    cond: torch.Tensor, uncond: torch.Tensor, scale: float, step: int, zero_steps: int = 1, zero_init: bool = True
) -> torch.Tensor:
    """CFG-Zero*: the unconditional prediction is first scaled by alpha = <cond, uncond> / (|uncond|^2 + 1e-8)
    per batch item; steps 0..zero_steps of the schedule predict zero velocity when `zero_init` is on (with
    the reference's guidance interval 0.5 those steps are outside the window, so this only matters at 1.0)."""
    if zero_init and step <= zero_steps:
        return cond * 0.0
    batch = cond.shape[0]
    positive, negative = cond.reshape(batch, -1), uncond.reshape(batch, -1)
    alpha = (positive * negative).sum(dim=1, keepdim=True) / ((negative**2).sum(dim=1, keepdim=True) + 1e-8)
    scaled_uncond = uncond * alpha.reshape(batch, *([1] * (cond.dim() - 1)))
    return scaled_uncond + scale * (cond - scaled_uncond)


def double_condition(
    cond: torch.Tensor, uncond: torch.Tensor, text_only: torch.Tensor, text_scale: float, lyric_scale: float
) -> torch.Tensor:
    """Separate guidance for the tags and the lyrics: (1 - s_t) u + (s_t - s_l) t + s_l c, where t is the
    prediction with the tags but without (or with ERG-weakened) lyrics. Equal scales reduce to plain CFG."""
    return (1 - text_scale) * uncond + (text_scale - lyric_scale) * text_only + lyric_scale * cond
