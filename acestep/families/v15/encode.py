"""Stage 3 for ACE-Step 1.5: store exactly what generation feeds the DiT, computed by AceStepPipeline's own parts.

Per song: VAE latents [T, 64] (the target), the condition encoder's output states + mask for the SFT text prompt
(caption + metadata: bpm, key, time signature, duration) and the lyrics, and the text2music context latents
[T, 128] (silence latent tiled to T ++ a chunk mask of ones). With `--condition_store inputs` the condition
encoder's inputs are stored instead, for LoRAs that train it (condition dropout works on
either: it replaces the whole output by null_condition_emb).

Timbre input: with no reference audio, generation (AceStepPipeline, like the upstream handler) feeds the
condition encoder's learned `silence_latent[:, :750]`, not zeros; the official preprocessing feeds zeros. We store
what generation feeds, so training and sampling see the same conditioning (tests/test_v15_preprocess.py).
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from acestep.core.errors import AcestepError, InputError
from acestep.data.devices import resolve_device, resolve_dtype
from acestep.data.preprocess import (
    FilenameRow,
    build_prompt,
    clean_trigger,
    decode_song,
    stored_settings_of,
)
from acestep.data.shards import ErrorRecord
from acestep.data.sidecars import is_instrumental

from .checkpoint import NAME, V15Checkpoint, load_pipeline

SAMPLE_RATE = 48000
TIMBRE_SECONDS = 30  # the pipeline's silent timbre reference: ceil(30 s * latent rate) frames
INSTRUMENTAL_LYRICS = "[Instrumental]"  # what the official preprocessing encodes for songs without lyrics
UNKNOWN_LANGUAGE = "unknown"
CONDITION_STORES = ("outputs", "inputs")
SENTENCE_END = re.compile(r"[^\W\d_]{3,}[.!?](\s|$)")  # a word (not Dr., Mr.) that ends a sentence


@dataclass(frozen=True)
class V15Settings:
    """Options that change the stored tensors (a resumed or parallel run must repeat them)."""

    family: str = NAME
    max_duration: float = 360.0
    target_lufs: float | None = None
    tag_order: str = "as_written"  # the official trainer encodes the caption as written; shuffle is for tag lists
    condition_store: str = "outputs"  # "outputs": condition encoder output; "inputs": its inputs
    latent_sampling: str = "posterior-sample-seeded-by-row"  # Oobleck latent_dist.sample(), as upstream
    # long songs are encoded in tiles of this many seconds (2 s overlap each side, AutoencoderOobleck's own tiling,
    # as upstream's tiled encode) so a 6-minute song fits an 8 GB GPU; shorter songs are encoded whole
    vae_tile_seconds: float = 30.0
    trigger: str | None = None  # a tag put into every prompt (--trigger); stored only when set
    trigger_position: str = "first"


@dataclass(frozen=True)
class SongText:
    """What the text side of one song is made of (the pipeline's prompt arguments)."""

    caption: str
    lyrics: str
    language: str
    bpm: int | None = None
    keyscale: str | None = None
    timesignature: str | None = None


@dataclass
class PreparedV15Song:
    row: int
    key: str
    filename: str
    text: SongText
    wav: torch.Tensor | None = None


@dataclass
class EncodedV15Song:
    row: int
    key: str
    filename: str
    duration: float
    text: SongText
    text_prompt: str
    tensors: dict[str, torch.Tensor]

    def to_record(self) -> dict[str, Any]:
        """The stored row: float16 matrices, int8 masks, the text that made them (docs/formats.md)."""
        record: dict[str, Any] = {
            "row": self.row,
            "keys": self.key,
            "filename": self.filename,
            "prompt": self.text.caption,
            "lyrics": self.text.lyrics,
            "text_prompt": self.text_prompt,
            "language": self.text.language,
            "bpm": self.text.bpm if self.text.bpm is not None else -1,
            "keyscale": self.text.keyscale or "",
            "timesignature": self.text.timesignature or "",
            "latent_length": int(self.tensors["target_latents"].shape[0]),
            "duration": float(self.duration),
        }
        for name, tensor in self.tensors.items():
            if name.endswith("_mask"):
                record[name] = tensor.detach().to("cpu").numpy().astype(np.int8)
            else:
                record[name] = _half(self.filename, name, tensor)
        return record


def _half(filename: str, column: str, tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().to("cpu", torch.float32).numpy()
    with np.errstate(over="ignore"):
        half = array.astype(np.float16)
    if not np.isfinite(half).all():
        raise InputError(filename, f"{column} has values outside the float16 range")
    return half


def features_for_v15_record(record: dict[str, Any]) -> datasets.Features:
    features: dict[str, Any] = {
        "row": datasets.Value("int32"),
        "keys": datasets.Value("string"),
        "filename": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "lyrics": datasets.Value("string"),
        "text_prompt": datasets.Value("string"),
        "language": datasets.Value("string"),
        "bpm": datasets.Value("int32"),
        "keyscale": datasets.Value("string"),
        "timesignature": datasets.Value("string"),
        "latent_length": datasets.Value("int32"),
        "duration": datasets.Value("float64"),  # latent_length / 25 exactly: generation's ceil(duration * 25) = T
    }
    for name, value in record.items():
        if isinstance(value, np.ndarray):
            if value.ndim == 2:
                features[name] = datasets.Array2D(shape=(None, value.shape[1]), dtype="float16")
            else:
                features[name] = datasets.List(datasets.Value("int8"))
    return datasets.Features(features)


def looks_like_prose(tags: tuple[str, ...]) -> bool:
    """A caption written as sentences (the 1.5 captioner's prose), not a tag list: some comma-separated piece
    ends a sentence after a few words, or runs to eight words or more."""
    return any(len(tag.split()) >= 8 or (len(tag.split()) >= 3 and SENTENCE_END.search(tag)) for tag in tags)


def song_text(row: FilenameRow, caption: str) -> SongText:
    """The prompt arguments for one row; unknown metadata stays None (the prompt then says N/A)."""
    lyrics = INSTRUMENTAL_LYRICS if is_instrumental(row.lyrics) else row.lyrics
    return SongText(
        caption=caption,
        lyrics=lyrics,
        language=row.language or UNKNOWN_LANGUAGE,
        bpm=round(row.bpm) if row.bpm else None,
        keyscale=row.keyscale,
        timesignature=row.timesignature,
    )


def silent_timbre_reference(pipe: Any, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The timbre encoder input AceStepPipeline uses when no reference audio is given."""
    frames = math.ceil(TIMBRE_SECONDS * pipe.latents_per_second)
    encoder = pipe.condition_encoder
    silence = encoder.silence_latent[:, :frames, :].to(encoder.dtype).expand(batch_size, -1, -1).contiguous()
    return silence, torch.arange(batch_size, device=silence.device, dtype=torch.long)


def text2music_context(pipe: Any, latent_length: int) -> torch.Tensor:
    """[1, T, 2C]: the silence latent tiled/cropped to T (pipeline's prepare_src_latents) ++ a chunk mask of ones."""
    dtype = pipe.condition_encoder.dtype
    device = pipe.condition_encoder.device
    source, _ = pipe.prepare_src_latents(device=device, dtype=dtype, batch_size=1, latent_length=latent_length)
    return torch.cat([source, torch.ones_like(source)], dim=-1)


@torch.inference_mode()
def conditioning(pipe: Any, text: SongText, duration: float, latent_length: int, store: str) -> dict[str, torch.Tensor]:
    """The DiT's conditioning for one song, batch dimension dropped: the pipeline's own prompt formatting and
    encoders, so training sees exactly what generation feeds."""
    device = pipe.condition_encoder.device
    text_states, text_mask, lyric_states, lyric_mask = pipe.encode_prompt(
        prompt=text.caption,
        lyrics=text.lyrics,
        device=device,
        vocal_language=text.language,
        audio_duration=duration,
        bpm=text.bpm,
        keyscale=text.keyscale,
        timesignature=text.timesignature,
    )
    out = {"context_latents": text2music_context(pipe, latent_length)[0]}
    if store == "inputs":
        out.update(
            text_hidden_states=text_states[0], text_attention_mask=text_mask[0],
            lyric_hidden_states=lyric_states[0], lyric_attention_mask=lyric_mask[0],
        )
        return out
    dtype = pipe.condition_encoder.dtype
    reference, order = silent_timbre_reference(pipe)
    states, mask = pipe.condition_encoder(
        text_hidden_states=text_states.to(dtype),
        text_attention_mask=text_mask,
        lyric_hidden_states=lyric_states.to(dtype),
        lyric_attention_mask=lyric_mask,
        refer_audio_acoustic_hidden_states_packed=reference,
        refer_audio_order_mask=order,
    )
    out.update(encoder_hidden_states=states[0], encoder_attention_mask=mask[0])
    return out


def text_prompt(pipe: Any, text: SongText, duration: float) -> str:
    """The SFT text the text encoder reads (instruction, caption, metadata), kept for inspection."""
    formatted, _ = pipe._format_prompt(
        prompt=text.caption, lyrics=text.lyrics, vocal_language=text.language, audio_duration=duration,
        bpm=text.bpm, keyscale=text.keyscale, timesignature=text.timesignature,
    )
    return formatted


class V15SongStages:
    """ACE-Step 1.5's SongStages (acestep.data.preprocess): one song at a time through AceStepPipeline's parts."""

    def __init__(self, pipe: Any, settings: V15Settings, format_prompt: Any, load_audio: Any) -> None:
        if settings.condition_store not in CONDITION_STORES:
            raise AcestepError(f"condition_store must be one of {CONDITION_STORES}, not {settings.condition_store!r}")
        self.pipe = pipe
        self.settings = settings
        self.prose_kept = 0  # prose captions --tag_order shuffle left as written
        self.format_prompt = format_prompt
        self.load_audio = load_audio
        self.hop = round(SAMPLE_RATE / pipe.latents_per_second)
        tile = round(settings.vae_tile_seconds * SAMPLE_RATE)
        overlap = pipe.vae.tile_sample_overlap
        core = tile - 2 * overlap
        if core <= 0 or core % self.hop or overlap % self.hop:
            raise AcestepError(
                f"vae_tile_seconds {settings.vae_tile_seconds:g} must exceed the overlap ({2 * overlap / SAMPLE_RATE:g} s) by whole latent frames"
            )
        pipe.vae.enable_tiling()  # configures the given pipeline's VAE as the settings say
        pipe.vae.tile_sample_min_length = tile

    def stored_settings(self) -> dict[str, Any]:
        return stored_settings_of(self.settings)

    def make_features(self, record: dict[str, Any]) -> datasets.Features:
        return features_for_v15_record(record)

    def prepare(self, index: int, row: FilenameRow) -> PreparedV15Song:
        order = self.settings.tag_order
        if order == "shuffle" and looks_like_prose(row.tags):  # shuffling would cut sentences apart
            order = "as_written"
            if not self.prose_kept:
                print(f"{Path(row.filename).name}: the caption reads as sentences, so it is kept as written "
                      "(--tag_order shuffle reorders tag lists only; the same for every such caption)", flush=True)
            self.prose_kept += 1
        # No character cut (v1's rule): the text encoder keeps 256 tokens, as generation does, so prose stays whole.
        caption = build_prompt(row, index, order, self.format_prompt, self.settings.trigger,
                               self.settings.trigger_position, max_chars=None)
        return PreparedV15Song(index, row.key, row.filename, song_text(row, caption))

    def decode(self, song: PreparedV15Song) -> torch.Tensor | str:
        """[2, N] float32 at 48 kHz, cut to whole latent frames (1920 samples), or why the song cannot be used."""
        wav = decode_song(self.load_audio, Path(song.filename), self.settings)
        if isinstance(wav, str):
            return wav
        frames = wav.shape[-1] // self.hop
        if frames < 1:
            return "shorter than one latent frame"
        return wav[:, : frames * self.hop]

    def encode(self, batch: list[PreparedV15Song]) -> list[EncodedV15Song | ErrorRecord]:
        results: list[EncodedV15Song | ErrorRecord] = []
        for song in batch:
            try:
                results.append(self.encode_song(song))
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                reason = "out of GPU memory (lower --max_duration or use a larger GPU)"
                results.append(ErrorRecord(song.row, song.key, song.filename, reason))
        return results

    @torch.inference_mode()
    def encode_song(self, song: PreparedV15Song) -> EncodedV15Song:
        vae = self.pipe.vae
        assert song.wav is not None
        generator = torch.Generator(device=vae.device).manual_seed(song.row)
        posterior = vae.encode(song.wav[None].to(vae.device, vae.dtype)).latent_dist
        latents = posterior.sample(generator=generator)[0].transpose(0, 1)  # [T, C]
        duration = latents.shape[0] / self.pipe.latents_per_second
        tensors = {"target_latents": latents}
        tensors.update(conditioning(self.pipe, song.text, duration, latents.shape[0], self.settings.condition_store))
        return EncodedV15Song(
            song.row, song.key, song.filename, duration, song.text, text_prompt(self.pipe, song.text, duration),
            tensors,
        )


def song_stages_from_args(checkpoint: V15Checkpoint, args: argparse.Namespace) -> V15SongStages:
    """Stage 3's options -> the 1.5 encoder (the DiT itself is not loaded)."""
    from acestep.audio import prepare_training_audio
    from acestep.data.tags import format_prompt

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    pipe = load_pipeline(checkpoint, dtype=dtype, with_transformer=False).to(device)
    settings = V15Settings(
        max_duration=args.max_duration,
        target_lufs=args.target_lufs,
        tag_order=args.tag_order or "as_written",
        condition_store=getattr(args, "condition_store", "outputs"),
        trigger=clean_trigger(getattr(args, "trigger", None)),
        trigger_position=getattr(args, "trigger_position", "first"),
    )
    return V15SongStages(
        pipe, settings, format_prompt, lambda path, seconds: prepare_training_audio(path, max_duration=seconds)
    )
