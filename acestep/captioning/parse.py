"""Turn free-form model answers into clean tags and clean lyrics.

Models wrap tags in lists, JSON, sentences and chatter, and put BPM numbers in no matter what the prompt
says. Training only wants short lower-case tags (the BPM lives in its own sidecar) and lyrics whose section
tags the ACE-Step lyric tokenizer knows ("[Verse 1]" becomes [UNK] tokens, "[verse]" does not).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator

INSTRUMENTAL = "[instrumental]"
DEFAULT_MAX_TAGS = 24
MAX_TAG_WORDS = 4
MAX_TAG_CHARS = 40

_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.S | re.I)
_FENCE = re.compile(r"```[A-Za-z]*")
_BULLET = re.compile(r"^(?:[-*•·+>#]+|\(?\d{1,3}[.)])\s*")
_PARENS = re.compile(r"\([^()]*\)|\[[^\[\]]*\d[^\[\]]*\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SEPARATORS = re.compile(r"[,;|，、；]|\s/\s")
_BPM = re.compile(r"\d\s*(?:-|–|to)?\s*(?:\d+\s*)?(?:bpm|beats per minute|beats/min)\b|\bbpm\s*\d")
_NUMERIC = re.compile(r"^[~≈]?\d+(?:\.\d+)?(?:\s*(?:-|–|to)\s*\d+(?:\.\d+)?)?$")
_MUSICAL_KEY = re.compile(r"^(?:key )?[a-g](?:#|♯|b|♭| sharp| flat)?\s*(?:major|minor|maj|min|m)?$")
_CLAUSE_SPLIT = re.compile(r"\b(?:and|with|featuring|plus|over)\b")
_STRIP_CHARS = " \t\"'`“”‘’*_[]{}<>.!?:;-–—"

# A piece that uses these words talks about the task or the listener, not the music.
_CHATTER_WORDS = frozenset(
    "i i'm i'll i've me my we let's you your here sure okay ok certainly hope tags tag audio clip "
    "recording listen listening hear hmm answer helps help provided given following".split()
)
# Verbs that mark a sentence rather than a tag; sentences are mined for their noun phrases.
_SENTENCE_WORDS = frozenset(
    "is are was were be been has have had starts uses plays seems feels features contains includes "
    "there sounds creates gives builds".split()
)
_LEADING_FILLER = frozenset(
    "the a an this that it its it's is are was has have song track music piece features featuring "
    "feature also some overall which".split()
)
_TRAILING_FILLER = frozenset({"track", "song", "tune"})
_CATEGORY_WORDS = frozenset(
    {
        "genre",
        "genres",
        "subgenre",
        "sub-genre",
        "instrument",
        "instruments",
        "instrumentation",
        "mood",
        "moods",
        "tempo",
        "vocal type",
        "vocal",
        "tags",
        "style",
        "none",
        "n/a",
        "unknown",
    }
)
_SKIPPED_JSON_KEYS = frozenset(
    {"bpm", "key", "lyrics", "title", "artist", "has_vocal", "description", "caption"}
)


def parse_tags(answer: str, max_tags: int = DEFAULT_MAX_TAGS) -> list[str]:
    """Clean, ordered, de-duplicated tags found in `answer`; an empty list when none survive."""
    text = _FENCE.sub("\n", _THINK.sub("\n", printable(answer)))
    pieces = _json_strings(text)
    if pieces is None:
        pieces = list(_text_pieces(text))
    tags: list[str] = []
    for piece in pieces:
        for tag in _piece_to_tags(piece):
            if tag not in tags:
                tags.append(tag)
    return tags[:max_tags]


def printable(text: str) -> str:
    """`text` without control/format characters and U+FFFD (broken bytes of a decoded token stream)."""
    return "".join(
        ch for ch in text if ch in "\n\t" or (ch != "\ufffd" and not unicodedata.category(ch).startswith("C"))
    )


def _json_strings(text: str) -> list[str] | None:
    """Strings inside the first JSON array/object of `text`, or None when there is none to decode."""
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    if not isinstance(value, (list, dict)):
        return None
    return list(_strings_in(value))


def _strings_in(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings_in(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if str(key).lower() not in _SKIPPED_JSON_KEYS:
                yield from _strings_in(item)


def _text_pieces(text: str) -> Iterator[str]:
    """Comma-level pieces of a plain-text answer: bullets, labels, headers and parentheses removed."""
    for raw_line in text.splitlines():
        line = _BULLET.sub("", raw_line.strip()).strip()
        if not line or line.endswith(":"):
            continue
        line = _PARENS.sub(" ", line)
        for sentence in _SENTENCE_END.split(line):
            for piece in _SEPARATORS.split(sentence):
                yield piece.rsplit(":", 1)[-1]


def _piece_to_tags(piece: str) -> list[str]:
    words = _words(piece)
    if not words or _CHATTER_WORDS.intersection(words):
        return []
    if len(words) <= MAX_TAG_WORDS and not _SENTENCE_WORDS.intersection(words):
        tag = _normalise(piece)
        return [tag] if _is_valid(tag) else []
    return [tag for clause in _CLAUSE_SPLIT.split(piece.lower()) if _is_valid(tag := _phrase_of(clause))]


def _phrase_of(clause: str) -> str:
    """The noun phrase of a sentence clause: leading filler and trailing 'track'/'song' dropped."""
    words = _normalise(clause).split()
    while words and words[0] in _LEADING_FILLER:
        words.pop(0)
    if len(words) > 1 and words[-1] in _TRAILING_FILLER:
        words.pop()
    if _SENTENCE_WORDS.intersection(words):
        return ""
    return " ".join(words)


def _words(piece: str) -> list[str]:
    return re.findall(r"[\w'&+/-]+", piece.lower())


def _normalise(piece: str) -> str:
    tag = piece.lower().replace("_", " ")
    tag = re.sub(r"\s+", " ", tag).strip(_STRIP_CHARS)
    return tag


def _is_valid(tag: str) -> bool:
    return (
        bool(tag)
        and len(tag) <= MAX_TAG_CHARS
        and len(tag.split()) <= MAX_TAG_WORDS
        and tag not in _CATEGORY_WORDS
        and not _BPM.search(tag)
        and not _NUMERIC.match(tag)
        and not _MUSICAL_KEY.match(tag)
        and any(ch.isalpha() for ch in tag)
    )


# ----------------------------------------------------------------------------------------------- lyrics

_TIMESTAMP = re.compile(r"\[\d{1,3}:\d{1,2}(?:[.:]\d{1,3})?\]|<\d{1,3}:\d{1,2}(?:[.:]\d{1,3})?>")
_SECTION_NAMES = {
    "verse": "verse",
    "chorus": "chorus",
    "refrain": "chorus",
    "pre-chorus": "pre-chorus",
    "prechorus": "pre-chorus",
    "pre chorus": "pre-chorus",
    "post-chorus": "post-chorus",
    "bridge": "bridge",
    "intro": "intro",
    "outro": "outro",
    "hook": "hook",
    "interlude": "interlude",
    "breakdown": "breakdown",
    "instrumental": "inst",
    "inst": "inst",
    "solo": "inst",
    "instrumental break": "inst",
}
_SECTION_ALTERNATION = "|".join(sorted((re.escape(n) for n in _SECTION_NAMES), key=len, reverse=True))
_BRACKET_SECTION = re.compile(rf"^[\[(]\s*({_SECTION_ALTERNATION})\b[^\])]*[\])]\s*:?$", re.I)
_BARE_SECTION = re.compile(rf"^[*#\s]*({_SECTION_ALTERNATION})(?:\s*\d+)?[*\s]*:?[*\s]*$", re.I)
_INSTRUMENTAL_MARKERS = frozenset({INSTRUMENTAL, "[inst]", "instrumental"})
_BRACKETED_LINE = re.compile(r"^\s*[\[(].*[\])]\s*$")
_LEADING_CHATTER = re.compile(
    r"^(?:here(?:'s| are| is)|sure|okay|ok\b|certainly|the lyrics|lyrics|transcription)\b.*(?::|\.|!)$", re.I
)
_TRAILING_CHATTER = re.compile(r"^\(?(?:note|please note|i hope|let me know|translation)\b", re.I)
_NO_VOCALS = re.compile(
    r"\b(?:no (?:audible )?(?:lyrics|vocals|singing|voice)|is (?:an )?instrumental|instrumental (?:only|track|"
    r"music|piece)|there (?:are|is) no (?:lyrics|vocals|singing|one singing))\b|^\W*instrumental\W*$",
    re.I,
)


def section_tag(line: str) -> str | None:
    """'[Verse 2]', 'Chorus:', '**Bridge**' -> '[verse]', '[chorus]', '[bridge]'; None for a lyric line."""
    match = _BRACKET_SECTION.match(line) or _BARE_SECTION.match(line)
    if not match:
        return None
    return f"[{_SECTION_NAMES[match.group(1).lower()]}]"


def normalise_lyrics(text: str, drop_unknown_brackets: bool = False) -> str:
    """Timestamps removed, section tags in ACE-Step form, blank lines tidied; words untouched.

    `drop_unknown_brackets` removes lines like "[Music]" or "(applause)" that transcribers emit; lyrics
    the user wrote keep them, since they may mean something to that user.
    """
    text = printable(text.replace("\r\n", "\n").replace("\r", "\n"))
    if text.strip().lower() in _INSTRUMENTAL_MARKERS:
        return INSTRUMENTAL
    out: list[str] = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = _TIMESTAMP.sub("", raw).strip()
        tag = section_tag(line) if line else None
        if tag is not None:
            while out and out[-1] == "":
                out.pop()
            if out and out[-1] == tag:
                continue
            if out:
                out.append("")
            out.append(tag)
        elif line and drop_unknown_brackets and _BRACKETED_LINE.match(line):
            continue
        elif line or (out and out[-1] != ""):
            out.append(line)
    while out and (out[-1] == "" or section_tag(out[-1]) is not None):
        out.pop()
    return "\n".join(out)


def clean_lyrics(answer: str) -> str:
    """Lyrics from a model answer: chatter and markup gone, sections normalised, `[instrumental]` if no words.

    Returns "" for an empty answer so the caller can tell "the model said nothing" from "no vocals".
    """
    text = _FENCE.sub("\n", _THINK.sub("\n", printable(answer))).strip()
    if not text:
        return ""
    if len(text) < 200 and _NO_VOCALS.search(text):
        return INSTRUMENTAL
    lines = [line.strip() for line in text.splitlines()]
    while lines and (not lines[0] or (_LEADING_CHATTER.match(lines[0]) and section_tag(lines[0]) is None)):
        lines.pop(0)
    if lines and re.match(r"^lyrics\s*:\s*\S", lines[0], re.I):
        lines[0] = lines[0].split(":", 1)[1].strip()
    while lines and (not lines[-1] or _TRAILING_CHATTER.match(lines[-1])):
        lines.pop()
    cleaned = normalise_lyrics("\n".join(lines), drop_unknown_brackets=True)
    return cleaned if has_words(cleaned) else INSTRUMENTAL


def has_words(lyrics: str) -> bool:
    """True when some line other than a section tag holds a letter."""
    return any(
        any(ch.isalpha() for ch in line) for line in lyrics.splitlines() if section_tag(line.strip()) is None
    )


def join_lyrics_parts(parts: list[str]) -> str:
    """Lyrics of consecutive pieces of one song as one text; `[instrumental]` when no piece has words."""
    sung = [part for part in parts if part and part != INSTRUMENTAL]
    if not sung:
        return INSTRUMENTAL
    return normalise_lyrics("\n".join(sung))
