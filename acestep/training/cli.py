"""`python trainer_new.py --dataset_path PREP ...`: train a LoRA, then say where it is and how to load it."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from acestep.errors import AcestepError
from acestep.quiet import quiet_third_party_noise

from .config import parse_config
from .run import run_training, summary_text


def main(argv: Sequence[str] | None = None) -> None:
    quiet_third_party_noise()
    try:
        config = parse_config(list(sys.argv[1:] if argv is None else argv))
        result = run_training(config)
    except AcestepError as error:
        sys.exit(f"error: {error}")
    print()
    print(summary_text(result))
    if result.stopped:
        sys.exit(1)


if __name__ == "__main__":
    main()
