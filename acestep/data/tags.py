"""A song's tags as the prompt text every family's stage 3 encodes."""

from __future__ import annotations

import random


def format_prompt(tags: list[str], order: str = "as_written", seed: int | None = None) -> str:
    """Tags joined with ", " in the written order, or shuffled reproducibly (the fork shuffles once)."""
    cleaned = [tag.strip() for tag in tags if tag and tag.strip()]
    if order == "shuffle":
        random.Random(seed).shuffle(cleaned)
    elif order != "as_written":
        raise ValueError(f"tag order must be 'as_written' or 'shuffle', got {order!r}")
    return ", ".join(cleaned)
