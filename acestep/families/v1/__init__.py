"""ACE-Step v1 (3.5B) as a model family: today's parts, composed, not copied.

- checkpoint: `acestep.families.v1.checkpoint.resolve_checkpoint` (the published `ACE-Step/ACE-Step-v1-3.5B` layout)
- stage 3: `acestep.data.preprocess.v1_song_stages` (`load_encoders` + `SongPipeline`)
- objective: `acestep.training.flow_matching.FlowMatchingObjective`
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from acestep.data.preprocess import SongStages, v1_song_stages
from acestep.families.v1.checkpoint import PARTS, CheckpointPaths, resolve_checkpoint
from acestep.lora.keys import V1_FAMILY
from acestep.training.flow_matching import FlowMatchingObjective

NAME = V1_FAMILY
OBJECTIVE = FlowMatchingObjective


@dataclass(frozen=True)
class V1Checkpoint:
    paths: CheckpointPaths
    family: str = NAME
    layout: str = "ACE-Step/ACE-Step-v1-3.5B"

    @property
    def root(self) -> Path:
        return self.paths.root

    def describe(self) -> str:
        return f"checkpoint: {NAME} ({self.layout} layout) in {self.root}"


def recognizes(files: set[str]) -> bool:
    transformer_folder = PARTS["transformer"][0]
    return f"{transformer_folder}/config.json" in files or transformer_folder in files


def resolve(checkpoint_dir: str | Path | None, dit: str | None = None) -> V1Checkpoint:
    return V1Checkpoint(resolve_checkpoint(checkpoint_dir))


def song_stages(checkpoint: V1Checkpoint, args: argparse.Namespace) -> SongStages:
    """The v1 encoders (DC-AE, UMT5, lyric tokenizer, optional MERT/mHuBERT) for stage 3's options."""
    return v1_song_stages(argparse.Namespace(**{**vars(args), "checkpoint_dir": str(checkpoint.root)}))
