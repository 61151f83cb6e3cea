"""The loop shared by both captioning scripts: find files, fill the missing sidecars, report every file.

A failure on one file is printed at once and recorded; the run goes on. Only a backend that cannot answer
at all (BackendUnavailable, or a model that cannot be loaded) stops the run, and then RunStopped carries
the reports of the files done so far, so the summary table is still printed. The model is loaded on first
need, once, so a folder whose sidecars all exist, or whose lyrics all come from tags, never loads it.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from acestep.captioning.caption import (
    AudioChatBackend,
    BackendUnavailable,
    CaptionSettings,
    caption_tags,
    transcribe_lyrics,
)
from acestep.captioning.clips import MODEL_SAMPLE_RATE, load_mono
from acestep.captioning.embedded_lyrics import find_user_lyrics
from acestep.captioning.official import caption_prose, transcribe_song
from acestep.captioning.parse import INSTRUMENTAL
from acestep.captioning.sidecars import (
    wanted_outputs,
    write_bpm_key,
    write_caption,
    write_lyrics,
    write_prompt,
)
from acestep.core.atomic import TEMP_MARK
from acestep.core.errors import AcestepError
from acestep.core.progress import progress as progress_bar
from acestep.data.filenames import AUDIO_EXTENSIONS, check_one_file_per_song  # caption what stage 2 picks up
from acestep.data.sidecars import lyrics_path, prompt_path

NOT_ASKED = "-"
KEPT = "kept"
FAILED = "failed"
STOPPED = "stopped"


@dataclass
class RunOptions:
    """What to write. `prose`: the prompt is ACE-Step's captioner's prose, not tags; `transcriber`: the lyrics
    (and the language in the bpm/key file) come from ACE-Step's transcriber. `prompt` off skips prompts
    (the lyrics pass of a run with two models)."""

    lyrics: bool = False
    overwrite: bool = False
    bpm_key: bool = False
    settings: CaptionSettings = field(default_factory=CaptionSettings)
    prose: bool = False
    transcriber: bool = False
    prompt: bool = True


@dataclass
class FileReport:
    """What happened to one audio file; `errors` holds one line per failed output."""

    audio: Path
    prompt: str = NOT_ASKED
    lyrics: str = NOT_ASKED
    bpm_key: str = NOT_ASKED
    errors: list[str] = field(default_factory=list)
    stopped: str = ""  # why the run stopped while this file was in progress
    language: str = ""  # the language the transcriber heard in this run ("" = not known)

    @property
    def failed(self) -> bool:
        return bool(self.errors)


class RunStopped(AcestepError):
    """The backend cannot answer any more; `reports` covers every file begun, `not_reached` the rest."""

    def __init__(self, reason: str, reports: list[FileReport], not_reached: int) -> None:
        super().__init__(reason)
        self.reports = reports
        self.not_reached = not_reached

    @property
    def anything_done(self) -> bool:
        """False when the run stopped at its very first request (no server, no model): no table then."""
        *before, last = self.reports
        return bool(before) or any(
            cell not in (STOPPED, NOT_ASKED) for cell in (last.prompt, last.lyrics, last.bpm_key)
        )


def find_audio_files(data_dir: Path) -> list[Path]:
    """Audio files under `data_dir` (recursive, sorted), leftovers of interrupted writes ignored."""
    return sorted(
        path
        for path in data_dir.rglob("*")
        if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS and TEMP_MARK not in path.name
    )


class _LazyBackend:
    """Builds the backend on first use, once; a backend that cannot be built stops the run."""

    def __init__(self, factory: Callable[[], AudioChatBackend]) -> None:
        self._factory = factory
        self._backend: AudioChatBackend | None = None

    def __call__(self) -> AudioChatBackend:
        if self._backend is None:
            try:
                self._backend = self._factory()
            except BackendUnavailable:
                raise
            except Exception as err:  # noqa: BLE001 - any load failure would repeat for every file
                raise BackendUnavailable(str(err) or type(err).__name__) from err
        return self._backend

    def release(self) -> None:
        """Drop the model so the next one fits: two 7B models do not share one consumer GPU."""
        if self._backend is None:
            return
        self._backend = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


class _SongAudio:
    """The song decoded once per file at each rate asked for; a decode error is kept and raised again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[int, np.ndarray | Exception] = {}

    def at(self, sample_rate: int) -> np.ndarray:
        if sample_rate not in self._cache:
            try:
                self._cache[sample_rate] = load_mono(self.path, sample_rate)
            except Exception as err:  # noqa: BLE001 - re-raised for each output that needs the audio
                self._cache[sample_rate] = err
        value = self._cache[sample_rate]
        if isinstance(value, Exception):
            raise value
        return value


def caption_folder(
    data_dir: Path,
    make_backend: Callable[[], AudioChatBackend],
    options: RunOptions,
    progress: bool = True,
    make_lyrics_backend: Callable[[], AudioChatBackend] | None = None,
) -> list[FileReport]:
    """Caption every audio file under `data_dir`; returns one report per file.

    With `make_lyrics_backend` (another model for the lyrics) the folder is done in two passes, prompts with
    the first model, then lyrics and bpm/key with the second, so only one model is loaded at a time.
    Raises RunStopped (with the reports so far) when a backend cannot answer any more.
    """
    if options.bpm_key:
        from acestep.captioning.dsp import require_librosa

        require_librosa()  # fail before any model is loaded
    files = find_audio_files(data_dir)
    check_one_file_per_song(files)
    if make_lyrics_backend is None or not options.lyrics:
        return _caption_pass(files, make_backend, options, progress, "captioning")
    prompts = _caption_pass(files, make_backend, replace(options, lyrics=False, bpm_key=False), progress, "prompts")
    try:
        lyrics = _caption_pass(files, make_lyrics_backend, replace(options, prompt=False), progress, "lyrics")
    except RunStopped as stop:
        merged = [_merge(first, second) for first, second in zip(prompts, stop.reports)]
        raise RunStopped(str(stop), merged, stop.not_reached) from None
    return [_merge(first, second) for first, second in zip(prompts, lyrics)]


def _caption_pass(
    files: list[Path], make_backend: Callable[[], AudioChatBackend], options: RunOptions, progress: bool, what: str
) -> list[FileReport]:
    backend = _LazyBackend(make_backend)
    reports: list[FileReport] = []
    try:
        with progress_bar(files, desc=what, unit="file", disable=not progress) as bar:
            for audio in bar:
                bar.set_postfix_str(audio.name[-40:])
                report = caption_file(audio, backend, options)
                for error in report.errors:
                    tqdm.write(f"failed: {error}")
                reports.append(report)
                if report.stopped:
                    raise RunStopped(report.stopped, reports, len(files) - len(reports))
    finally:
        backend.release()
    return reports


def _merge(prompts: FileReport, rest: FileReport) -> FileReport:
    """One file's report from the prompt pass and the lyrics pass."""
    return replace(rest, prompt=prompts.prompt, errors=prompts.errors + rest.errors)


def caption_file(audio: Path, backend: Callable[[], AudioChatBackend], options: RunOptions) -> FileReport:
    """Write the wanted sidecars of one file; each output fails on its own and is reported."""
    report = FileReport(audio)
    wanted = wanted_outputs(audio, options.lyrics, options.bpm_key, options.overwrite)
    song = _SongAudio(audio)
    if options.prompt and not wanted.prompt:
        report.prompt = KEPT if prompt_path(audio).exists() else NOT_ASKED
    elif options.prompt:
        what = "caption" if options.prose else "tags"
        report.prompt = _attempt(report, what, lambda: _make_prompt(audio, song, backend, options))
    if options.lyrics:
        if not wanted.lyrics:
            report.lyrics = KEPT if lyrics_path(audio).exists() else NOT_ASKED
        else:
            report.lyrics = _attempt(report, "lyrics", lambda: _make_lyrics(report, song, backend, options))
    if wanted.bpm_key:
        report.bpm_key = _attempt(report, "bpm/key", lambda: _make_bpm_key(report, song))
    elif options.bpm_key:
        report.bpm_key = KEPT
    return report


def _attempt(report: FileReport, what: str, action: Callable[[], str]) -> str:
    if report.stopped:
        return STOPPED
    try:
        return action()
    except BackendUnavailable as err:
        report.stopped = str(err)
        return STOPPED
    except Exception as err:  # noqa: BLE001 - one file's failure must not stop the run
        reason = str(err) if str(err) else type(err).__name__
        if str(report.audio) not in reason:
            reason = f"{report.audio}: {reason}"
        report.errors.append(f"{what}: {reason}")
        return FAILED


def _make_prompt(
    audio: Path, song: _SongAudio, backend: Callable[[], AudioChatBackend], options: RunOptions
) -> str:
    if options.prose:
        caption = caption_prose(backend(), song.at(MODEL_SAMPLE_RATE), options.settings)
        write_caption(audio, caption)
        return f"written ({len(caption.split())} words)"
    tags = caption_tags(backend(), song.at(MODEL_SAMPLE_RATE), options.settings)
    write_prompt(audio, tags)
    return f"written ({len(tags)} tags)"


def _make_lyrics(
    report: FileReport, song: _SongAudio, backend: Callable[[], AudioChatBackend], options: RunOptions
) -> str:
    found = find_user_lyrics(report.audio)
    if found is not None:
        write_lyrics(report.audio, found.text)
        return f"from {found.source}"
    if options.transcriber:
        heard = transcribe_song(backend(), song.at(MODEL_SAMPLE_RATE), options.settings)
        lyrics, report.language = heard.lyrics, heard.language
    else:
        lyrics = transcribe_lyrics(backend(), song.at(MODEL_SAMPLE_RATE), options.settings)
    write_lyrics(report.audio, lyrics)
    return "model: instrumental" if lyrics == INSTRUMENTAL else "model: transcribed"


def _make_bpm_key(report: FileReport, song: _SongAudio) -> str:
    """BPM, key and time signature by DSP, and the language the transcriber heard when it ran on this file."""
    from acestep.captioning.dsp import DSP_SAMPLE_RATE, estimate_bpm_key

    info = estimate_bpm_key(song.at(DSP_SAMPLE_RATE), DSP_SAMPLE_RATE)
    if report.language:
        info["language"] = report.language
    write_bpm_key(report.audio, info)
    cell = [f"{info['bpm']:g} bpm", info["key"]]
    if "timesignature" in info:
        cell.append(f"{info['timesignature']}/4")
    if "language" in info:
        cell.append(info["language"])
    return ", ".join(cell)


def summary_table(reports: list[FileReport], root: Path, not_reached: int = 0) -> str:
    """A plain-text table (one row per file), the failures with their reasons, and the totals."""
    header = ("file", "prompt", "lyrics", "bpm/key")
    rows = [(_relative(r.audio, root), r.prompt, r.lyrics, r.bpm_key) for r in reports]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    failures = [error for report in reports for error in report.errors]
    if failures:
        lines += ["", "failures:", *(f"  {error}" for error in failures)]
    failed_files = sum(report.failed for report in reports)
    stopped_files = sum(bool(report.stopped) and not report.failed for report in reports)
    totals = (
        f"{len(reports)} files, {len(reports) - failed_files - stopped_files} complete, "
        f"{failed_files} with failures"
    )
    if stopped_files or not_reached:
        totals += f"; run stopped: {stopped_files} file(s) interrupted, {not_reached} not reached"
    lines += ["", totals]
    return "\n".join(lines)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
