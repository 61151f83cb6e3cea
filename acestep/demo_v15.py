"""`python demo.py --family ace-step-1.5 [--xl]`: the 1.5 chain on CPU in a few minutes.

Writes a tiny random ACE-Step 1.5 checkpoint (both layouts; the demo uses the original one, converted in memory;
`--xl`: XL-shaped, its DiT wider than its condition encoder)
and a few synthetic songs with prompt, lyrics and bpm/key side files, then runs stage 2 (filename dataset),
stage 3 (1.5 preprocessing), stage 4 (LoRA training), stage 5 (the step folder's ComfyUI, diffusers and official-app
files) and
renders one clip with the trained LoRA through AceStepPipeline. Nothing under --output_dir is ever deleted.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from acestep.demo_songs import DEFAULT_LORA_CONFIG as DEFAULT_V1_LORA_CONFIG
from acestep.demo_songs import (
    SYNTHETIC_SONGS,
    TINY_LEARNING_RATE,
    crop_note,
    plot_loss_curve,
    song_seconds,
    write_synthetic_songs,
)
from acestep.lora.io import OFFICIAL_DIR

SYNTHETIC_BPM = 120  # synth_song plays two notes per second
V15_LORA_CONFIG = Path(__file__).resolve().parents[1] / "config" / "lora_config_v15.json"


@dataclass
class V15DemoOutputs:
    checkpoint: Path
    songs: Path
    filenames: Path
    prep: Path
    run_dir: Path | None = None
    step_dir: Path | None = None
    comfyui_file: Path | None = None
    diffusers_file: Path | None = None
    official_folder: Path | None = None
    loss_curve: Path | None = None
    sample: Path | None = None
    steps: int = 0
    stopped: str | None = None


def ensure_v15_checkpoint(requested: str | None, output_dir: Path, xl: bool = False) -> str:
    """The given checkpoint, or the original layout of a tiny random one (XL-shaped with `xl`) written once under
    output_dir."""
    if requested:
        return requested
    from acestep.families.v15.checkpoint import DEFAULT_DIT, DIT_FILES
    from acestep.families.v15.tiny import XL_DIT, write_tiny_v15_checkpoint

    folder = output_dir / ("tiny_checkpoint_v15_xl" if xl else "tiny_checkpoint_v15")
    name = "ACE-Step 1.5 XL" if xl else "ACE-Step 1.5"
    if all((folder / "original" / (XL_DIT if xl else DEFAULT_DIT) / file).is_file() for file in DIT_FILES):
        print(f"[1/6] using the tiny {name} checkpoint in {folder}")
    else:
        print(f"[1/6] writing a tiny random {name} checkpoint to {folder} (original and diffusers layouts)")
        write_tiny_v15_checkpoint(folder, overwrite=True, xl=xl)  # the demo's own folder, left incomplete earlier
    return str(folder / "original")


def write_synthetic_metadata(songs: Path, count: int) -> None:
    """`<stem>_bpm_key.json` beside each synthetic song (what stage 1 --bpm_key writes), kept if present."""
    keys = ("A minor", "C major", "E minor", "D major", "G major", "F major")
    for i in range(min(count, len(SYNTHETIC_SONGS) * 10)):
        side = songs / f"song{i:02d}_bpm_key.json"
        if not side.exists():
            info = {"bpm": float(SYNTHETIC_BPM), "key": keys[i % len(keys)], "timesignature": "4", "language": "en"}
            side.write_text(json.dumps(info), encoding="utf-8")


def run_stages_2_3(args: argparse.Namespace, out: Path, checkpoint: str, stamp: str) -> V15DemoOutputs:
    from acestep import families
    from acestep.data.filenames import build_filename_dataset
    from acestep.data.preprocess import RunOptions, run_song_stages

    keep, _ = song_seconds(args)
    if args.data_dir:
        songs = Path(args.data_dir)
        print(f"[2/6] using your songs in {songs}")
        print(f"      {crop_note(*song_seconds(args))}")
    else:
        songs = write_synthetic_songs(out / "songs-v15", args.songs, args.seconds)
        write_synthetic_metadata(songs, args.songs)
        print(f"[2/6] {args.songs} synthetic songs of {args.seconds:g} s with prompt/lyrics/bpm-key files in {songs}")
    filenames = out / f"filenames-v15-{stamp}"
    summary = build_filename_dataset(songs, filenames)
    print(f"      stage 2: {summary.kept} songs listed in {filenames} ({summary.with_bpm_key} with bpm/key)")
    family, resolved = families.resolve(checkpoint)
    families.check_same_family(family.NAME, families.V15, "--checkpoint_dir", "--family ace-step-1.5")
    print(f"      {resolved.describe()}")
    prep = out / f"prep-v15-{stamp}"
    print(f"[3/6] stage 3: encoding the songs into {prep}")
    stage_args = argparse.Namespace(
        device=args.device, dtype="auto", max_duration=keep, target_lufs=None, tag_order="shuffle",
        condition_store="outputs",
    )
    stages = family.song_stages(resolved, stage_args)
    result = run_song_stages(filenames, prep, stages, RunOptions(num_workers=0))
    print(f"      {result.encoded} songs encoded ({len(result.new_errors)} skipped)")
    return V15DemoOutputs(checkpoint=Path(checkpoint), songs=songs, filenames=filenames, prep=prep)


def run_demo_v15(args: argparse.Namespace) -> V15DemoOutputs:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = ensure_v15_checkpoint(args.checkpoint_dir, out, getattr(args, "xl", False))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outputs = run_stages_2_3(args, out, checkpoint, stamp)
    train(args, out, outputs, stamp)
    if outputs.comfyui_file is not None and not outputs.stopped:
        outputs.sample = render_sample(args, outputs, out / f"samples-v15-{stamp}")
    return outputs


def train(args: argparse.Namespace, out: Path, outputs: V15DemoOutputs, stamp: str) -> None:
    """Stages 4 and 5: the trainer's 1.5 parts (the CLI's family layer), then the step folder's files."""
    from acestep.families.training import run_training, training_parts_for
    from acestep.training import TrainConfig

    tiny = "tiny_checkpoint_v15" in str(outputs.checkpoint)
    lora_config = args.lora_config_path if args.lora_config_path != str(DEFAULT_V1_LORA_CONFIG) else V15_LORA_CONFIG
    print(f"[4/6] stage 4: training a LoRA for {args.steps} steps ({Path(lora_config).name})")
    config = TrainConfig(
        dataset_path=str(outputs.prep), checkpoint_dir=str(outputs.checkpoint), lora_config_path=str(lora_config),
        output_dir=str(out / "runs"), exp_name=f"demo15-{stamp}", max_steps=args.steps,
        every_n_train_steps=max(1, args.steps // 3), learning_rate=args.learning_rate or (
            TINY_LEARNING_RATE if tiny else None), batch_size=args.batch_size, max_duration=song_seconds(args)[1],
        logger="csv", accelerator="cpu" if args.device == "cpu" else "auto",
        devices="1" if args.device == "cpu" else "auto",
    )
    trained = run_training(config, parts=training_parts_for(config))
    outputs.run_dir, outputs.steps, outputs.stopped = trained.run_dir, trained.steps, trained.stopped
    step_dir = trained.adapter_dir  # the latest saved step folder
    if step_dir is not None:
        outputs.step_dir = step_dir
        outputs.comfyui_file = next(iter(sorted(step_dir.glob("*-comfyui.safetensors"))), None)
        diffusers_file = step_dir / "diffusers" / "pytorch_lora_weights.safetensors"
        outputs.diffusers_file = diffusers_file if diffusers_file.is_file() else None
        official = step_dir / OFFICIAL_DIR
        outputs.official_folder = official if (official / "adapter_config.json").is_file() else None
    print(f"[5/6] stage 5: LoRA files for ComfyUI, diffusers and the official app in {outputs.step_dir}; loss curve")
    outputs.loss_curve = plot_loss_curve(trained.metrics_file, trained.run_dir / "loss_curve.png")


def render_sample(args: argparse.Namespace, outputs: V15DemoOutputs, folder: Path) -> Path:
    """Stage 6: one clip through AceStepPipeline with the ComfyUI file at strength 1.0 (generate.py's 1.5 path)."""
    from acestep.families.generation import main as generate_main

    tags, lyrics, _ = SYNTHETIC_SONGS[0]
    print(f"[6/6] rendering one clip with the LoRA into {folder}")
    generate_main([
        "--checkpoint_dir", str(outputs.checkpoint), "--prompt", tags, "--lyrics", lyrics,
        "--duration", f"{min(args.seconds, 10.0):g}", "--bpm", str(SYNTHETIC_BPM), "--keyscale", "A minor",
        "--lora", f"{outputs.comfyui_file}:1.0", "--device", args.device, "--dtype", "float32",
        "--out_dir", str(folder),
    ])
    return next(iter(sorted(folder.glob("*.wav"))))


def describe_v15(outputs: V15DemoOutputs, seconds: float) -> str:
    lines = [
        f"ACE-Step 1.5 demo {'stopped early' if outputs.stopped else 'done'} in {seconds / 60:.1f} min "
        f"({outputs.steps} training steps).",
        f"  checkpoint:        {outputs.checkpoint}",
        f"  songs:             {outputs.songs}",
        f"  filename dataset:  {outputs.filenames}",
        f"  preprocessed data: {outputs.prep}",
    ]
    for label, value in (
        ("training run", outputs.run_dir),
        ("step folder", outputs.step_dir),
        ("ComfyUI file (strength 1.0)", outputs.comfyui_file),
        ("AceStepPipeline.load_lora_weights file", outputs.diffusers_file),
        ("official ACE-Step 1.5 app LoRA folder", outputs.official_folder),
        ("loss curve", outputs.loss_curve),
        ("sample with the LoRA", outputs.sample),
    ):
        if value is not None:
            lines.append(f"  {label}: {value}")
    if outputs.stopped:
        lines.append(f"  reason: {outputs.stopped}")
    if not outputs.checkpoint or "tiny_checkpoint_v15" in str(outputs.checkpoint):
        lines.append("The tiny checkpoint is random: the run shows the chain works, it does not make music.")
    return "\n".join(lines)
