"""`python trainer_new.py --dataset_path PREP ...`: train a LoRA, then say where it is and how to load it."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence

from acestep.errors import one_line_errors
from acestep.quiet import quiet_third_party_noise

from .config import parse_config
from .run import run_training, summary_text


def resume_command(args: list[str]) -> str:
    """The command line that continues this run, quoted for the shell it is typed into."""
    words = ["python", "trainer_new.py", *args, *([] if "--resume" in args else ["--resume"])]
    return subprocess.list2cmdline(words) if sys.platform == "win32" else shlex.join(words)


def main(argv: Sequence[str] | None = None) -> None:
    quiet_third_party_noise()
    args = list(sys.argv[1:] if argv is None else argv)
    with one_line_errors():
        config = parse_config(args)
        result = run_training(config)
    print()
    print(summary_text(result))
    if result.interrupted:
        print(f"Resume with: {resume_command(args)}")
    if result.stopped:
        sys.exit(1)


if __name__ == "__main__":
    main()
