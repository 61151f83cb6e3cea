"""The reference inference schedule and its Euler step with the "omega" mean shift.

The schedule comes from diffusers' `FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)`, as in
the reference pipeline, so its quirks (the endpoints are shifted twice, sigma ends at 0) are reproduced by the
library itself rather than re-derived here.
"""

from __future__ import annotations

import math

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SHIFT = 3.0


def make_scheduler(shift: float = DEFAULT_SHIFT) -> FlowMatchEulerDiscreteScheduler:
    """The scheduler both training (sigma table) and inference (step list) read from."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)


def inference_sigmas(num_steps: int, shift: float = DEFAULT_SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps [N], sigmas [N + 1]) for `num_steps` Euler steps; the last sigma is 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    scheduler = make_scheduler(shift)
    scheduler.set_timesteps(num_steps)
    return scheduler.timesteps.float(), scheduler.sigmas.float()


def omega_factor(omega: float) -> float:
    """The reference's granularity factor: a logistic curve from 0.9 to 1.1, steepness 0.1 (omega 10 -> 1.0462).

    Written as the reference evaluates it, 0.9 + (1.1 - 0.9) / (1 + e^(-0.1 omega)), so the factor is the
    same double (1.1 - 0.9 is 0.20000000000000007, not 0.2).
    """
    lower, upper = 0.9, 1.1
    return lower + (upper - lower) / (1.0 + math.exp(-0.1 * omega))


def euler_step(
    sample: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float, omega: float
) -> torch.Tensor:
    """One Euler step whose update is re-scaled around its mean (over the whole tensor, batch included).

    In the reference's order and precision: the update dx = (sigma_next - sigma) * velocity is formed in the
    velocity's dtype with a float32 sigma difference, re-scaled as (dx - mean) * factor + mean, and only then
    added to the float32 sample; the result is cast back to the velocity's dtype.
    """
    step = torch.tensor(sigma_next, dtype=torch.float32) - torch.tensor(sigma, dtype=torch.float32)
    dx = step * velocity
    mean = dx.mean()
    updated = sample.float() + ((dx - mean) * omega_factor(omega) + mean)
    return updated.to(velocity.dtype)
