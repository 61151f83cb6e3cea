"""`python generate.py`: text-to-music with optional LoRAs; a WAV and its parameters (JSON) per seed.

Outputs get fresh names (`ace_<time>_seed<N>.wav`, a counter when a name is taken), so a render never
replaces an earlier one.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from acestep.core.atomic import atomic_write_json
from acestep.core.cli_help import make_parser
from acestep.core.errors import AcestepError
from acestep.data.generate_args import check_duration, read_lyrics
from acestep.lora import LoraSettings
from acestep.lora.io import trigger_note
from acestep.lora.loading import load_loras, parse_lora

from .pipeline import CFG_TYPES, OVERLAP_MIN_SECONDS, ACEStepPipeline, GenerationParams

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SAMPLE_RATE = 48000  # the reference pipeline's output rate


def write_wav(wav: torch.Tensor, sample_rate: int, path: Path) -> None:
    """16-bit PCM through a temp file, so an interrupted run never leaves a broken WAV (a full disk: one line)."""
    from acestep.audio.write import write_wav as write_atomic

    write_atomic(wav, sample_rate, path)


def free_name(out_dir: Path, base: str) -> Path:
    """`base.wav`, or `base_2.wav`, `base_3.wav`, ... whichever has neither a WAV nor a JSON yet."""
    candidate, counter = out_dir / f"{base}.wav", 1
    while candidate.exists() or candidate.with_suffix(".json").exists():
        counter += 1
        candidate = out_dir / f"{base}_{counter}.wav"
    return candidate


def save_outputs(wavs: list[torch.Tensor], params: GenerationParams, seeds: list[int], out_dir: Path,
                 sample_rate: int, extra: dict | None = None, stem: str = "ace",
                 stamp: str | None = None) -> list[Path]:
    """One WAV + JSON per seed as `stem[_stamp]_seedN`; never replaces an existing file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for wav, seed in zip(wavs, seeds):
        path = free_name(out_dir, f"{stem}_{stamp}_seed{seed}" if stamp else f"{stem}_seed{seed}")
        write_wav(wav, sample_rate, path)
        atomic_write_json(path.with_suffix(".json"), {**replace(params, seed=seed).to_dict(),
                                                      "sample_rate": sample_rate, **(extra or {})})
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("Generate music with ACE-Step v1 and optional LoRAs.", "generate.py")
    p.add_argument("--prompt", required=True, help="comma-separated tags, e.g. 'pop, piano, female vocals'")
    p.add_argument("--lyrics", default="", help="lyrics text, or a UTF-8 text file to read them from "
                   "('' = instrumental)")
    p.add_argument("--duration", type=float, default=30.0, help="length of the song in seconds")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one output per seed, in one batch")
    p.add_argument("--steps", type=int, default=60, help="Euler sampling steps")
    p.add_argument("--guidance_scale", type=float, default=15.0, help="guidance strength (0 or 1 = no guidance)")
    p.add_argument("--cfg_type", choices=CFG_TYPES, default="apg",
                   help="guidance rule: adaptive projected (apg), plain classifier-free (cfg) or CFG-Zero* (cfg_star)")
    p.add_argument("--guidance_interval", type=float, default=0.5,
                   help="fraction of the steps, in the middle of the schedule, that get guidance")
    p.add_argument("--guidance_interval_decay", type=float, default=0.0,
                   help="0..1: how far the scale falls linearly towards --min_guidance_scale across the interval")
    p.add_argument("--min_guidance_scale", type=float, default=3.0, help="end scale of the decay")
    p.add_argument("--guidance_scale_text", type=float, default=0.0,
                   help="tag guidance for double-condition guidance; used (instead of --cfg_type and "
                   "--guidance_scale) when both it and --guidance_scale_lyric are above 1")
    p.add_argument("--guidance_scale_lyric", type=float, default=0.0,
                   help="lyric guidance for double-condition guidance (see --guidance_scale_text)")
    p.add_argument("--omega", type=float, default=10.0,
                   help="granularity: rescales each step's update around its mean by 0.9 + 0.2 sigmoid(omega / 10)")
    p.add_argument("--no_erg", action="store_true", help="turn off all three ERG switches below")
    p.add_argument("--no_erg_tag", action="store_true",
                   help="unconditional tags are zeros instead of the ERG-weakened text encoder's output")
    p.add_argument("--no_erg_lyric", action="store_true",
                   help="unconditional lyrics are id 0 (and tags zeros) instead of the ERG-weakened lyric encoder")
    p.add_argument("--no_erg_diffusion", action="store_true",
                   help="no ERG in the transformer's attention for the unconditional pass")
    p.add_argument("--lora", action="append", default=[], help="PATH[:STRENGTH]; repeat for several LoRAs")
    p.add_argument("--lora_config_path", default=None,
                   help="LoRA config for raw files that do not carry rank/alpha (default: the file's header)")
    p.add_argument("--checkpoint_dir", default=None,
                   help="checkpoint folder or repo id (default: the official v1 one; an ACE-Step 1.5 folder "
                        "switches to the 1.5 generator, whose own flags its --help lists)")
    p.add_argument("--lyrics_vocab", default=None, help="lyric vocab.json (default: found automatically)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device to run on")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16" if torch.cuda.is_available() else "float32",
                   help="weight and activation precision")
    p.add_argument("--cpu_offload", action="store_true", help="keep idle components on the CPU (small GPUs)")
    p.add_argument("--overlapped_decode", action="store_true",
                   help=f"decode songs over {OVERLAP_MIN_SECONDS:.0f} s in overlapping windows to save GPU memory "
                   "(the reference's option; small differences at the window seams)")
    p.add_argument("--sample_rate", type=int, choices=(44100, 48000), default=DEFAULT_SAMPLE_RATE,
                   help="output rate; 48000 as the reference pipeline writes, 44100 is the model's own rate "
                   "(no resampling)")
    p.add_argument("--out_dir", default="outputs",
                   help="folder for the WAVs and their JSON parameters; existing files are never replaced")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        lyrics = read_lyrics(args.lyrics)
        check_duration(args.duration)
        loras = [parse_lora(spec) for spec in args.lora]
        params = GenerationParams(
            prompt=args.prompt, lyrics=lyrics, duration=args.duration, seed=args.seed[0], steps=args.steps,
            guidance_scale=args.guidance_scale, cfg_type=args.cfg_type, guidance_interval=args.guidance_interval,
            guidance_interval_decay=args.guidance_interval_decay, min_guidance_scale=args.min_guidance_scale,
            omega=args.omega, use_erg_tag=not (args.no_erg or args.no_erg_tag),
            use_erg_lyric=not (args.no_erg or args.no_erg_lyric),
            use_erg_diffusion=not (args.no_erg or args.no_erg_diffusion),
            guidance_scale_text=args.guidance_scale_text, guidance_scale_lyric=args.guidance_scale_lyric,
        )
        pipeline = ACEStepPipeline.from_checkpoint(args.checkpoint_dir, args.device, DTYPES[args.dtype],
                                                   args.cpu_offload, args.lyrics_vocab)
        settings = LoraSettings.from_json(args.lora_config_path) if args.lora_config_path else None
        load_loras(pipeline.transformer, loras, settings)
        for path, _ in loras:
            if note := trigger_note(path, args.prompt):
                print(note)
        wavs = pipeline.generate(params, args.seed, args.sample_rate, overlapped_decode=args.overlapped_decode,
                                 show_progress=True)
        paths = save_outputs(wavs, params, args.seed, Path(args.out_dir), args.sample_rate,
                             {"loras": [{"path": p, "strength": s} for p, s in loras],
                              "overlapped_decode": args.overlapped_decode},
                             stamp=time.strftime("%Y%m%d-%H%M%S"))
    except (AcestepError, ValueError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        sys.exit(f"error: cannot write the output{where}: {error.strerror or error}; choose a writable --out_dir")
    for path in paths:
        print(f"wrote {path} (+ {path.with_suffix('.json').name})")
