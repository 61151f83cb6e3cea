"""Tag and lyrics parsing on answers shaped like what audio-language models really write."""

from __future__ import annotations

import pytest

from acestep.captioning.parse import (
    INSTRUMENTAL,
    MAX_TAG_WORDS,
    clean_lyrics,
    join_lyrics_parts,
    normalise_lyrics,
    parse_tags,
    section_tag,
)

TAG_CASES = [
    (
        "plain comma list",
        "rock, pop, electric guitar, drums, upbeat, female vocal",
        ["rock", "pop", "electric guitar", "drums", "upbeat", "female vocal"],
    ),
    (
        "numbered list with bpm and trailing period",
        "1. Rock\n2. Electric Guitar\n3. 120 BPM\n4. Energetic.",
        ["rock", "electric guitar", "energetic"],
    ),
    (
        "numbered list with parentheses",
        "1) Jazz\n2) Upright Bass\n3) Brushed Drums",
        ["jazz", "upright bass", "brushed drums"],
    ),
    (
        "bullets with labels",
        "- Genre: Synthwave\n- Instruments: synthesizer, drum machine\n- Tempo: 118 BPM (fast)\n"
        "- Mood: nostalgic",
        ["synthwave", "synthesizer", "drum machine", "nostalgic"],
    ),
    ("star and dot bullets", "* Ambient\n• Pad Synth\n* Calm", ["ambient", "pad synth", "calm"]),
    (
        "json object in a fence",
        '```json\n{"genre": ["Pop", "Dance Pop"], "instrument": ["Piano", "Drums"], '
        '"bpm": 120, "has_vocal": true, "vocal": ["female vocal"], "tempo": ["fast", "128 bpm"]}\n```',
        ["pop", "dance pop", "piano", "drums", "female vocal", "fast"],
    ),
    ("json array with duplicates", '["rock", "Rock", "guitar", "guitar."]', ["rock", "guitar"]),
    (
        "json after chatter",
        'Here is the result:\n{"tags": ["Trap", "808 Bass", "Dark"]}',
        ["trap", "808 bass", "dark"],
    ),
    ("broken json falls back to text", '["lofi", "piano",]', ["lofi", "piano"]),
    (
        "chatter around a list",
        "Sure! Here are the tags for the audio: rock, pop, guitar. I hope this helps!",
        ["rock", "pop", "guitar"],
    ),
    (
        "tags label",
        "Tags: lo-fi hip hop, jazzy piano, vinyl crackle, chill, slow",
        ["lo-fi hip hop", "jazzy piano", "vinyl crackle", "chill", "slow"],
    ),
    (
        "a sentence",
        "The song is an upbeat pop track featuring female vocals and acoustic guitar.",
        ["upbeat pop", "female vocals", "acoustic guitar"],
    ),
    (
        "think block dropped",
        "<think>Okay, let me listen. The drums are punchy.</think>\n"
        "house, deep house, four on the floor, groovy, mid-tempo",
        ["house", "deep house", "four on the floor", "groovy", "mid-tempo"],
    ),
    (
        "markdown bold labels",
        "**Genre:** Jazz\n**Instruments:** Saxophone, Double Bass\n**Mood:** Smooth\n**Tempo:** 90 BPM",
        ["jazz", "saxophone", "double bass", "smooth"],
    ),
    (
        "numbers that are not bpm stay",
        "80s synthpop, 808 bass, tempo: 120, 120, ~128 bpm, 100-110 bpm, bpm 95",
        ["80s synthpop", "808 bass"],
    ),
    ("musical keys dropped", "rock, Key: C minor, F# major, bass", ["rock", "bass"]),
    (
        "mixed case and spaces",
        "  ROCK ,  Heavy   Metal ,Distorted_Guitar  ",
        ["rock", "heavy metal", "distorted guitar"],
    ),
    ("semicolons and pipes", "edm; big room | festival", ["edm", "big room", "festival"]),
    ("category headings dropped", "### Genre\nfolk\n### Mood\nwarm", ["folk", "warm"]),
    ("cjk commas", "流行，钢琴、女声", ["流行", "钢琴", "女声"]),
    ("control bytes and broken characters", "ro\x18ck, \ufffdpiano\u200b", ["rock", "piano"]),
]


@pytest.mark.parametrize(
    ("answer", "expected"), [case[1:] for case in TAG_CASES], ids=[c[0] for c in TAG_CASES]
)
def test_parse_tags(answer: str, expected: list[str]) -> None:
    assert parse_tags(answer) == expected


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "   \n ",
        "Okay, let me listen to this. Hmm. The audio starts with a piano. I think it is a ballad.",
        "I'm sorry, I can't help with that.",
        "120 BPM",
        "<think>still thinking",
    ],
)
def test_answers_without_tags_give_nothing(answer: str) -> None:
    assert parse_tags(answer) == []


def test_tag_count_is_bounded_and_every_tag_is_clean() -> None:
    answer = (
        ", ".join(f"Style{chr(97 + i)}." for i in range(26))
        + ", a very long descriptive phrase of many words"
    )
    tags = parse_tags(answer, max_tags=10)
    assert tags == [f"style{chr(97 + i)}" for i in range(10)]
    for tag in parse_tags(answer, max_tags=100):
        assert tag == tag.lower().strip() and len(tag.split()) <= MAX_TAG_WORDS and not tag.endswith(".")


@pytest.mark.parametrize(
    ("line", "tag"),
    [
        ("[Verse 1]", "[verse]"),
        ("Chorus:", "[chorus]"),
        ("**Bridge**", "[bridge]"),
        ("(Pre-Chorus)", "[pre-chorus]"),
        ("[Verse 2: Some Artist]", "[verse]"),
        ("[Instrumental break]", "[inst]"),
        ("Chorus of angels singing", None),
        ("[Introduction to the night]", None),
        ("hello world", None),
    ],
)
def test_section_tag(line: str, tag: str | None) -> None:
    assert section_tag(line) == tag


def test_clean_lyrics_removes_chatter_and_normalises_sections() -> None:
    answer = (
        "Here are the lyrics:\n[Verse 1]\nHello world\nI am here\n\n[Chorus]\nLa la la\n[Chorus]\n"
        "[Music]\n\nNote: some words were unclear."
    )
    assert clean_lyrics(answer) == "[verse]\nHello world\nI am here\n\n[chorus]\nLa la la"


def test_clean_lyrics_strips_timestamps_and_trailing_empty_section() -> None:
    assert clean_lyrics("Verse 1:\n[00:12.34]hello <00:13.00>there\nChorus\nyeah\n[Outro]") == (
        "[verse]\nhello there\n\n[chorus]\nyeah"
    )


@pytest.mark.parametrize(
    "answer",
    [
        "[instrumental]",
        "Instrumental.",
        "There are no vocals in this audio.",
        "[Music]\n(applause)",
        "[Intro]\n...",
    ],
)
def test_no_vocals_means_instrumental(answer: str) -> None:
    assert clean_lyrics(answer) == INSTRUMENTAL


def test_lyrics_lose_control_characters() -> None:
    assert clean_lyrics("[Verse]\r\nhel\x00lo\ufffd\r\nworld") == "[verse]\nhello\nworld"


def test_empty_answer_is_not_instrumental() -> None:
    assert clean_lyrics("  ") == ""


def test_join_parts_skips_instrumental_pieces() -> None:
    assert (
        join_lyrics_parts(["[verse]\na b", INSTRUMENTAL, "c d", "[chorus]\ne"])
        == "[verse]\na b\nc d\n\n[chorus]\ne"
    )
    assert join_lyrics_parts([INSTRUMENTAL, "", INSTRUMENTAL]) == INSTRUMENTAL


def test_user_lyrics_keep_their_own_bracket_lines() -> None:
    text = "[Verse 1]\r\nline one\r\n[Spoken]\r\nline two\r\n\r\n\r\n[CHORUS]\r\nline three"
    assert normalise_lyrics(text) == "[verse]\nline one\n[Spoken]\nline two\n\n[chorus]\nline three"
