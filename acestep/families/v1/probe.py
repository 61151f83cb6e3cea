"""One training step on random weights and a synthetic batch, timed and memory-tracked.

The step is the trainer's (`FlowMatchingObjective`, `attach_lora`, gradient checkpointing, autocast in the base
dtype, AdamW on the LoRA factors) without Lightning around it, so the benchmark can run it at sizes where no
checkpoint exists (random weights built on the meta device) and the planner can be checked against it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from acestep.data.sizing import MERT, MHUBERT, SAMPLE_RATE, ssl_frames
from acestep.families.v1.blocks import BLOCKS
from acestep.families.v1.models import ACEStepTransformer2DModel
from acestep.families.v1.models.rope import RotaryEmbedding
from acestep.families.v1.objective import FlowMatchingObjective, combine_losses
from acestep.families.v1.songs import LATENT_FRAMES_PER_SECOND
from acestep.families.v1.training import release_unused_weights
from acestep.lora import LoraSettings
from acestep.training.fp8 import quantize_base
from acestep.training.memory import TensorMemoryTracker
from acestep.training.model import attach_lora


def random_transformer(config: dict, dtype: torch.dtype, device: torch.device | str) -> ACEStepTransformer2DModel:
    """The model of `config` with random weights, allocated once in `dtype` (no fp32 copy of a 3.3B model)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = ACEStepTransformer2DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    rotary = model.rotary_emb  # buffers are not parameters: rebuild the tables to_empty left uninitialised
    model.rotary_emb = RotaryEmbedding(rotary.dim, rotary.cached_length, rotary.theta).to(device, dtype)
    return model


@dataclass
class SyntheticBatch:
    tensors: dict[str, torch.Tensor]
    ssl: list[list[torch.Tensor]] | None

    def all_tensors(self) -> list[torch.Tensor]:
        return list(self.tensors.values()) + [t for group in self.ssl or [] for t in group]


def synthetic_batch(
    config: dict, frames: int, batch_size: int, lyric_tokens: int, text_tokens: int, ssl: bool,
    device: torch.device | str,
) -> SyntheticBatch:
    """Random tensors shaped like a collated micro-batch of the preprocessed dataset (all entries valid)."""
    g = torch.Generator().manual_seed(1)
    b = batch_size
    tensors = {
        "target_latents": torch.randn(b, config["in_channels"], config["patch_size"][0], frames, generator=g),
        "attention_mask": torch.ones(b, frames),
        "encoder_text_hidden_states": torch.randn(b, text_tokens, config["text_embedding_dim"], generator=g),
        "text_attention_mask": torch.ones(b, text_tokens),
        "speaker_embeds": torch.zeros(b, config["speaker_embedding_dim"]),
        "lyric_token_idx": torch.randint(0, config["lyric_encoder_vocab_size"], (b, lyric_tokens), generator=g),
        "lyric_mask": torch.ones(b, lyric_tokens),
    }
    tensors = {k: v.to(device) for k, v in tensors.items()}
    features = None
    if ssl:
        samples = round(frames / LATENT_FRAMES_PER_SECOND * SAMPLE_RATE)
        features = [
            [torch.randn(ssl_frames(samples, model), dim, generator=g).to(device) for _ in range(b)]
            for model, dim in zip((MERT, MHUBERT), config["ssl_latent_dims"])
        ]
    return SyntheticBatch(tensors, features)


@dataclass
class StepMeasurement:
    seconds: float
    tensor_peak_bytes: int  # weights, LoRA state, micro-batch and activations, from TensorMemoryTracker
    cuda_peak_bytes: int | None  # torch.cuda.max_memory_allocated, on CUDA only


class TrainingStepProbe:
    """A LoRA-wrapped model, its optimizer and one batch; `run` performs and measures one optimizer step."""

    def __init__(
        self, model: ACEStepTransformer2DModel, settings: LoraSettings, batch: SyntheticBatch,
        autocast_dtype: torch.dtype | None = torch.bfloat16, checkpointing: bool = True,
        release_unused: bool = True, fp8_base: bool = False, checkpointed_blocks: int | None = None,
    ) -> None:
        """`checkpointed_blocks`: with `checkpointing`, only the first N blocks (None: all)."""
        self.model = model
        self.batch = batch
        self.autocast_dtype = autocast_dtype
        if release_unused:  # as the trainer does by default
            release_unused_weights(model, keep_ssl_projectors=batch.ssl is not None)
        if fp8_base:  # as the trainer's --base_dtype fp8: the blocks' Linears in fp8, computed in autocast's dtype
            quantize_base(model, autocast_dtype or torch.bfloat16, BLOCKS.fp8_prefixes)
        attach_lora(model, settings, "probe")
        if checkpointing:
            model.enable_gradient_checkpointing()
            model.set_checkpointed_blocks(checkpointed_blocks)
        model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.8, 0.9))
        self.objective = FlowMatchingObjective()
        self.device = next(model.parameters()).device
        self._step = 0

    def loss(self, seed: int) -> torch.Tensor:
        """The step's loss on the batch, noise and timesteps drawn from `seed` (no backward)."""
        t = self.batch.tensors
        generator = torch.Generator().manual_seed(seed)
        noised = self.objective.add_noise(t["target_latents"], generator, t["attention_mask"])
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            output = self.model(
                hidden_states=noised.noisy, attention_mask=t["attention_mask"], timestep=noised.timesteps,
                encoder_text_hidden_states=t["encoder_text_hidden_states"],
                text_attention_mask=t["text_attention_mask"], speaker_embeds=t["speaker_embeds"],
                lyric_token_idx=t["lyric_token_idx"], lyric_mask=t["lyric_mask"], ssl_hidden_states=self.batch.ssl,
            )
        denoising = self.objective.loss(output.sample, noised, t["target_latents"], t["attention_mask"])
        return combine_losses(denoising, output.proj_losses or [], 1.0)

    def _step_once(self) -> None:
        self._step += 1
        self.loss(self._step - 1).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, track_memory: bool = True) -> StepMeasurement:
        """One step; the first call also creates the optimizer state, so call once to warm up."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        tracker = TensorMemoryTracker()
        if track_memory:
            tracker.track_module(self.model)
            tracker.track_optimizer(self.optimizer)
            tracker.track(*self.batch.all_tensors())
        self._sync()
        started = time.perf_counter()
        if track_memory:
            with tracker:
                self._step_once()
        else:
            self._step_once()
        self._sync()
        seconds = time.perf_counter() - started
        return StepMeasurement(
            seconds=seconds,
            tensor_peak_bytes=tracker.peak,
            cuda_peak_bytes=torch.cuda.max_memory_allocated(self.device) if cuda else None,
        )
