"""`python generate.py`: text-to-music with optional LoRAs; a WAV and its parameters (JSON) per seed.

Outputs get fresh names (`ace_<time>_seed<N>.wav`, a counter when a name is taken), so a render never
replaces an earlier one.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from acestep.core.atomic import atomic_write_json
from acestep.core.errors import AcestepError
from acestep.data.generate_cli import DEFAULT_SAMPLE_RATE, resolve_device, torch_dtype  # noqa: F401 (re-exported)
from acestep.data.generate_cli import v1_parser as build_parser

if TYPE_CHECKING:
    import torch

    from .pipeline import GenerationParams


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


def main(argv: list[str] | None = None) -> None:
    from acestep.data.generate_args import check_duration, read_lyrics
    from acestep.lora import LoraSettings
    from acestep.lora.io import trigger_note
    from acestep.lora.loading import load_loras, parse_lora

    from .pipeline import ACEStepPipeline, GenerationParams

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
        pipeline = ACEStepPipeline.from_checkpoint(args.checkpoint_dir, resolve_device(args.device),
                                                   torch_dtype(args.dtype), args.cpu_offload, args.lyrics_vocab)
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
