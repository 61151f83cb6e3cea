"""generate.py for ACE-Step v1: our pipeline (acestep.families.v1.pipeline), after refusing another family's LoRA
in one line; and the renderer other tools (regularization songs) call."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import torch

from acestep.core.errors import AcestepError, InputError
from acestep.families.v1.lora_keys import NAME as V1_FAMILY
from acestep.lora.adapters import adapter_family

if TYPE_CHECKING:
    from acestep.data.reg import Renderer
    from acestep.families.v1.checkpoint import V1Checkpoint


def main(argv: list[str]) -> None:
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--lora", action="append", default=[])
    known, _ = early.parse_known_args(argv)
    try:
        check_v1_loras(known.lora)
    except AcestepError as error:
        sys.exit(f"error: {error}")
    from acestep.families.v1.pipeline.cli import main as pipeline_main

    pipeline_main(argv)


def check_v1_loras(specs: list[str]) -> None:
    """A 1.5 LoRA given to v1 generation is refused in one line."""
    from acestep.lora.loading import parse_lora

    for spec in specs:
        path, _ = parse_lora(spec)
        family = adapter_family(path)
        if family is not None and family != V1_FAMILY:
            raise InputError(path, f"an {family} LoRA; this checkpoint is {V1_FAMILY}")


def renderer(checkpoint: V1Checkpoint, device: str, dtype: str, steps: int | None) -> Renderer:
    """(prompt, lyrics, duration, seed) -> (wav, sample rate) through our pipeline; `steps` None: v1's default."""
    return model_renderer(checkpoint, device, dtype, steps)[0]


def model_renderer(checkpoint: V1Checkpoint, device: str, dtype: str, steps: int | None) -> tuple[Renderer, Any]:
    """`renderer` and the pipeline's transformer (where a LoRA goes)."""
    from acestep.data.generate_cli import DEFAULT_SAMPLE_RATE, torch_dtype
    from acestep.families.v1.pipeline.pipeline import ACEStepPipeline, GenerationParams

    pipeline = ACEStepPipeline.from_checkpoint(str(checkpoint.root), device, torch_dtype(dtype))

    def render_v1(prompt: str, lyrics: str, duration: float, seed: int) -> tuple[torch.Tensor, int]:
        params = GenerationParams(prompt=prompt, lyrics=lyrics.strip() or "[instrumental]", duration=duration, seed=seed,
                                  **({"steps": steps} if steps else {}))
        return pipeline.generate(params, [seed], DEFAULT_SAMPLE_RATE)[0], DEFAULT_SAMPLE_RATE

    return render_v1, pipeline.transformer
