"""`python -m acestep.reg_songs`: render regularization songs (prior preservation) with the base model of either
family, from a prompt list, into the folder layout stages 2 and 3 read (acestep.data.reg does the work)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from acestep.core.cli_help import make_parser
from acestep.core.errors import AcestepError, one_line_errors
from acestep.data.reg import Renderer, RenderSummary, is_rendered, read_prompt_list, render_songs


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("Render regularization songs (prior preservation) with the base model from a prompt list: "
                    "WAVs with _prompt.txt/_lyrics.txt sidecars, for stages 2 and 3 and then trainer_new.py "
                    "--reg_dataset. Resumable: songs already rendered are skipped.", "python -m acestep.reg_songs")
    p.add_argument("--prompts", required=True,
                   help="prompt list: a text file with one prompt (comma-separated tags) per line, or a JSON list "
                        "of prompts or of {prompt, lyrics, duration, seed} objects")
    p.add_argument("--out_dir", required=True, help="folder for the songs (created; songs already there are kept)")
    p.add_argument("--checkpoint_dir", default=None,
                   help="ACE-Step checkpoint folder or Hub repo, v1 or 1.5 (default: the official v1 one); use the "
                        "one you train on")
    p.add_argument("--dit", default=None, help="ACE-Step 1.5 original layout: the DiT folder (default: turbo)")
    p.add_argument("--takes", type=int, default=1, help="songs per prompt, each with its own seed")
    p.add_argument("--seed", type=int, default=0, help="seed of the first song; song n gets seed + n")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per song (an entry may set its own)")
    p.add_argument("--lyrics", default="",
                   help="lyrics for every song ('' = instrumental: the _lyrics.txt says [instrumental])")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: the model's own: 60 for v1, 8 for 1.5 turbo, 50 for base/sft)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="model precision (default: bfloat16 on a GPU, float32 on the CPU)")
    return p


def main(argv: Sequence[str] | None = None, load_renderer: Callable[..., tuple[str, Renderer]] | None = None) -> None:
    """`load_renderer(checkpoint_dir, dit, device, dtype, steps)` -> (family, renderer); default: the families'."""
    from acestep.core.quiet import quiet_third_party_noise

    quiet_third_party_noise()
    args = build_parser().parse_args(argv)
    with one_line_errors():
        if args.takes < 1 or args.duration <= 0 or (args.steps is not None and args.steps < 1):
            raise AcestepError("--takes and --steps must be at least 1, --duration positive")
        songs = read_prompt_list(args.prompts, args.takes, args.seed, args.duration, args.lyrics)
        out_dir = Path(args.out_dir)
        if all([is_rendered(song, out_dir, args.steps) for song in songs]):  # every song checked before a model loads
            summary = RenderSummary(0, len(songs), out_dir)
        else:
            if load_renderer is None:
                from acestep.families.generation import load_renderer
            import torch

            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
            family, render = load_renderer(args.checkpoint_dir, args.dit, device, dtype, args.steps)
            summary = render_songs(songs, out_dir, render, family, args.steps)
    out = summary.out_dir
    print(f"{summary.rendered} songs rendered, {summary.skipped} already there, in {out}")
    print("Next, the regularization dataset (stages 2 and 3, without --trigger):")
    print(f"  python convert2hf_dataset_new.py --data_dir {out} --output_name {out}_filenames")
    print(f"  python preprocess_dataset_new.py --input_name {out}_filenames --output_dir {out}_prep "
          f"--checkpoint_dir {args.checkpoint_dir or 'CKPT'}")
    print(f"  python trainer_new.py ... --reg_dataset {out}_prep --reg_weight 0.25")


if __name__ == "__main__":
    main()
