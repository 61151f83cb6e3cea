"""Answers that must not become sidecars: cut off at the token limit, or stuck repeating one phrase.

A model that loops ("ld Ild Ild ...") usually runs into the token limit, and that flag alone catches it.
The repetition test catches loops that ended by chance before the limit. Its threshold is loose on purpose:
a real lyric piece (30 s, a few lines) repeats a chorus line a few times, but never one phrase over most
of the text.
"""

from __future__ import annotations

import re
from collections import Counter

MAX_NGRAM = 8
MIN_TOKENS = 16  # shorter answers are too short to call a loop ("la la la la" is a real lyric)
MAX_SHARE = 0.6  # one n-gram covering more than this share of the answer is a loop
# Scripts written without spaces count one character as one token; others count words.
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_UNSPACED}]|[^\s{_UNSPACED}]+")


def tokens(text: str) -> list[str]:
    """Words (case-folded, punctuation kept), or single characters in Chinese and Japanese script."""
    return _TOKEN.findall(text.casefold())


def repeated_ngram(text: str) -> tuple[str, float]:
    """The n-gram (n <= 8) whose back-to-back, non-overlapping repeats cover the largest share of the text."""
    words = tokens(text)
    best, best_share = "", 0.0
    for n in range(1, min(MAX_NGRAM, len(words) // 2) + 1):
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        gram, count = counts.most_common(1)[0]
        if count * n / len(words) <= best_share:
            continue  # even overlapping repeats cannot beat the best so far
        covered, i = 0, 0
        while i <= len(words) - n:
            if tuple(words[i : i + n]) == gram:
                covered, i = covered + n, i + n
            else:
                i += 1
        if covered / len(words) > best_share:
            best, best_share = " ".join(gram), covered / len(words)
    return best, best_share


def unusable_reason(text: str, truncated: bool, max_tokens: int) -> str | None:
    """Why the answer must not be written (cut off, or a loop), or None when it may be used."""
    if truncated:
        return f"cut off at the {max_tokens}-token answer limit"
    if len(tokens(text)) >= MIN_TOKENS:
        gram, share = repeated_ngram(text)
        if share > MAX_SHARE:
            return f"{gram!r} repeated over {share:.0%} of the answer"
    return None
