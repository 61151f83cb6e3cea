"""The training objective of ACE-Step 1.5, as the official trainer and the model's own training forward define it.

x0 = the song's latents, x1 = noise, x_t = t * x1 + (1 - t) * x0; the DiT predicts the flow x1 - x0 and the loss is
the MSE over the valid frames. Timesteps:
- turbo: one of the 8 timesteps turbo inference uses (shift 3), uniformly, with timestep_r = t
  (ace-step/ACE-Step-1.5 acestep/training/trainer.py, TURBO_SHIFT3_TIMESTEPS);
- base / sft: continuous t = sigmoid(N(mu, sigma)) with mu -0.4, sigma 1.0 and timestep_r = t, the sampling the
  base model was trained with (modeling_acestep_v15_base.py `sample_t_r`, use_meanflow=False).
Condition dropout replaces a sample's whole condition sequence by the learned `null_condition_emb`, which is what
base/sft generation feeds the unconditional half of guidance (the same file's forward, cfg_ratio).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from acestep.core.errors import AcestepError

SCHEDULES = ("auto", "turbo", "logit_normal")
TURBO_STEPS = 8
TURBO_SHIFT = 3.0
TIMBRE_FRAMES = 750  # AceStepPipeline: ceil(30 s * 25 latents/s) of silence_latent without reference audio


def shifted_timesteps(steps: int = TURBO_STEPS, shift: float = TURBO_SHIFT) -> torch.Tensor:
    """The sampling timesteps from t=1 down (the terminal 0 left out): t' = shift*t / (1 + (shift-1)*t).

    This is the schedule AceStepPipeline runs; for 8 steps and shift 3 it is the official turbo table.
    """
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
    return (shift * t / (1 + (shift - 1) * t)).float()


def resolve_schedule(name: str, is_turbo: bool) -> str:
    """auto: turbo checkpoints train on their 8 sampling timesteps, base/sft on the continuous density."""
    if name not in SCHEDULES:
        raise AcestepError(f"unknown timestep schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if name == "auto":
        return "turbo" if is_turbo else "logit_normal"
    return name


@dataclass
class TimestepSampler:
    schedule: str  # "turbo" or "logit_normal"
    mu: float = -0.4
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in ("turbo", "logit_normal"):
            raise AcestepError(f"timestep schedule must be turbo or logit_normal, not {self.schedule!r}")
        self.table = shifted_timesteps()

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """t per sample in (0, 1], fp32, drawn on the CPU generator (same values on every device)."""
        if self.schedule == "turbo":
            return self.table[torch.randint(0, len(self.table), (batch,), generator=generator)]
        return torch.sigmoid(torch.randn(batch, generator=generator) * self.sigma + self.mu)


@dataclass
class NoisedLatents:
    noisy: torch.Tensor  # x_t [B, T, 64]
    t: torch.Tensor  # [B]
    target: torch.Tensor  # x1 - x0 [B, T, 64], fp32


def add_noise(latents: torch.Tensor, t: torch.Tensor, generator: torch.Generator) -> NoisedLatents:
    """x_t = t * noise + (1 - t) * x0 and the flow target noise - x0 (noise from the CPU generator)."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    x0 = latents.float()
    t_ = t.to(latents.device).view(-1, 1, 1)
    noisy = t_ * noise + (1.0 - t_) * x0
    return NoisedLatents(noisy=noisy, t=t.to(latents.device), target=noise - x0)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the valid frames (all channels); equals F.mse_loss when nothing is padded."""
    mask = frame_mask.float()[:, :, None].expand_as(target)
    squared = (prediction.float() - target.float()) ** 2 * mask
    return squared.sum() / mask.sum().clamp_min(1.0)


def drop_conditions(
    states: torch.Tensor, null_embedding: torch.Tensor, probability: float, generator: torch.Generator
) -> torch.Tensor:
    """Replace each sample's condition sequence by the null embedding with `probability` (none when 0)."""
    if probability <= 0:
        return states
    drop = (torch.rand(states.shape[0], generator=generator) < probability).to(states.device)
    null = null_embedding.to(states.device, states.dtype).expand_as(states)
    return torch.where(drop[:, None, None], null, states)


def base_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the frozen weights (LoRA factors are fp32 whatever the base holds)."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return (frozen or list(model.parameters()))[0].dtype


class V15Step:
    """One micro-batch's loss for a LoRA-adapted AceStepTransformer1DModel (the trainer's `StepObjective`)."""

    def __init__(
        self, sampler: TimestepSampler, null_embedding: torch.Tensor | None, condition_dropout: float,
        condition_encoder: torch.nn.Module | None = None,
    ) -> None:
        """`condition_encoder`: run the (frozen) encoder in the step, for datasets that store its inputs."""
        if condition_dropout > 0 and null_embedding is None:
            raise AcestepError("--condition_dropout needs the condition encoder's null_condition_emb")
        self.sampler = sampler
        self.null_embedding = null_embedding
        self.condition_dropout = condition_dropout
        self.condition_encoder = condition_encoder

    def conditions(self, batch: dict[str, Any]) -> torch.Tensor:
        """Stored encoder output, or the encoder run on stored inputs with the silent timbre reference that
        AceStepPipeline feeds when no reference audio is given (its first 750 frames = 30 s)."""
        if self.condition_encoder is None:
            return batch["encoder_hidden_states"]
        encoder = self.condition_encoder
        size = batch["text_hidden_states"].shape[0]
        dtype, device = encoder.dtype, batch["text_hidden_states"].device
        silence = encoder.silence_latent[:, :TIMBRE_FRAMES].to(device, dtype).expand(size, -1, -1).contiguous()
        with torch.no_grad():
            states, _ = encoder(
                text_hidden_states=batch["text_hidden_states"].to(dtype),
                text_attention_mask=batch["text_attention_mask"].long(),
                lyric_hidden_states=batch["lyric_hidden_states"].to(dtype),
                lyric_attention_mask=batch["lyric_attention_mask"].long(),
                refer_audio_acoustic_hidden_states_packed=silence,
                refer_audio_order_mask=torch.arange(size, device=device),
            )
        return states

    def fixed_loss(
        self, transformer: torch.nn.Module, batch: dict[str, Any], sigma: float, noise: torch.Tensor
    ) -> torch.Tensor:
        """The validation loss: flow MSE at t = `sigma` with the given noise and the full condition (no dropout)."""
        latents = batch["target_latents"]
        x0 = latents.float()
        t = torch.full((latents.shape[0],), sigma, device=latents.device)
        noisy = sigma * noise.float() + (1.0 - sigma) * x0
        dtype = base_dtype(transformer)
        prediction = transformer(
            hidden_states=noisy.to(dtype), timestep=t.to(dtype), timestep_r=t.to(dtype),
            encoder_hidden_states=self.conditions(batch).to(dtype), context_latents=batch["context_latents"].to(dtype),
            return_dict=False,
        )[0]
        return masked_mse(prediction, noise.float() - x0, batch["attention_mask"])

    def __call__(
        self, transformer: torch.nn.Module, batch: dict[str, Any], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        latents = batch["target_latents"]
        states = self.conditions(batch)
        if self.null_embedding is not None:
            states = drop_conditions(states, self.null_embedding, self.condition_dropout, generator)
        t = self.sampler.sample(latents.shape[0], generator)
        noised = add_noise(latents, t, generator)
        dtype = base_dtype(transformer)
        prediction = transformer(
            hidden_states=noised.noisy.to(dtype), timestep=noised.t.to(dtype), timestep_r=noised.t.to(dtype),
            encoder_hidden_states=states.to(dtype), context_latents=batch["context_latents"].to(dtype),
            return_dict=False,
        )[0]
        loss = masked_mse(prediction, noised.target, batch["attention_mask"])
        return loss, {"denoising_loss": loss.detach()}
