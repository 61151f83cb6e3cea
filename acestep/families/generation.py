"""generate.py's family layer: ACE-Step 1.5 checkpoints render through AceStepPipeline, v1 through our pipeline.

A LoRA of the other family is refused in one line before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys

from acestep.errors import AcestepError


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
    from acestep.pipeline.cli import main as v1_main

    return v1_main(argv)


def check_v1_loras(specs: list[str]) -> None:
    """A 1.5 LoRA given to v1 generation is refused in one line."""
    from acestep.errors import InputError
    from acestep.lora.adapters import adapter_family
    from acestep.lora.keys import V1_FAMILY
    from acestep.pipeline.cli import parse_lora

    for spec in specs:
        path, _ = parse_lora(spec)
        family = adapter_family(path)
        if family is not None and family != V1_FAMILY:
            raise InputError(path, f"an {family} LoRA; this checkpoint is {V1_FAMILY}")
