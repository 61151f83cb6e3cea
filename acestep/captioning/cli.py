"""Command lines of stage 1: `generate_prompts_lyrics.py` (transformers) and `..._llamacpp.py` (llama-server)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from acestep.captioning.caption import AudioChatBackend, BackendUnavailable, CaptionError, CaptionSettings
from acestep.captioning.runner import RunOptions, caption_folder, summary_table
from acestep.errors import AcestepError

EXIT_SOME_FAILED = 1
EXIT_ERROR = 2


def common_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data_dir", type=Path, required=True, help="folder searched recursively for audio")
    parser.add_argument("--lyrics", action="store_true", help="also write <stem>_lyrics.txt")
    parser.add_argument("--overwrite", action="store_true", help="replace existing sidecars")
    parser.add_argument(
        "--bpm_key", action="store_true", help="also write <stem>_bpm_key.json (needs librosa)"
    )
    defaults = CaptionSettings()
    parser.add_argument("--max_tags", type=int, default=defaults.max_tags)
    parser.add_argument(
        "--excerpt_seconds",
        type=float,
        default=defaults.excerpt_seconds,
        help="length of the middle excerpt the tags come from (the model takes at most 30 s per clip)",
    )
    parser.add_argument(
        "--max_lyrics_seconds",
        type=float,
        default=defaults.max_lyrics_seconds,
        help="lyrics are transcribed from this much of the song, in 30 s pieces",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (logs, CI)")
    return parser


def run(args: argparse.Namespace, make_backend: Callable[[], AudioChatBackend]) -> int:
    """Caption the folder, print the summary table; exit code 1 when some file failed, 2 on a fatal error."""
    if not args.data_dir.is_dir():
        print(f"error: {args.data_dir}: not a folder", file=sys.stderr)
        return EXIT_ERROR
    options = RunOptions(
        lyrics=args.lyrics,
        overwrite=args.overwrite,
        bpm_key=args.bpm_key,
        settings=CaptionSettings(
            excerpt_seconds=min(args.excerpt_seconds, 30.0),
            max_lyrics_seconds=args.max_lyrics_seconds,
            max_tags=args.max_tags,
        ),
    )
    try:
        reports = caption_folder(args.data_dir, make_backend, options, progress=not args.no_progress)
    except AcestepError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    if not reports:
        print(f"no audio files under {args.data_dir}")
        return EXIT_SOME_FAILED
    print(summary_table(reports, args.data_dir))
    return EXIT_SOME_FAILED if any(report.failed for report in reports) else 0


def main_transformers(argv: Sequence[str] | None = None) -> int:
    from acestep.captioning.qwen_omni import DEFAULT_MODEL, GPTQ_MODEL

    parser = common_parser("Tags (and lyrics) for each audio file with Qwen2.5-Omni through transformers.")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"folder or hub id of Qwen2.5-Omni (bf16), or a GPTQ checkpoint such as {GPTQ_MODEL} (extra 'gptq')",
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present)")
    args = parser.parse_args(argv)

    def make_backend() -> AudioChatBackend:
        from acestep.captioning.qwen_omni import QwenOmniBackend

        print(f"loading {args.model} ...", file=sys.stderr)
        return QwenOmniBackend.from_pretrained(args.model, device=args.device)

    return run(args, make_backend)


def main_llamacpp(argv: Sequence[str] | None = None) -> int:
    parser = common_parser("Tags (and lyrics) for each audio file through a running llama-server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one answer")
    parser.add_argument("--retries", type=int, default=3, help="retries after a timeout or HTTP 429/5xx")
    parser.add_argument(
        "--backoff", type=float, default=2.0, help="first retry delay in seconds, doubled each time"
    )
    args = parser.parse_args(argv)

    def make_backend() -> AudioChatBackend:
        from acestep.captioning.llamacpp import LlamaServerBackend

        backend = LlamaServerBackend(args.host, args.port, args.timeout, args.retries, args.backoff)
        try:
            backend.check()
        except CaptionError as err:
            raise BackendUnavailable(f"llama-server at {backend.url} is not ready: {err}") from None
        return backend

    return run(args, make_backend)
