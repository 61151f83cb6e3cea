"""The training objective of ACE-Step v1: shifted flow-matching schedule, logit-normal timesteps, x0 loss, and the
step the trainer runs with it (`V1Step`, the family's `StepObjective`).

Facts: shared/reference/transformer.md section 4.1 (identical in upstream `trainer.py` and the fork).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

if TYPE_CHECKING:
    from acestep.training.config import TrainConfig

LOSS_REDUCTIONS = ("reference", "masked_mean")


@dataclass
class NoisedBatch:
    """What one training step feeds the transformer, and what its loss needs."""

    noisy: torch.Tensor  # x_sigma [B, 8, 16, T]
    sigmas: torch.Tensor  # [B, 1, 1, 1]
    timesteps: torch.Tensor  # [B], sigma * 1000 (fp32, as inference feeds it)


class FlowMatchingObjective:
    """The diffusers training table (T = 1000, shift 3) and the fork's sampling, noising and loss rules."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 3.0,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        loss_reduction: str = "reference",
    ) -> None:
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, not {loss_reduction!r}")
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
        self.num_train_timesteps = num_train_timesteps
        self.timesteps = scheduler.timesteps[:num_train_timesteps].float().clone()
        self.sigmas = scheduler.sigmas[:num_train_timesteps].float().clone()
        self.logit_mean = logit_mean
        self.logit_std = logit_std
        self.loss_reduction = loss_reduction

    def sample_indices(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """idx = clamp(floor(T * sigmoid(u)), 0, T-1) with u ~ N(mean, std), drawn on the CPU as the fork does."""
        u = torch.randn(batch, generator=generator) * self.logit_std + self.logit_mean
        indices = (torch.sigmoid(u) * self.num_train_timesteps).long()
        return indices.clamp(0, self.num_train_timesteps - 1)

    def add_noise(
        self, latents: torch.Tensor, generator: torch.Generator, frame_mask: torch.Tensor | None = None
    ) -> NoisedBatch:
        """x_sigma = sigma * eps + (1 - sigma) * x0; noise and timesteps come from the CPU generator.

        Padding frames (frame_mask 0) are set to zero so a batch's padding carries no random content.
        """
        indices = self.sample_indices(latents.shape[0], generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        sigmas = self.sigmas[indices].to(latents.device, latents.dtype).view(-1, 1, 1, 1)
        noisy = sigmas * noise + (1.0 - sigmas) * latents
        if frame_mask is not None:
            noisy = noisy * frame_mask[:, None, None, :].to(noisy.dtype)
        return NoisedBatch(noisy=noisy, sigmas=sigmas, timesteps=self.timesteps[indices].to(latents.device))

    def add_noise_per_song(
        self, latents: torch.Tensor, generators: list[torch.Generator], frame_mask: torch.Tensor
    ) -> NoisedBatch:
        """As `add_noise`, but song i's timestep and noise (over its real frames only) come from generators[i].

        A song then gets the same draws whatever it is batched with or whichever GPU trains it: one process with
        batch 2 and two DDP processes with batch 1 see identical noise and timesteps.
        """
        indices = torch.cat([self.sample_indices(1, g) for g in generators])
        noise = torch.zeros(latents.shape, dtype=torch.float32)
        for row, generator in enumerate(generators):
            frames = int(frame_mask[row].sum())
            noise[row, ..., :frames] = torch.randn((*latents.shape[1:-1], frames), generator=generator)
        noise = noise.to(latents.device, latents.dtype)
        sigmas = self.sigmas[indices].to(latents.device, latents.dtype).view(-1, 1, 1, 1)
        noisy = (sigmas * noise + (1.0 - sigmas) * latents) * frame_mask[:, None, None, :].to(latents.dtype)
        return NoisedBatch(noisy=noisy, sigmas=sigmas, timesteps=self.timesteps[indices].to(latents.device))

    def loss(
        self, velocity: torch.Tensor, noised: NoisedBatch, latents: torch.Tensor, frame_mask: torch.Tensor
    ) -> torch.Tensor:
        """MSE between the preconditioned x0 prediction (x_sigma - sigma * v) and x0, masked per frame.

        "reference": per sample mean over all elements of the masked squared error, times the valid fraction
        (what both reference trainers compute; equal to plain MSE without padding). "masked_mean": the true
        mean over valid elements (differs only when a batch pads songs of different lengths).
        """
        predicted = noised.noisy.float() - noised.sigmas.float() * velocity.float()
        mask = frame_mask.float()[:, None, None, :].expand_as(predicted)
        batch = predicted.shape[0]
        squared = ((predicted * mask - latents.float() * mask) ** 2).reshape(batch, -1)
        mask = mask.reshape(batch, -1)
        if self.loss_reduction == "masked_mean":
            return (squared.sum(1) / mask.sum(1).clamp_min(1.0)).mean()
        return (squared.mean(1) * mask.mean(1)).mean()


def combine_losses(
    denoising: torch.Tensor, proj_losses: list[tuple[str, torch.Tensor]], ssl_coeff: float
) -> torch.Tensor:
    """loss = denoising + ssl_coeff * mean of the SSL projection losses (none: denoising alone)."""
    if not proj_losses:
        return denoising
    return denoising + ssl_coeff * torch.stack([value for _, value in proj_losses]).mean()


class V1Step:
    """One micro-batch's loss for a LoRA-adapted ACEStepTransformer2DModel (the trainer's `StepObjective`): per-song
    condition dropout, timestep and noise, the x0 loss, plus the SSL projection losses at `ssl_coeff`."""

    def __init__(self, config: TrainConfig) -> None:
        self.objective = FlowMatchingObjective(
            config.num_train_timesteps, config.shift, config.logit_mean, config.logit_std, config.loss_reduction
        )
        self.num_train_timesteps = config.num_train_timesteps
        self.dropouts = (("prompt", config.prompt_dropout), ("lyrics", config.lyrics_dropout),
                         ("speaker", config.speaker_dropout))
        self.ssl_coeff = config.ssl_coeff

    def drop_conditions(
        self, transformer: torch.nn.Module, batch: dict[str, Any], generators: list[torch.Generator]
    ) -> dict[str, torch.Tensor]:
        """Per-sample condition dropout as upstream: prompt states zeroed (mask kept), lyrics ids and mask zeroed."""
        device = batch["target_latents"].device
        size = batch["target_latents"].shape[0]
        draws = torch.stack([torch.rand(3, generator=g) for g in generators])  # prompt, lyrics, speaker per song
        keep = {name: (draws[:, column] >= p).to(device) for column, (name, p) in enumerate(self.dropouts)}
        speaker_dim = transformer.config.speaker_embedding_dim
        # v1 checkpoints have no speaker data: the embedding is zeros, as in the reference's data.
        speaker = torch.zeros(size, speaker_dim, device=device) * keep["speaker"][:, None]
        return {
            "encoder_text_hidden_states": batch["encoder_text_hidden_states"] * keep["prompt"][:, None, None],
            "text_attention_mask": batch["text_attention_mask"],
            "speaker_embeds": speaker,
            "lyric_token_idx": batch["lyric_token_ids"] * keep["lyrics"][:, None],
            "lyric_mask": batch["lyric_mask"] * keep["lyrics"][:, None],
        }

    def fixed_loss(
        self, transformer: torch.nn.Module, batch: dict[str, Any], sigma: float, noise: torch.Tensor
    ) -> torch.Tensor:
        """The validation loss: the denoising loss at noise level `sigma` with `noise`, no condition dropout."""
        latents, frame_mask = batch["target_latents"], batch["attention_mask"]
        size = latents.shape[0]
        sigmas = torch.full((size, 1, 1, 1), sigma, device=latents.device, dtype=latents.dtype)
        noisy = (sigmas * noise + (1.0 - sigmas) * latents) * frame_mask[:, None, None, :].to(latents.dtype)
        timesteps = torch.full((size,), sigma * self.num_train_timesteps, device=latents.device)
        noised = NoisedBatch(noisy=noisy, sigmas=sigmas, timesteps=timesteps)
        speaker = torch.zeros(size, transformer.config.speaker_embedding_dim, device=latents.device)
        output = transformer(
            hidden_states=noisy, attention_mask=frame_mask, timestep=timesteps,
            encoder_text_hidden_states=batch["encoder_text_hidden_states"],
            text_attention_mask=batch["text_attention_mask"], speaker_embeds=speaker,
            lyric_token_idx=batch["lyric_token_ids"], lyric_mask=batch["lyric_mask"],
        )
        return self.objective.loss(output.sample, noised, latents, frame_mask)

    def __call__(
        self, transformer: torch.nn.Module, batch: dict[str, Any], generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`generators`: one per song (its own stream): its dropout draws first, then its timestep and noise."""
        latents = batch["target_latents"]
        frame_mask = batch["attention_mask"]
        conditions = self.drop_conditions(transformer, batch, generators)
        noised = self.objective.add_noise_per_song(latents, generators, frame_mask)
        ssl = batch.get("ssl_hidden_states") if self.ssl_coeff > 0 else None
        output = transformer(
            hidden_states=noised.noisy, attention_mask=frame_mask, timestep=noised.timesteps,
            ssl_hidden_states=ssl, **conditions,
        )
        denoising = self.objective.loss(output.sample, noised, latents, frame_mask)
        loss = combine_losses(denoising, output.proj_losses or [], self.ssl_coeff)
        parts = {"denoising_loss": denoising.detach()}
        parts.update({f"{name}_loss": value.detach() for name, value in output.proj_losses or []})
        return loss, parts
