"""Stage 3's CLI layer: the shared stage machinery (acestep.data.preprocess) driven by the family that
--checkpoint_dir holds (`song_stages_for_args`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from acestep.data.preprocess import main as stage_main
from acestep.families import song_stages_for_args


def main(argv: Sequence[str] | None = None,
         song_stages: Callable[[argparse.Namespace], Any] = song_stages_for_args) -> None:
    """`python preprocess_dataset_new.py ...`: stage 3 for the family of --checkpoint_dir."""
    stage_main(argv, song_stages=song_stages)

