"""Command lines of stage 1: `generate_prompts_lyrics.py` (transformers) and `..._llamacpp.py` (llama-server)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from acestep.captioning.caption import AudioChatBackend, BackendUnavailable, CaptionError, CaptionSettings
from acestep.captioning.clips import MAX_CLIP_SAMPLES
from acestep.captioning.runner import RunOptions, RunStopped, caption_folder, summary_table
from acestep.core.cli_help import make_parser
from acestep.core.errors import AcestepError

EXIT_SOME_FAILED = 1
EXIT_ERROR = 2


def one_line(text: str, limit: int = 400) -> str:
    """An error as one line: loaders (transformers, requests) put tracebacks and hints on several lines."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def common_parser(description: str, name: str) -> argparse.ArgumentParser:
    parser = make_parser(description, name)
    parser.add_argument(
        "--data_dir", type=Path, required=True, help="folder searched recursively for audio"
    )
    parser.add_argument(
        "--lyrics",
        action="store_true",
        help="also write <stem>_lyrics.txt (embedded or .lrc lyrics first, else transcribed)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing sidecars")
    parser.add_argument(
        "--bpm_key", action="store_true", help="also write <stem>_bpm_key.json (needs librosa)"
    )
    defaults = CaptionSettings()
    parser.add_argument(
        "--max_tags", type=int, default=defaults.max_tags, help="keep at most this many tags per song"
    )
    parser.add_argument(
        "--excerpt_seconds",
        type=float,
        default=defaults.excerpt_seconds,
        help="length of the middle excerpt the tags come from; capped at one 30 s audio window "
        f"({MAX_CLIP_SAMPLES} samples at 16 kHz)",
    )
    parser.add_argument(
        "--max_lyrics_seconds",
        type=float,
        default=defaults.max_lyrics_seconds,
        help="lyrics are transcribed from this much of the song, in pieces of one audio window",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (logs, CI)")
    return parser


def run(args: argparse.Namespace, make_backend: Callable[[], AudioChatBackend]) -> int:
    """Caption the folder, print the summary table; exit code 1 when some file failed, 2 on a fatal error.

    A fatal error (no server, a model that cannot be loaded, a server that stopped) prints the table of
    what was finished (when anything was), then one `error:` line.
    """
    if not args.data_dir.is_dir():
        print(f"error: {args.data_dir}: not a folder", file=sys.stderr)
        return EXIT_ERROR
    options = RunOptions(
        lyrics=args.lyrics,
        overwrite=args.overwrite,
        bpm_key=args.bpm_key,
        settings=CaptionSettings(
            excerpt_seconds=args.excerpt_seconds,
            max_lyrics_seconds=args.max_lyrics_seconds,
            max_tags=args.max_tags,
        ),
    )
    try:
        reports = caption_folder(args.data_dir, make_backend, options, progress=not args.no_progress)
    except RunStopped as stop:
        if stop.anything_done:
            print(summary_table(stop.reports, args.data_dir, stop.not_reached))
        print(f"error: {one_line(str(stop))}", file=sys.stderr)
        return EXIT_ERROR
    except AcestepError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_ERROR
    if not reports:
        print(f"no audio files under {args.data_dir}")
        return EXIT_SOME_FAILED
    print(summary_table(reports, args.data_dir))
    return EXIT_SOME_FAILED if any(report.failed for report in reports) else 0


def transformers_parser() -> argparse.ArgumentParser:
    from acestep.captioning.qwen_omni import DEFAULT_MODEL, GPTQ_MODEL

    parser = common_parser("Tags (and lyrics) for each audio file with Qwen2.5-Omni through transformers.",
                           "generate_prompts_lyrics.py")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"folder or hub id of Qwen2.5-Omni (bf16), or a GPTQ checkpoint such as {GPTQ_MODEL} (extra 'gptq')",
    )
    parser.add_argument(
        "--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present, else cpu)"
    )
    return parser


def main_transformers(argv: Sequence[str] | None = None) -> int:
    args = transformers_parser().parse_args(argv)

    def make_backend() -> AudioChatBackend:
        from acestep.captioning.qwen_omni import QwenOmniBackend

        print(f"loading {args.model} ...", file=sys.stderr)
        return QwenOmniBackend.from_pretrained(args.model, device=args.device)

    return run(args, make_backend)


def llamacpp_parser() -> argparse.ArgumentParser:
    from acestep.captioning.llamacpp import DEFAULT_TIMEOUT

    parser = common_parser(
        "Tags (and lyrics) for each audio file through a running llama-server. At start it checks that "
        "the server answers and can hear audio (/props modalities.audio, i.e. it was started with --mmproj).",
        "generate_prompts_lyrics_llamacpp.py",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address of the running llama-server")
    parser.add_argument("--port", type=int, default=8080, help="port of the running llama-server")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for one answer (a 7B model on a CPU takes one to three minutes); "
        "a line says how long a request has been waiting every 15 s",
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="retries after HTTP 429/5xx or a refused connection"
    )
    parser.add_argument(
        "--backoff", type=float, default=2.0, help="first retry delay in seconds, doubled each time"
    )
    return parser


def main_llamacpp(argv: Sequence[str] | None = None) -> int:
    args = llamacpp_parser().parse_args(argv)

    def make_backend() -> AudioChatBackend:
        from acestep.captioning.llamacpp import LlamaServerBackend

        backend = LlamaServerBackend(args.host, args.port, args.timeout, args.retries, args.backoff)
        try:
            backend.check()
        except CaptionError as err:
            raise BackendUnavailable(f"llama-server at {backend.url} is not ready: {err}") from None
        return backend

    return run(args, make_backend)
