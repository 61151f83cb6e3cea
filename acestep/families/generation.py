"""generate.py's family layer: each family renders with its own pipeline (ACE-Step 1.5 through AceStepPipeline,
v1 through ours); a LoRA of the other family is refused in one line before any model is loaded. `load_renderer`
gives other tools (the regularization songs, acestep.reg_songs) every family's pipeline behind one call.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from acestep.core.errors import AcestepError

if TYPE_CHECKING:
    from acestep.data.reg import Renderer


def main(argv: list[str] | None = None) -> None:
    """generate.py: the family of --checkpoint_dir (ACE-Step v1 without one) renders with its own pipeline."""
    argv = list(sys.argv[1:] if argv is None else argv)
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--checkpoint_dir")
    known, _ = early.parse_known_args(argv)
    try:
        from acestep.families import V1, detect, get

        family = detect(known.checkpoint_dir) if known.checkpoint_dir else get(V1)
    except AcestepError as error:
        sys.exit(f"error: {error}")
    return family.generate_main(argv)


def load_renderer(checkpoint_dir: str | None, dit: str | None, device: str, dtype: str,
                  steps: int | None) -> tuple[str, Renderer]:
    """(family name, a renderer) for the checkpoint, each family with its own sampling defaults (`steps` None: the
    family's). Instrumental songs get the marker stage 3 encodes."""
    from acestep.families import resolve

    family, checkpoint = resolve(checkpoint_dir, dit)
    print(checkpoint.describe())
    return family.NAME, family.renderer(checkpoint, device, dtype, steps)
