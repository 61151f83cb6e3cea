"""ACE-Step v1's stage 3: the models it runs (behind small protocols, so the orchestration can be tested with
fakes) and its per-song encoder, `SongPipeline`, that the shared stage machinery (acestep.data.preprocess) drives."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import datasets
import torch

from acestep.core.errors import AcestepError
from acestep.data.devices import resolve_device, resolve_dtype
from acestep.data.preprocess import (
    MAX_LYRIC_TOKENS,
    SAMPLE_RATE,
    FilenameRow,
    PreparedSong,
    PreprocessSettings,
    RunOptions,
    RunResult,
    SongStages,
    build_prompt,
    clean_trigger,
    decode_song,
    run_song_stages,
    stored_settings_of,
)
from acestep.data.preprocessed import EncodedSong, features_for_record
from acestep.data.shards import ErrorRecord
from acestep.families.v1.lyrics import SUPPORTED_LANGUAGES, UnsupportedLyricsLanguage


class LatentEncoder(Protocol):
    def encode(
        self, wavs: torch.Tensor, wav_lengths: torch.Tensor | None = None, sr: int = 48000
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class PromptEncoder(Protocol):
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


class LyricEncoder(Protocol):
    def encode(
        self, lyrics: str, mode: str = "training", fallback_language: str | None = None
    ) -> list[int]: ...


class SSLExtractor(Protocol):
    def extract(
        self, wavs: torch.Tensor, wav_lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]: ...


@dataclass
class SongEncoders:
    """Everything that turns one filename row into tensors; `ssl` is None when the SSL loss is off."""

    load_audio: Callable[[Path, float], torch.Tensor]  # (path, max_duration) -> [2, T] float32 @ 48 kHz
    format_prompt: Callable[..., str]  # (tags, order=..., seed=...) -> prompt text
    dcae: LatentEncoder
    text: PromptEncoder
    lyrics: LyricEncoder
    ssl: SSLExtractor | None
    device: torch.device
    dtype: torch.dtype


def load_encoders(
    checkpoint_dir: str | None,
    device: str = "auto",
    dtype: str = "auto",
    ssl: bool = True,
    lyrics_vocab: str | None = None,
) -> SongEncoders:
    """Load the DC-AE, UMT5, the lyric tokenizer and (optionally) MERT + mHuBERT from a checkpoint."""
    from acestep.audio import prepare_training_audio
    from acestep.data.tags import format_prompt
    from acestep.families.v1.checkpoint import resolve_checkpoint
    from acestep.families.v1.lyrics import LyricTokenizer, resolve_lyrics_vocab
    from acestep.families.v1.models.dcae import MusicDCAE
    from acestep.families.v1.text_encoder import TextEncoder

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    paths = resolve_checkpoint(checkpoint_dir)
    vocab = lyrics_vocab or paths.lyrics_vocab or resolve_lyrics_vocab(checkpoint_dir=paths.root)
    dcae = MusicDCAE.from_pretrained(paths.dcae, torch_dtype=torch_dtype).to(torch_device).eval()
    extractor = None
    if ssl:
        from acestep.families.v1.models.ssl import SSLFeatureExtractor

        extractor = SSLFeatureExtractor.from_pretrained(
            paths.mert, paths.mhubert, torch_dtype=torch_dtype, device=torch_device
        )
    return SongEncoders(
        load_audio=lambda path, max_duration: prepare_training_audio(path, max_duration=max_duration),
        format_prompt=format_prompt,
        dcae=dcae,
        text=TextEncoder.from_pretrained(paths.text_encoder, torch_dtype=torch_dtype, device=torch_device),
        lyrics=LyricTokenizer.from_file(vocab),
        ssl=extractor,
        device=torch_device,
        dtype=torch_dtype,
    )


class SongPipeline:
    """ACE-Step v1's SongStages: filename rows to EncodedSong objects or ErrorRecords; one bad song never
    stops the run."""

    def __init__(self, encoders: SongEncoders, settings: PreprocessSettings) -> None:
        if settings.ssl != (encoders.ssl is not None):
            raise AcestepError(f"settings say ssl={settings.ssl} but the SSL extractor is {encoders.ssl!r}")
        self.encoders = encoders
        self.settings = settings

    def stored_settings(self) -> dict[str, Any]:
        # no family key: v1 datasets written before families existed stay resumable
        return stored_settings_of(self.settings)

    def make_features(self, record: dict[str, Any]) -> datasets.Features:
        return features_for_record(record)

    def prepare(self, index: int, row: FilenameRow) -> PreparedSong | ErrorRecord:
        """Prompt and lyric ids (cheap, main thread); lyrics are checked before any audio is decoded."""
        try:
            ids = self.encoders.lyrics.encode(
                row.lyrics, mode="training", fallback_language=self.settings.lyrics_fallback_language
            )
        except UnsupportedLyricsLanguage as err:
            reason = f"lyrics: mostly {err.language!r}, unsupported (--lyrics_fallback_language encodes them anyway)"
            return ErrorRecord(index, row.key, row.filename, reason)
        except AcestepError as err:
            return ErrorRecord(index, row.key, row.filename, f"lyrics: {getattr(err, 'reason', err)}")
        except Exception as err:  # text normalisers (num2words, cutlet, ...) can fail on odd input
            return ErrorRecord(index, row.key, row.filename, f"lyrics: {type(err).__name__}: {err}")
        prompt = build_prompt(row, index, self.settings.tag_order, self.encoders.format_prompt, self.settings.trigger,
                              self.settings.trigger_position)
        return PreparedSong(index, row.key, row.filename, prompt, list(ids[:MAX_LYRIC_TOKENS]))

    def decode(self, song: PreparedSong) -> torch.Tensor | str:
        """[2, T] float32 @ 48 kHz, or the reason it cannot be used (runs on a worker thread)."""
        return decode_song(self.encoders.load_audio, Path(song.filename), self.settings)

    @torch.inference_mode()
    def encode(self, batch: list[PreparedSong]) -> list[EncodedSong | ErrorRecord]:
        """Prompts as one batch; DC-AE and SSL one song at a time, as the reference does, so a song's
        tensors do not depend on which songs share its batch (padding changes global attention)."""
        hidden, mask = self.encoders.text.encode([song.prompt for song in batch])
        results: list[EncodedSong | ErrorRecord] = []
        for i, song in enumerate(batch):
            try:
                results.append(self._encode_audio(song, hidden[i][mask[i].bool()]))
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                reason = "out of GPU memory (lower --max_duration or use a larger GPU)"
                results.append(ErrorRecord(song.row, song.key, song.filename, reason))
        return results

    def _encode_audio(self, song: PreparedSong, text_hidden: torch.Tensor) -> EncodedSong:
        enc = self.encoders
        wav = song.wav[None]
        lengths = torch.tensor([wav.shape[-1]], device=enc.device)
        latents, _ = enc.dcae.encode(wav.to(enc.device, enc.dtype), lengths, sr=SAMPLE_RATE)
        mert = mhubert = None
        if enc.ssl is not None:
            mert_list, mhubert_list = enc.ssl.extract(wav.to(enc.device), lengths)
            mert, mhubert = mert_list[0], mhubert_list[0]
        return EncodedSong(
            row=song.row,
            key=song.key,
            filename=song.filename,
            prompt=song.prompt,
            latents=latents[0],
            text_hidden=text_hidden,
            lyric_ids=song.lyric_ids,
            duration=wav.shape[-1] / SAMPLE_RATE,
            mert=mert,
            mhubert=mhubert,
        )


def run_preprocess(
    input_path: Path,
    prep: Path,
    encoders: SongEncoders,
    settings: PreprocessSettings = PreprocessSettings(),
    options: RunOptions = RunOptions(),
) -> RunResult:
    """Encode this shard's pending rows into PREP with ACE-Step v1's encoders (see run_song_stages)."""
    return run_song_stages(input_path, prep, SongPipeline(encoders, settings), options)


def v1_song_stages(args: argparse.Namespace) -> SongStages:
    """ACE-Step v1's encoders for the parsed stage-3 options."""
    fallback = args.lyrics_fallback_language
    if fallback is not None and fallback not in SUPPORTED_LANGUAGES:
        raise AcestepError(f"--lyrics_fallback_language {fallback}: choose one of {', '.join(SUPPORTED_LANGUAGES)}")
    settings = PreprocessSettings(
        args.ssl, args.max_duration, args.target_lufs, args.lyrics_fallback_language, args.tag_order or "shuffle",
        clean_trigger(args.trigger), args.trigger_position,
    )
    encoders = load_encoders(args.checkpoint_dir, args.device, args.dtype, args.ssl, args.lyrics_vocab)
    return SongPipeline(encoders, settings)
