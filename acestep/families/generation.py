"""generate.py's family layer: ACE-Step 1.5 checkpoints render through AceStepPipeline, v1 through our pipeline.

A LoRA of the other family is refused in one line before any model is loaded. `load_renderer` gives other tools
(the regularization songs, acestep.reg_songs) the same two pipelines behind one call.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from acestep.core.errors import AcestepError

if TYPE_CHECKING:
    import torch

    from acestep.data.reg import Renderer


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--checkpoint_dir")
    early.add_argument("--lora", action="append", default=[])
    known, _ = early.parse_known_args(argv)
    try:
        from acestep.families import V15, detect

        family = detect(known.checkpoint_dir).NAME if known.checkpoint_dir else None
        if family == V15:
            from acestep.families.v15.generate import main as v15_main

            return v15_main(argv)
        check_v1_loras(known.lora)
    except AcestepError as error:
        sys.exit(f"error: {error}")
    from acestep.families.v1.pipeline.cli import main as v1_main

    return v1_main(argv)


def check_v1_loras(specs: list[str]) -> None:
    """A 1.5 LoRA given to v1 generation is refused in one line."""
    from acestep.core.errors import InputError
    from acestep.families.v1.pipeline.cli import parse_lora
    from acestep.lora.adapters import adapter_family
    from acestep.lora.keys import V1_FAMILY

    for spec in specs:
        path, _ = parse_lora(spec)
        family = adapter_family(path)
        if family is not None and family != V1_FAMILY:
            raise InputError(path, f"an {family} LoRA; this checkpoint is {V1_FAMILY}")


def load_renderer(checkpoint_dir: str | None, dit: str | None, device: str, dtype: str,
                  steps: int | None) -> tuple[str, Renderer]:
    """(family name, a renderer) for the checkpoint: v1 through our pipeline, 1.5 through AceStepPipeline, each with
    its own sampling defaults (`steps` None: the family's). Instrumental songs get the marker stage 3 encodes."""
    from acestep.families import V15, resolve
    from acestep.families.v1.pipeline.cli import DTYPES

    family, checkpoint = resolve(checkpoint_dir, dit)
    print(checkpoint.describe())
    torch_dtype = DTYPES[dtype]
    if family.NAME == V15:
        from acestep.families.v15.checkpoint import load_pipeline
        from acestep.families.v15.encode import INSTRUMENTAL_LYRICS
        from acestep.families.v15.generate import V15Params, render

        pipe = load_pipeline(checkpoint, torch_dtype).to(device)

        def render_v15(prompt: str, lyrics: str, duration: float, seed: int) -> tuple[torch.Tensor, int]:
            params = V15Params(prompt=prompt, lyrics=lyrics or INSTRUMENTAL_LYRICS, duration=duration, seeds=[seed],
                               steps=steps)
            return render(pipe, params, checkpoint.is_turbo)[0], pipe.sample_rate

        return family.NAME, render_v15
    from acestep.families.v1.pipeline.cli import DEFAULT_SAMPLE_RATE
    from acestep.families.v1.pipeline.pipeline import ACEStepPipeline, GenerationParams

    pipeline = ACEStepPipeline.from_checkpoint(str(checkpoint.root), device, torch_dtype)

    def render_v1(prompt: str, lyrics: str, duration: float, seed: int) -> tuple[torch.Tensor, int]:
        params = GenerationParams(prompt=prompt, lyrics=lyrics or "[instrumental]", duration=duration, seed=seed,
                                  **({"steps": steps} if steps else {}))
        return pipeline.generate(params, [seed], DEFAULT_SAMPLE_RATE)[0], DEFAULT_SAMPLE_RATE

    return family.NAME, render_v1
