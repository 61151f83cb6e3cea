"""Model code of ACE-Step v1, written for this toolkit, loading the published checkpoint unchanged."""

import importlib
from typing import Any

__all__ = ["ACEStepTransformer2DModel", "Transformer2DModelOutput"]


def __getattr__(name: str) -> Any:
    """The transformer on first use: light submodules (v15_keys) and `--help` load no torch."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".transformer", __name__), name)
    globals()[name] = value
    return value
