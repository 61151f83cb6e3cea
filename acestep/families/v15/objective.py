"""The training objective of ACE-Step 1.5, as the official trainer and the model's own training forward define it.

x0 = the song's latents, x1 = noise, x_t = t * x1 + (1 - t) * x0; the DiT predicts the flow x1 - x0 and the loss is
the MSE over the valid frames. Timesteps:
- logit_normal (the default for every variant): t = the larger of two draws sigmoid(N(mu, sigma)), timestep_r = t,
  with mu and sigma from the DiT's config.json (published: -0.4, 1.0). That is how every 1.5 model's own training
  forward samples (`sample_t_r` with use_meanflow=False in modeling_acestep_v15_{turbo,base}.py) and what the
  current official trainer does for turbo, base and sft (training_v2, "fixed" mode): mean 0.535, P(t > 0.5) 0.57.
- turbo: one of the 8 timesteps turbo inference uses (shift 3), uniformly, with timestep_r = t: the choice of the
  older (Feb 2026) official trainer (acestep/training/trainer.py), which the later one calls wrong for training.
Condition dropout replaces a sample's whole condition sequence by the learned `null_condition_emb`, as the models
were pre-trained (cfg_ratio 0.15 in their forward) and what base/sft generation feeds the unconditional half of
guidance. Every draw of a song (dropout, t, noise) comes from that song's own generator: a song gets the same draws
whatever it is batched with and whichever DDP process trains it.
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


PUBLISHED_MU, PUBLISHED_SIGMA = -0.4, 1.0  # timestep_mu / timestep_sigma of every published 1.5 config.json


def resolve_schedule(name: str) -> str:
    """auto: the continuous max-of-two density for every variant, turbo included (the current official trainer)."""
    if name not in SCHEDULES:
        raise AcestepError(f"unknown timestep schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return "logit_normal" if name == "auto" else name


@dataclass
class TimestepSampler:
    schedule: str  # "turbo" or "logit_normal"
    mu: float = PUBLISHED_MU
    sigma: float = PUBLISHED_SIGMA

    def __post_init__(self) -> None:
        if self.schedule not in ("turbo", "logit_normal"):
            raise AcestepError(f"timestep schedule must be turbo or logit_normal, not {self.schedule!r}")
        self.table = shifted_timesteps()

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """t per sample in (0, 1], fp32, drawn on the CPU generator (same values on every device)."""
        if self.schedule == "turbo":
            return self.table[torch.randint(0, len(self.table), (batch,), generator=generator)]
        t = torch.sigmoid(torch.randn(batch, generator=generator) * self.sigma + self.mu)
        r = torch.sigmoid(torch.randn(batch, generator=generator) * self.sigma + self.mu)
        return torch.maximum(t, r)

    def describe(self) -> str:
        if self.schedule == "turbo":
            return "t uniform over the 8 turbo sampling timesteps (1.0 ... 0.3; the Feb 2026 official trainer's table)"
        return f"t = max of two sigmoid(N({self.mu:g}, {self.sigma:g})) draws (the models' own training density)"


@dataclass
class SongDraws:
    """One micro-batch's random draws, each song's from its own generator."""

    keep: torch.Tensor  # [B] bool: the song keeps its condition (False: null_condition_emb instead)
    t: torch.Tensor  # [B] fp32
    noise: torch.Tensor  # [B, T, C] fp32, zero on padded frames


def draw_per_song(
    generators: list[torch.Generator], frame_mask: torch.Tensor, channels: int, sampler: TimestepSampler,
    condition_dropout: float,
) -> SongDraws:
    """Song i's condition-dropout draw, t and noise (over its real frames only) from generators[i], in that order.

    The dropout draw is taken even at probability 0, so t and noise do not depend on --condition_dropout."""
    keep, times = [], []
    noise = torch.zeros(len(generators), frame_mask.shape[1], channels)
    for row, generator in enumerate(generators):
        keep.append(bool(torch.rand(1, generator=generator) >= condition_dropout))
        times.append(sampler.sample(1, generator))
        frames = int(frame_mask[row].sum())
        noise[row, :frames] = torch.randn(frames, channels, generator=generator)
    return SongDraws(keep=torch.tensor(keep), t=torch.cat(times), noise=noise)


@dataclass
class NoisedLatents:
    noisy: torch.Tensor  # x_t [B, T, 64]
    t: torch.Tensor  # [B]
    target: torch.Tensor  # x1 - x0 [B, T, 64], fp32


def add_noise(latents: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> NoisedLatents:
    """x_t = t * noise + (1 - t) * x0 and the flow target noise - x0."""
    noise = noise.to(latents.device)
    x0 = latents.float()
    t_ = t.to(latents.device).view(-1, 1, 1)
    noisy = t_ * noise + (1.0 - t_) * x0
    return NoisedLatents(noisy=noisy, t=t.to(latents.device), target=noise - x0)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the valid frames (all channels); equals F.mse_loss when nothing is padded."""
    mask = frame_mask.float()[:, :, None].expand_as(target)
    squared = (prediction.float() - target.float()) ** 2 * mask
    return squared.sum() / mask.sum().clamp_min(1.0)


def drop_conditions(states: torch.Tensor, null_embedding: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Each song's condition sequence where `keep` [B] says so, the null embedding (expanded) elsewhere."""
    if bool(keep.all()):
        return states
    null = null_embedding.to(states.device, states.dtype).expand_as(states)
    return torch.where(keep.to(states.device)[:, None, None], states, null)


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
        self, transformer: torch.nn.Module, batch: dict[str, Any], generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`generators`: one per song of the micro-batch (its own stream, see draw_per_song)."""
        latents = batch["target_latents"]
        draws = draw_per_song(generators, batch["attention_mask"], latents.shape[-1], self.sampler,
                              self.condition_dropout)
        states = self.conditions(batch)
        if self.null_embedding is not None:
            states = drop_conditions(states, self.null_embedding, draws.keep)
        noised = add_noise(latents, draws.t, draws.noise)
        dtype = base_dtype(transformer)
        prediction = transformer(
            hidden_states=noised.noisy.to(dtype), timestep=noised.t.to(dtype), timestep_r=noised.t.to(dtype),
            encoder_hidden_states=states.to(dtype), context_latents=batch["context_latents"].to(dtype),
            return_dict=False,
        )[0]
        loss = masked_mse(prediction, noised.target, batch["attention_mask"])
        return loss, {"denoising_loss": loss.detach()}
