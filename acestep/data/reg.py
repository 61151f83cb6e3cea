"""`python -m acestep.data.reg`: render regularization songs (prior preservation) with the base model.

From a prompt list it renders one song per prompt (or `--takes` per prompt, each with its own seed) into a folder
of `regNNNN.wav` with `_prompt.txt` and `_lyrics.txt` beside each, the layout stages 2 and 3 read, plus the
render's parameters as `regNNNN.json`. Stage 3 on that folder (without --trigger) gives `trainer_new.py
--reg_dataset`. The run is resumable: a song whose WAV is there with the same parameters is skipped. Every file is
written under a temp name first and the WAV is renamed last, so a WAV is always complete and has its sidecars.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acestep.cli_help import make_parser
from acestep.data.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from acestep.data.sidecars import lyrics_path, prompt_path
from acestep.errors import AcestepError, one_line_errors
from acestep.progress import progress

INSTRUMENTAL = "[instrumental]"
# (prompt, lyrics, duration in s, seed) -> (stereo waveform tensor [2, samples], sample rate); lyrics "" means
# instrumental. acestep.families.generation.load_renderer gives one for a checkpoint.
Renderer = Callable[[str, str, float, int], tuple[Any, int]]


@dataclass(frozen=True)
class RegSong:
    """One song to render; `name` is its file stem. Lyrics "" = instrumental."""

    name: str
    prompt: str
    lyrics: str
    duration: float
    seed: int


def _entries(path: Path) -> list[dict]:
    """The prompt list as {prompt[, lyrics, duration, seed]} dicts: a JSON list of strings or objects, or a text
    file with one prompt per line (blank lines and lines starting with # skipped)."""
    if not path.is_file():
        raise AcestepError(f"--prompts {path}: file not found")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() != ".json":
        return [{"prompt": line.strip()} for line in text.splitlines() if line.strip() and not line.startswith("#")]
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise AcestepError(f"--prompts {path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(items, list):
        raise AcestepError(f"--prompts {path}: a JSON list of prompts (strings or objects) is expected")
    entries = []
    for number, item in enumerate(items, 1):
        entry = {"prompt": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
            raise AcestepError(f"--prompts {path}: entry {number} has no prompt (a string, or an object with "
                               "\"prompt\" and optional \"lyrics\", \"duration\", \"seed\")")
        unknown = set(entry) - {"prompt", "lyrics", "duration", "seed"}
        if unknown:
            raise AcestepError(f"--prompts {path}: entry {number} has unknown key(s) {', '.join(sorted(unknown))}")
        entries.append(entry)
    return entries


def read_prompt_list(path: str | Path, takes: int = 1, seed: int = 0, duration: float = 30.0,
                     lyrics: str = "") -> list[RegSong]:
    """The songs of a prompt list: `takes` per prompt, song n (counting from 0) seeded `seed + n` unless its entry
    gives a seed (then take t gets seed + t). Entries may set their own lyrics and duration."""
    entries = _entries(Path(path))
    if not entries:
        raise AcestepError(f"--prompts {path}: no prompts in the file")
    songs = []
    for entry in entries:
        for take in range(takes):
            number = len(songs)
            songs.append(RegSong(
                name=f"reg{number + 1:04d}", prompt=entry["prompt"].strip(),
                lyrics=str(entry.get("lyrics", lyrics)).strip(), duration=float(entry.get("duration", duration)),
                seed=int(entry["seed"]) + take if "seed" in entry else seed + number,
            ))
    return songs


def _write_wav(wav: Any, sample_rate: int, path: Path) -> None:
    import soundfile as sf

    atomic_write_with(path, lambda temp: sf.write(str(temp), wav.T.numpy(), sample_rate, subtype="PCM_16",
                                                  format="WAV"))


def _settings(song: RegSong, steps: int | None) -> dict:
    return {**asdict(song), "steps": steps}


def is_rendered(song: RegSong, out_dir: Path, steps: int | None) -> bool:
    """True when the song is already rendered with these settings; a WAV of another render is refused."""
    wav = out_dir / f"{song.name}.wav"
    settings = _settings(song, steps)
    if not wav.exists():
        return False
    params = wav.with_suffix(".json")
    try:
        saved = json.loads(params.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        raise AcestepError(f"{wav}: exists without its {params.name}; --out_dir must hold only songs this tool "
                           "rendered (pick an empty folder)")
    changed = [key for key, value in settings.items() if saved.get(key) != value]
    if changed:
        raise AcestepError(f"{wav}: rendered with another {', '.join(changed)}; keep the prompt list and options "
                           "of the first run, or pick a new --out_dir")
    return True


@dataclass
class RenderSummary:
    rendered: int
    skipped: int
    out_dir: Path


def render_songs(songs: Sequence[RegSong], out_dir: str | Path, render: Renderer, family: str,
                 steps: int | None = None) -> RenderSummary:
    """Render what is not there yet. Sidecars and parameters first, the WAV last (stage 2 lists WAVs only)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rendered = skipped = 0
    for song in progress(songs, desc="rendering", unit="song"):
        wav_path = out / f"{song.name}.wav"
        if is_rendered(song, out, steps):
            skipped += 1
            continue
        wav, sample_rate = render(song.prompt, song.lyrics, song.duration, song.seed)
        atomic_write_text(prompt_path(wav_path), song.prompt + "\n")
        atomic_write_text(lyrics_path(wav_path), (song.lyrics or INSTRUMENTAL) + "\n")
        atomic_write_json(wav_path.with_suffix(".json"),
                          {**_settings(song, steps), "family": family, "sample_rate": sample_rate})
        _write_wav(wav, sample_rate, wav_path)
        rendered += 1
    return RenderSummary(rendered, skipped, out)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("Render regularization songs (prior preservation) with the base model from a prompt list: "
                    "WAVs with _prompt.txt/_lyrics.txt sidecars, for stages 2 and 3 and then trainer_new.py "
                    "--reg_dataset. Resumable: songs already rendered are skipped.", "python -m acestep.data.reg")
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
    from acestep.quiet import quiet_third_party_noise

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
