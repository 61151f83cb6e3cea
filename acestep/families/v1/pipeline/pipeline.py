"""Text-to-music with our components, sampling as the reference pipeline does (transformer.md section 6):
60 Euler steps with the omega mean shift, APG guidance 15 inside the middle half of the schedule, ERG for the
unconditional branch, DC-AE + vocoder decode to stereo audio."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from acestep.core.progress import progress
from acestep.data.generate_cli import CFG_TYPES, OVERLAP_MIN_SECONDS
from acestep.data.sidecars import normalize_newlines

from ..checkpoint import resolve_checkpoint
from ..lyrics import LyricTokenizer, resolve_lyrics_vocab
from ..models import ACEStepTransformer2DModel
from ..models.dcae import (
    DCAE_SAMPLE_RATE,
    SAMPLES_PER_LATENT,
    MusicDCAE,
    decoded_length,
    overlapped_decoded_length,
)
from ..text_encoder import TextEncoder
from .erg import diffusion_query_layers, lyric_query_layers, scaled_outputs, text_query_layers
from .guidance import MomentumBuffer, apg, cfg, cfg_star, double_condition, guidance_scale_at, guidance_window
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
    guidance_scale_text: float = 0.0
    guidance_scale_lyric: float = 0.0
    zero_steps: int = 1
    use_zero_init: bool = True

    @property
    def double_condition(self) -> bool:
        """The reference switches to double-condition guidance when both its scales exceed 1."""
        return self.guidance_scale_text > 1.0 and self.guidance_scale_lyric > 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EncoderStates:
    """The transformer's encoder outputs for each guidance branch (transformer.md 6.4)."""

    cond: torch.Tensor
    mask: torch.Tensor
    uncond: torch.Tensor
    text_only: torch.Tensor | None = None


def latent_frames(duration: float) -> int:
    """The reference's inference length rule: int(duration * 44100 / 512 / 8)."""
    frames = int(duration * DCAE_SAMPLE_RATE / SAMPLES_PER_LATENT)
    if frames < 1:
        raise ValueError(f"duration {duration} s is too short (at least {SAMPLES_PER_LATENT / DCAE_SAMPLE_RATE:.2f} s)")
    return frames


OUTPUT_SAMPLE_RATE = 48000  # what the reference pipeline writes, and generate.py's default


def output_samples(duration: float, sample_rate: int = DCAE_SAMPLE_RATE, overlapped: bool = False) -> int:
    """Samples in the decoded file: 4096 per latent frame at 44.1 kHz, then the reference's resampling length."""
    frames = latent_frames(duration)
    if overlapped and duration > OVERLAP_MIN_SECONDS:
        return overlapped_decoded_length(frames, sample_rate)
    return decoded_length(frames, sample_rate)


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
        """(UMT5 states, mask, states for the ERG-lyric unconditional branch): ERG-weakened with tag ERG, else zeros."""
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
            # CRLF line ends as "\n", as stage 3 stores them for training.
            ids = torch.tensor([self.lyric_tokenizer.encode(normalize_newlines(lyrics), mode="inference",
                                                            fallback_language="en")])
            mask = torch.ones_like(ids)
        else:  # the reference's empty-lyrics convention at inference: id 0, masked
            ids, mask = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)
        return ids.repeat(batch, 1).to(self.device), mask.repeat(batch, 1).to(self.device)

    def _initial_noise(self, seeds: list[int], frames: int) -> torch.Tensor:
        noise = [torch.randn(1, 8, 16, frames, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
        return torch.cat(noise).to(self.device)

    @torch.no_grad()
    def encoder_states(self, params: GenerationParams, batch: int) -> EncoderStates:
        """The reference's encoder inputs per branch (speaker always zeros; the released checkpoint has none):

        - conditional: tags and lyrics;
        - unconditional with lyric ERG: ERG tag states (zeros without tag ERG), the lyrics through the
          ERG-weakened lyric encoder;
        - unconditional without lyric ERG: zero tag states and lyric ids 0, whatever the tag ERG flag says;
        - tags only (double-condition guidance): the tags, with ERG-weakened lyrics or lyric ids 0.
        """
        text, text_mask, null_text = self._text_states(
            params.prompt, batch, params.use_erg_tag and params.use_erg_lyric)
        lyric_ids, lyric_mask = self._lyric_ids(params.lyrics, batch)
        dtype = next(self.transformer.parameters()).dtype
        text, null_text, text_mask = text.to(self.device, dtype), null_text.to(self.device, dtype), text_mask.to(self.device)
        speaker = torch.zeros(batch, self.transformer.config.speaker_embedding_dim, device=self.device, dtype=dtype)
        no_lyrics = torch.zeros_like(lyric_ids)
        encode = self.transformer.encode
        with self._on_device(self.transformer):
            cond, cond_mask = encode(text, text_mask, speaker, lyric_ids, lyric_mask)
            if params.use_erg_lyric:
                with scaled_outputs(lyric_query_layers(self.transformer)):
                    uncond, _ = encode(null_text, text_mask, speaker, lyric_ids, lyric_mask)
            else:
                uncond, _ = encode(torch.zeros_like(text), text_mask, speaker, no_lyrics, lyric_mask)
            text_only = None
            if params.double_condition:
                if params.use_erg_lyric:
                    with scaled_outputs(lyric_query_layers(self.transformer)):
                        text_only, _ = encode(text, text_mask, speaker, lyric_ids, lyric_mask)
                else:
                    text_only, _ = encode(text, text_mask, speaker, no_lyrics, lyric_mask)
        return EncoderStates(cond, cond_mask, uncond, text_only)

    def _guided_velocity(
        self, params: GenerationParams, states: EncoderStates, latents: torch.Tensor, attention: torch.Tensor,
        timestep: torch.Tensor, step: int, window: range, buffer: MomentumBuffer,
    ) -> torch.Tensor:
        """One guided prediction: conditional, (tags-only,) unconditional with ERG, combined as the reference does."""
        decode = self.transformer.decode
        velocity = decode(latents, attention, states.cond, states.mask, timestep).sample
        text_only = None
        if states.text_only is not None:
            text_only = decode(latents, attention, states.text_only, states.mask, timestep).sample
        erg = scaled_outputs(diffusion_query_layers(self.transformer)) if params.use_erg_diffusion \
            else contextlib.nullcontext()
        with erg:
            unconditional = decode(latents, attention, states.uncond, states.mask, timestep).sample
        if text_only is not None:
            return double_condition(velocity, unconditional, text_only, params.guidance_scale_text,
                                    params.guidance_scale_lyric)
        scale = guidance_scale_at(step, window, params.guidance_scale, params.min_guidance_scale,
                                  params.guidance_interval_decay)
        if params.cfg_type == "apg":
            return apg(velocity, unconditional, scale, buffer)
        if params.cfg_type == "cfg":
            return cfg(velocity, unconditional, scale)
        return cfg_star(velocity, unconditional, scale, step, params.zero_steps, params.use_zero_init)

    @torch.no_grad()
    def sample_latents(self, params: GenerationParams, seeds: list[int], show_progress: bool = False) -> torch.Tensor:
        """Denoised latents [len(seeds), 8, 16, frames]."""
        if params.cfg_type not in CFG_TYPES:
            raise ValueError(f"cfg_type must be one of {', '.join(CFG_TYPES)}, got {params.cfg_type!r}")
        batch, frames = len(seeds), latent_frames(params.duration)
        states = self.encoder_states(params, batch)
        dtype = next(self.transformer.parameters()).dtype
        guided = params.guidance_scale not in (0.0, 1.0)
        with self._on_device(self.transformer):
            timesteps, sigmas = inference_sigmas(params.steps, params.shift)
            window = guidance_window(params.steps, params.guidance_interval)
            attention = torch.ones(batch, frames, device=self.device, dtype=dtype)
            buffer = MomentumBuffer()
            latents = self._initial_noise(seeds, frames).to(dtype)
            steps = progress(enumerate(timesteps.tolist()), desc="sampling", unit="step", total=params.steps,
                             disable=not show_progress)
            for step, t in steps:
                timestep = torch.full((batch,), t, device=self.device)
                if guided and step in window:
                    velocity = self._guided_velocity(params, states, latents, attention, timestep, step, window, buffer)
                else:
                    velocity = self.transformer.decode(latents, attention, states.cond, states.mask, timestep).sample
                latents = euler_step(latents, velocity, sigmas[step].item(), sigmas[step + 1].item(), params.omega)
        return latents

    @torch.no_grad()
    def generate(self, params: GenerationParams, seeds: list[int] | None = None,
                 sample_rate: int = OUTPUT_SAMPLE_RATE, overlapped_decode: bool = False,
                 show_progress: bool = False) -> list[torch.Tensor]:
        """Stereo waveforms [2, samples] in [-1, 1], one per seed (default: params.seed), at `sample_rate`
        (48 kHz like the reference pipeline and generate.py; 44100 is the model's own rate).

        `overlapped_decode` decodes songs longer than 48 s in windows, as the reference's option of that
        name does: less memory, slight differences at the window seams.
        """
        latents = self.sample_latents(params, seeds or [params.seed], show_progress)
        overlapped = overlapped_decode and params.duration > OVERLAP_MIN_SECONDS
        with self._on_device(self.dcae):
            return [wav.float().cpu() for wav in self.dcae.decode(latents, sr=sample_rate, overlapped=overlapped)]
