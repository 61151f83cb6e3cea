"""`python trainer_new.py --dataset_path PREP ...`: train a LoRA, then say where it is and how to load it."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence

from acestep.core.errors import one_line_errors
from acestep.core.quiet import quiet_third_party_noise

from .config import TrainConfig, parse_config
from .family import TrainingParts
from .run import preflight, run_training, summary_text


def resume_command(args: list[str]) -> str:
    """The command line that continues this run, quoted for the shell it is typed into."""
    words = ["python", "trainer_new.py", *args, *([] if "--resume" in args else ["--resume"])]
    return subprocess.list2cmdline(words) if sys.platform == "win32" else shlex.join(words)


def main(
    argv: Sequence[str] | None, build_parts: Callable[[TrainConfig], TrainingParts],
    parse: Callable[[list[str]], TrainConfig] = parse_config,
) -> None:
    """`build_parts`: the CLI layer's family dispatch, `parse` its option parser (with --preset); trainer_new.py
    runs this through acestep.families.training.main."""
    quiet_third_party_noise()
    args = list(sys.argv[1:] if argv is None else argv)
    with one_line_errors():
        config = parse(args).for_overfit_one()
        preflight(config)
        parts = build_parts(config)
        result = run_training(config, parts)
    if result.global_rank != 0:  # the other DDP processes end quietly: one summary per run
        sys.exit(1 if result.stopped else 0)
    print()
    print(summary_text(result))
    if result.interrupted:
        print(f"Resume with: {resume_command(args)}")
    if result.stopped:
        sys.exit(1)

