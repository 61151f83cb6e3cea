"""generate.py's flags in a module without torch, so `generate.py --help` prints at once: v1's parser, the
1.5-only flags (their own group in v1's help) and the option values both pipelines check; `auto` device and
dtype are resolved when a run starts."""

from __future__ import annotations

import argparse
from typing import Any

from acestep.core.cli_help import make_parser

CFG_TYPES = ("apg", "cfg", "cfg_star")
OVERLAP_MIN_SECONDS = 48.0  # the reference decodes in overlapping windows (when asked to) only past this
DTYPE_NAMES = ("bfloat16", "float16", "float32")
DEFAULT_SAMPLE_RATE = 48000  # the reference pipeline's output rate
AUTO = "auto"


def resolve_device(device: str) -> str:
    """--device auto: cuda when torch sees a GPU, else cpu; any other value as given."""
    if device != AUTO:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str) -> str:
    """--dtype auto: bfloat16 when torch sees a GPU, else float32; any other value as given."""
    if dtype != AUTO:
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def torch_dtype(name: str) -> object:
    """The torch dtype of a DTYPE_NAMES entry (`auto` resolved first)."""
    import torch

    return {dtype: getattr(torch, dtype) for dtype in DTYPE_NAMES}[resolve_dtype(name)]


def v1_parser() -> argparse.ArgumentParser:
    """ACE-Step v1 generation's flags (acestep.families.v1.pipeline.cli runs them)."""
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
    p.add_argument("--device", default=AUTO,
                   help="torch device to run on (auto: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--dtype", choices=(AUTO, *DTYPE_NAMES), default=AUTO,
                   help="weight and activation precision (auto: bfloat16 when torch sees a GPU, else float32)")
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


V15_GROUP = "ACE-Step 1.5 only"
V15_ONLY_FLAGS = ("--dit", "--shift", "--language", "--bpm", "--keyscale", "--timesignature", "--overwrite")


def add_v15_only_arguments(group: Any) -> None:
    """The flags v1 generation lacks; plain `generate.py --help` (v1's parser) lists them in their own group."""
    group.add_argument("--dit", help="original layout: the DiT folder (default acestep-v15-turbo)")
    group.add_argument("--shift", type=float, default=3.0, help="timestep shift of the sampling schedule (1, 2 or 3)")
    group.add_argument("--language", default="en", help="vocal language code")
    group.add_argument("--bpm", type=int, help="tempo for the prompt's metadata section (default: none, N/A there)")
    group.add_argument("--keyscale", help="key, e.g. 'A minor' (default: none, N/A in the prompt)")
    group.add_argument("--timesignature", help="beats per bar, e.g. 4 (default: none, N/A in the prompt)")
    group.add_argument("--overwrite", action="store_true", help="replace outputs of the same name")
