"""Every example of the shared reference file `lyric_tokenization_examples.txt`, against the real vocabulary.

Expected ids, pieces, segments and counts are parsed from the file (measured on the reference code);
only the lyric inputs of the named sequences are written here, reconstructed from their pieces.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from acestep.families.v1.lyrics import LyricTokenizer, UnsupportedLyricsLanguage, segment_lyrics

MIXED = "[verse]\nHello world, I love you\n[chorus]\n我喜欢在雨天里听音乐\n雨の日に音楽を聴くのが好きです"
# Inputs of the "== name" blocks.
NAMED_LYRICS = {
    "en_simple": "[verse]\nHello world, I love you\n\n[chorus]\nLa la la",
    "zh_with_tags": "[verse]\n街头的风拂过深夜的心\n脚步嗒嗒像打鼓的音\n\n[chorus]\n唱出我的人生旋律",
    "mixed": MIXED,
    "instrumental": "[instrumental]",
    "inst": "[inst]",
}
# Inputs of the SEGMENTS/COUNTS pairs, in file order.
SEGMENTED_LYRICS = [
    MIXED,
    "비 오는 날에 음악을 듣는 것을 즐깁니다",
    "Мне нравится слушать музыку",
    "J'aime écouter de la musique les jours de pluie",
]
UNSUPPORTED = {"sv": "Jag älskar dig så mycket, min vän", "vi": "Tôi thích nghe nhạc vào những ngày mưa"}
GERMAN = "Ich liebe dich so sehr mein Schatz"

_LINE_EXAMPLE = re.compile(
    r"^(?P<text>'.*'|\".*\") (?P<lang>[a-z]{2}) -> (?P<ids>\[[\d, ]+\]) \| pieces: (?P<pieces>\[.*\])$"
)


@pytest.fixture(scope="module")
def examples_text(reference_dir: Path) -> str:
    path = reference_dir / "lyric_tokenization_examples.txt"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer(lyrics_vocab_path: Path) -> LyricTokenizer:
    return LyricTokenizer.from_file(lyrics_vocab_path)


def _blocks(examples_text: str) -> dict[str, dict[str, str]]:
    """'== name train_len N infer_len M ...' blocks -> {name: {train_len, infer_len, train, infer}}."""
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in examples_text.splitlines():
        header = re.match(r"^== (\w+) train_len (\d+) infer_len (\d+) (\w+)", line)
        if header:
            current = blocks[header.group(1)] = {"train_len": header.group(2), "infer_len": header.group(3)}
        elif current is not None and re.match(r"^  (train|infer): ", line):
            mode, pieces = line.strip().split(": ", 1)
            current[mode] = pieces
        elif not line.startswith("  "):
            current = None
    return blocks


def test_vocab_size(tokenizer: LyricTokenizer, examples_text: str) -> None:
    size = int(re.search(r"vocab size (\d+)", examples_text).group(1))
    assert tokenizer.vocab_size == size == 6693


def test_every_single_line_example(tokenizer: LyricTokenizer, examples_text: str) -> None:
    examples = [m for m in map(_LINE_EXAMPLE.match, examples_text.splitlines()) if m]
    assert len(examples) == 19
    for example in examples:
        text, lang = ast.literal_eval(example["text"]), example["lang"]
        ids = tokenizer.encode_line(text, lang)
        assert ids == ast.literal_eval(example["ids"]), (text, lang)
        assert tokenizer.pieces(ids) == ast.literal_eval(example["pieces"]), (text, lang)


def test_segments_and_counts(examples_text: str) -> None:
    segment_lines = [line for line in examples_text.splitlines() if line.startswith("SEGMENTS ")]
    count_lines = [line for line in examples_text.splitlines() if line.startswith("COUNTS ")]
    assert len(segment_lines) == len(count_lines) == len(SEGMENTED_LYRICS)
    for lyrics, segments_line, counts_line in zip(SEGMENTED_LYRICS, segment_lines, count_lines):
        segments, counts = segment_lyrics(lyrics)
        assert [(s.language, s.text) for s in segments] == ast.literal_eval(segments_line[len("SEGMENTS ") :])
        assert counts == ast.literal_eval(counts_line[len("COUNTS ") :])


@pytest.mark.parametrize("name", sorted(NAMED_LYRICS))
def test_named_sequences_both_modes(tokenizer: LyricTokenizer, examples_text: str, name: str) -> None:
    block = _blocks(examples_text)[name]
    expected_infer = block.get("infer", block["train"])  # "identical" blocks print one line
    lyrics = NAMED_LYRICS[name]
    train = tokenizer.encode(lyrics, mode="training", map_instrumental=False)
    infer = tokenizer.encode(lyrics, mode="inference", map_instrumental=False)
    assert " ".join(tokenizer.pieces(train)) == block["train"]
    assert " ".join(tokenizer.pieces(infer)) == expected_infer
    assert (len(train), len(infer)) == (int(block["train_len"]), int(block["infer_len"]))


def test_empty_and_prompt_like_lyrics(tokenizer: LyricTokenizer, examples_text: str) -> None:
    assert "empty -> [0]" in examples_text and "prompt-like -> [0]" in examples_text
    assert tokenizer.encode("") == [0]
    assert tokenizer.encode(" \n  \n") == [0]
    assert tokenizer.encode("write a pop song that genre is rock") == [0]


def _language_blocks(examples_text: str) -> dict[str, dict[str, str]]:
    """The quoted-lyrics blocks at the end: {lyrics: {"train": ..., "infer": ...}}."""
    blocks: dict[str, dict[str, str]] = {}
    current = None
    for line in examples_text.splitlines():
        if re.match(r"^'.*'$", line):
            current = blocks[ast.literal_eval(line)] = {}
        elif current is not None and re.match(r"^  (train|infer): ", line):
            mode, value = line.strip().split(": ", 1)
            current[mode] = value
    return blocks


@pytest.mark.parametrize("language", sorted(UNSUPPORTED))
def test_unsupported_language_examples(tokenizer: LyricTokenizer, examples_text: str, language: str) -> None:
    lyrics = UNSUPPORTED[language]
    block = _language_blocks(examples_text)[lyrics]
    assert block["train"] == f"EXCEPTION ValueError: Unsupported language: {language}"
    with pytest.raises(UnsupportedLyricsLanguage, match=f"'{language}'"):
        tokenizer.encode(lyrics, mode="training")
    with pytest.raises(UnsupportedLyricsLanguage):
        tokenizer.encode(lyrics, mode="inference")
    # The reference pipeline encodes unsupported lines as English: an explicit fallback reproduces it.
    infer = tokenizer.encode(lyrics, mode="inference", fallback_language="en")
    assert " ".join(tokenizer.pieces(infer)) == block["infer"]


def test_german_example(tokenizer: LyricTokenizer, examples_text: str) -> None:
    block = _language_blocks(examples_text)[GERMAN]
    for mode, key in (("training", "train"), ("inference", "infer")):
        assert " ".join(tokenizer.pieces(tokenizer.encode(GERMAN, mode=mode))) == block[key]

