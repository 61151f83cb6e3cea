"""Command lines of stage 1: `generate_prompts_lyrics.py` (transformers) and `..._llamacpp.py` (llama-server)."""

from __future__ import annotations

import argparse
import os
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


def run(
    args: argparse.Namespace,
    make_backend: Callable[[], AudioChatBackend],
    make_lyrics_backend: Callable[[], AudioChatBackend] | None = None,
) -> int:
    """Caption the folder, print the summary table; exit code 1 when some file failed, 2 on a fatal error.

    `make_lyrics_backend`: another model for the lyrics (loaded after the prompt model is dropped).
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
        prose=getattr(args, "captioner", None) is not None,
        transcriber=getattr(args, "transcriber", None) is not None,
    )
    try:
        reports = caption_folder(
            args.data_dir, make_backend, options, not args.no_progress, make_lyrics_backend
        )
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
    from acestep.captioning.official import CAPTIONER_MODEL, TRANSCRIBER_MODEL
    from acestep.captioning.qwen_omni import DEFAULT_MODEL, GPTQ_MODEL

    parser = common_parser("Tags or a prose caption (and lyrics) for each audio file with Qwen2.5-Omni models "
                           "through transformers.", "generate_prompts_lyrics.py")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"folder or hub id of Qwen2.5-Omni (bf16), or a GPTQ checkpoint such as {GPTQ_MODEL} (extra 'gptq')",
    )
    parser.add_argument(
        "--captioner",
        nargs="?",
        const=CAPTIONER_MODEL,
        default=None,
        metavar="MODEL",
        help=f"ACE-Step 1.5: a prose caption from ACE-Step's captioner (alone: {CAPTIONER_MODEL}; or its "
        "folder) instead of tags from --model (default: off, tags from --model)",
    )
    parser.add_argument(
        "--transcriber",
        nargs="?",
        const=TRANSCRIBER_MODEL,
        default=None,
        metavar="MODEL",
        help=f"ACE-Step 1.5: with --lyrics, lyrics from ACE-Step's transcriber (alone: {TRANSCRIBER_MODEL}; or "
        "its folder), section tags as it writes them; with --bpm_key the language it heard goes into "
        "<stem>_bpm_key.json (default: off, lyrics from --model)",
    )
    parser.add_argument(
        "--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present, else cpu)"
    )
    return parser


def main_transformers(argv: Sequence[str] | None = None) -> int:
    """Prompts from --captioner or --model, lyrics from --transcriber or --model; two models run one after the
    other (all prompts first), never both loaded at once."""
    args = transformers_parser().parse_args(argv)
    prompt_model = args.captioner or args.model
    lyrics_model = args.transcriber or args.model
    prompt_layout = args.captioner is not None
    lyrics_layout = args.transcriber is not None

    def loader(model: str, task_first: bool) -> Callable[[], AudioChatBackend]:
        def make_backend() -> AudioChatBackend:
            from acestep.captioning.qwen_omni import QwenOmniBackend

            print(f"loading {model} ...", file=sys.stderr)
            return QwenOmniBackend.from_pretrained(model, device=args.device, task_first=task_first)

        return make_backend

    if (prompt_model, prompt_layout) == (lyrics_model, lyrics_layout):
        return run(args, loader(prompt_model, prompt_layout))
    return run(args, loader(prompt_model, prompt_layout), loader(lyrics_model, lyrics_layout))


def llamacpp_parser() -> argparse.ArgumentParser:
    from acestep.captioning.llamacpp import API_KEY_ENV, DEFAULT_TIMEOUT

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
    parser.add_argument(
        "--api_key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"the key of a llama-server started with --api-key, sent as a Bearer token (default: ${API_KEY_ENV}, "
        "the variable llama-server itself reads)",
    )
    return parser


def main_llamacpp(argv: Sequence[str] | None = None) -> int:
    args = llamacpp_parser().parse_args(argv)

    def make_backend() -> AudioChatBackend:
        from acestep.captioning.llamacpp import LlamaServerBackend

        backend = LlamaServerBackend(
            args.host, args.port, args.timeout, args.retries, args.backoff, api_key=args.api_key
        )
        try:
            backend.check()
        except CaptionError as err:
            raise BackendUnavailable(f"llama-server at {backend.url} is not ready: {err}") from None
        return backend

    return run(args, make_backend)
