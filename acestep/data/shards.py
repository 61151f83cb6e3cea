"""Resumable output of stage 3: one part folder per `--shard i/n`, each holding committed chunk folders.

Layout (see docs/formats.md):
    PREP/part-000-of-002/progress.json     atomic; the only thing that makes a chunk count as data
    PREP/part-000-of-002/chunk-00000/      datasets.save_to_disk folder, renamed into place when complete
A crash can leave a temp folder or a renamed chunk that progress.json does not list yet; both are
deleted on resume and their songs encoded again, so nothing half-written is ever read.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acestep.core.atomic import atomic_save_dataset, atomic_write_json, folder_size, remove_temp_leftovers
from acestep.core.errors import AcestepError

if TYPE_CHECKING:
    import datasets

PROGRESS_FILE = "progress.json"
CHUNK_KIND = "preprocessed-chunk"
PROGRESS_VERSION = 1
PART_PATTERN = re.compile(r"^part-(\d{3,})-of-(\d{3,})$")


@dataclass(frozen=True)
class ShardSpec:
    """This process handles input rows with `row % count == index` (interleaved, so GPUs get similar loads)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise AcestepError(f"--shard must look like i/n (e.g. 0/2), got {text!r}")
        index, count = int(match[1]), int(match[2])
        if count < 1 or not 0 <= index < count:
            raise AcestepError(f"--shard {text}: need 0 <= i < n")
        return cls(index, count)

    @property
    def folder_name(self) -> str:
        return f"part-{self.index:03d}-of-{self.count:03d}"

    def rows(self, total: int) -> list[int]:
        return list(range(self.index, total, self.count))


@dataclass
class ChunkRecord:
    name: str
    rows: list[int]
    audio_seconds: float
    bytes: int


@dataclass
class ErrorRecord:
    row: int
    key: str
    filename: str
    reason: str


@dataclass
class PartProgress:
    """Everything committed by one shard: settings it was made with, finished chunks, rows that failed."""

    settings: dict[str, Any]
    shard: ShardSpec
    rows_total: int
    chunks: list[ChunkRecord] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
    notes: list[ErrorRecord] = field(default_factory=list)  # encoded songs with an invented prompt or padding

    @property
    def done_rows(self) -> set[int]:
        return {r for c in self.chunks for r in c.rows} | {e.row for e in self.errors}

    @property
    def complete(self) -> bool:
        return len(self.done_rows) >= self.rows_total

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PROGRESS_VERSION,
            "shard": [self.shard.index, self.shard.count],
            "rows_total": self.rows_total,
            "complete": self.complete,
            "settings": self.settings,
            "chunks": [asdict(c) for c in self.chunks],
            "errors": [asdict(e) for e in self.errors],
            "notes": [asdict(n) for n in self.notes],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> PartProgress:
        if value.get("version") != PROGRESS_VERSION:
            raise AcestepError(f"progress file version {value.get('version')} is not {PROGRESS_VERSION}")
        return cls(
            settings=value["settings"],
            shard=ShardSpec(*value["shard"]),
            rows_total=value["rows_total"],
            chunks=[ChunkRecord(**c) for c in value["chunks"]],
            errors=[ErrorRecord(**e) for e in value["errors"]],
            notes=[ErrorRecord(**n) for n in value.get("notes", [])],  # absent in files of older versions
        )


def read_progress(part_dir: Path) -> PartProgress:
    path = part_dir / PROGRESS_FILE
    try:
        return PartProgress.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AcestepError(f"{path}: unreadable progress file ({err})") from None


def list_parts(prep: Path) -> list[tuple[Path, PartProgress]]:
    """Every part folder with a progress file, in shard order."""
    parts = []
    for child in sorted(prep.iterdir()) if prep.is_dir() else []:
        if child.is_dir() and PART_PATTERN.match(child.name) and (child / PROGRESS_FILE).is_file():
            parts.append((child, read_progress(child)))
    return parts


def settings_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    keys = sorted(set(expected) | set(found))
    return [f"{k}: {found.get(k)!r} -> {expected.get(k)!r}" for k in keys if expected.get(k) != found.get(k)]


def check_output_folder(prep: Path) -> None:
    """Stage 3 writes only into a new or empty folder, or one holding its own part folders (a resume)."""
    if not prep.exists():
        return
    if not prep.is_dir():
        raise AcestepError(f"{prep}: is a file; name a folder for the preprocessed dataset")
    children = list(prep.iterdir())
    if all(c.is_dir() and PART_PATTERN.match(c.name) for c in children) or list_parts(prep):
        return
    raise AcestepError(f"{prep}: exists and is not a preprocessed dataset this toolkit wrote; refusing to write "
                       "into it (name a new --output_dir)")


class PartWriter:
    """Buffers encoded rows and commits them as chunk folders; opening it again resumes where it stopped."""

    def __init__(
        self,
        prep: Path,
        shard: ShardSpec,
        settings: dict[str, Any],
        rows_total: int,
        make_features: Callable[[dict[str, Any]], datasets.Features],
        chunk_rows: int = 64,
        chunk_bytes: int = 256 * 2**20,
        retry_errors: bool = False,
        chunk_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """A chunk is committed after `chunk_rows` rows, `chunk_bytes` bytes or `chunk_seconds` of work, whichever
        comes first, so a kill loses at most that much (slow GPUs would otherwise lose up to 64 songs)."""
        self.prep = prep
        self.dir = prep / shard.folder_name
        self.make_features = make_features
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes
        self.chunk_seconds = chunk_seconds
        self.clock = clock
        self._chunk_started = clock()
        self._rows: list[dict[str, Any]] = []
        self._row_seconds = 0.0
        self._row_bytes = 0
        self._errors: list[ErrorRecord] = []
        self._notes: list[ErrorRecord] = []
        check_output_folder(prep)
        self._check_other_parts(shard, settings)
        self.progress = self._open(shard, settings, rows_total, retry_errors)

    def _check_other_parts(self, shard: ShardSpec, settings: dict[str, Any]) -> None:
        for part_dir, other in list_parts(self.prep):
            if other.shard.count != shard.count:
                raise AcestepError(
                    f"{self.prep} already holds {part_dir.name} (a {other.shard.count}-way split); "
                    f"run with --shard i/{other.shard.count} or use a new output folder"
                )
            diff = settings_mismatch(settings, other.settings)
            if diff:
                raise AcestepError(
                    f"{part_dir} was made with other settings ({'; '.join(diff)}); "
                    "use the same options or a new output folder"
                )

    def _open(self, shard: ShardSpec, settings: dict[str, Any], rows_total: int, retry: bool) -> PartProgress:
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_temp_leftovers(self.dir)
        if (self.dir / PROGRESS_FILE).is_file():
            progress = read_progress(self.dir)
            if retry:
                progress.errors = []
        else:
            progress = PartProgress(settings=settings, shard=shard, rows_total=rows_total)
        committed = {c.name for c in progress.chunks}
        for child in self.dir.iterdir():
            if child.is_dir() and child.name not in committed:
                shutil.rmtree(child)  # renamed but never recorded: its rows are redone
        atomic_write_json(self.dir / PROGRESS_FILE, progress.to_json())
        return progress

    @property
    def done_rows(self) -> set[int]:
        return self.progress.done_rows

    def add(self, record: dict[str, Any], audio_seconds: float, nbytes: int) -> None:
        self._rows.append(record)
        self._row_seconds += audio_seconds
        self._row_bytes += nbytes
        too_long = self.clock() - self._chunk_started >= self.chunk_seconds
        if len(self._rows) >= self.chunk_rows or self._row_bytes >= self.chunk_bytes or too_long:
            self.flush()

    def add_error(self, error: ErrorRecord) -> None:
        self._errors.append(error)

    def add_note(self, note: ErrorRecord) -> None:
        """Committed with the chunk that holds its song."""
        self._notes.append(note)

    def flush(self) -> None:
        """Commit buffered rows (a new chunk) and errors: chunk folder renamed into place first, then progress."""
        if not self._rows and not self._errors:
            return
        if self._rows:
            import datasets

            name = f"chunk-{len(self.progress.chunks):05d}"
            dataset = datasets.Dataset.from_list(self._rows, features=self.make_features(self._rows[0]))
            atomic_save_dataset(dataset, self.dir / name, kind=CHUNK_KIND)
            rows = [int(r["row"]) for r in self._rows]
            size = folder_size(self.dir / name)
            self.progress.chunks.append(ChunkRecord(name, rows, round(self._row_seconds, 3), size))
        self.progress.errors.extend(self._errors)
        self.progress.notes.extend(self._notes)
        atomic_write_json(self.dir / PROGRESS_FILE, self.progress.to_json())
        self._rows, self._errors, self._notes, self._row_seconds, self._row_bytes = [], [], [], 0.0, 0
        self._chunk_started = self.clock()
