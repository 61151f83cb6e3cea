"""`python trainer_new.py --dataset_path PREP ...`: train a LoRA, then say where it is and how to load it."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from acestep.core.atomic import atomic_write_text
from acestep.core.broken_pipe import guard_std_streams
from acestep.core.errors import AcestepError, one_line_errors
from acestep.core.quiet import quiet_third_party_noise

from .config import TrainConfig, parse_config
from .lock import run_folder_lock

if TYPE_CHECKING:
    from .family import TrainingParts

SUMMARY_FILE = "summary.txt"  # the end-of-run text and the resume command, for when the console is gone


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
    guard_std_streams()  # a closed console (tee ended by Ctrl-C, closed terminal) must not stop the save
    quiet_third_party_noise()
    args = list(sys.argv[1:] if argv is None else argv)
    with one_line_errors():
        config = parse(args).for_overfit_one()
        with run_folder_lock(config.run_dir):  # before any model loads: a second trainer refuses at once
            from .run import preflight, run_training, summary_text  # torch, Lightning: after the flags

            preflight(config)
            parts = build_parts(config)
            result = run_training(config, parts)
    if result.global_rank != 0:  # the other DDP processes end quietly: one summary per run
        sys.exit(1 if result.stopped else 0)
    text = summary_text(result) + (f"\nResume with: {resume_command(args)}" if result.interrupted else "")
    try:
        atomic_write_text(result.run_dir / SUMMARY_FILE, text + "\n")
    except (OSError, AcestepError):  # e.g. the disk is full: the console still has it
        pass
    print()
    print(text, flush=True)
    if result.stopped:
        sys.exit(1)

