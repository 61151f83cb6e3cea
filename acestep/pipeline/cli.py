"""`python generate.py`: text-to-music with optional LoRAs; a WAV and its parameters (JSON) per seed."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import soundfile as sf
import torch

from ..data.atomic import atomic_write_json
from ..errors import AcestepError
from ..lora import LoraSettings
from .lora_loading import load_loras
from .pipeline import ACEStepPipeline, GenerationParams

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_lora(spec: str) -> tuple[str, float]:
    """PATH or PATH:STRENGTH (a Windows drive colon is not a strength)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and not tail.startswith(("\\", "/")):
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def write_wav(wav: torch.Tensor, sample_rate: int, path: Path) -> None:
    """16-bit PCM through a temp file, so an interrupted run never leaves a broken WAV."""
    temp = path.with_name(f".{path.name}.tmp")
    sf.write(str(temp), wav.T.numpy(), sample_rate, subtype="PCM_16", format="WAV")
    temp.replace(path)


def save_outputs(wavs: list[torch.Tensor], params: GenerationParams, seeds: list[int], out_dir: Path,
                 sample_rate: int, extra: dict | None = None, stem: str = "ace") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for wav, seed in zip(wavs, seeds):
        path = out_dir / f"{stem}_seed{seed}.wav"
        write_wav(wav, sample_rate, path)
        atomic_write_json(path.with_suffix(".json"), {**replace(params, seed=seed).to_dict(),
                                                      "sample_rate": sample_rate, **(extra or {})})
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Generate music with ACE-Step v1 and optional LoRAs.")
    p.add_argument("--prompt", required=True, help="comma-separated tags, e.g. 'pop, piano, female vocals'")
    p.add_argument("--lyrics", default="", help="lyrics text or a path to a .txt file ('' = instrumental)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one output per seed, in one batch")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--guidance_scale", type=float, default=15.0)
    p.add_argument("--cfg_type", choices=("apg", "cfg"), default="apg")
    p.add_argument("--guidance_interval", type=float, default=0.5)
    p.add_argument("--omega", type=float, default=10.0)
    p.add_argument("--no_erg", action="store_true", help="zero conditions instead of ERG for the unconditional pass")
    p.add_argument("--lora", action="append", default=[], help="PATH[:STRENGTH]; repeat for several LoRAs")
    p.add_argument("--lora_config_path", help="LoRA config for raw files that do not carry rank/alpha")
    p.add_argument("--checkpoint_dir", help="checkpoint folder or repo id (default: the official one)")
    p.add_argument("--lyrics_vocab", help="lyric vocab.json (else found automatically)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16" if torch.cuda.is_available() else "float32")
    p.add_argument("--cpu_offload", action="store_true", help="keep idle components on the CPU (small GPUs)")
    p.add_argument("--sample_rate", type=int, choices=(44100, 48000), default=44100)
    p.add_argument("--out_dir", default="outputs")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    lyrics = args.lyrics
    if lyrics and len(lyrics) < 260 and Path(lyrics).suffix == ".txt":
        lyrics = Path(lyrics).read_text(encoding="utf-8-sig")
    erg = not args.no_erg
    params = GenerationParams(
        prompt=args.prompt, lyrics=lyrics, duration=args.duration, seed=args.seed[0], steps=args.steps,
        guidance_scale=args.guidance_scale, cfg_type=args.cfg_type, guidance_interval=args.guidance_interval,
        omega=args.omega, use_erg_tag=erg, use_erg_lyric=erg, use_erg_diffusion=erg,
    )
    try:
        pipeline = ACEStepPipeline.from_checkpoint(args.checkpoint_dir, args.device, DTYPES[args.dtype],
                                                   args.cpu_offload, args.lyrics_vocab)
        loras = [parse_lora(spec) for spec in args.lora]
        settings = LoraSettings.from_json(args.lora_config_path) if args.lora_config_path else None
        load_loras(pipeline.transformer, loras, settings)
        wavs = pipeline.generate(params, args.seed, args.sample_rate)
        paths = save_outputs(wavs, params, args.seed, Path(args.out_dir), args.sample_rate,
                             {"loras": [{"path": p, "strength": s} for p, s in loras]})
    except (AcestepError, ValueError) as error:
        sys.exit(f"error: {error}")
    for path in paths:
        print(f"wrote {path} (+ {path.with_suffix('.json').name})")
