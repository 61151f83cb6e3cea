"""Rendering with ACE-Step 1.5 through diffusers' AceStepPipeline, with any number of LoRAs at any strength.

Defaults fit the checkpoint's variant (as the official inference does): turbo runs its 8 distilled steps without
guidance; base and sft run 50 steps with guidance (APG, learned null condition) at 7.0. Every LoRA our tools read
(the ComfyUI file, the diffusers file, the raw adapter with its header, other trainers' files with a config) has
its trained scale put into its factors first, so strength 1.0 is always the trained change.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acestep.core.atomic import atomic_write_json
from acestep.core.cli_help import make_parser
from acestep.core.errors import AcestepError, InputError
from acestep.core.progress import progress
from acestep.data.generate_cli import (  # noqa: F401 (V15_ONLY_FLAGS re-exported)
    AUTO,
    DTYPE_NAMES,
    V15_GROUP,
    V15_ONLY_FLAGS,
    add_v15_only_arguments,
    resolve_device,
    torch_dtype,
)

from .lora_keys import NAME as V15_FAMILY

if TYPE_CHECKING:  # the annotations only: --help loads no torch
    import torch

    from acestep.lora import LoraSettings

    from .checkpoint import V15Checkpoint

TURBO_DEFAULTS = {"steps": 8, "guidance_scale": 1.0}
GUIDED_DEFAULTS = {"steps": 50, "guidance_scale": 7.0}
OUTPUT_STEM = "ace15"


@dataclass
class V15Params:
    prompt: str
    lyrics: str = ""
    duration: float = 30.0
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int | None = None  # None: the variant's default
    guidance_scale: float | None = None
    shift: float = 3.0
    language: str = "en"
    bpm: int | None = None
    keyscale: str | None = None
    timesignature: str | None = None

    def for_variant(self, is_turbo: bool) -> V15Params:
        """Fill the defaults of the checkpoint's variant."""
        defaults = TURBO_DEFAULTS if is_turbo else GUIDED_DEFAULTS
        steps = self.steps if self.steps is not None else defaults["steps"]
        guidance = self.guidance_scale if self.guidance_scale is not None else defaults["guidance_scale"]
        return V15Params(**{**asdict(self), "steps": steps, "guidance_scale": guidance})


def check_lora_family(path: str | Path) -> None:
    """A v1 LoRA given to 1.5 generation is refused in one line (header family, else module names)."""
    from acestep.lora.adapters import adapter_family

    family = adapter_family(path)
    if family is not None and family != V15_FAMILY:
        raise InputError(Path(path), f"an {family} LoRA; this checkpoint is {V15_FAMILY}")


def load_v15_loras(pipe: Any, loras: list[tuple[str, float]], settings: LoraSettings | None = None) -> list[str]:
    """Every (path, strength) as its own adapter on the DiT, active together."""
    from acestep.lora.loading import load_loras

    for path, _ in loras:
        check_lora_family(path)
    return load_loras(pipe.transformer, loras, settings)


def sung_lyrics(lyrics: str) -> str:
    """What the DiT is fed: no lyrics (empty, whitespace, [inst]) as the marker stage 3 encodes for such songs,
    line ends as "\n", so generation sees what training saw."""
    from acestep.data.sidecars import is_instrumental, normalize_newlines

    from .encode import INSTRUMENTAL_LYRICS

    return INSTRUMENTAL_LYRICS if is_instrumental(lyrics) else normalize_newlines(lyrics)


def render(pipe: Any, params: V15Params, is_turbo: bool) -> list[torch.Tensor]:
    """One stereo waveform [2, samples] per seed at the VAE's rate (48 kHz), with a progress bar over the steps."""
    import torch

    params = params.for_variant(is_turbo)
    lyrics = sung_lyrics(params.lyrics)
    pipe.set_progress_bar_config(disable=True)  # ours below: live on a terminal, lines in logs
    wavs = []
    for seed in params.seeds:
        bar = progress(total=params.steps, desc=f"sampling seed {seed}", unit="step")
        advance = _StepCounter(bar)
        try:
            audio = pipe(
                prompt=params.prompt, lyrics=lyrics, audio_duration=params.duration,
                vocal_language=params.language, num_inference_steps=params.steps,
                guidance_scale=params.guidance_scale, shift=params.shift, bpm=params.bpm, keyscale=params.keyscale,
                timesignature=params.timesignature, generator=torch.Generator().manual_seed(seed),
                callback_on_step_end=advance,
            ).audios
        finally:
            bar.close()
        wavs.append(audio[0].float().cpu())
    return wavs


class _StepCounter:
    """callback_on_step_end: one tick of the bar per sampling step."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def __call__(self, _pipe: Any, _step: int, _t: Any, kwargs: dict) -> dict:
        self.bar.update(1)
        return kwargs


def output_paths(out_dir: Path, stem: str, seeds: list[int], overwrite: bool) -> list[Path]:
    """STEM_seedS.wav per seed; a taken name (WAV or JSON) is refused unless `overwrite`. generate.py asks before
    loading anything, so a refusal never costs a render."""
    paths = [out_dir / f"{stem}_seed{seed}.wav" for seed in seeds]
    taken = [p for path in paths for p in (path, path.with_suffix(".json")) if p.exists()]
    if taken and not overwrite:
        raise AcestepError(f"{taken[0]} exists; pick another --out_dir or pass --overwrite")
    return paths


def write_outputs(wavs: list[torch.Tensor], params: V15Params, sample_rate: int, out_dir: Path, stem: str,
                  extra: dict[str, Any], overwrite: bool) -> list[Path]:
    """STEM_seedS.wav (16-bit PCM, through a temp file) and its parameters as JSON; existing files need overwrite."""
    from acestep.audio.write import write_wav

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out_dir, stem, params.seeds, overwrite)
    for wav, seed, path in zip(wavs, params.seeds, paths):
        write_wav(wav, sample_rate, path)  # atomic; a full disk is one line
        atomic_write_json(path.with_suffix(".json"), {**asdict(params), "seed": seed, "sample_rate": sample_rate,
                                                      **extra})
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("Generate music with ACE-Step 1.5 (AceStepPipeline) and optional LoRAs.", "generate.py")
    p.add_argument("--checkpoint_dir", required=True, help="ACE-Step 1.5 folder (diffusers or original layout)")
    p.add_argument("--prompt", required=True, help="the caption: style, instruments, mood")
    p.add_argument("--lyrics", default="", help="lyrics text, or a UTF-8 .txt/.lrc file to read them from "
                   "('' = instrumental)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one output per seed")
    p.add_argument("--steps", type=int, help="sampling steps (default: 8 for turbo, 50 for base/sft)")
    p.add_argument("--guidance_scale", type=float,
                   help="APG guidance (default: 1.0 = none for turbo, which is guidance-distilled; 7.0 for base/sft)")
    p.add_argument("--lora", action="append", default=[], help="PATH[:STRENGTH]; repeat for several LoRAs")
    p.add_argument("--lora_config_path", help="LoRA config for raw files that do not carry rank/alpha")
    p.add_argument("--device", default=AUTO, help="torch device (auto: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--dtype", choices=(AUTO, *sorted(DTYPE_NAMES)), default=AUTO,
                   help="dtype of the models (auto: bfloat16 with a GPU, else float32)")
    p.add_argument("--out_dir", default="outputs", help="folder for the WAV and JSON files")
    add_v15_only_arguments(p.add_argument_group(V15_GROUP))
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)  # before the imports below: --help loads no torch
    from acestep.data.generate_args import check_duration, read_lyrics
    from acestep.lora import LoraSettings
    from acestep.lora.io import trigger_note
    from acestep.lora.loading import parse_lora

    from .checkpoint import load_pipeline, resolve

    try:
        check_duration(args.duration)
        params = V15Params(prompt=args.prompt, lyrics=read_lyrics(args.lyrics), duration=args.duration,
                           seeds=args.seed, steps=args.steps, guidance_scale=args.guidance_scale, shift=args.shift,
                           language=args.language, bpm=args.bpm, keyscale=args.keyscale,
                           timesignature=args.timesignature)
        loras = [parse_lora(spec) for spec in args.lora]
        output_paths(Path(args.out_dir), OUTPUT_STEM, args.seed, args.overwrite)
        checkpoint = resolve(args.checkpoint_dir, args.dit)
        print(checkpoint.describe())
        for path, _ in loras:
            check_lora_family(path)
        pipe = load_pipeline(checkpoint, torch_dtype(args.dtype)).to(resolve_device(args.device))
        settings = LoraSettings.from_json(args.lora_config_path) if args.lora_config_path else None
        load_v15_loras(pipe, loras, settings)
        for path, _ in loras:
            if note := trigger_note(path, args.prompt):
                print(note)
        wavs = render(pipe, params, checkpoint.is_turbo)
        paths = write_outputs(wavs, params.for_variant(checkpoint.is_turbo), pipe.sample_rate, Path(args.out_dir),
                              OUTPUT_STEM, {"variant": checkpoint.variant,
                                            "loras": [{"path": p, "strength": s} for p, s in loras]}, args.overwrite)
    except (AcestepError, ValueError) as error:
        sys.exit(f"error: {error}")
    for path in paths:
        print(f"wrote {path} (+ {path.with_suffix('.json').name})")


def renderer(checkpoint: V15Checkpoint, device: str, dtype: str, steps: int | None) -> Any:
    """(prompt, lyrics, duration, seed) -> (wav, sample rate) through AceStepPipeline; `steps` None: the variant's."""
    return model_renderer(checkpoint, device, dtype, steps)[0]


def model_renderer(checkpoint: V15Checkpoint, device: str, dtype: str, steps: int | None) -> tuple[Any, Any]:
    """`renderer` and the pipeline's DiT (where a LoRA goes)."""
    from acestep.families.v15.encode import INSTRUMENTAL_LYRICS

    from .checkpoint import load_pipeline

    pipe = load_pipeline(checkpoint, torch_dtype(dtype)).to(resolve_device(device))

    def render_v15(prompt: str, lyrics: str, duration: float, seed: int) -> tuple[torch.Tensor, int]:
        params = V15Params(prompt=prompt, lyrics=lyrics or INSTRUMENTAL_LYRICS, duration=duration, seeds=[seed],
                           steps=steps)
        return render(pipe, params, checkpoint.is_turbo)[0], pipe.sample_rate

    return render_v15, pipe.transformer
