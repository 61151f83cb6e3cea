"""LyricTokenizer behaviour beyond the reference examples: errors, fallback, [instrumental], caps, tiny vocab."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from acestep.core.errors import AcestepError
from acestep.families.v1.lyrics import (
    MAX_TRAINING_TOKENS,
    STRUCTURE_TAGS,
    SUPPORTED_LANGUAGES,
    LyricTokenizer,
    UnsupportedLyricsLanguage,
    write_tiny_lyric_vocab,
)
from acestep.families.v1.lyrics.languages import ALL_SPECIAL_TOKENS

SWEDISH = "Jag älskar dig så mycket, min vän"


@pytest.fixture(scope="module")
def real(lyrics_vocab_path: Path) -> LyricTokenizer:
    return LyricTokenizer.from_file(lyrics_vocab_path)


@pytest.fixture(scope="module")
def tiny_vocab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("tiny_lyrics") / "vocab.json"
    return path, write_tiny_lyric_vocab(path)


def test_unsupported_language_error_names_language_and_supported_list(real: LyricTokenizer) -> None:
    with pytest.raises(UnsupportedLyricsLanguage) as caught:
        real.encode(SWEDISH)
    assert isinstance(caught.value, AcestepError)
    assert caught.value.language == "sv"
    message = str(caught.value)
    assert "'sv'" in message and ", ".join(SUPPORTED_LANGUAGES) in message and "fallback_language" in message


def test_fallback_language_is_used_as_the_majority(real: LyricTokenizer) -> None:
    lyrics = "Jag älskar dig mycket, min vän"  # Swedish without letters the vocabulary lacks
    ids = real.encode(lyrics, fallback_language="de")
    assert ids == [261] + real.encode_line(lyrics, "de") + [2]
    assert real.pieces(ids)[:2] == ["[START]", "[de]"]
    # "å" is [UNK] in German, so that line goes back to its segment language (sv -> en), as in the reference
    assert real.pieces(real.encode(SWEDISH, fallback_language="de"))[:2] == ["[START]", "[en]"]


def test_bad_arguments_are_rejected(real: LyricTokenizer) -> None:
    with pytest.raises(ValueError, match="fallback_language 'xx'"):
        real.encode("hello", fallback_language="xx")
    with pytest.raises(ValueError, match="mode"):
        real.encode("hello", mode="train")


@pytest.mark.parametrize("lyrics", ["[instrumental]", "[Instrumental]", "  [INSTRUMENTAL]\n"])
@pytest.mark.parametrize("mode", ["training", "inference"])
def test_instrumental_maps_to_inst_tag_and_logs(real, caplog, lyrics: str, mode: str) -> None:
    with caplog.at_level(logging.INFO, logger="acestep.families.v1.lyrics.tokenizer"):
        ids = real.encode(lyrics, mode=mode)
    assert ids == [261, 259, 6688, 2]  # [START] [en] [inst] [SPACE], as the reference encodes "[inst]"
    assert any("[inst]" in record.getMessage() for record in caplog.records)


def test_instrumental_inside_longer_lyrics_is_not_mapped(real: LyricTokenizer) -> None:
    assert 6688 not in real.encode("[instrumental]\nla la la")


def test_training_is_capped_inference_is_not(real: LyricTokenizer) -> None:
    lyrics = "\n".join(["[verse]"] + ["hello world, I love you"] * 400)
    training = real.encode(lyrics, mode="training")
    inference = real.encode(lyrics, mode="inference")
    assert len(training) == MAX_TRAINING_TOKENS
    assert len(inference) > MAX_TRAINING_TOKENS
    assert training[:2] == [261, 259]


def test_prompt_like_text_is_empty_only_in_training(real: LyricTokenizer) -> None:
    prompt = "write a sad song that genre is blues"
    assert real.encode(prompt, mode="training") == [0]
    assert real.encode(prompt, mode="inference")[0] == 261


def test_structure_tags_are_case_insensitive(real: LyricTokenizer) -> None:
    assert real.encode_line("[VERSE]", "en") == real.encode_line("[verse]", "en") == [259, 6683]


def test_missing_vocab_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AcestepError, match="not a readable tokenizers vocabulary"):
        LyricTokenizer.from_file(tmp_path / "nope.json")


def test_tiny_vocab_format_and_special_tokens(tiny_vocab: tuple[Path, int], lyrics_vocab_path: Path) -> None:
    path, size = tiny_vocab
    tiny, real = json.loads(path.read_text("utf-8")), json.loads(lyrics_vocab_path.read_text("utf-8"))
    assert tiny["model"]["type"] == real["model"]["type"] == "BPE"
    assert tiny["model"]["unk_token"] == "[UNK]"
    assert tiny["pre_tokenizer"] == real["pre_tokenizer"] == {"type": "Whitespace"}
    assert {t["content"] for t in tiny["added_tokens"]} == {t["content"] for t in real["added_tokens"]}
    assert len(ALL_SPECIAL_TOKENS) == 33 and len(STRUCTURE_TAGS) == 12
    assert all(t["special"] for t in tiny["added_tokens"])
    assert size == LyricTokenizer.from_file(path).vocab_size < 1000


def test_tiny_vocab_is_deterministic(tiny_vocab: tuple[Path, int], tmp_path: Path) -> None:
    path, size = tiny_vocab
    assert write_tiny_lyric_vocab(tmp_path / "again.json") == size
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


def test_tokenizer_works_with_tiny_vocab(tiny_vocab: tuple[Path, int]) -> None:
    path, size = tiny_vocab
    tokenizer = LyricTokenizer.from_file(path)
    lyrics = "[verse]\nHello world, I love you\n\n[chorus]\n我喜欢在雨天里听音乐"
    ids = tokenizer.encode(lyrics)
    pieces = tokenizer.pieces(ids)
    assert pieces[:4] == ["[START]", "[en]", "[verse]", "[SPACE]"]
    assert "[chorus]" in pieces and "[zh-cn]" in pieces
    assert all(0 <= token_id < size for token_id in ids)
    assert tokenizer.encode("") == [0]  # [STOP] is id 0 in the tiny vocabulary too
    assert tokenizer.pieces(tokenizer.encode("[instrumental]")) == ["[START]", "[en]", "[inst]", "[SPACE]"]
