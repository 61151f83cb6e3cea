"""The trainer's sample prompts (--sample_prompts): a JSON list or TOML [[samples]] file that every family's
sample renderer reads, and the RNG state a renderer saves and restores around its work."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch

from acestep.core.errors import AcestepError


@dataclass(frozen=True)
class SampleParams:
    """What every family renders a sample from."""

    prompt: str
    lyrics: str
    duration: float
    seed: int
    steps: int


@dataclass(frozen=True)
class SamplePrompt:
    name: str
    params: SampleParams


def read_sample_prompts(path: str | Path, steps: int) -> list[SamplePrompt]:
    """A JSON list, or a TOML file with [[samples]] tables, of {prompt, lyrics, duration, seed, name}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = tomllib.loads(text)["samples"] if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, ValueError, KeyError) as error:
        raise AcestepError(f"{path}: cannot read sample prompts ({error}); expected a JSON list or TOML [[samples]]") from error
    if not isinstance(data, list) or not data:
        raise AcestepError(f"{path}: sample prompts must be a non-empty list")
    prompts = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or "prompt" not in item:
            raise AcestepError(f"{path}: sample {index} needs at least a 'prompt'")
        params = SampleParams(
            prompt=str(item["prompt"]), lyrics=str(item.get("lyrics", "")), duration=float(item.get("duration", 30.0)),
            seed=int(item.get("seed", index)), steps=int(item.get("steps", steps)),
        )
        prompts.append(SamplePrompt(str(item.get("name", f"sample{index}")), params))
    return prompts


def rng_state() -> dict[str, Any]:
    """Every RNG a sample could draw from, so training continues exactly as without samples."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
