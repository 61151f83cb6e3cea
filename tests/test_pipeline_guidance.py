"""The inference schedule, the omega Euler step and guidance against the reference's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from acestep.families.v1.pipeline.guidance import (
    MomentumBuffer,
    apg,
    cfg,
    cfg_star,
    double_condition,
    guidance_scale_at,
    guidance_window,
)
from acestep.families.v1.pipeline.schedule import euler_step, inference_sigmas, omega_factor


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
    # The reference's logistic 0.9 + (1.1 - 0.9) / (1 + e^-1), to the last bit of the double.
    assert omega_factor(10.0) == 1.0462117157260011


def test_euler_step_rescales_around_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 5)
    v = torch.randn(2, 8, 16, 5)
    out = euler_step(x, v, sigma=0.8, sigma_next=0.6, omega=10.0)
    # The reference's order: sample + ((dx - m) * omega + m), dx from a float32 sigma difference.
    dx = (torch.tensor(0.6) - torch.tensor(0.8)) * v
    expected = x + ((dx - dx.mean()) * omega_factor(10.0) + dx.mean())
    assert torch.equal(out, expected)
    # The other order is not bit-identical (this is what made our latents drift by up to 5e-5).
    assert not torch.equal(out, x + (dx - dx.mean()) * omega_factor(10.0) + dx.mean())
    # omega 0 gives factor 1: the plain Euler step.
    assert omega_factor(0.0) == 1.0
    torch.testing.assert_close(euler_step(x, v, 0.8, 0.6, omega=0.0), x + dx)


def test_euler_step_forms_the_update_in_the_model_dtype() -> None:
    torch.manual_seed(2)
    x, v = torch.randn(1, 8, 16, 7).bfloat16(), torch.randn(1, 8, 16, 7).bfloat16()
    out = euler_step(x, v, sigma=0.9, sigma_next=0.85, omega=10.0)
    dx = (torch.tensor(0.85) - torch.tensor(0.9)) * v  # stays bfloat16, like the reference's scheduler
    assert dx.dtype == torch.bfloat16
    expected = (x.float() + ((dx - dx.mean()) * omega_factor(10.0) + dx.mean())).bfloat16()
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


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


def test_cfg_star_reference_numbers() -> None:
    cond = torch.tensor([1.0, 2.0]).reshape(1, 1, 1, 2)
    uncond = torch.tensor([2.0, 0.0]).reshape(1, 1, 1, 2)
    # alpha = <c, u> / (|u|^2 + 1e-8) = 2 / 4 = 0.5 -> 0.5 u + 15 (c - 0.5 u) = [1, 0] + 15 [0, 2]
    torch.testing.assert_close(cfg_star(cond, uncond, 15.0, step=2).flatten(), torch.tensor([1.0, 30.0]))
    # Steps 0..zero_steps predict zero velocity (zero init); turned off, step 0 is guided too.
    assert cfg_star(cond, uncond, 15.0, step=1).abs().max() == 0
    torch.testing.assert_close(cfg_star(cond, uncond, 15.0, step=0, zero_init=False).flatten(), torch.tensor([1.0, 30.0]))
    # alpha is per batch item: a second item with u = c has alpha 1 and keeps c.
    pair = cfg_star(torch.cat([cond, cond]), torch.cat([uncond, cond]), 15.0, step=5)
    torch.testing.assert_close(pair[1], cond[0])
    torch.testing.assert_close(pair[0], torch.tensor([1.0, 30.0]).reshape(1, 1, 2))


def test_double_condition_reference_numbers() -> None:
    uncond, text_only, cond = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4.0])
    # (1 - 5) * 1 + (5 - 3) * 2 + 3 * 4 = 12
    assert double_condition(cond, uncond, text_only, 5.0, 3.0).item() == 12.0
    # Equal scales: the tags-only prediction drops out and plain CFG remains.
    assert double_condition(cond, uncond, text_only, 3.0, 3.0).item() == cfg(cond, uncond, 3.0).item()
