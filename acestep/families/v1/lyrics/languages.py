"""Language codes and token texts shared by the lyric pipeline (ACE-Step v1 reference values)."""

from __future__ import annotations

# The 17 lyric languages with a prefix token in the vocabulary, in the reference order.
SUPPORTED_LANGUAGES: tuple[str, ...] = (
    "en",
    "de",
    "fr",
    "es",
    "it",
    "pt",
    "pl",
    "tr",
    "ru",
    "cs",
    "nl",
    "ar",
    "zh",
    "ja",
    "hu",
    "ko",
    "hi",
)

# Every language py3langid 0.3.0 knows; the reference passes all of them as LangSegment's filter list.
LANGID_LANGUAGES: tuple[str, ...] = tuple(
    "af am an ar as az be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr ga gl gu he hi hr ht hu "
    "hy id is it ja jv ka kk km kn ko ku ky la lb lo lt lv mg mk ml mn mr ms mt nb ne nl nn no oc or pa pl ps "
    "pt qu ro ru rw se si sk sl sq sr sv sw ta te th tl tr ug uk ur vi vo wa xh zh zu".split()
)

# Bracketed section markers that are single tokens in the vocabulary (lower-case after cleaning).
STRUCTURE_TAGS: tuple[str, ...] = (
    "[start]",
    "[intro]",
    "[verse]",
    "[chorus]",
    "[bridge]",
    "[outro]",
    "[end]",
    "[inst]",
    "[solo]",
    "[hook]",
    "[pre-chorus]",
    "[break]",
)

STOP_TOKEN = "[STOP]"
UNK_TOKEN = "[UNK]"
SPACE_TOKEN = "[SPACE]"
START_TOKEN = "[START]"


def language_token(language: str) -> str:
    """The prefix token text of a supported language; Chinese is written `[zh-cn]` in the vocabulary."""
    return "[zh-cn]" if language == "zh" else f"[{language}]"


def reference_language(detected: str) -> str:
    """Map a detected code to a lyric language the way the reference does (unsupported -> en)."""
    return detected if detected in SUPPORTED_LANGUAGES else "en"


ALL_SPECIAL_TOKENS: tuple[str, ...] = (
    STOP_TOKEN,
    UNK_TOKEN,
    SPACE_TOKEN,
    START_TOKEN,
    *(language_token(code) for code in SUPPORTED_LANGUAGES),
    *STRUCTURE_TAGS,
)
