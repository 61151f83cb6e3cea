"""Lyric tokenisation for ACE-Step v1: language segmentation, per-language cleaning, BPE ids."""

from acestep.families.v1.lyrics.languages import STRUCTURE_TAGS, SUPPORTED_LANGUAGES
from acestep.families.v1.lyrics.segmentation import Segment, segment_lyrics
from acestep.families.v1.lyrics.tokenizer import (
    MAX_TRAINING_TOKENS,
    LyricTokenizer,
    UnsupportedLyricsLanguage,
)
from acestep.families.v1.lyrics.vocab import resolve_lyrics_vocab, write_tiny_lyric_vocab

__all__ = [
    "MAX_TRAINING_TOKENS",
    "STRUCTURE_TAGS",
    "SUPPORTED_LANGUAGES",
    "LyricTokenizer",
    "Segment",
    "UnsupportedLyricsLanguage",
    "resolve_lyrics_vocab",
    "segment_lyrics",
    "write_tiny_lyric_vocab",
]
