"""Stage 2: walk a folder of songs and write the filename dataset (one row per song, fork-compatible columns).

`python convert2hf_dataset_new.py --data_dir DIR --output_name OUT [--repeat_count N] [--default_tag T]`
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from acestep.audio.conditioning import MIN_SECONDS
from acestep.core.atomic import atomic_save_dataset, check_dataset_destination
from acestep.core.cli_help import make_parser
from acestep.core.errors import AcestepError, InputError, one_line_errors
from acestep.core.progress import progress
from acestep.data.sidecars import (
    LYRICS_SUFFIX,
    PROMPT_SUFFIX,
    is_instrumental,
    lyrics_path,
    prompt_path,
    read_music_metadata,
    read_sidecar,
    split_tags,
)

if TYPE_CHECKING:
    import datasets

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")
UNKNOWN = -1
DATASET_KIND = "filenames"


def filename_features() -> datasets.Features:
    """The stage-2 table's columns (a function: `datasets` loads when a table is written, not with `--help`)."""
    import datasets

    return datasets.Features(
        {
            "keys": datasets.Value("string"),
            "filename": datasets.Value("string"),
            "tags": datasets.List(datasets.Value("string")),
            "speaker_emb_path": datasets.Value("string"),
            "norm_lyrics": datasets.Value("string"),
            "recaption": {},
            "duration": datasets.Value("float64"),
            "sample_rate": datasets.Value("int32"),
            # music metadata from <stem>_bpm_key.json (stage 1 --bpm_key); -1 / "" = unknown. ACE-Step 1.5 prompts use it
            "bpm": datasets.Value("float64"),
            "keyscale": datasets.Value("string"),
            "timesignature": datasets.Value("string"),
            "language": datasets.Value("string"),
        }
    )


@dataclass
class ScanSummary:
    """What the scan found, printed at the end so users see missing prompts before spending GPU time."""

    files_found: int = 0
    with_prompt: int = 0
    with_lyrics: int = 0
    instrumental: int = 0
    with_bpm_key: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    orphan_sidecars: list[str] = field(default_factory=list)
    empty_prompts: list[str] = field(default_factory=list)
    short: list[tuple[str, float]] = field(default_factory=list)  # (file, real seconds) below MIN_SECONDS

    @property
    def kept(self) -> int:
        return self.files_found - len(self.skipped)

    def lines(self, default_tag: str) -> list[str]:
        out = [
            f"audio files found:     {self.files_found}",
            f"kept:                  {self.kept}",
            f"with prompt:           {self.with_prompt}  (without: {self.kept - self.with_prompt})",
            f"with lyrics:           {self.with_lyrics}  (without: {self.kept - self.with_lyrics})",
            f"instrumental:          {self.instrumental}  (no lyrics or only [inst])",
            f"shorter than {MIN_SECONDS:g} s:      {len(self.short)}  (padded with silence to {MIN_SECONDS:g} s)",
            f"with bpm/key:          {self.with_bpm_key}  (<stem>_bpm_key.json; ACE-Step 1.5 prompts use it)",
            f"skipped:               {len(self.skipped)}",
        ]
        out += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        out += [f"  warning: side file without audio: {path}" for path in self.orphan_sidecars]
        out += [f"  warning: {path}: empty prompt file, counted as no prompt" for path in self.empty_prompts]
        out += [f"  warning: {path}: only {seconds:.2f} s long; stage 3 pads it with silence to {MIN_SECONDS:g} s"
                for path, seconds in self.short]
        missing = self.kept - self.with_prompt
        if missing:
            fallback = f"the default tag {default_tag!r}" if default_tag else "no tags at all"
            out.append(
                f"WARNING: {missing} file(s) have no {PROMPT_SUFFIX}; they get {fallback}. The base model is "
                "steered by tags (genre, instruments, mood, vocals), so write a prompt file per song."
            )
        return out


def find_audio_files(data_dir: Path) -> list[Path]:
    """Every audio file under `data_dir` (recursive, extension case-insensitive), in a stable order."""
    return sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def check_one_file_per_song(audio_files: Sequence[Path]) -> None:
    """Refuse, in one line, two audio files of one folder with one stem (`a.wav` and `a.mp3`): both would be song
    `a`, share its side files and train twice as often. Stages 1, 2 and 3 call this before any work."""
    by_song: dict[tuple[Path, str], list[Path]] = {}
    for path in dict.fromkeys(audio_files):  # repeated rows of one file are one song
        by_song.setdefault((path.parent, path.stem), []).append(path)
    clashes = [paths for paths in by_song.values() if len(paths) > 1]
    if clashes:
        shown = "; ".join(" and ".join(str(p) for p in paths) for paths in clashes[:3])
        more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
        raise AcestepError(
            f"{len(clashes)} song(s) in two formats: {shown}{more}. Files of one folder with one name are one song "
            "(one set of side files) and would train twice as often; keep one format or rename one"
        )


def find_orphan_sidecars(data_dir: Path, audio_files: Sequence[Path]) -> list[Path]:
    """Prompt/lyrics files whose song is missing: usually a renamed audio file whose tags would be lost."""
    stems = {(p.parent, p.stem) for p in audio_files}
    orphans = []
    for suffix in (PROMPT_SUFFIX, LYRICS_SUFFIX):
        for side in data_dir.rglob(f"*{suffix}"):
            if (side.parent, side.name[: -len(suffix)]) not in stems:
                orphans.append(side)
    return sorted(orphans)


def probe_audio(path: Path) -> tuple[float, int]:
    """(duration seconds, sample rate) from the header; mutagen first (fast), PyAV for what it cannot parse."""
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    try:
        import mutagen

        info = getattr(mutagen.File(path), "info", None)
        if getattr(info, "length", 0) > 0 and getattr(info, "sample_rate", 0) > 0:
            return float(info.length), int(info.sample_rate)
    except Exception:  # any parser failure just means "ask PyAV"
        pass
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise InputError(path, "no audio stream")
            stream = container.streams.audio[0]
            if container.duration is not None:
                duration = container.duration / av.time_base
            elif stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = UNKNOWN
            return float(duration), int(stream.rate or UNKNOWN)
    except av.error.FFmpegError as err:
        raise InputError(path, f"not a readable audio file ({err.strerror or err})") from None


def make_row(audio: Path, default_tag: str) -> tuple[dict, bool, bool]:
    """One dataset row plus (has a prompt, has lyrics file); raises InputError for an unusable file.

    An empty (or whitespace, or only commas) prompt file is no prompt: it gets `default_tag` like a missing one.
    """
    prompt = read_sidecar(prompt_path(audio))
    if prompt is not None and not split_tags(prompt):
        prompt = None
    lyrics = read_sidecar(lyrics_path(audio))
    duration, sample_rate = probe_audio(audio)
    metadata = read_music_metadata(audio)
    row = {
        "keys": audio.stem,
        "filename": str(audio.resolve()),
        "tags": split_tags(default_tag if prompt is None else prompt),
        "speaker_emb_path": "",
        "norm_lyrics": lyrics or "",
        "recaption": {},
        "duration": duration,
        "sample_rate": sample_rate,
        **metadata,
        "bpm": metadata["bpm"] if metadata["bpm"] is not None else UNKNOWN,
    }
    return row, prompt is not None, bool(lyrics)  # whitespace alone is no lyrics


def scan_folder(data_dir: Path, default_tag: str = "") -> tuple[list[dict], ScanSummary]:
    """Rows for every usable song under `data_dir` and a summary that lists every skipped file and why."""
    if not data_dir.is_dir():
        raise AcestepError(f"{data_dir}: not a folder")
    audio_files = find_audio_files(data_dir)
    if not audio_files:
        raise AcestepError(f"{data_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    check_one_file_per_song(audio_files)
    summary = ScanSummary(files_found=len(audio_files))
    summary.orphan_sidecars = [str(p) for p in find_orphan_sidecars(data_dir, audio_files)]
    rows = []
    for audio in progress(audio_files, desc="scanning", unit="file"):
        try:
            row, has_prompt, has_lyrics = make_row(audio, default_tag)
        except InputError as err:
            summary.skipped.append((err.path, err.reason))
            continue
        rows.append(row)
        if not has_prompt and prompt_path(audio).is_file():
            summary.empty_prompts.append(str(prompt_path(audio)))
        if 0 < row["duration"] < MIN_SECONDS:
            summary.short.append((str(audio), row["duration"]))
        summary.with_prompt += has_prompt
        summary.with_lyrics += has_lyrics
        summary.instrumental += is_instrumental(row["norm_lyrics"])
        summary.with_bpm_key += row["bpm"] != UNKNOWN or bool(row["keyscale"])
    return rows, summary


def build_filename_dataset(
    data_dir: Path, output: Path, repeat_count: int = 1, default_tag: str = "", overwrite: bool = False
) -> ScanSummary:
    """Scan `data_dir` and write the filename dataset to `output` atomically (rows repeated `repeat_count` times).

    `output` may be new, an empty folder, or (with `overwrite`) a filename dataset this toolkit wrote; anything
    else is refused before the scan, so a typo can never delete the songs.
    """
    if repeat_count < 1:
        raise AcestepError(f"--repeat_count must be >= 1, got {repeat_count}")
    check_dataset_destination(output, overwrite)
    rows, summary = scan_folder(data_dir, default_tag)
    if not rows:
        raise AcestepError(f"{data_dir}: every audio file was skipped; nothing to write")
    import datasets

    dataset = datasets.Dataset.from_list(rows * repeat_count, features=filename_features())
    atomic_save_dataset(dataset, output, kind=DATASET_KIND, overwrite=overwrite)
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser("Build the filename dataset (stage 2) from a folder of songs.", "convert2hf_dataset_new.py")
    parser.add_argument("--data_dir", type=Path, required=True, help="folder with audio and side files")
    parser.add_argument("--output_name", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--repeat_count", type=int, default=1, help="repeat every row N times")
    parser.add_argument("--default_tag", default="", help="prompt for songs without <stem>_prompt.txt")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset this tool wrote earlier at --output_name (never any other folder)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import datasets

    datasets.disable_progress_bars()  # its bar for saving a few rows would be redrawn in logs
    with one_line_errors():
        summary = build_filename_dataset(
            args.data_dir, args.output_name, args.repeat_count, args.default_tag, args.overwrite
        )
    print("\n".join(summary.lines(args.default_tag)))
    print(f"wrote {summary.kept * args.repeat_count} rows to {args.output_name}")


if __name__ == "__main__":
    main()
