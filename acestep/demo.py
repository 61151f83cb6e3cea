"""`python demo.py`: the whole chain in one command, on CPU, in a few minutes.

Without options it writes a tiny random checkpoint and a handful of synthetic songs (tones and noise with
prompt/lyrics side files), then runs stage 2 (filename dataset), stage 3 (preprocessing), stage 4 (LoRA
training, a few dozen steps), and points at the baked ComfyUI file and a loss-curve PNG. With
--checkpoint_dir (the real model) and --data_dir (your songs) the same chain does real work.
Everything goes under --output_dir (./demo_output); nothing there is ever deleted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from acestep.core.cli_help import make_parser
from acestep.core.errors import one_line_errors
from acestep.core.quiet import quiet_third_party_noise
from acestep.demo_songs import (
    DEFAULT_LORA_CONFIG,
    DEFAULT_MAX_SECONDS,
    SYNTHETIC_MAX_SECONDS,
    TINY_LEARNING_RATE,
    crop_note,
    plot_loss_curve,
    song_seconds,
    write_synthetic_songs,
)
from acestep.families import FAMILY_NAMES, V15


@dataclass
class DemoOutputs:
    checkpoint: Path
    songs: Path
    filenames: Path
    prep: Path
    run_dir: Path
    adapter_dir: Path | None
    baked_file: Path | None
    loss_curve: Path | None
    steps: int
    stopped: str | None
    tiny: bool


def ensure_checkpoint(requested: str | None, output_dir: Path) -> Path | str:
    """The given checkpoint, or a tiny random one written once under output_dir."""
    if requested:
        return requested
    from acestep.families.v1.checkpoint import missing_parts
    from acestep.families.v1.tiny import write_tiny_checkpoint

    folder = output_dir / "tiny_checkpoint"
    if missing_parts(folder):
        print(f"[1/5] writing a tiny random checkpoint to {folder}")
        write_tiny_checkpoint(folder, overwrite=True)  # the demo's own folder, left incomplete by an earlier run
    else:
        print(f"[1/5] using the tiny checkpoint in {folder}")
    return folder


def run_demo(args: argparse.Namespace) -> DemoOutputs:
    from acestep.data.filenames import build_filename_dataset
    from acestep.data.preprocess import PreprocessSettings, RunOptions
    from acestep.families.training import run_training
    from acestep.families.v1.encoders import load_encoders, run_preprocess
    from acestep.training import TrainConfig

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = ensure_checkpoint(args.checkpoint_dir, out)
    keep, crop = song_seconds(args)
    if args.data_dir:
        songs = Path(args.data_dir)
        print(f"[2/5] using your songs in {songs}")
        print(f"      {crop_note(keep, crop)}")
    else:
        songs = write_synthetic_songs(out / "songs", args.songs, args.seconds)
        print(f"[2/5] {args.songs} synthetic songs of {args.seconds:g} s with prompt/lyrics files in {songs}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    filenames = out / f"filenames-{stamp}"
    summary = build_filename_dataset(songs, filenames)
    print(f"      stage 2: {summary.kept} songs listed in {filenames}")
    for path, reason in summary.skipped:
        print(f"      skipped {path}: {reason}")
    if summary.kept > summary.with_prompt:
        print(f"      warning: {summary.kept - summary.with_prompt} song(s) have no <stem>_prompt.txt: "
              "the model learns from tags, so write one per song")
    prep = out / f"prep-{stamp}"
    print(f"[3/5] stage 3: encoding the songs into {prep}")
    encoders = load_encoders(str(checkpoint), device=args.device, dtype="auto", ssl=args.ssl)
    result = run_preprocess(
        filenames, prep, encoders, PreprocessSettings(ssl=args.ssl, max_duration=keep),
        RunOptions(num_workers=0),
    )
    del encoders
    print(f"      {result.encoded} songs encoded ({len(result.new_errors)} skipped)")
    for error in result.new_errors:
        print(f"      skipped {error.filename}: {error.reason}")
    from acestep.families.v1.checkpoint import resolve_checkpoint
    from acestep.families.v1.training import is_published_size

    tiny = not is_published_size(resolve_checkpoint(str(checkpoint)).transformer)
    learning_rate = args.learning_rate or (TINY_LEARNING_RATE if tiny else None)
    print(f"[4/5] stage 4: training a LoRA for {args.steps} steps")
    config = TrainConfig(
        dataset_path=str(prep), checkpoint_dir=str(checkpoint), lora_config_path=str(args.lora_config_path),
        output_dir=str(out / "runs"), exp_name=f"demo-{stamp}", max_steps=args.steps,
        every_n_train_steps=max(1, args.steps // 3), learning_rate=learning_rate, batch_size=args.batch_size,
        max_duration=crop, logger="csv", accelerator="cpu" if args.device == "cpu" else "auto",
        devices="1" if args.device == "cpu" else "auto",
    )
    trained = run_training(config)
    print("[5/5] loss curve")
    curve = plot_loss_curve(trained.metrics_file, trained.run_dir / "loss_curve.png")
    return DemoOutputs(checkpoint=Path(checkpoint), songs=songs, filenames=filenames, prep=prep,
                       run_dir=trained.run_dir, adapter_dir=trained.adapter_dir, baked_file=trained.baked_file,
                       loss_curve=curve, steps=trained.steps, stopped=trained.stopped, tiny=tiny)


def describe(outputs: DemoOutputs, seconds: float) -> str:
    lines = [
        f"Demo {'stopped early' if outputs.stopped else 'done'} in {seconds / 60:.1f} min ({outputs.steps} training steps).",
        f"  checkpoint:        {outputs.checkpoint}",
        f"  songs:             {outputs.songs}",
        f"  filename dataset:  {outputs.filenames}",
        f"  preprocessed data: {outputs.prep}",
        f"  training run:      {outputs.run_dir}",
        f"  adapter (resume, our tools): {outputs.adapter_dir}",
        f"  baked for ComfyUI (strength 1.0): {outputs.baked_file}",
        f"  loss curve:        {outputs.loss_curve}",
    ]
    if outputs.stopped:
        lines.append(f"  reason: {outputs.stopped}")
    if outputs.tiny:
        lines.append("The tiny checkpoint is random: the adapter shows the chain works, it does not make music.")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser("Run the whole chain: songs -> dataset -> preprocess -> LoRA.", "demo.py")
    parser.add_argument("--output_dir", default="demo_output", help="where everything goes (never cleared)")
    parser.add_argument("--checkpoint_dir", default=None, help="real ACE-Step checkpoint (default: a tiny random one)")
    parser.add_argument("--data_dir", default=None, help="your songs with side files (default: synthetic songs)")
    parser.add_argument("--songs", type=int, default=4, help="synthetic songs to generate")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each synthetic song")
    parser.add_argument("--steps", type=int, default=60, help="training steps")
    parser.add_argument("--batch_size", type=int, default=2, help="songs per training micro-batch")
    parser.add_argument("--learning_rate", type=float, default=None, help=f"default: {TINY_LEARNING_RATE:g} on the tiny checkpoint, else the trainer's (1e-4)")
    parser.add_argument("--max_duration", type=float, default=None,
                        help=f"seconds of each song used (default: {SYNTHETIC_MAX_SECONDS:g} for the synthetic songs; "
                        f"with --data_dir your songs whole, up to {DEFAULT_MAX_SECONDS:g} s, as the stage scripts do)")
    parser.add_argument("--lora_config_path", default=str(DEFAULT_LORA_CONFIG), help="LoRA config JSON (r, alpha, targets)")
    parser.add_argument("--ssl", action=argparse.BooleanOptionalAction, default=True, help="MERT/mHuBERT losses")
    parser.add_argument("--device", default="cpu", help="cpu (default) or auto / cuda for real runs")
    parser.add_argument(
        "--family",
        default="ace-step-v1",
        choices=FAMILY_NAMES,
        help="model family of the tiny checkpoint (with --checkpoint_dir it must match the folder)",
    )
    parser.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                        help="end with the evaluation of the run (python -m acestep.evaluate: listening scores per "
                             "saved step and the best step)")
    parser.add_argument("--xl", action="store_true",
                        help="ace-step-1.5: a tiny XL-shaped checkpoint (DiT wider than its condition encoder)")
    args = parser.parse_args(argv)
    if args.xl and (args.family != V15 or args.checkpoint_dir):
        parser.error("--xl picks the tiny checkpoint of --family ace-step-1.5; with --checkpoint_dir the folder tells")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_third_party_noise()
    started = time.perf_counter()
    if args.family == V15:
        from acestep.demo_v15 import describe_v15 as describe_outputs
        from acestep.demo_v15 import run_demo_v15 as run_chain
    else:
        describe_outputs, run_chain = describe, run_demo
    with one_line_errors():
        outputs = run_chain(args)
    print()
    print(describe_outputs(outputs, time.perf_counter() - started))
    if outputs.stopped:
        sys.exit(1)
    if args.eval and outputs.run_dir is not None:
        from acestep.evaluation.demo import evaluate_demo_run

        print("\nEvaluation of the run (python -m acestep.evaluate):")
        evaluate_demo_run(outputs.run_dir, Path(args.output_dir), args.checkpoint_dir is None,
                          min(args.seconds, 4.0) if args.checkpoint_dir is None else 20.0, args.device)


if __name__ == "__main__":
    main()
