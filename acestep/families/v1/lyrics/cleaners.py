"""Per-language text normalisation before BPE: the reference `VoiceBpeTokenizer.preprocess_text`."""

from __future__ import annotations

import re
from functools import lru_cache

import pypinyin
from hangul_romanize import Transliter
from hangul_romanize.rule import academic

from acestep.families.v1.lyrics.numbers import expand_numbers

# Languages that go through the multilingual cleaners (ja and hi have their own paths).
MULTILINGUAL = frozenset(
    {"ar", "cs", "de", "en", "es", "fr", "hu", "it", "nl", "pl", "pt", "ru", "tr", "zh", "ko"}
)

# Abbreviation -> expansion; each matches as `\b<abbr>\.` case-insensitively (ru: `\b<abbr>\b`).
_ABBREVIATIONS: dict[str, dict[str, str]] = {
    "en": {
        "mrs": "misess",
        "mr": "mister",
        "dr": "doctor",
        "st": "saint",
        "co": "company",
        "jr": "junior",
        "maj": "major",
        "gen": "general",
        "drs": "doctors",
        "rev": "reverend",
        "lt": "lieutenant",
        "hon": "honorable",
        "sgt": "sergeant",
        "capt": "captain",
        "esq": "esquire",
        "ltd": "limited",
        "col": "colonel",
        "ft": "fort",
    },
    "es": {
        "sra": "señora",
        "sr": "señor",
        "dr": "doctor",
        "dra": "doctora",
        "st": "santo",
        "co": "compañía",
        "jr": "junior",
        "ltd": "limitada",
    },
    "fr": {
        "mme": "madame",
        "mr": "monsieur",
        "dr": "docteur",
        "st": "saint",
        "co": "compagnie",
        "jr": "junior",
        "ltd": "limitée",
    },
    "de": {"fr": "frau", "dr": "doktor", "st": "sankt", "co": "firma", "jr": "junior"},
    "pt": {
        "sra": "senhora",
        "sr": "senhor",
        "dr": "doutor",
        "dra": "doutora",
        "st": "santo",
        "co": "companhia",
        "jr": "júnior",
        "ltd": "limitada",
    },
    "it": {
        "sig": "signore",
        "dr": "dottore",
        "st": "santo",
        "co": "compagnia",
        "jr": "junior",
        "ltd": "limitata",
    },
    "pl": {"p": "pani", "m": "pan", "dr": "doktor", "sw": "święty", "jr": "junior"},
    "cs": {"dr": "doktor", "ing": "inženýr", "p": "pan"},
    "ru": {"г-жа": "госпожа", "г-н": "господин", "д-р": "доктор"},
    "nl": {"dhr": "de heer", "mevr": "mevrouw", "dr": "dokter", "jhr": "jonkheer"},
    "tr": {"b": "bay", "byk": "büyük", "dr": "doktor"},
    "hu": {"dr": "doktor", "b": "bácsi", "nőv": "nővér"},
    "ar": {},
    "zh": {},
    "ko": {},
}
_ABBREVIATION_RES = {
    lang: [
        (re.compile(rf"\b{abbr}\b" if lang == "ru" else rf"\b{abbr}\.", re.IGNORECASE), word)
        for abbr, word in table.items()
    ]
    for lang, table in _ABBREVIATIONS.items()
}

# Words for & @ % # $ £ ° (in that order) per language; each is inserted with a space on both sides.
_SYMBOL_CHARS = "&@%#$£°"
_SYMBOL_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("and", "at", "percent", "hash", "dollar", "pound", "degree"),
    "es": ("y", "arroba", "por ciento", "numeral", "dolar", "libra", "grados"),
    "fr": ("et", "arobase", "pour cent", "dièse", "dollar", "livre", "degrés"),
    "de": ("und", "at", "prozent", "raute", "dollar", "pfund", "grad"),
    "pt": ("e", "arroba", "por cento", "cardinal", "dólar", "libra", "graus"),
    "it": ("e", "chiocciola", "per cento", "cancelletto", "dollaro", "sterlina", "gradi"),
    "pl": ("i", "małpa", "procent", "krzyżyk", "dolar", "funt", "stopnie"),
    "ar": ("و", "على", "في المئة", "رقم", "دولار", "جنيه", "درجة"),
    "zh": ("和", "在", "百分之", "号", "美元", "英镑", "度"),
    "cs": ("a", "na", "procento", "křížek", "dolar", "libra", "stupně"),
    "ru": ("и", "собака", "процентов", "номер", "доллар", "фунт", "градус"),
    "nl": ("en", "bij", "procent", "hekje", "dollar", "pond", "graden"),
    "tr": ("ve", "at", "yüzde", "diyez", "dolar", "sterlin", "derece"),
    "hu": ("és", "kukac", "százalék", "kettőskereszt", "dollár", "font", "fok"),
    "ko": ("그리고", "에", "퍼센트", "번호", "달러", "파운드", "도"),
}


def expand_abbreviations(text: str, lang: str) -> str:
    for pattern, word in _ABBREVIATION_RES[lang]:
        text = pattern.sub(word, text)
    return text


def expand_symbols(text: str, lang: str) -> str:
    for symbol, word in zip(_SYMBOL_CHARS, _SYMBOL_WORDS[lang]):
        text = text.replace(symbol, f" {word} ").replace("  ", " ")
    return text.strip()


def multilingual_clean(text: str, lang: str) -> str:
    """Quotes, Turkish capitals, lower case, numbers, abbreviations, symbols, collapsed spaces.

    The last three steps are skipped one by one when they fail, as in the reference.
    """
    text = text.replace('"', "")
    if lang == "tr":
        text = text.replace("İ", "i").replace("Ö", "ö").replace("Ü", "ü")
    text = text.lower()
    for step in (expand_numbers, expand_abbreviations, expand_symbols):
        try:
            text = step(text, lang)
        except Exception:  # the reference keeps the text of a failed step
            continue
    return re.sub(r"\s+", " ", text)


def chinese_pinyin(text: str) -> str:
    """TONE3 pinyin with 5 for the neutral tone, syllables joined without a separator (我喜欢 -> wo3xi3huan1)."""
    syllables = pypinyin.pinyin(
        text, style=pypinyin.Style.TONE3, heteronym=False, neutral_tone_with_five=True
    )
    return "".join(syllable[0] for syllable in syllables)


@lru_cache(maxsize=1)
def _korean() -> Transliter:
    return Transliter(academic)


@lru_cache(maxsize=1)
def _japanese():
    import cutlet  # imported lazily: it loads a MeCab dictionary

    return cutlet.Cutlet()


def preprocess(text: str, lang: str) -> str:
    """The text the BPE sees for one line in `lang` (one of the 17 lyric languages)."""
    if lang in MULTILINGUAL:
        text = multilingual_clean(text, lang)
        if lang == "zh":
            return chinese_pinyin(text)
        if lang == "ko":
            return _korean().translit(text)
        return text
    if lang == "ja":
        return _japanese().romaji(text).lower()
    if lang == "hi":
        return re.sub(r"\s+", " ", text.lower())
    raise ValueError(f"no lyric normalisation for language {lang!r}")
