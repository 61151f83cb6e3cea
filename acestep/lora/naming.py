"""How one family spells its LoRA keys for each consumer, handed in by the family: lora/ names no family.

A style is one spelling of a module's LoRA keys that some loaders read (ComfyUI, diffusers, kohya tools). Each family
registers its `KeyNaming` when its package is imported (acestep/families/<name>/lora_keys.py), as it registers its
`TransformerKind`; the tools ask the registered namings which family a file's module paths belong to, which styles
that family writes, and a module's keys in a style. Adding a family adds a naming; nothing here changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Keys = tuple[str, str, str | None]  # (down key, up key, alpha key or None)


def _same(name: str) -> str:
    return name


@dataclass(frozen=True)
class KeyNaming:
    """One family's LoRA key spellings."""

    family: str  # the name recorded in LoRA headers ("acestep_family")
    styles: dict[str, tuple[str, ...]]  # style -> the loaders that read its keys as they are ("comfyui", "diffusers",
    #                                     "kohya"); the first style is the family's default (ComfyUI's)
    owns: Callable[[Sequence[str]], bool]  # do these module paths (as a file spells them) belong to this family
    keys: Callable[[str, str], Keys]  # (module path, one of its styles) -> the keys of that module
    spelled_in: Callable[[Sequence[str]], str | None]  # a file's tensor keys -> its style, None: not this family's
    prefixes: tuple[str, ...] = ()  # what its styles put before a module path (stripped on reading)
    model_name: Callable[[str], str] = _same  # a module or weight name as its files spell it -> the model's
    unmarked: bool = False  # a file that names no family is this family's (it predates the header); its answer
    #                         to `spelled_in` is the last resort, so it is asked last
    help: str = ""  # its styles and who reads them, for `--key_style`'s help

    @property
    def default_style(self) -> str:
        return next(iter(self.styles))


_NAMINGS: dict[str, KeyNaming] = {}


def register(naming: KeyNaming) -> None:
    _NAMINGS[naming.family] = naming


def namings() -> list[KeyNaming]:
    """Every registered naming, the one for unmarked files last."""
    return sorted(_NAMINGS.values(), key=lambda naming: naming.unmarked)


def naming_for(family: str | None) -> KeyNaming | None:
    return _NAMINGS.get(family) if family else None


def unmarked_naming() -> KeyNaming:
    """The family of a file that names none and shows no family's modules."""
    from acestep.core.errors import AcestepError

    found = next((naming for naming in _NAMINGS.values() if naming.unmarked), None)
    if found is None:
        raise AcestepError("no model family is loaded (a command loads them with acestep.families.load_all())")
    return found


def naming_of_style(style: str) -> KeyNaming | None:
    return next((naming for naming in _NAMINGS.values() if style in naming.styles), None)


def key_styles() -> tuple[str, ...]:
    """Every style of every loaded family, in the order the families were loaded (`--key_style` choices)."""
    return tuple(style for naming in _NAMINGS.values() for style in naming.styles)


def key_style_help() -> str:
    """`--key_style`'s help: the default, then each loaded family's styles in its own words."""
    return " ".join(["default: the family's ComfyUI spelling (its first style).",
                     *(naming.help for naming in _NAMINGS.values() if naming.help)])


def readers_of(style: str) -> tuple[str, ...]:
    naming = naming_of_style(style)
    return naming.styles[style] if naming is not None else ()
