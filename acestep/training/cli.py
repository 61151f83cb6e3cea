"""`python trainer_new.py --dataset_path PREP ...`: train a LoRA, then say where it is and how to load it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from acestep.errors import AcestepError

from .config import TrainConfig, parse_config
from .family import TrainingParts
from .run import run_training, summary_text


def main(
    argv: Sequence[str] | None = None, build_parts: Callable[[TrainConfig], TrainingParts | None] | None = None
) -> None:
    """`build_parts`: the CLI layer's family dispatch (trainer_new.py passes acestep.families'); None means v1."""
    try:
        config = parse_config(list(sys.argv[1:] if argv is None else argv))
        parts = build_parts(config) if build_parts is not None else None
        result = run_training(config, parts=parts)
    except AcestepError as error:
        sys.exit(f"error: {error}")
    print()
    print(summary_text(result))
    if result.stopped:
        sys.exit(1)


if __name__ == "__main__":
    main()
