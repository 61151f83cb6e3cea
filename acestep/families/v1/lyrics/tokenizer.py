"""Lyrics -> token ids for the ACE-Step v1 lyric encoder, reproducing the reference pipelines.

Two modes, because the reference tokenises differently when training and when generating:
- "training" (`Text2MusicDataset.tokenize_lyrics`): one language segmentation of the whole lyrics,
  lines encoded in the majority language (or their segment's language when that gives [UNK]),
  capped at 4096 ids. Use it for training data so a LoRA sees what the base model saw.
- "inference" (`ACEStepPipeline.tokenize_lyrics`): each stripped line detected on its own.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from tokenizers import Tokenizer

from acestep.core.errors import AcestepError
from acestep.families.v1.lyrics.cleaners import preprocess
from acestep.families.v1.lyrics.languages import (
    SPACE_TOKEN,
    START_TOKEN,
    STOP_TOKEN,
    SUPPORTED_LANGUAGES,
    UNK_TOKEN,
    language_token,
    reference_language,
)
from acestep.families.v1.lyrics.segmentation import Segment, segment_lyrics

logger = logging.getLogger(__name__)

MAX_TRAINING_TOKENS = 4096
_STRUCTURE_LINE = re.compile(r"\[.*?\]")  # matched at the start of a line: encoded as English
_PROMPT_AS_LYRICS = re.compile(r"write a .* song that genre is")  # the reference treats these as no lyrics
_INSTRUMENTAL = "[instrumental]"
_INST_TAG = "[inst]"
# Library versions the reference ids were measured with; others change pinyin, numbers or detection.
REFERENCE_VERSIONS = {"py3langid": "0.3.0", "pypinyin": "0.53.0", "num2words": "0.5.14"}


@lru_cache(maxsize=1)
def _warn_on_version_drift() -> None:
    for package, wanted in REFERENCE_VERSIONS.items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue  # the import fails later with its own message
        if installed != wanted:
            logger.warning(
                "%s %s is installed but the reference lyric ids were made with %s; some ids may differ",
                package,
                installed,
                wanted,
            )


class UnsupportedLyricsLanguage(AcestepError):
    """The lyrics are mostly in a language the lyric vocabulary has no prefix token for."""

    def __init__(self, language: str) -> None:
        self.language = language
        super().__init__(
            f"lyrics are mostly in language {language!r}, which ACE-Step v1 does not support "
            f"(supported: {', '.join(SUPPORTED_LANGUAGES)}); pass fallback_language to encode them anyway"
        )


class LyricTokenizer:
    """The reference lyric pipeline over a `tokenizers` BPE vocabulary (the real one or a tiny one)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        _warn_on_version_drift()
        self._tokenizer = tokenizer
        self._stop = self._id_of(STOP_TOKEN)
        self._unk = self._id_of(UNK_TOKEN)
        self._space = self._id_of(SPACE_TOKEN)
        self._start = self._id_of(START_TOKEN)

    @classmethod
    def from_file(cls, vocab_path: str | Path) -> LyricTokenizer:
        path = Path(vocab_path)
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exceptions for missing or malformed files
            raise AcestepError(f"{path}: not a readable tokenizers vocabulary ({exc})") from exc
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        """Number of ids including the added tokens (6693 for the real vocabulary)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _id_of(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise AcestepError(f"lyric vocabulary lacks the token {token}")
        return token_id

    def pieces(self, ids: list[int]) -> list[str]:
        """Token texts of ids, for reading and debugging ("[en]", "he", "ll", "o", "[SPACE]", ...)."""
        return [self._tokenizer.id_to_token(token_id) for token_id in ids]

    def encode_line(self, text: str, language: str) -> list[int]:
        """One line in one of the 17 languages: `[lang]` prefix, cleaned text, spaces as [SPACE]."""
        cleaned = preprocess(text, language)
        marked = (language_token(language) + cleaned).replace(" ", SPACE_TOKEN)
        return self._tokenizer.encode(marked).ids

    def encode(
        self,
        lyrics: str,
        mode: str = "training",
        fallback_language: str | None = None,
        map_instrumental: bool = True,
    ) -> list[int]:
        """Token ids of a whole lyric text; `[STOP]` alone for no lyrics.

        Raises UnsupportedLyricsLanguage when the majority language has no token, unless
        `fallback_language` (one of the 17 codes) names the language to use instead.
        `map_instrumental` turns lyrics that are just "[instrumental]" into the vocabulary's `[inst]`
        (the reference would spell it out between two [UNK]).
        """
        if mode not in ("training", "inference"):
            raise ValueError(f"mode must be 'training' or 'inference', not {mode!r}")
        if fallback_language is not None and fallback_language not in SUPPORTED_LANGUAGES:
            raise ValueError(
                f"fallback_language {fallback_language!r} is not one of {', '.join(SUPPORTED_LANGUAGES)}"
            )
        if not lyrics.strip() or (mode == "training" and _PROMPT_AS_LYRICS.search(lyrics)):
            return [self._stop]
        if map_instrumental and lyrics.strip().lower() == _INSTRUMENTAL:
            logger.info(
                "lyrics %r are encoded as the vocabulary's instrumental tag %s", lyrics.strip(), _INST_TAG
            )
            lyrics = _INST_TAG
        segments, counts = segment_lyrics(lyrics)
        majority = counts[0][0] or "en"
        if majority not in SUPPORTED_LANGUAGES:
            if fallback_language is None:
                raise UnsupportedLyricsLanguage(majority)
            logger.info(
                "lyrics are mostly %r (unsupported); encoding them as %r", majority, fallback_language
            )
            majority = fallback_language
        if mode == "training":
            return self._encode_training(segments, majority)[:MAX_TRAINING_TOKENS]
        return self._encode_inference(lyrics, fallback_language)

    def _encode_training(self, segments: list[Segment], majority: str) -> list[int]:
        ids = [self._start]
        for segment in segments:
            segment_language = reference_language(segment.language)
            for line in segment.text.split("\n"):
                if not line.strip():
                    ids.append(self._space)
                    continue
                if _STRUCTURE_LINE.match(line):
                    line_ids = self._encode_or_skip(line, "en")
                else:
                    line_ids = self._encode_or_skip(line, majority)
                    if line_ids is not None and self._unk in line_ids:
                        line_ids = self._encode_or_skip(line, segment_language)
                if line_ids is not None:
                    ids += line_ids + [self._space]
        return ids

    def _encode_inference(self, lyrics: str, fallback_language: str | None) -> list[int]:
        ids = [self._start]
        for line in lyrics.split("\n"):
            line = line.strip()
            if not line:
                ids.append(self._space)
                continue
            language = "en" if _STRUCTURE_LINE.match(line) else self._line_language(line, fallback_language)
            line_ids = self._encode_or_skip(line, language)
            if line_ids is not None:
                ids += line_ids + [self._space]
        return ids

    def _encode_or_skip(self, line: str, language: str) -> list[int] | None:
        """The reference logs a line whose normalisation fails and leaves it out."""
        try:
            return self.encode_line(line, language)
        except Exception as exc:  # romanisers and num2words raise many kinds
            logger.warning(
                "lyric line %r could not be encoded as %s and is left out: %s", line, language, exc
            )
            return None

    @staticmethod
    def _line_language(line: str, fallback_language: str | None) -> str:
        """The reference's per-line rule: the top language, or the second one when the top is en."""
        _, counts = segment_lyrics(line)
        detected = counts[1][0] if counts[0][0] == "en" and len(counts) > 1 else counts[0][0]
        if detected not in SUPPORTED_LANGUAGES and fallback_language is not None:
            return fallback_language
        return reference_language(detected)
