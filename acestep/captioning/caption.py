"""What one song's captions are made of, whichever model answers: tags from an excerpt, lyrics piece by piece."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from acestep.captioning.clips import MODEL_SAMPLE_RATE, PIECE_SECONDS, consecutive_pieces, middle_excerpt
from acestep.captioning.junk import unusable_reason
from acestep.captioning.parse import DEFAULT_MAX_TAGS, clean_lyrics, join_lyrics_parts, parse_tags
from acestep.captioning.prompts import TAGS_INSTRUCTION, lyrics_instruction
from acestep.core.errors import AcestepError


class CaptionError(AcestepError):
    """The model's answer for one file could not be turned into a caption (reported, the run goes on)."""


class BackendUnavailable(AcestepError):
    """The model cannot answer at all (no server, nothing loaded): stop the run instead of failing every file."""


@dataclass(frozen=True)
class Answer:
    """The model's text, and whether it stopped at the token limit instead of at an end token."""

    text: str
    truncated: bool = False


class AudioChatBackend(Protocol):
    """A model that hears 16 kHz mono audio (one clip of at most MAX_CLIP_SAMPLES) and answers in text."""

    def ask(self, audio: np.ndarray, instruction: str, max_new_tokens: int) -> Answer: ...


@dataclass
class CaptionSettings:
    """How much audio the model hears and how much it may answer."""

    excerpt_seconds: float = PIECE_SECONDS
    piece_seconds: float = PIECE_SECONDS
    max_lyrics_seconds: float = 360.0  # the training crop: lyrics past it are never heard in training
    max_tags: int = DEFAULT_MAX_TAGS
    tag_tokens: int = 160
    lyrics_tokens: int = 512
    caption_tokens: int = 512  # the ACE-Step captioner's prose: a few sentences


def caption_tags(backend: AudioChatBackend, wav: np.ndarray, settings: CaptionSettings) -> list[str]:
    """Clean tags for a 16 kHz mono song; CaptionError when none survive parsing (never an empty prompt)."""
    excerpt = middle_excerpt(wav, MODEL_SAMPLE_RATE, settings.excerpt_seconds)
    answer = backend.ask(excerpt, TAGS_INSTRUCTION, settings.tag_tokens)
    reason = unusable_reason(answer.text, answer.truncated, settings.tag_tokens)
    if reason:
        raise CaptionError(f"unusable tags answer ({reason}): {shorten(answer.text)!r}")
    tags = parse_tags(answer.text, settings.max_tags)
    if not tags:
        raise CaptionError(f"no usable tags in the model's answer: {shorten(answer.text)!r}")
    return tags


def transcribe_lyrics(backend: AudioChatBackend, wav: np.ndarray, settings: CaptionSettings) -> str:
    """Lyrics with section tags, or `[instrumental]`.

    CaptionError when the model gave no answer at all, or when any piece's answer is unusable (cut off or
    a loop): a lyrics file with a hole or a loop in it would train the model on the wrong words.
    """
    pieces = consecutive_pieces(wav, MODEL_SAMPLE_RATE, settings.piece_seconds, settings.max_lyrics_seconds)
    parts = []
    for index, piece in enumerate(pieces, start=1):
        answer = backend.ask(piece, lyrics_instruction(index, len(pieces)), settings.lyrics_tokens)
        reason = unusable_reason(answer.text, answer.truncated, settings.lyrics_tokens)
        if reason:
            where = f" (piece {index} of {len(pieces)})" if len(pieces) > 1 else ""
            raise CaptionError(f"unusable lyrics answer{where}: {reason}: {shorten(answer.text)!r}")
        parts.append(clean_lyrics(answer.text))
    if not any(parts):
        raise CaptionError("the model gave an empty answer to the lyrics request")
    return join_lyrics_parts(parts)


def shorten(text: str, limit: int = 80) -> str:
    """An answer quoted in an error: one line, at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
