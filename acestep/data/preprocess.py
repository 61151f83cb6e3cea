"""Stage 3: encode every song of a filename dataset into training tensors, resumably, in 16-bit shards.

`python preprocess_dataset_new.py --input_name FILENAMES --output_dir PREP [--checkpoint_dir CKPT] ...`
`python -m acestep.data.preprocess merge PREP` (after parallel `--shard i/n` runs; also done automatically
by whichever shard finishes last).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from acestep.audio.conditioning import MIN_SECONDS
from acestep.core.cli_help import make_parser
from acestep.core.errors import AcestepError, InputError, one_line_errors
from acestep.core.progress import progress
from acestep.data.filenames import check_one_file_per_song
from acestep.data.shards import ErrorRecord, PartProgress, PartWriter, ShardSpec
from acestep.data.sidecars import normalize_newlines

if TYPE_CHECKING:  # datasets, torch and the stored format load when a run starts, so --help prints at once
    import datasets
    import torch

SAMPLE_RATE = 48000
MAX_PROMPT_CHARS = 256
MAX_LYRIC_TOKENS = 4096
FALLBACK_TAGS = ("music",)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PreprocessSettings:
    """Options that change the stored tensors; a resumed or parallel run must use the same ones."""

    ssl: bool = True
    max_duration: float = 360.0
    target_lufs: float | None = None
    lyrics_fallback_language: str | None = None
    tag_order: str = "shuffle"
    trigger: str | None = None  # a tag put into every prompt (--trigger); stored only when set
    trigger_position: str = "first"


TRIGGER_POSITIONS = ("first", "random")
TRIGGER_KEYS = ("trigger", "trigger_position")


def stored_settings_of(settings: Any) -> dict[str, Any]:
    """A settings dataclass as stored; without a trigger its keys are left out, so datasets written before
    --trigger existed still resume."""
    stored = asdict(settings)
    if stored.get("trigger") is None:
        for key in TRIGGER_KEYS:
            stored.pop(key, None)
    return stored


def insert_trigger(prompt: str, trigger: str, position: str, index: int) -> str:
    """The trigger tag first, or between the prompt's comma-separated parts at a per-row random place."""
    if position not in TRIGGER_POSITIONS:
        raise AcestepError(f"trigger position must be one of {', '.join(TRIGGER_POSITIONS)}, not {position!r}")
    parts = [p.strip() for p in prompt[: max(0, MAX_PROMPT_CHARS - len(trigger) - 2)].split(",") if p.strip()]
    where = 0 if position == "first" else random.Random(f"trigger-{index}").randint(0, len(parts))
    return ", ".join([*parts[:where], trigger, *parts[where:]])


@dataclass(frozen=True)
class RunOptions:
    """Options that only change how the work is done, not its result."""

    shard: ShardSpec = ShardSpec()
    batch_size: int = 1
    num_workers: int = 0
    chunk_rows: int = 64
    chunk_bytes: int = 256 * 2**20
    chunk_seconds: float = 300.0  # also commit after this much work, so a kill never loses more
    retry_errors: bool = False
    show_progress: bool = True


@dataclass(frozen=True)
class FilenameRow:
    key: str
    filename: str
    tags: tuple[str, ...]
    lyrics: str
    recaptions: tuple[str, ...] = ()
    seconds: float | None = None  # the real length from stage 2 (the fork's datasets do not say)
    # music metadata (stage 2 columns, from the --bpm_key sidecar); None = unknown. ACE-Step 1.5 prompts use it.
    bpm: float | None = None
    keyscale: str | None = None
    timesignature: str | None = None
    language: str | None = None

    def notes(self) -> list[str]:
        """What stage 3 does to this song that the user did not write: an invented prompt, silence padding."""
        found = []
        if not self.tags and not self.recaptions:
            found.append(f"no tags: trained with the prompt {', '.join(FALLBACK_TAGS)!r}")
        if self.seconds is not None and 0 < self.seconds < MIN_SECONDS:
            found.append(f"only {self.seconds:.2f} s long: padded with silence to {MIN_SECONDS:g} s")
        return found


@dataclass
class PreparedSong:
    """A row after the cheap main-thread steps (prompt, lyric ids), waiting for its audio."""

    row: int
    key: str
    filename: str
    prompt: str
    lyric_ids: list[int]
    wav: torch.Tensor | None = None


@dataclass
class RunResult:
    encoded: int = 0
    audio_seconds: float = 0.0
    new_errors: list[ErrorRecord] = field(default_factory=list)
    progress: PartProgress | None = None
    manifest: dict[str, Any] | None = None


def read_filename_rows(path: Path) -> list[FilenameRow]:
    """Rows of a filename dataset, ours or the fork's (only `filename` is required). Lyrics and captions get "\n"
    line ends, as generation feeds them; whitespace alone is no lyrics."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise AcestepError(f"{path}: not a saved filename dataset ({err})") from None
    if not isinstance(dataset, datasets.Dataset) or "filename" not in dataset.column_names:
        raise AcestepError(f"{path}: a filename dataset needs a 'filename' column")
    rows = []
    for item in dataset:
        filename = item["filename"]
        recaption = item.get("recaption") or {}
        rows.append(
            FilenameRow(
                key=item.get("keys") or Path(filename).stem,
                filename=filename,
                tags=tuple(t.strip() for t in item.get("tags") or [] if t and t.strip()),
                lyrics=_lyrics_cell(item.get("norm_lyrics")),
                recaptions=tuple(normalize_newlines(v) for v in recaption.values() if isinstance(v, str) and v.strip()),
                seconds=item.get("duration"),
                bpm=_known(item.get("bpm")),
                keyscale=_known(item.get("keyscale")),
                timesignature=_known(item.get("timesignature")),
                language=_known(item.get("language")),
            )
        )
    return rows


def _lyrics_cell(value: Any) -> str:
    text = normalize_newlines(value or "")
    return text if text.strip() else ""


def _known(value: Any) -> Any:
    """A metadata cell, or None when missing/unknown (stage 2 writes None, -1 or "" for unknown)."""
    if value is None or value == "" or (isinstance(value, (int, float)) and value <= 0):
        return None
    return value


def input_fingerprint(rows: Sequence[FilenameRow]) -> str:
    """Identifies the input content, so a resume never mixes rows of two different filename datasets.

    Unknown metadata is left out, so datasets without metadata keep the fingerprint they had before it existed."""
    digest = hashlib.sha256()
    for row in rows:
        # seconds only informs the notes: kept out so older runs still resume
        fields = {k: v for k, v in asdict(row).items() if v is not None and k != "seconds"}
        digest.update(json.dumps(fields, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def build_prompt(
    row: FilenameRow, index: int, order: str, format_prompt: Callable[..., str], trigger: str | None = None,
    trigger_position: str = "first", max_chars: int | None = MAX_PROMPT_CHARS,
) -> str:
    """Tags joined (shuffled with a per-row seed, so repeated rows differ but a rerun is identical).

    As in the reference dataset: no tags means "music", a non-empty recaption competes with the tag
    string at random, and the prompt is cut to `max_chars` (v1: 256 characters; None for a family whose text
    encoder cuts by tokens). A trigger tag is then inserted (it always survives the cut).
    """
    tag_text = format_prompt(list(row.tags or FALLBACK_TAGS), order=order, seed=index)
    candidates = [*row.recaptions, tag_text]
    prompt = random.Random(index).choice(candidates)[:max_chars]
    return insert_trigger(prompt, trigger, trigger_position, index) if trigger else prompt


def normalize_loudness(wav: torch.Tensor, target_lufs: float, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Gain to the target integrated loudness (ITU BS.1770 via pyloudnorm), then clip to [-1, 1]."""
    import pyloudnorm

    loudness = pyloudnorm.Meter(sr).integrated_loudness(wav.T.double().numpy())
    if not math.isfinite(loudness):
        return wav
    return (wav * 10 ** ((target_lufs - loudness) / 20)).clamp(-1.0, 1.0)


def decode_song(
    load_audio: Callable[[Path, float], torch.Tensor], filename: Path, settings: Any
) -> torch.Tensor | str:
    """A song's [2, T] float32 48 kHz audio, loudness-normalised if `settings.target_lufs` asks, or the reason it
    cannot be used (a broken file is a row in the error table, not a crash)."""
    try:
        wav = load_audio(filename, settings.max_duration)
    except InputError as err:
        return err.reason
    except Exception as err:  # third-party decoders raise anything on broken files
        return f"cannot decode: {type(err).__name__}: {err}"
    if settings.target_lufs is not None:
        wav = normalize_loudness(wav, settings.target_lufs)
    return wav


def ordered_prefetch(items: Iterable[T], fn: Callable[[T], R], workers: int) -> Iterator[tuple[T, R]]:
    """fn(item) on `workers` threads, yielded in input order, at most 2*workers items ahead (bounded memory)."""
    if workers <= 0:
        for item in items:
            yield item, fn(item)
        return
    window: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        try:
            for item in items:
                window.append((item, pool.submit(fn, item)))
                if len(window) > 2 * workers:
                    first, future = window.popleft()
                    yield first, future.result()
            while window:
                first, future = window.popleft()
                yield first, future.result()
        finally:
            for _, future in window:
                future.cancel()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class EncodedRecord(Protocol):
    """One encoded song as a family returns it; `to_record()` gives the stored row (16-bit tensors)."""

    row: int
    key: str
    filename: str
    duration: float

    def to_record(self) -> dict[str, Any]: ...


class SongStages(Protocol):
    """A model family's per-song encoder: cheap text steps, audio decoding (worker threads), model encoding.

    `stored_settings()` is what a resumed or parallel run must repeat (it includes the family name for 1.5);
    `make_features(record)` is the Arrow schema of a stored row.
    """

    def prepare(self, index: int, row: FilenameRow) -> Any: ...  # PreparedSong-like (has .wav) | ErrorRecord

    def decode(self, song: Any) -> torch.Tensor | str: ...

    def encode(self, batch: list[Any]) -> list[EncodedRecord | ErrorRecord]: ...

    def stored_settings(self) -> dict[str, Any]: ...

    def make_features(self, record: dict[str, Any]) -> datasets.Features: ...


def run_song_stages(
    input_path: Path, prep: Path, pipeline: SongStages, options: RunOptions = RunOptions()
) -> RunResult:
    """Encode this shard's pending rows into PREP with any family's SongStages; committed work survives
    any interruption."""
    from acestep.data.preprocessed import FORMAT_VERSION, MANIFEST_FILE, merge_parts, record_nbytes

    rows = read_filename_rows(input_path)
    check_one_file_per_song([Path(row.filename) for row in rows])
    config = {
        "format_version": FORMAT_VERSION,
        "input_fingerprint": input_fingerprint(rows),
        "input_rows": len(rows),
        **pipeline.stored_settings(),
    }
    shard_rows = options.shard.rows(len(rows))
    writer = PartWriter(
        prep,
        options.shard,
        config,
        len(shard_rows),
        make_features=pipeline.make_features,
        chunk_rows=options.chunk_rows,
        chunk_bytes=options.chunk_bytes,
        retry_errors=options.retry_errors,
        chunk_seconds=options.chunk_seconds,
    )
    done = writer.done_rows
    pending = [i for i in shard_rows if i not in done]
    if pending:
        (prep / MANIFEST_FILE).unlink(missing_ok=True)  # "manifest present" means every shard is done
    result = RunResult()
    bar = progress(
        total=len(shard_rows),
        initial=len(shard_rows) - len(pending),
        unit="song",
        desc=f"encoding {options.shard.folder_name}",
        disable=not options.show_progress,
    )
    started = time.monotonic()

    def record_error(error: ErrorRecord) -> None:
        writer.add_error(error)
        result.new_errors.append(error)
        bar.update(1)

    def prepared() -> Iterator[PreparedSong]:
        for index in pending:
            item = pipeline.prepare(index, rows[index])
            if isinstance(item, ErrorRecord):
                record_error(item)
            else:
                yield item

    def decoded() -> Iterator[PreparedSong]:
        for song, wav in ordered_prefetch(prepared(), pipeline.decode, options.num_workers):
            if isinstance(wav, str):
                record_error(ErrorRecord(song.row, song.key, song.filename, wav))
            else:
                song.wav = wav
                yield song

    try:
        for batch in batched(decoded(), options.batch_size):
            for item in pipeline.encode(batch):
                if isinstance(item, ErrorRecord):
                    record_error(item)
                    continue
                try:
                    record = item.to_record()
                except InputError as err:
                    record_error(ErrorRecord(item.row, item.key, item.filename, err.reason))
                    continue
                for note in rows[item.row].notes():
                    writer.add_note(ErrorRecord(item.row, item.key, item.filename, note))
                writer.add(record, item.duration, record_nbytes(record))
                result.encoded += 1
                result.audio_seconds += item.duration
                bar.update(1)
                elapsed = max(time.monotonic() - started, 1e-9)
                bar.set_postfix_str(f"{result.audio_seconds / elapsed:.1f} audio-s/s")
    finally:
        writer.flush()  # commit finished songs even when interrupted
        bar.close()
    result.progress = writer.progress
    if writer.progress.complete:
        try:
            result.manifest = merge_parts(prep)
        except AcestepError:
            pass  # other shards still running; the last one to finish merges
    return result


def format_error_table(errors: Sequence[ErrorRecord]) -> str:
    if not errors:
        return "no errors"
    width = min(max(len(Path(e.filename).name) for e in errors), 60)
    lines = [f"{'row':>6}  {'file':<{width}}  reason"]
    lines += [f"{e.row:>6}  {Path(e.filename).name:<{width}}  {e.reason}" for e in errors]
    return "\n".join(lines)


def summary_lines(prep: Path, result: RunResult) -> list[str]:
    progress = result.progress
    assert progress is not None
    from acestep.data.preprocessed import storage_summary

    stats = storage_summary([(prep / progress.shard.folder_name, progress)])
    lines = [
        f"this run: {result.encoded} songs encoded ({result.audio_seconds:.1f} s of audio), "
        f"{len(result.new_errors)} skipped",
        f"{progress.shard.folder_name}: {stats['songs']} songs, {stats['errors']} skipped, "
        f"{len(progress.done_rows)}/{progress.rows_total} rows done",
    ]
    if stats["bytes_per_audio_second"]:
        lines.append(
            f"storage: {stats['bytes'] / 2**20:.1f} MiB for {stats['audio_seconds']:.1f} s of audio = "
            f"{stats['bytes_per_audio_second'] / 1e6:.4f} MB per second of audio"
        )
    if progress.errors:
        lines += ["skipped songs:", format_error_table(progress.errors)]
    if progress.notes:
        lines += ["encoded, but with something you did not write:", format_error_table(progress.notes)]
    if result.manifest is not None:
        lines.append(f"all shards done: wrote {prep / 'manifest.json'} and {prep / 'errors.jsonl'}")
    elif progress.complete:
        lines.append("this shard is done; others are still missing (merge runs when the last one finishes)")
    return lines


def clean_trigger(trigger: str | None) -> str | None:
    """The trigger as stored: stripped, None when empty; a comma would split it into two tags, so it is refused."""
    if trigger is None or not trigger.strip():
        return None
    if "," in trigger:
        raise AcestepError(f"--trigger {trigger!r}: one tag, without commas")
    return trigger.strip()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser("Encode a filename dataset into training tensors (stage 3).", "preprocess_dataset_new.py")
    parser.add_argument("--input_name", type=Path,
                        help="filename dataset folder (stage 2 output) (required unless --merge)")
    parser.add_argument("--output_dir", type=Path, required=True, help="preprocessed dataset folder")
    parser.add_argument("--checkpoint_dir", default=None, help="ACE-Step checkpoint folder or repo id (default: the official repo)")
    parser.add_argument("--lyrics_vocab", default=None, help="lyric vocab.json (default: found automatically, see README)")
    parser.add_argument("--device", default="auto", help="torch device of the encoders: auto = cuda when present")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="encoder dtype: auto = bfloat16 on GPUs that have it, float32 on CPU")
    parser.add_argument("--batch_size", type=int, default=1, help="prompts per text-encoder call")
    parser.add_argument("--max_duration", type=float, default=360.0, help="seconds kept per song")
    parser.add_argument("--target_lufs", type=float, default=None, help="loudness-normalise to this LUFS (default: off)")
    parser.add_argument("--num_workers", type=int, default=2, help="audio decoding threads")
    parser.add_argument(
        "--lyrics_fallback_language",
        default=None,
        help="ACE-Step v1: language for lyrics whose detected language is unsupported (default: such lyrics are skipped)",
    )
    parser.add_argument("--tag_order", default=None, choices=["shuffle", "as_written"],
                        help="order of a song's tags in its prompt: shuffled with a per-row seed (repeated rows "
                             "differ, a rerun is identical) or as written (default: shuffle for v1; as_written "
                             "for 1.5, whose captions are prose, which shuffle never cuts apart)")
    parser.add_argument("--trigger", default=None,
                        help="a tag put into every prompt (e.g. mystyle): write it in your prompts to call up the "
                             "LoRA; recorded in the dataset, the trainer checks it (default: none)")
    parser.add_argument("--trigger_position", default="first", choices=TRIGGER_POSITIONS,
                        help="where the trigger goes: first, or at a per-song random place among the tags")
    parser.add_argument(
        "--ssl",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="MERT + mHuBERT features for the SSL loss (on by default, as in the fork)",
    )
    parser.add_argument(
        "--dit",
        default=None,
        help="ACE-Step 1.5 original layout: the DiT folder inside --checkpoint_dir (default: acestep-v15-turbo)",
    )
    parser.add_argument(
        "--condition_store",
        default="outputs",
        choices=["outputs", "inputs"],
        help="ACE-Step 1.5: store the condition encoder's output (valid while the LoRA does not target it) or its "
        "inputs (the trainer runs it every step)",
    )
    parser.add_argument("--shard", type=ShardSpec.parse, default=ShardSpec(),
                        help="i/n: this process's part of the rows (default: 0/1, all of them)")
    parser.add_argument("--merge", action="store_true", help="only merge finished shards of --output_dir")
    parser.add_argument("--retry_errors", action="store_true", help="try previously skipped songs again")
    args = parser.parse_args(argv)
    if not args.merge and args.input_name is None:
        parser.error("--input_name is required (unless --merge)")
    return args


def merge_main(prep: Path) -> None:
    from acestep.data.preprocessed import merge_parts

    manifest = merge_parts(prep)
    print(json.dumps(manifest, indent=1))


def main(
    argv: Sequence[str] | None = None,
    song_stages: Callable[[argparse.Namespace], SongStages] | None = None,
) -> None:
    """`song_stages` builds the family's encoder from the options: the CLI layer (acestep.families.preprocess)
    passes the one that picks the family from --checkpoint_dir. Without it only `merge` runs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with one_line_errors():
        if argv[:1] == ["merge"]:
            if len(argv) != 2:
                sys.exit("usage: python -m acestep.data.preprocess merge PREP")
            merge_main(Path(argv[1]))
            return
        args = parse_args(argv)
        if args.merge:
            merge_main(args.output_dir)
            return
        if song_stages is None:
            raise AcestepError("stage 3 needs a model family: run preprocess_dataset_new.py")
        import datasets

        datasets.disable_progress_bars()  # one bar per chunk save would drown ours
        options = RunOptions(
            shard=args.shard,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            retry_errors=args.retry_errors,
        )
        result = run_song_stages(args.input_name, args.output_dir, song_stages(args), options)
    print("\n".join(summary_lines(args.output_dir, result)))


if __name__ == "__main__":
    main()
