"""`python trainer_new.py --dataset_path PREP ...`: train a LoRA, then say where it is and how to load it."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from acestep.broken_pipe import guard_std_streams
from acestep.data.atomic import atomic_write_text
from acestep.errors import AcestepError, one_line_errors
from acestep.quiet import quiet_third_party_noise

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
    argv: Sequence[str] | None = None, build_parts: Callable[[TrainConfig], TrainingParts | None] | None = None,
    plan_model: Callable[[TrainConfig], Any] | None = None,
) -> None:
    """`build_parts`: the CLI layer's family dispatch (trainer_new.py passes acestep.families'); None means v1.
    `plan_model`: the family's planner request for the checkpoint's model, which --preset fits."""
    guard_std_streams()  # a closed console (tee ended by Ctrl-C, closed terminal) must not stop the save
    quiet_third_party_noise()
    args = list(sys.argv[1:] if argv is None else argv)
    with one_line_errors():
        config = parse_config(args, plan_model).for_overfit_one()
        with run_folder_lock(config.run_dir):  # before any model loads: a second trainer refuses at once
            from .run import (  # torch, Lightning: after the flags
                check_devices,
                check_run_dir,
                run_training,
                summary_text,
            )

            check_devices(config)
            check_run_dir(config)
            parts = build_parts(config) if build_parts is not None else None
            result = run_training(config, parts=parts)
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


if __name__ == "__main__":
    main()
