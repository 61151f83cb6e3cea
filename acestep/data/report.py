"""Dataset report: `python -m acestep.data.report PREP [--output PNG]` prints counts and draws a PNG
(duration histogram, most frequent tags), so users see what they are about to train on."""

from __future__ import annotations

import io
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from acestep.audio.conditioning import MIN_SECONDS
from acestep.core.atomic import atomic_write_bytes, folder_size
from acestep.core.cli_help import make_parser
from acestep.core.errors import AcestepError
from acestep.data.preprocessed import is_fork_layout, load_preprocessed, storage_summary
from acestep.data.shards import list_parts

LATENT_FPS = 44100 / 4096  # latent frames per second of audio (data-side.md section 2.1)
EMPTY_LYRICS = [0]  # the training-side ids of empty lyrics


@dataclass
class DatasetReport:
    songs: int
    skipped: int | None  # None for the fork layout, which keeps no error list
    durations: list[float]
    text_tokens: list[int]
    lyric_tokens: list[int]
    without_lyrics: int
    has_ssl: bool
    fork_layout: bool
    bytes_on_disk: int
    tag_counts: Counter[str] = field(default_factory=Counter)
    padded_songs: int = 0  # shorter than MIN_SECONDS, padded with silence
    invented_prompts: int = 0  # no tags: trained with the fallback prompt

    @property
    def audio_seconds(self) -> float:
        return sum(self.durations)

    def lines(self) -> list[str]:
        d = self.durations
        out = [
            f"songs:                 {self.songs}" + (f"  (skipped: {self.skipped})" if self.skipped else ""),
            f"audio:                 {self.audio_seconds / 3600:.2f} h",
            f"duration s (min/median/max): {min(d):.1f} / {statistics.median(d):.1f} / {max(d):.1f}",
            f"text tokens per song (mean): {statistics.fmean(self.text_tokens):.1f}",
            f"lyric tokens per song (mean): {statistics.fmean(self.lyric_tokens):.1f}",
            f"songs without lyrics:  {self.without_lyrics}",
            f"padded to {MIN_SECONDS:g} s:        {self.padded_songs}  (shorter songs, silence added)",
            f"without tags:          {self.invented_prompts}  (trained with a fallback prompt)",
            f"SSL features:          {'yes' if self.has_ssl else 'no'}",
            f"layout:                {'reference fork (float32)' if self.fork_layout else 'acestep (16-bit)'}",
            f"on disk:               {self.bytes_on_disk / 2**20:.1f} MiB = "
            f"{self.bytes_on_disk / max(self.audio_seconds, 1e-9) / 1e6:.4f} MB per second of audio",
        ]
        if self.tag_counts:
            top = ", ".join(f"{tag} ({n})" for tag, n in self.tag_counts.most_common(10))
            out.append(f"top tags:              {top}")
        return out


def list_lengths(column: pa.ChunkedArray) -> list[int]:
    """Rows per list cell, also for datasets' Array2D extension columns (stored as lists of lists)."""
    lengths: list[int] = []
    for chunk in column.chunks:
        storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        lengths += pc.list_value_length(storage).to_pylist()
    return lengths


def build_report(prep: Path) -> DatasetReport:
    dataset = load_preprocessed(prep)
    table = dataset.data  # the arrow table; row order does not matter for counts
    fork = is_fork_layout(dataset)
    lyric_ids = table.column("lyric_token_ids").to_pylist()
    if fork:
        frames = list_lengths(table.column("attention_mask"))
        durations = [f / LATENT_FPS for f in frames]
        tags: Counter[str] = Counter()
        skipped, nbytes = None, folder_size(prep)
        notes = []
    else:
        durations = table.column("duration").to_pylist()
        tags = Counter(t for p in table.column("prompt").to_pylist() for t in p.split(", ") if t)
        parts = list_parts(prep)
        summary = storage_summary(parts)
        skipped, nbytes = summary["errors"], summary["bytes"]
        notes = [n.reason for _, p in parts for n in p.notes]
    return DatasetReport(
        songs=len(dataset),
        skipped=skipped,
        durations=durations,
        text_tokens=list_lengths(table.column("encoder_text_hidden_states")),
        lyric_tokens=[len(ids) for ids in lyric_ids],
        without_lyrics=sum(ids == EMPTY_LYRICS for ids in lyric_ids),
        has_ssl="mert_ssl_hidden_states" in dataset.column_names,
        fork_layout=fork,
        bytes_on_disk=nbytes,
        tag_counts=tags,
        padded_songs=sum("padded with silence" in n for n in notes),
        invented_prompts=sum(n.startswith("no tags") for n in notes),
    )


def render_png(report: DatasetReport, path: Path, top: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (hist, bars) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    hist.hist(report.durations, bins=min(30, max(5, report.songs)), color="#4477aa")
    hist.set(
        title=f"{report.songs} songs, {report.audio_seconds / 3600:.2f} h",
        xlabel="duration (s)",
        ylabel="songs",
    )
    common = report.tag_counts.most_common(top)[::-1]
    if common:
        bars.barh([t for t, _ in common], [n for _, n in common], color="#cc6677")
        bars.set(title=f"top {len(common)} tags", xlabel="songs")
    else:
        bars.text(0.5, 0.5, "no tags stored (fork layout)", ha="center", va="center")
        bars.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser("Counts and plots for a preprocessed dataset.", "python -m acestep.data.report")
    parser.add_argument("prep", type=Path, help="preprocessed dataset folder")
    parser.add_argument("--output", type=Path, default=None, help="PNG path (default PREP/report.png)")
    parser.add_argument("--top", type=int, default=20, help="tags shown in the chart")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.prep)
    except AcestepError as err:
        sys.exit(f"error: {err}")
    output = args.output or args.prep / "report.png"
    render_png(report, output, args.top)
    print("\n".join(report.lines()))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
