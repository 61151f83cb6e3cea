"""Text-to-music with our components, sampling as the reference pipeline does (transformer.md section 6):
60 Euler steps with the omega mean shift, APG guidance 15 inside the middle half of the schedule, ERG for the
unconditional branch, DC-AE + vocoder decode to stereo audio."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checkpoint import resolve_checkpoint
from ..lyrics import LyricTokenizer, resolve_lyrics_vocab
from ..models import ACEStepTransformer2DModel
from ..models.dcae import DCAE_SAMPLE_RATE, SAMPLES_PER_LATENT, MusicDCAE
from ..text_encoder import TextEncoder
from .erg import diffusion_query_layers, lyric_query_layers, scaled_outputs, text_query_layers
from .guidance import MomentumBuffer, apg, cfg, guidance_scale_at, guidance_window
from .schedule import DEFAULT_SHIFT, euler_step, inference_sigmas


@dataclass
class GenerationParams:
    """Everything that decides an output; saved as JSON next to each file."""

    prompt: str
    lyrics: str = ""
    duration: float = 30.0
    seed: int = 0
    steps: int = 60
    guidance_scale: float = 15.0
    cfg_type: str = "apg"
    guidance_interval: float = 0.5
    guidance_interval_decay: float = 0.0
    min_guidance_scale: float = 3.0
    omega: float = 10.0
    shift: float = DEFAULT_SHIFT
    use_erg_tag: bool = True
    use_erg_lyric: bool = True
    use_erg_diffusion: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def latent_frames(duration: float) -> int:
    """The reference's inference length rule: int(duration * 44100 / 512 / 8)."""
    frames = int(duration * DCAE_SAMPLE_RATE / SAMPLES_PER_LATENT)
    if frames < 1:
        raise ValueError(f"duration {duration} s is too short (at least {SAMPLES_PER_LATENT / DCAE_SAMPLE_RATE:.2f} s)")
    return frames


def output_samples(duration: float, sample_rate: int = DCAE_SAMPLE_RATE) -> int:
    """Samples in the decoded file: 4096 per latent frame at 44.1 kHz, resampled to `sample_rate`."""
    return math.ceil(latent_frames(duration) * SAMPLES_PER_LATENT * sample_rate / DCAE_SAMPLE_RATE)


class ACEStepPipeline:
    """Holds the four components; `cpu_offload` keeps idle ones on the CPU (small GPUs)."""

    def __init__(
        self, transformer: ACEStepTransformer2DModel, dcae: MusicDCAE, text_encoder: TextEncoder,
        lyric_tokenizer: LyricTokenizer, device: str | torch.device = "cpu", cpu_offload: bool = False,
    ) -> None:
        self.transformer = transformer.eval()
        self.dcae = dcae.eval()
        self.text_encoder = text_encoder
        self.lyric_tokenizer = lyric_tokenizer
        self.device = torch.device(device)
        self.cpu_offload = cpu_offload
        if not cpu_offload:
            self.transformer.to(self.device)
            self.dcae.to(self.device)
            self._move_text_encoder(self.device)

    @classmethod
    def from_checkpoint(
        cls, checkpoint_dir: str | Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
        cpu_offload: bool = False, lyrics_vocab: str | Path | None = None,
    ) -> ACEStepPipeline:
        paths = resolve_checkpoint(checkpoint_dir)
        vocab = resolve_lyrics_vocab(lyrics_vocab, checkpoint_dir=paths.root)
        return cls(
            ACEStepTransformer2DModel.from_pretrained(paths.transformer, torch_dtype=dtype),
            MusicDCAE.from_pretrained(paths.dcae, paths.vocoder, torch_dtype=dtype),
            TextEncoder.from_pretrained(paths.text_encoder, torch_dtype=dtype),
            LyricTokenizer.from_file(vocab),
            device=device, cpu_offload=cpu_offload,
        )

    def _move_text_encoder(self, device: torch.device) -> None:
        self.text_encoder.model.to(device)
        self.text_encoder.device = device

    @contextlib.contextmanager
    def _on_device(self, module: torch.nn.Module):
        """With offload, a component visits the GPU only while it works."""
        if self.cpu_offload:
            module.to(self.device)
        try:
            yield
        finally:
            if self.cpu_offload:
                module.to("cpu")

    def _text_states(self, prompt: str, batch: int, erg: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.cpu_offload:
            self._move_text_encoder(self.device)
        try:
            hidden, mask = self.text_encoder.encode([prompt])
            if erg:
                with scaled_outputs(text_query_layers(self.text_encoder.model)):
                    null_hidden, _ = self.text_encoder.encode([prompt])
            else:
                null_hidden = torch.zeros_like(hidden)
        finally:
            if self.cpu_offload:
                self._move_text_encoder(torch.device("cpu"))
        repeat = (batch, 1, 1)
        return hidden.repeat(*repeat), mask.repeat(batch, 1), null_hidden.repeat(*repeat)

    def _lyric_ids(self, lyrics: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if lyrics.strip():
            # Like the reference pipeline, lines in unsupported languages are read as English, not refused.
            ids = torch.tensor([self.lyric_tokenizer.encode(lyrics, mode="inference", fallback_language="en")])
            mask = torch.ones_like(ids)
        else:  # the reference's empty-lyrics convention at inference: id 0, masked
            ids, mask = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)
        return ids.repeat(batch, 1).to(self.device), mask.repeat(batch, 1).to(self.device)

    def _initial_noise(self, seeds: list[int], frames: int) -> torch.Tensor:
        noise = [torch.randn(1, 8, 16, frames, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
        return torch.cat(noise).to(self.device)

    @torch.no_grad()
    def sample_latents(self, params: GenerationParams, seeds: list[int]) -> torch.Tensor:
        """Denoised latents [len(seeds), 8, 16, frames]."""
        batch, frames = len(seeds), latent_frames(params.duration)
        text, text_mask, null_text = self._text_states(params.prompt, batch, params.use_erg_tag)
        lyric_ids, lyric_mask = self._lyric_ids(params.lyrics, batch)
        dtype = next(self.transformer.parameters()).dtype
        text, null_text, text_mask = text.to(self.device, dtype), null_text.to(self.device, dtype), text_mask.to(self.device)
        speaker = torch.zeros(batch, self.transformer.config.speaker_embedding_dim, device=self.device, dtype=dtype)
        guided = params.guidance_scale not in (0.0, 1.0)
        with self._on_device(self.transformer):
            cond, cond_mask = self.transformer.encode(text, text_mask, speaker, lyric_ids, lyric_mask)
            if params.use_erg_lyric:
                with scaled_outputs(lyric_query_layers(self.transformer)):
                    uncond, _ = self.transformer.encode(null_text, text_mask, speaker, lyric_ids, lyric_mask)
            else:
                uncond, _ = self.transformer.encode(null_text, text_mask, speaker, torch.zeros_like(lyric_ids), lyric_mask)
            timesteps, sigmas = inference_sigmas(params.steps, params.shift)
            window = guidance_window(params.steps, params.guidance_interval)
            attention = torch.ones(batch, frames, device=self.device, dtype=dtype)
            buffer = MomentumBuffer()
            latents = self._initial_noise(seeds, frames).to(dtype)
            for step, t in enumerate(timesteps.tolist()):
                timestep = torch.full((batch,), t, device=self.device)
                velocity = self.transformer.decode(latents, attention, cond, cond_mask, timestep).sample
                if guided and step in window:
                    erg = scaled_outputs(diffusion_query_layers(self.transformer)) if params.use_erg_diffusion \
                        else contextlib.nullcontext()
                    with erg:
                        unconditional = self.transformer.decode(latents, attention, uncond, cond_mask, timestep).sample
                    scale = guidance_scale_at(step, window, params.guidance_scale, params.min_guidance_scale,
                                              params.guidance_interval_decay)
                    if params.cfg_type == "apg":
                        velocity = apg(velocity, unconditional, scale, buffer)
                    elif params.cfg_type == "cfg":
                        velocity = cfg(velocity, unconditional, scale)
                    else:
                        raise ValueError(f"cfg_type must be 'apg' or 'cfg', got {params.cfg_type!r}")
                latents = euler_step(latents, velocity, sigmas[step].item(), sigmas[step + 1].item(), params.omega)
        return latents

    @torch.no_grad()
    def generate(self, params: GenerationParams, seeds: list[int] | None = None,
                 sample_rate: int = DCAE_SAMPLE_RATE) -> list[torch.Tensor]:
        """Stereo waveforms [2, samples] in [-1, 1], one per seed (default: params.seed)."""
        latents = self.sample_latents(params, seeds or [params.seed])
        with self._on_device(self.dcae):
            return [wav.float().cpu() for wav in self.dcae.decode(latents, sr=sample_rate)]
