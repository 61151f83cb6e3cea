"""Package exports imported on first use (PEP 562), so importing a package (and `--help`) loads none of its
heavy submodules."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """The package's module-level `__getattr__`: `name` comes from its submodule `where[name]`, imported when first
    asked for and then kept in the package like any other attribute."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
