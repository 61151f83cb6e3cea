"""The flow-matching objective against the reference numbers (shared/reference/transformer.md section 4.1)."""

from __future__ import annotations

import pytest
import torch

from acestep.families.v1.objective import FlowMatchingObjective, combine_losses


def test_schedule_is_the_shifted_table_of_the_reference() -> None:
    objective = FlowMatchingObjective()
    i = torch.arange(1000, dtype=torch.float64)
    s = (1000 - i) / 1000
    expected_sigmas = 3 * s / (1 + 2 * s)
    assert torch.allclose(objective.sigmas.double(), expected_sigmas, atol=1e-6)
    assert torch.allclose(objective.timesteps.double(), 1000 * expected_sigmas, atol=1e-3)
    assert objective.timesteps[0] == pytest.approx(1000.0)
    assert objective.timesteps[-1] == pytest.approx(2.994, abs=1e-3)


def test_logit_normal_sampling_matches_the_measured_sigma_statistics() -> None:
    objective = FlowMatchingObjective()
    indices = objective.sample_indices(200_000, torch.Generator().manual_seed(0))
    sigmas = objective.sigmas[indices]
    assert indices.min() >= 0 and indices.max() <= 999
    # Reference, measured over 1e6 draws: E[sigma] 0.715, median 0.751, P(sigma > 0.5) 0.864.
    assert sigmas.mean().item() == pytest.approx(0.715, abs=0.004)
    assert sigmas.median().item() == pytest.approx(0.751, abs=0.004)
    assert (sigmas > 0.5).float().mean().item() == pytest.approx(0.864, abs=0.004)


def test_noising_mixes_noise_and_data_by_sigma() -> None:
    objective = FlowMatchingObjective()
    latents = torch.randn(3, 8, 16, 5)
    noised = objective.add_noise(latents, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    indices = objective.sample_indices(3, generator)
    noise = torch.randn(latents.shape, generator=generator)
    sigma = objective.sigmas[indices].view(-1, 1, 1, 1)
    assert torch.allclose(noised.noisy, sigma * noise + (1 - sigma) * latents)
    assert torch.allclose(noised.timesteps, objective.timesteps[indices])


def test_padding_frames_are_zero_in_the_noisy_input() -> None:
    objective = FlowMatchingObjective()
    mask = torch.tensor([[1.0, 1, 1, 0, 0]])
    noised = objective.add_noise(torch.randn(1, 8, 16, 5), torch.Generator().manual_seed(2), mask)
    assert noised.noisy[..., 3:].abs().max() == 0
    assert noised.noisy[..., :3].abs().min() > 0


def test_loss_is_sigma_squared_weighted_velocity_error_without_padding() -> None:
    objective = FlowMatchingObjective()
    latents = torch.randn(2, 8, 16, 4)
    noised = objective.add_noise(latents, torch.Generator().manual_seed(3))
    noise = (noised.noisy - (1 - noised.sigmas) * latents) / noised.sigmas
    perfect = noise - latents
    mask = torch.ones(2, 4)
    assert objective.loss(perfect, noised, latents, mask).item() == pytest.approx(0.0, abs=1e-9)
    velocity = torch.randn_like(latents)
    expected = ((noised.sigmas**2) * (velocity - perfect) ** 2).mean()
    assert objective.loss(velocity, noised, latents, mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_reference_reduction_scales_by_the_valid_fraction_and_masked_mean_does_not() -> None:
    latents = torch.zeros(2, 8, 16, 4)
    noised = FlowMatchingObjective().add_noise(latents, torch.Generator().manual_seed(4))
    noised.noisy = torch.zeros_like(latents)
    noised.sigmas = torch.ones(2, 1, 1, 1)
    velocity = -torch.ones_like(latents)  # x0_hat = 0 - 1 * (-1) = 1: squared error 1 everywhere
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 0]])
    reference = FlowMatchingObjective(loss_reduction="reference").loss(velocity, noised, latents, mask)
    # sample 0: mean 1 * fraction 1 = 1; sample 1: mean 0.25 * fraction 0.25 = 0.0625
    assert reference.item() == pytest.approx((1 + 0.0625) / 2)
    masked = FlowMatchingObjective(loss_reduction="masked_mean").loss(velocity, noised, latents, mask)
    assert masked.item() == pytest.approx(1.0)


def test_ssl_losses_are_averaged_then_weighted() -> None:
    denoising = torch.tensor(0.5)
    proj = [("mert", torch.tensor(0.2)), ("m-hubert", torch.tensor(0.4))]
    assert combine_losses(denoising, proj, 2.0).item() == pytest.approx(0.5 + 2.0 * 0.3)
    assert combine_losses(denoising, [], 1.0).item() == pytest.approx(0.5)


def test_unknown_reduction_is_refused() -> None:
    with pytest.raises(ValueError, match="loss_reduction"):
        FlowMatchingObjective(loss_reduction="sum")
