"""Regularization songs (prior preservation): the prompt list and the resumable render loop (the command line is
`python -m acestep.reg_songs`, which brings the model families' renderers).

From a prompt list it renders one song per prompt (or `--takes` per prompt, each with its own seed) into a folder
of `regNNNN.wav` with `_prompt.txt` and `_lyrics.txt` beside each, the layout stages 2 and 3 read, plus the
render's parameters as `regNNNN.json`. Stage 3 on that folder (without --trigger) gives `trainer_new.py
--reg_dataset`. The run is resumable: a song whose WAV is there with the same parameters is skipped. Every file is
written under a temp name first and the WAV is renamed last, so a WAV is always complete and has its sidecars.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acestep.core.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from acestep.core.errors import AcestepError
from acestep.core.progress import progress
from acestep.data.sidecars import lyrics_path, prompt_path

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
        atomic_write_text(lyrics_path(wav_path), (song.lyrics.strip() or INSTRUMENTAL) + "\n")
        atomic_write_json(wav_path.with_suffix(".json"),
                          {**_settings(song, steps), "family": family, "sample_rate": sample_rate})
        _write_wav(wav, sample_rate, wav_path)
        rendered += 1
    return RenderSummary(rendered, skipped, out)
