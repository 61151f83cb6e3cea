"""Errors the toolkit raises on purpose, so stages can report them as one line per file."""

from __future__ import annotations


class AcestepError(Exception):
    """Base class: a problem the user can fix, shown without a traceback by the CLIs."""


class InputError(AcestepError):
    """One input file (audio, sidecar, lyrics) cannot be used; stages skip it and report the reason."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(AcestepError):
    """A checkpoint folder or file is missing parts or does not match the model."""
