"""ACE-Step 1.5 (2B turbo/base/sft, XL 4B) as a model family, on diffusers' own classes (AceStepPipeline,
AceStepTransformer1DModel, AceStepConditionEncoder, AutoencoderOobleck) and a Qwen3 text encoder.

- checkpoint.py  both layouts (diffusers folder/repo, original `Ace-Step1.5` folder converted in memory)
- encode.py      stage 3: what the DiT is fed (VAE latents, condition-encoder states, context latents)
- tiny.py        a tiny random checkpoint in both layouts (tests, demo)
- objective.py, training.py, export.py, generate.py, plan.py: training, LoRA files, rendering, planner (h15b)
"""

from __future__ import annotations

import argparse
from typing import Any

from .checkpoint import NAME, V15Checkpoint, recognizes, resolve

__all__ = ["NAME", "V15Checkpoint", "plan_request", "recognizes", "resolve", "song_stages"]


def song_stages(checkpoint: V15Checkpoint, args: argparse.Namespace) -> Any:
    """Stage 3's encoder for 1.5 (acestep.data.preprocess.SongStages)."""
    from .encode import song_stages_from_args

    return song_stages_from_args(checkpoint, args)


def plan_request(checkpoint: V15Checkpoint) -> Any:
    """The planner's request for this checkpoint's DiT (its config; the weights are not read)."""
    from .plan import request_for_checkpoint

    return request_for_checkpoint(checkpoint)
