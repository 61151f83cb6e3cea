"""Stage 1 for ACE-Step 1.5 with its own annotation models: a prose caption and transcribed lyrics.

`ACE-Step/acestep-captioner` describes a song in a few sentences; 1.5 is trained on such captions, encoded as
written, so the answer is kept as prose (whitespace tidied, nothing cut into tags).
`ACE-Step/acestep-transcriber` answers "# Languages", the sung language, then "# Lyrics": the lyrics with the
section tags the 1.5 data uses ([Verse 1], [Chorus], scene notes such as [Instrumental break]), kept as
written. A song with no sung words becomes `[instrumental]`, and then no language is recorded.
Both are Qwen2.5-Omni fine-tunes: the same thinker, asked with their task line before the audio.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from acestep.captioning.caption import AudioChatBackend, CaptionError, CaptionSettings, shorten
from acestep.captioning.clips import MODEL_SAMPLE_RATE, consecutive_pieces, middle_excerpt
from acestep.captioning.junk import unusable_reason
from acestep.captioning.parse import INSTRUMENTAL, printable
from acestep.captioning.prompts import CAPTIONER_TASK, TRANSCRIBER_TASK

CAPTIONER_MODEL = "ACE-Step/acestep-captioner"
TRANSCRIBER_MODEL = "ACE-Step/acestep-transcriber"
MIN_CAPTION_WORDS = 3  # "Rock." is not a description
_LANGUAGES = re.compile(r"^\s*#\s*languages?\s*:?\s*$", re.I | re.M)
_LYRICS = re.compile(r"^\s*#\s*lyrics\s*:?\s*$", re.I | re.M)
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.S | re.I)
_BRACKETS = re.compile(r"\[[^\]]*\]")


@dataclass(frozen=True)
class Transcription:
    """Lyrics as the transcriber wrote them (or `[instrumental]`) and the language it heard ("" = unknown)."""

    lyrics: str
    language: str = ""


def clean_caption(answer: str) -> str:
    """The captioner's prose on one line: reasoning blocks and code fences dropped, whitespace collapsed."""
    text = _THINK.sub(" ", printable(answer)).replace("```", " ")
    return " ".join(text.split())


def parse_transcription(answer: str) -> Transcription:
    """Split the transcriber's "# Languages / # Lyrics" answer; an answer without the headers is all lyrics."""
    text = _THINK.sub("", printable(answer.replace("\r\n", "\n").replace("\r", "\n")))
    language = ""
    lyrics_at = _LYRICS.search(text)
    languages_at = _LANGUAGES.search(text)
    if languages_at:
        end = lyrics_at.start() if lyrics_at and lyrics_at.start() > languages_at.end() else len(text)
        language = next((line.strip() for line in text[languages_at.end() : end].splitlines() if line.strip()), "")
    if lyrics_at:
        body = text[lyrics_at.end() :]
    elif languages_at:
        body = ""  # a header and nothing sung
    else:
        body = text
    lyrics = _tidy_lines(body)
    if not has_sung_words(lyrics):
        return Transcription(INSTRUMENTAL)
    return Transcription(lyrics, language)


def has_sung_words(lyrics: str) -> bool:
    """True when a letter stands outside [...] tags; "(backing vocals)" in parentheses are sung words."""
    return any(ch.isalpha() for ch in _BRACKETS.sub("", lyrics))


def caption_prose(backend: AudioChatBackend, wav: np.ndarray, settings: CaptionSettings) -> str:
    """The captioner's description of the middle excerpt; CaptionError for a cut-off, looping or empty answer."""
    excerpt = middle_excerpt(wav, MODEL_SAMPLE_RATE, settings.excerpt_seconds)
    answer = backend.ask(excerpt, CAPTIONER_TASK, settings.caption_tokens)
    reason = unusable_reason(answer.text, answer.truncated, settings.caption_tokens)
    caption = clean_caption(answer.text)
    if not reason and len(re.findall(r"\w+", caption)) < MIN_CAPTION_WORDS:
        reason = f"fewer than {MIN_CAPTION_WORDS} words"
    if reason:
        raise CaptionError(f"unusable caption ({reason}): {shorten(answer.text)!r}")
    return caption


def transcribe_song(backend: AudioChatBackend, wav: np.ndarray, settings: CaptionSettings) -> Transcription:
    """Lyrics of the song's consecutive pieces, joined; the language most pieces with words were heard in.

    CaptionError when every answer is empty or any piece's answer is unusable (cut off or a loop): a lyrics
    file with a hole in it would train the model on the wrong words.
    """
    pieces = consecutive_pieces(wav, MODEL_SAMPLE_RATE, settings.piece_seconds, settings.max_lyrics_seconds)
    heard: list[Transcription] = []
    for index, piece in enumerate(pieces, start=1):
        answer = backend.ask(piece, TRANSCRIBER_TASK, settings.lyrics_tokens)
        reason = unusable_reason(answer.text, answer.truncated, settings.lyrics_tokens)
        if reason:
            where = f" (piece {index} of {len(pieces)})" if len(pieces) > 1 else ""
            raise CaptionError(f"unusable lyrics answer{where}: {reason}: {shorten(answer.text)!r}")
        if answer.text.strip():
            heard.append(parse_transcription(answer.text))
    if not heard:
        raise CaptionError("the transcriber gave an empty answer to every piece")
    sung = [part for part in heard if part.lyrics != INSTRUMENTAL]
    if not sung:
        return Transcription(INSTRUMENTAL)
    languages = Counter(part.language for part in sung if part.language)
    language = languages.most_common(1)[0][0] if languages else ""
    return Transcription("\n\n".join(part.lyrics for part in sung), language)


def _tidy_lines(text: str) -> str:
    """Lines stripped, runs of blank lines cut to one, none at either end."""
    lines: list[str] = []
    for line in (raw.strip() for raw in text.split("\n")):
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)
