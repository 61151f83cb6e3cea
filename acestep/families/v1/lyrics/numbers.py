"""Numbers to words for the non-Chinese lyric languages (num2words), with the reference's rules.

Order: thousands separators, currencies, decimals (not Turkish), ordinals, cardinals. A currency
that num2words cannot spell is left as it is; any other failure makes the caller keep the text.
"""

from __future__ import annotations

import re

from num2words import num2words

from acestep.families.v1.lyrics.zh_numbers import normalize_chinese_numbers

# Ordinal suffixes per language (the number is group 1).
_ORDINAL = {
    "en": r"([0-9]+)(st|nd|rd|th)",
    "es": r"([0-9]+)(º|ª|er|o|a|os|as)",
    "fr": r"([0-9]+)(º|ª|er|re|e|ème)",
    "de": r"([0-9]+)(st|nd|rd|th|º|ª|\.(?=\s|$))",
    "pt": r"([0-9]+)(º|ª|o|a|os|as)",
    "it": r"([0-9]+)(º|°|ª|o|a|i|e)",
    "pl": r"([0-9]+)(º|ª|st|nd|rd|th)",
    "ar": r"([0-9]+)(ون|ين|ث|ر|ى)",
    "cs": r"([0-9]+)\.(?=\s|$)",
    "ru": r"([0-9]+)(-й|-я|-е|-ое|-ье|-го)",
    "nl": r"([0-9]+)(de|ste|e)",
    "tr": r"([0-9]+)(\.|inci|nci|uncu|üncü|\.)",
    "hu": r"([0-9]+)(\.|adik|edik|odik|edik|ödik|ödike|ik)",
    "ko": r"([0-9]+)(번째|번|차|째)",
}
_ORDINAL_RE = {lang: re.compile(pattern) for lang, pattern in _ORDINAL.items()}
_CARDINAL_RE = re.compile(r"[0-9]+")
_DECIMAL_RE = re.compile(r"([0-9]+[.,][0-9]+)")
_COMMA_GROUPED_RE = re.compile(r"\b\d{1,3}(,\d{3})*(\.\d+)?\b")
_DOT_GROUPED_RE = re.compile(r"\b\d{1,3}(.\d{3})*(\,\d+)?\b")  # the unescaped "." is the reference's
# (currency code, pattern) in the order the reference applies them.
_CURRENCIES = (
    ("GBP", re.compile(r"((£[0-9\.\,]*[0-9]+)|([0-9\.\,]*[0-9]+£))")),
    ("USD", re.compile(r"((\$[0-9\.\,]*[0-9]+)|([0-9\.\,]*[0-9]+\$))")),
    ("EUR", re.compile(r"(([0-9\.\,]*[0-9]+€)|((€[0-9\.\,]*[0-9]+)))")),
)
# What separates the main unit from the cents in num2words' currency text; dropped for whole amounts.
_AND_CENTS = {"es": " con ", "fr": " et ", "de": " und ", "pt": " e ", "it": " e "}


def _num2words_language(lang: str) -> str:
    return "cz" if lang == "cs" else lang


def _currency(found: re.Match[str], lang: str, currency: str) -> str:
    amount = float(re.sub(r"[^\d.]", "", found.group(0).replace(",", ".")))
    words = num2words(amount, to="currency", currency=currency, lang=_num2words_language(lang))
    if amount.is_integer():
        cut = words.rfind(_AND_CENTS.get(lang, ", "))
        if cut != -1:
            words = words[:cut]
    return words


def _expand_currencies(text: str, lang: str) -> str:
    try:
        for currency, pattern in _CURRENCIES:
            text = pattern.sub(lambda found, code=currency: _currency(found, lang, code), text)
    except Exception:  # the reference skips currencies num2words cannot spell
        pass
    return text


def expand_numbers(text: str, lang: str) -> str:
    """Spell out the numbers of lower-cased text in `lang` ("2 cats" -> "two cats"); may raise."""
    if lang == "zh":
        return normalize_chinese_numbers(text)
    words_lang = _num2words_language(lang)
    if lang in ("en", "ru"):
        text = _COMMA_GROUPED_RE.sub(lambda found: found.group(0).replace(",", ""), text)
    else:
        text = _DOT_GROUPED_RE.sub(lambda found: found.group(0).replace(".", ""), text)
    text = _expand_currencies(text, lang)
    if lang != "tr":
        text = _DECIMAL_RE.sub(
            lambda found: num2words(float(found.group(1).replace(",", ".")), lang=words_lang), text
        )
    text = _ORDINAL_RE[lang].sub(
        lambda found: num2words(int(found.group(1)), ordinal=True, lang=words_lang), text
    )
    return _CARDINAL_RE.sub(lambda found: num2words(int(found.group(0)), lang=words_lang), text)
