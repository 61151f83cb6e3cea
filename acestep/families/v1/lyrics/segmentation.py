"""Language segmentation with the behaviour of LangSegment 0.3.5 as ACE-Step v1 configured it.

The reference training data was tokenised segment by segment, so the segment boundaries (and their
quirks: the trailing space after English runs, digits and brackets glued to a neighbour, zh counted
double) decide the token ids. This module re-implements that algorithm for the one configuration the
reference used: all 97 py3langid languages as filters, which switches the "preview" mode on.

Mechanism, as in the reference: each input line is scanned by a list of patterns (markup tags, Hangul,
Thai, Cyrillic, numbers, Latin, quotes); every match is replaced by a placeholder key; the line is then
split on the keys and each piece is classified (scripts by rule, the rest by py3langid) and appended
to a list of runs, merging neighbours of the same language.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial

from acestep.core.errors import AcestepError
from acestep.families.v1.lyrics.languages import LANGID_LANGUAGES

# The reference joins its filter list into one string and tests membership by substring.
_FILTER_STRING = "-".join(LANGID_LANGUAGES)
_ZH_JA_THRESHOLD = 0.89  # below this langid score, a short Han run takes the filter listed first (ja)

_KEY = re.compile(r"(⑥\$*\d+[\d]{6,}⑥)")  # any placeholder key
_NUMBER_KEY = re.compile(r"(⑥\d{6,}⑥)")  # a placeholder of the number pattern (tag "00")
_PUNCTUATION = re.compile(r"([^\w\s]+)")
_SENTENCE = re.compile(r"(.*?[。.?？!！]+[\n]{,1})")
_KANA = re.compile(r"[\u3040-\u309F\u30A0-\u30FF]+")

# Preview mode adds French and Vietnamese letters to the Latin class.
_FRENCH = "àáâãäåæçèéêëìíîïðñòóôõöùúûüýþÿ"
_VIETNAMESE = "đơưăáàảãạắằẳẵặấầẩẫậéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựôâêơưỷỹ"


def _script_run(letters: str) -> re.Pattern[str]:
    """A run of one script's letters with leading opening quotes and trailing punctuation/space."""
    return re.compile(rf'(([【《（(“‘"\']*[{letters}]+[\W\s]*)+)')


@dataclass(frozen=True)
class _Scanner:
    tag: str  # part of the placeholder key; "00" marks numbers
    pattern: re.Pattern[str]
    kind: str


_SCANNERS = (
    _Scanner("$1", re.compile(r"(<([a-zA-Z|-]*)>(.*?)<\/*[a-zA-Z|-]*>)"), "markup"),
    _Scanner("$6", _script_run("\uac00-\ud7a3"), "ko"),
    _Scanner("$8", _script_run("\u0e00-\u0e7f"), "th"),
    _Scanner("$7", _script_run("А-Яа-яЁё"), "ru"),
    _Scanner("00", re.compile(r"(\W*\d+\W+\d*\W*\d*)"), "number"),
    _Scanner("$5", _script_run(f"a-zA-Z{_FRENCH}{_VIETNAMESE}"), "latin"),
    _Scanner("$3", re.compile(r'(["\'])(.*?)(\1)'), "quotes"),
    _Scanner(
        "$4",
        re.compile(r"([\n]*[【《（(“‘])([^【《（(“‘’”)）》】]{3,})([’”)）》】][\W\s]*[\n]{,1})"),
        "quotes",
    ),
)

_ZH_DIGITS = "零一二三四五六七八九"


@dataclass(frozen=True)
class Segment:
    """A run of lyrics text in one detected language (a py3langid code, not necessarily supported)."""

    language: str
    text: str


@dataclass
class _Run:
    lang: str
    text: str
    score: float
    symbol: object = None  # None for detected text, True or the tag name for <tag>text</tag> markup


@lru_cache(maxsize=1)
def _language_identifier():
    """py3langid 0.3.0 with normalised probabilities: the model and scores the reference thresholds assume."""
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        return LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)
    except (ImportError, AttributeError) as exc:
        raise AcestepError(
            "lyric language detection needs py3langid==0.3.0 (the model ACE-Step v1 was trained with); "
            f"install it with `pip install py3langid==0.3.0` ({exc})"
        ) from exc


def classify(text: str) -> tuple[str, float]:
    """py3langid's language and its probability rounded to 3 decimals, as LangSegment uses them."""
    language, score = _language_identifier().classify(text)
    return language, round(float(score), 3)


def _squeeze(text: str) -> str:
    """The text langid sees: punctuation runs become one space and repeated characters collapse."""
    text = re.sub(r"(.*?)([^\w]+)", r"\1 ", text)
    return re.sub(r"(.)\1+", r"\1", text).strip()


def _is_number_like(text: str) -> tuple[str, bool]:
    """(text without punctuation and newlines, whether that is only digits or empty)."""
    if text == "\n":
        return text, False
    clear = _PUNCTUATION.sub("", re.sub(r"\n+", "", text)).strip()
    return clear, re.sub(r"(\d+)", "", clear) == ""


def _has_han(text: str) -> bool:
    return any("\u4e00" <= char <= "\u9fff" for char in text)


def _spaced_english(text: str) -> str:
    """The reference's English artefact: a space before inner capitals and one appended space."""
    return re.sub(r"(?<!\b)([A-Z])", r" \1", text).strip("-") + " "


def _ssml_to_chinese(tag: str, text: str) -> tuple[str, str]:
    """<number>/<telephone> markup read digit by digit in Chinese; other unknown tags keep their text."""
    if tag in ("number", "telephone"):
        if tag == "telephone":
            text = text.replace("+86", "")
        text = re.sub(r"\d", lambda m: _ZH_DIGITS[int(m.group(0))], text).replace(".", "点")
        if tag == "telephone":
            text = text.replace("一", "幺")
        return "zh", text
    if tag in ("currency", "date"):
        return "zh", text
    return tag, text


class _Pass:
    """State of one segmentation call (the reference keeps it on the instance between calls)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, object]] = {}
        self.waiting: list[_Run] = []
        self.counts: dict[str, int] = {}
        self.at_last_piece = False
        self._handlers: dict[str, Callable[[list[_Run], object], None]] = {
            "markup": self._markup,
            "ko": partial(self._script, "ko"),
            "th": partial(self._script, "th"),
            "ru": partial(self._script, "ru"),
            "number": self._number,
            "latin": self._latin,
            "quotes": self._quotes,
        }

    # -- bookkeeping ---------------------------------------------------------------------------
    def _count(self, lang: str, text: str) -> None:
        if "|" not in lang:
            self.counts[lang] = self.counts.get(lang, 0) + (len(text) * 2 if lang == "zh" else len(text))

    def _save(self, runs: list[_Run], lang: str, text: str, score: float, symbol: object = None) -> _Run:
        clear, is_number = _is_number_like(text)
        previous = runs[-1] if runs else None
        if symbol is None and previous is not None and previous.symbol is None:
            if not clear or is_number:
                lang = previous.lang
            _, previous_is_number = _is_number_like(previous.text)
            if previous.lang == lang:
                self._count(previous.lang, text)
                previous.text += text
                return previous
            if previous_is_number:
                text = previous.text + text
                runs.pop()
        run = _Run(lang, text, score, symbol)
        if "?" in lang or lang in LANGID_LANGUAGES or lang in LANGID_LANGUAGES[0]:
            runs.append(run)
            self._count(run.lang, run.text)
        return run

    def _add(
        self, runs: list[_Run], lang: str | None, text: str, score: float, symbol: object = None
    ) -> None:
        if text != "\n" and not text.strip():
            return
        lang = (lang or "").lower()
        if lang == "en":
            text = _spaced_english(text)
        had_waiting = bool(self.waiting)
        previous = self.waiting.pop() if had_waiting else (runs[-1] if runs else None)
        if previous is not None and "|" in previous.lang:
            if lang in previous.lang:
                previous.lang = lang = lang.split("|")[0]
            else:
                previous.lang = previous.lang.split("|")[0]
            if had_waiting:
                previous = self._save(runs, previous.lang, previous.text, previous.score, previous.symbol)
        previous_lang = previous.lang if previous is not None else None
        if "|" in lang and previous_lang and previous_lang not in lang and "…" not in lang:
            lang = lang.split("|")[0]
        if "|" in lang:
            self.waiting.append(_Run(lang, text, score, symbol))
        else:
            self._save(runs, lang, text, score, symbol)

    # -- scanning --------------------------------------------------------------------------------
    def _hide(self, scanner: _Scanner, text: str) -> str:
        matches = scanner.pattern.findall(text)
        if len(matches) == 1 and "".join(matches[0]) == text:
            return text
        for index, match in enumerate(matches):
            key = f"⑥{scanner.tag}{index:06d}⑥"
            text = scanner.pattern.sub(key, text, count=1)
            self.keys[key] = (scanner.kind, match)
        return text

    def _restore_number(self, found: re.Match[str]) -> str:
        value = found.group(0)
        if value in self.keys:
            return self.keys[value][1]  # type: ignore[return-value]
        return value

    def _walk(self, runs: list[_Run], text: str, top_level: bool) -> list[_Run]:
        pieces = _KEY.split(text)
        for index, piece in enumerate(pieces):
            if top_level:
                self.at_last_piece = index >= len(pieces) - 1
            if _KEY.match(piece):
                kind, match = self.keys[piece]
                self._handlers[kind](runs, match)
            else:
                self._detect(runs, piece)
        return runs

    # -- handlers --------------------------------------------------------------------------------
    def _markup(self, runs: list[_Run], match: tuple[str, str, str]) -> None:
        _, tag, text = match
        if tag not in _FILTER_STRING:
            lang, text = _ssml_to_chinese(tag, text)
            self._add(runs, lang, text, 1.0, tag)
        else:
            self._add(runs, tag, text, 1.0, True)

    def _script(self, lang: str, runs: list[_Run], match: tuple[str, str]) -> None:
        self._add(runs, lang, match[0], 1.0)

    def _number(self, runs: list[_Run], match: str) -> None:
        self._add(runs, runs[0].lang if runs else "zh", match, 0.0)

    def _latin(self, runs: list[_Run], match: tuple[str, str]) -> None:
        for sentence in _SENTENCE.split(match[0]):
            if sentence.strip():
                lang, score = classify(_squeeze(sentence))
                self._add(runs, lang, sentence, score)

    def _quotes(self, runs: list[_Run], match: tuple[str, str, str]) -> None:
        text = "".join(match)
        if _KEY.findall(text):
            self._walk(runs, text, top_level=False)
            return
        inner = _squeeze(match[1])
        if len(inner) <= 5:
            self._detect(runs, text)
        else:
            lang, score = classify(inner)
            self._add(runs, lang, text, score)

    def _detect(self, runs: list[_Run], segment: str) -> None:
        """Classify text between keys: Han/kana by langid plus the zh/ja rules, short pieces glued on."""
        pieces = _PUNCTUATION.split(segment)
        last_piece_of_line = self.at_last_piece
        for index, text in enumerate(pieces):
            if not text:
                continue
            is_last = index >= len(pieces) - 1
            following = "" if is_last else pieces[index + 1]
            if not is_last and (_only_punctuation(text) or _only_punctuation(following)):
                pieces[index + 1] = text + following
                continue
            cleaned = _squeeze(re.sub(r"\d+", "", _NUMBER_KEY.sub("", text)))
            if not is_last and len(cleaned) <= 2:
                pieces[index + 1] = text + following
                continue
            lang, score = classify(cleaned)
            previous_lang = runs[-1].lang if runs else None
            if lang != "zh" and all("\u4e00" <= c <= "\u9fff" for c in re.sub(r"\s", "", cleaned)):
                lang, score = "zh", 1
            if len(cleaned) <= 5 and _has_han(cleaned):
                lang = self._short_han(
                    runs, text, cleaned, lang, score, previous_lang, is_last and last_piece_of_line
                )
            text = _NUMBER_KEY.sub(self._restore_number, text)
            self._add(runs, lang, text, score)

    @staticmethod
    def _short_han(
        runs: list[_Run],
        text: str,
        cleaned: str,
        lang: str,
        score: float,
        previous_lang: str | None,
        line_end: bool,
    ) -> str:
        """Han-only pieces of <= 5 characters are ambiguous between zh and ja: the reference's rules."""
        if score < _ZH_JA_THRESHOLD:
            lang = "ja"  # the filter list names ja before zh
        if _KANA.findall(cleaned):
            return "ja"
        if len(cleaned) > 2 and score > 0.90:
            return lang
        if line_end:
            return "zh" if len(cleaned) <= 1 else lang
        unknown = "zh|ja" if lang == "zh" or (len(cleaned) <= 2 and previous_lang == "zh") else "ja|zh"
        squeezed = re.sub(r"\s+", "", text)
        ending = squeezed[-1] if squeezed else None
        related = (previous_lang in unknown or unknown in previous_lang) if previous_lang else False
        if ending is not None and ending in "。.":
            return previous_lang if related and runs else lang
        return f"{unknown}|…"

    # -- entry -----------------------------------------------------------------------------------
    def run(self, text: str) -> tuple[list[Segment], list[tuple[str, int]]]:
        runs: list[_Run] = []
        for line in re.findall(r".*\n*", _KEY.sub("", text)):
            if not line.strip():
                continue
            self.at_last_piece = False
            self.keys = {}
            for scanner in _SCANNERS:
                line = self._hide(scanner, line)
            runs += self._walk([], line, top_level=True)
        segments: list[Segment] = []
        for run in runs:
            if segments and segments[-1].language == run.lang:
                segments[-1] = Segment(run.lang, segments[-1].text + run.text)
            else:
                segments.append(Segment(run.lang, run.text))
        counts = sorted(self.counts.items(), key=lambda item: item[1], reverse=True)
        return segments, counts or [("zh", 0)]


def _only_punctuation(text: str) -> bool:
    return not _PUNCTUATION.sub("", re.sub(r"\n+", "", text)).strip()


def segment_lyrics(text: str) -> tuple[list[Segment], list[tuple[str, int]]]:
    """Split text into language runs and count characters per language (zh doubled), largest first.

    Mirrors `LangSegment.getTexts` + `getCounts`; empty text gives ([], [("zh", 0)]) like the reference.
    """
    if not text or not text.strip():
        return [], [("zh", 0)]
    return _Pass().run(text)
