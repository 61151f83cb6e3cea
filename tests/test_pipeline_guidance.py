"""The inference schedule, the omega Euler step and guidance against the reference's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from acestep.pipeline.guidance import MomentumBuffer, apg, cfg, guidance_scale_at, guidance_window
from acestep.pipeline.schedule import euler_step, inference_sigmas, omega_factor


def test_schedule_matches_reference_numbers() -> None:
    timesteps, sigmas = inference_sigmas(60)
    assert timesteps.shape == (60,) and sigmas.shape == (61,)
    # transformer.md 6.2: 1000, 994.30, 988.47, ..., 102.81, 57.39, 8.93; then sigma 0.
    for got, want in zip(timesteps[:3].tolist(), [1000.0, 994.30, 988.47]):
        assert got == pytest.approx(want, abs=0.01)
    for got, want in zip(timesteps[-3:].tolist(), [102.81, 57.39, 8.93]):
        assert got == pytest.approx(want, abs=0.01)
    assert sigmas[-2].item() == pytest.approx(0.008929, abs=1e-5)
    assert sigmas[-1].item() == 0.0


def test_schedule_rejects_zero_steps() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        inference_sigmas(0)


def test_omega_factor_reference_value() -> None:
    assert omega_factor(10.0) == pytest.approx(1.04621, abs=1e-5)


def test_euler_step_rescales_around_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 5)
    v = torch.randn(2, 8, 16, 5)
    out = euler_step(x, v, sigma=0.8, sigma_next=0.6, omega=10.0)
    dx = -0.2 * v
    expected = x + (dx - dx.mean()) * omega_factor(10.0) + dx.mean()
    torch.testing.assert_close(out, expected)
    # omega 0 gives factor 1: the plain Euler step.
    assert omega_factor(0.0) == 1.0
    torch.testing.assert_close(euler_step(x, v, 0.8, 0.6, omega=0.0), x + dx)


def test_guidance_window_reference_interval() -> None:
    window = guidance_window(60, 0.5)
    assert (window.start, window.stop) == (15, 45)
    assert guidance_window(60, 1.0) == range(0, 60)


def test_guidance_scale_decay() -> None:
    window = guidance_window(60, 0.5)
    assert guidance_scale_at(15, window, 15.0, 3.0, 0.0) == 15.0
    assert guidance_scale_at(15, window, 15.0, 3.0, 1.0) == 15.0
    assert guidance_scale_at(44, window, 15.0, 3.0, 1.0) == pytest.approx(3.0)


def test_cfg_formula() -> None:
    cond, uncond = torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg(cond, uncond, 15.0).item() == 16.0


def test_apg_keeps_only_the_orthogonal_part() -> None:
    torch.manual_seed(1)
    cond = torch.randn(1, 8, 16, 6)
    uncond = cond - 0.01 * torch.randn(1, 8, 16, 6)
    out = apg(cond, uncond, 15.0, buffer=None)
    guided = (out - cond) / 14.0
    # Orthogonal to cond per (batch, channel) over the last two dims.
    dots = (guided.double() * cond.double()).sum(dim=(-1, -2))
    assert dots.abs().max().item() < 1e-6 * guided.norm().item() * cond.norm().item()
    # A guidance direction parallel to cond is removed entirely.
    parallel = apg(cond, cond * 0.9, 15.0)
    torch.testing.assert_close(parallel, cond, atol=1e-5, rtol=0)


def test_apg_norm_clip_and_momentum() -> None:
    cond = torch.zeros(1, 1, 2, 2)
    cond[..., 0, 0] = 1.0
    uncond = cond.clone()
    uncond[..., 1, 1] = -100.0  # delta of norm 100 along an orthogonal axis
    out = apg(cond, uncond, 2.0)
    assert (out - cond).norm().item() == pytest.approx(2.5, rel=1e-6)
    buffer = MomentumBuffer()
    first = buffer.update(torch.ones(1))
    second = buffer.update(torch.ones(1))
    assert first.item() == 1.0 and second.item() == pytest.approx(1.0 - 0.75)
    assert math.isclose(buffer.momentum, -0.75)
