"""Write a complete tiny random checkpoint of a model family, so tests and the demo run every real loading path
on CPU: `python -m acestep.tiny_checkpoint OUT [--family ace-step-1.5]`."""

from __future__ import annotations

from acestep.core.cli_help import make_parser
from acestep.core.errors import one_line_errors
from acestep.families import FAMILY_NAMES, V15
from acestep.families.v1.tiny import write_tiny_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = make_parser("Write a tiny random ACE-Step checkpoint (tests, demo).", "python -m acestep.tiny_checkpoint")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--family", default="ace-step-v1", choices=FAMILY_NAMES,
                        help="model family; ace-step-1.5 writes OUT/original (Ace-Step1.5 layout) and OUT/diffusers")
    parser.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in the folder")
    args = parser.parse_args(argv)
    with one_line_errors():
        if args.family == V15:
            from .families.v15.tiny import write_tiny_v15_checkpoint

            original, diffusers_layout = write_tiny_v15_checkpoint(args.out, args.seed, args.overwrite)
            print(f"tiny ACE-Step 1.5 checkpoint written to {original} (original layout) and {diffusers_layout} "
                  "(diffusers)")
            return
        root = write_tiny_checkpoint(args.out, args.seed, args.overwrite)
    print(f"tiny checkpoint written to {root}")


if __name__ == "__main__":
    main()
