"""Throughput of each preprocessing (stage 3) step on this machine, measured separately: audio decoding and
conditioning, DC-AE encoding, prompt encoding, SSL features, and the bytes stored per second of audio.

`python bench/preprocess.py [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--seconds 30] [--repeats 3]
 [--sizes tiny,published] [--parts decode,dcae,text,ssl,size] [--formats wav,flac,mp3,m4a]`

Every step calls the project's own code (acestep.audio, MusicDCAE, TextEncoder, SSLFeatureExtractor,
acestep.data.sizing). "published" models carry random weights in the published shapes, so nothing is
downloaded and the speed is that of the real models. Results: bench/results/preprocess_<machine-tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/data_helpers.py writes the compressed test files

from data_helpers import write_with_pyav  # noqa: E402

from acestep.core.cli_help import make_parser  # noqa: E402
from acestep.demo_songs import synth_song  # noqa: E402
from bench.common import bf16_warning, format_cell, machine_description, machine_tag, release, write_results  # noqa: E402

PARTS = ("decode", "dcae", "text", "ssl", "size")
SIZES = ("tiny", "published")
FORMATS = ("wav", "flac", "mp3", "m4a")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # load_encoders' spelling
SOURCE_RATE = 44100  # what most music files carry, so conditioning really resamples to 48 kHz
TRAINING_RATE = 48000
WARMUP_SECONDS = 3.0

# google umt5-base, encoder only (data-side.md 4.1).
PUBLISHED_UMT5_CONFIG = {
    "vocab_size": 256384,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
}
# MERT-v1-330M as a HubertModel (data-side.md 6.2) and mHuBERT-147 (HuBERT-base size, data-side.md 6.2).
PUBLISHED_MERT_CONFIG = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "do_stable_layer_norm": True,
    "feat_extract_norm": "group",
    "feat_proj_layer_norm": True,
    "conv_bias": False,
    "layer_norm_eps": 1e-5,
    "conv_pos_batch_norm": False,
}
PUBLISHED_MHUBERT_CONFIG = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "do_stable_layer_norm": False,
    "feat_extract_norm": "group",
    "feat_proj_layer_norm": True,
    "conv_bias": False,
}
PROMPT_TAGS = (
    "pop", "rock", "jazz", "electronic", "hip hop", "ambient", "folk", "metal", "funk", "soul", "female vocals",
    "male vocals", "piano", "electric guitar", "drums", "bass", "synth", "strings", "upbeat", "melancholic",
    "energetic", "dreamy", "120 bpm", "acoustic", "instrumental", "lo-fi", "catchy chorus", "reverb",
)
PROMPTS = 16

COLUMNS = [
    ("part", "part"),
    ("size", "size"),
    ("detail", "detail"),
    ("params_m", "params (M)"),
    ("time_min_s", "min s"),
    ("time_median_s", "median s"),
    ("audio_s_per_s", "audio s / s (median)"),
    ("audio_s_per_s_best", "audio s / s (best)"),
    ("prompts_per_s", "prompts / s (median)"),
    ("disk_mb_per_audio_s", "disk MB / audio s"),
    ("tensor_mb_per_audio_s", "tensor MB / audio s"),
    ("disk_gb_per_audio_hour", "disk GB / audio hour"),
]


@dataclass
class Bench:
    """The run's settings plus what it collected; each step adds rows or a one-line skip reason."""

    device: torch.device
    dtype_name: str
    seconds: float
    repeats: int
    sizes: list[str]
    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, label: str, fn: Callable[[], object], warmup: Callable[[], object] | None = None) -> list[float]:
        """Wall time of fn() per repeat, after one untimed warm-up call (kernels, allocator, caches)."""
        (warmup or fn)()
        times = []
        for index in range(self.repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
            print(f"  {label}: repeat {index + 1}/{self.repeats} {times[-1]:.3f} s", flush=True)
        return times

    def add_timing(
        self, part: str, size: str, detail: str, times: list[float], params: int | None = None,
        audio_seconds: float | None = None, prompts: int | None = None,
    ) -> None:
        best, median = min(times), statistics.median(times)
        row: dict = {"part": part, "size": size, "detail": detail, "times_s": times,
                     "time_min_s": best, "time_median_s": median}
        if params is not None:
            row["params_m"] = params / 1e6
        if audio_seconds is not None:
            row["audio_s_per_s"] = audio_seconds / median
            row["audio_s_per_s_best"] = audio_seconds / best
        if prompts is not None:
            row["prompts_per_s"] = prompts / median
            row["prompts_per_s_best"] = prompts / best
        self.rows.append(row)

    def skip(self, what: str, reason: str) -> None:
        line = f"{what}: skipped ({reason})"
        print(line, flush=True)
        self.skipped.append(line)

    def wav_48k(self, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
        """A conditioned-looking [1, 2, T] batch at 48 kHz and its length, as stage 3 hands it to the models."""
        wav = torch.from_numpy(synthetic_music(seconds, TRAINING_RATE))[None]
        return wav, torch.tensor([wav.shape[-1]], device=self.device)


def synthetic_music(seconds: float, rate: int) -> np.ndarray:
    """[2, n] float32: the demo's synthetic song (notes, harmonics, a hi-hat), at `rate`."""
    return np.ascontiguousarray(synth_song(seconds, 110.0, seed=0, rate=rate).T)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- 1. decoding and conditioning ---------------------------------------------------------------------


def write_audio_file(folder: Path, fmt: str, audio: np.ndarray, rate: int) -> Path:
    """The same synthetic song in one format: libsndfile for wav/flac/mp3/ogg, PyAV (AAC) for m4a."""
    import soundfile as sf

    path = folder / f"song.{fmt}"
    if fmt == "m4a":
        write_with_pyav(path, audio, rate, "aac")
    elif fmt in ("wav", "flac"):
        sf.write(str(path), audio.T, rate, subtype="PCM_16")
    else:
        sf.write(str(path), audio.T, rate)
    return path


def bench_decode(bench: Bench, formats: list[str]) -> None:
    from acestep.audio import load_audio, prepare_training_audio

    audio = synthetic_music(bench.seconds, SOURCE_RATE)
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as temp:
        for fmt in formats:
            try:
                path = write_audio_file(Path(temp), fmt, audio, SOURCE_RATE)
            except Exception as err:  # a codec missing from this libsndfile / FFmpeg build
                bench.skip(f"decode {fmt}", f"cannot write a test file: {type(err).__name__}: {err}")
                continue
            file = f"{fmt}, {path.stat().st_size / 2**20:.2f} MiB"
            print(f"decode {fmt} ({bench.seconds:g} s, 44.1 kHz stereo)", flush=True)
            times = bench.measure(f"load_audio {fmt}", lambda p=path: load_audio(p))
            bench.add_timing("decode", "", f"{file}: load_audio", times, audio_seconds=bench.seconds)
            times = bench.measure(f"prepare_training_audio {fmt}", lambda p=path: prepare_training_audio(p))
            bench.add_timing("decode", "", f"{file}: + conditioning (soxr to 48 kHz)", times,
                             audio_seconds=bench.seconds)


# --- 2-4. models ----------------------------------------------------------------------------------------


def published_dcae(bench: Bench):
    from diffusers import AutoencoderDC

    from acestep.families.v1.models.dcae import PUBLISHED_DCAE_CONFIG, MusicDCAE

    return MusicDCAE(AutoencoderDC(**PUBLISHED_DCAE_CONFIG).to(bench.dtype).eval()).to(bench.device)


def published_text(bench: Bench, tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    from acestep.families.v1.text_encoder import TextEncoder

    model = UMT5EncoderModel(UMT5Config(**PUBLISHED_UMT5_CONFIG)).to(bench.device, bench.dtype)
    return TextEncoder(model, tokenizer, bench.device)


def published_ssl(bench: Bench):
    from transformers import HubertConfig, HubertModel

    from acestep.families.v1.models.ssl import SSLFeatureExtractor

    def build(config: dict) -> HubertModel:
        return HubertModel(HubertConfig(**config)).to(bench.device, bench.dtype).eval()

    return SSLFeatureExtractor(build(PUBLISHED_MERT_CONFIG), build(PUBLISHED_MHUBERT_CONFIG))


def bench_dcae(bench: Bench, size: str, dcae) -> None:
    wav, lengths = bench.wav_48k(bench.seconds)
    short, short_lengths = bench.wav_48k(WARMUP_SECONDS)

    def encode(batch: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return dcae.encode(batch.to(bench.device, bench.dtype), n, sr=TRAINING_RATE)  # as SongPipeline does

    print(f"dcae {size} ({bench.seconds:g} s)", flush=True)
    times = bench.measure(f"MusicDCAE.encode {size}", lambda: encode(wav, lengths),
                          warmup=lambda: encode(short, short_lengths))
    bench.add_timing("dcae", size, "MusicDCAE.encode, 1 song", times, count_params(dcae.dcae.encoder),
                     audio_seconds=bench.seconds)


def bench_prompts() -> list[str]:
    from acestep.data.tags import format_prompt

    rng = np.random.default_rng(0)
    return [
        format_prompt([PROMPT_TAGS[i] for i in rng.choice(len(PROMPT_TAGS), size=8, replace=False)],
                      order="shuffle", seed=index)
        for index in range(PROMPTS)
    ]


def bench_text(bench: Bench, size: str, encoder) -> None:
    prompts = bench_prompts()
    tokens = statistics.median(len(ids) for ids in encoder.tokenizer(prompts).input_ids)
    print(f"text {size} ({len(prompts)} prompts, {tokens:g} tokens each)", flush=True)
    for batch in (1, len(prompts)):
        def encode_all(batch: int = batch) -> None:
            for start in range(0, len(prompts), batch):
                encoder.encode(prompts[start : start + batch])

        times = bench.measure(f"TextEncoder.encode {size} batch {batch}", encode_all)
        bench.add_timing("text", size, f"TextEncoder.encode, batch {batch}, {tokens:g} tokens/prompt", times,
                         count_params(encoder.model), audio_seconds=bench.seconds * len(prompts),
                         prompts=len(prompts))


def bench_ssl(bench: Bench, size: str, extractor) -> None:
    from acestep.families.v1.models.ssl import MERT_SPEC, MHUBERT_SPEC, extract_features

    wav, lengths = bench.wav_48k(bench.seconds)
    short, short_lengths = bench.wav_48k(WARMUP_SECONDS)
    mono, short_mono = wav.mean(dim=1)[0], short.mean(dim=1)[0]
    print(f"ssl {size} ({bench.seconds:g} s)", flush=True)
    for name, model, spec in (("MERT", extractor.mert, MERT_SPEC), ("mHuBERT", extractor.mhubert, MHUBERT_SPEC)):
        times = bench.measure(
            f"extract_features {name} {size}",
            lambda model=model, spec=spec: extract_features(model, spec, mono, mono.shape[-1]),
            warmup=lambda model=model, spec=spec: extract_features(model, spec, short_mono, short_mono.shape[-1]),
        )
        bench.add_timing("ssl", size, f"{name} (extract_features)", times, count_params(model),
                         audio_seconds=bench.seconds)
    times = bench.measure(f"SSLFeatureExtractor.extract {size}", lambda: extractor.extract(wav, lengths),
                          warmup=lambda: extractor.extract(short, short_lengths))
    params = count_params(extractor.mert) + count_params(extractor.mhubert)
    bench.add_timing("ssl", size, "both (SSLFeatureExtractor.extract)", times, params, audio_seconds=bench.seconds)


def run_model_parts(bench: Bench, parts: list[str]) -> None:
    """Tiny models come from a tiny checkpoint through stage 3's own loader; published ones are built in memory."""
    from acestep.families.v1.encoders import load_encoders
    from acestep.families.v1.tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="bench-tiny-") as temp:  # kept while loaded (Windows file locks)
        checkpoint = write_tiny_checkpoint(Path(temp))
        # The published UMT5 borrows the tiny tokenizer: the real 256k-token one cannot be downloaded here.
        tiny = load_encoders(str(checkpoint), str(bench.device), DTYPE_NAMES[bench.dtype_name], ssl="ssl" in parts)
        steps = {
            "dcae": (bench_dcae, lambda: tiny.dcae, lambda: published_dcae(bench)),
            "text": (bench_text, lambda: tiny.text, lambda: published_text(bench, tiny.text.tokenizer)),
            "ssl": (bench_ssl, lambda: tiny.ssl, lambda: published_ssl(bench)),
        }
        for part in (p for p in PARTS if p in parts and p in steps):
            run, build_tiny, build_published = steps[part]
            for size in bench.sizes:
                model = None
                try:
                    model = build_tiny() if size == "tiny" else build_published()
                    run(bench, size, model)
                except Exception as err:  # e.g. a dtype this device cannot run, or out of memory
                    reason = str(err).strip().splitlines()[0] if str(err).strip() else "no message"
                    bench.skip(f"{part} {size}", f"{type(err).__name__}: {reason}")
                del model
                release(bench.device)


# --- 5. storage -----------------------------------------------------------------------------------------


def bench_size(bench: Bench) -> None:
    from acestep.data.sizing import measure_bytes_per_second

    for ssl in (True, False):
        with tempfile.TemporaryDirectory(prefix="bench-size-") as temp:
            disk, raw = measure_bytes_per_second(bench.seconds, ssl, Path(temp))
        print(f"size ssl {'on' if ssl else 'off'}: {disk / 1e6:.4f} MB on disk per audio second", flush=True)
        bench.rows.append({
            "part": "size", "size": "published", "detail": f"one {bench.seconds:g} s song, SSL {'on' if ssl else 'off'}",
            "disk_mb_per_audio_s": disk / 1e6, "tensor_mb_per_audio_s": raw / 1e6,
            "disk_gb_per_audio_hour": disk * 3600 / 1e9,
        })


# --- report ---------------------------------------------------------------------------------------------


def stage_estimates(bench: Bench) -> list[str]:
    """Seconds of model work per song (DC-AE + one prompt at batch 1 + SSL), as stage 3 runs them in sequence;
    from the fastest repeats, the best guide on a machine shared with other work."""
    def fastest(part: str, size: str, detail_start: str) -> float | None:
        for row in bench.rows:
            if row["part"] == part and row["size"] == size and row["detail"].startswith(detail_start):
                return row["time_min_s"] / (PROMPTS if part == "text" else 1)
        return None

    lines = []
    for size in bench.sizes:
        dcae, text = fastest("dcae", size, "MusicDCAE"), fastest("text", size, "TextEncoder.encode, batch 1,")
        ssl = fastest("ssl", size, "both")
        if dcae is None or text is None:
            continue
        rate = f"{size}: stage 3 models run about {format_cell(bench.seconds / (dcae + text))} audio s / s without SSL"
        if ssl is not None:
            rate += f", {format_cell(bench.seconds / (dcae + text + ssl))} with SSL"
        lines.append(rate + " (sum of the fastest repeats; decoding runs beside them in --num_workers threads)")
    return lines


def notes(bench: Bench, argv: list[str]) -> list[str]:
    return [
        f"command: python bench/preprocess.py {' '.join(argv)}".rstrip(),
        f"input: synthetic stereo music (the demo song: notes, harmonics, hi-hat), {bench.seconds:g} s per song, one song per call as stage 3 "
        f"encodes them; {bench.repeats} timed repeats after one untimed warm-up (a {WARMUP_SECONDS:g} s clip for "
        "the audio models); 'min s' / 'median s' are wall seconds per call.",
        "audio s / s: seconds of audio processed per second of work. Text rows process 16 prompts per call and "
        "count one prompt per song.",
        "decode rows: a 44.1 kHz file (wav/flac PCM 16, mp3 via libsndfile, m4a = AAC via PyAV) read on the CPU "
        "whatever --device says; '+ conditioning' is prepare_training_audio (decode, stereo, soxr HQ to 48 kHz, "
        "checks).",
        "published sizes carry random weights in the published shapes (speed does not depend on the values): "
        "DC-AE from music_dcae_f8c8/config.json, UMT5-base (d_model 768, 12 layers, 12 heads, d_ff 2048, vocab "
        "256384), MERT-v1-330M and mHuBERT-147 as transformers HubertModel (data-side.md 6.2).",
        "params (M): the module that runs (DC-AE: encoder only; UMT5: includes its 197M-parameter embedding, "
        "a table lookup). The published UMT5 uses the tiny checkpoint's tokenizer (the real one cannot be "
        "downloaded here), so its prompts have more tokens than real ones would.",
        "size rows: one song of published tensor shapes written through the real storage code "
        "(acestep.data.sizing.measure_bytes_per_second); independent of --sizes, --device and --dtype.",
        "SSL cost grows in whole chunks: MERT runs 5 s chunks, mHuBERT 30 s chunks (a 31 s song costs mHuBERT "
        "two), so other song lengths scale in steps.",
        "the machine may be shared: load_avg_1m (start) and load_avg_1m_end in the machine line; under load the "
        "medians are slower than the best repeats.",
        *stage_estimates(bench),
        *bench.skipped,
    ]


def parse_list(text: str, allowed: tuple[str, ...]) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (got {text!r})")
    return items


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device of the encoders")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="encoder dtype")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio length per song")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (min and median reported)")
    parser.add_argument("--sizes", type=lambda s: parse_list(s, SIZES), default=",".join(SIZES),
                        help="comma-separated encoder sizes")
    parser.add_argument("--parts", type=lambda s: parse_list(s, PARTS), default=",".join(PARTS),
                        help="comma-separated parts to time")
    parser.add_argument("--formats", type=lambda s: parse_list(s, FORMATS), default=",".join(FORMATS),
                        help="comma-separated audio formats of the decoding part")
    parser.add_argument("--tag", default=None, help="results file tag (default: from the machine)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to torch here")
    if args.repeats < 1 or args.seconds < 3:
        parser.error("--repeats must be >= 1 and --seconds >= 3 (stage 3 pads shorter songs to 3 s)")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import datasets
    import transformers

    datasets.disable_progress_bars()  # one bar per tiny save would drown the progress lines
    transformers.utils.logging.disable_progress_bar()
    bench = Bench(torch.device(args.device), args.dtype, args.seconds, args.repeats, args.sizes)
    machine = {**machine_description(), "device": args.device, "dtype": args.dtype}
    warning = bf16_warning(args.dtype, args.device)
    if warning:
        print(f"warning: {warning}", flush=True)
    started = time.perf_counter()
    if "decode" in args.parts:
        bench_decode(bench, args.formats)
    if any(part in args.parts for part in ("dcae", "text", "ssl")):
        run_model_parts(bench, args.parts)
    if "size" in args.parts:
        bench_size(bench)
    machine["bench_wall_s"] = round(time.perf_counter() - started, 1)
    if hasattr(os, "getloadavg"):
        machine["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    stem = f"preprocess_{args.tag or machine_tag(machine, args.device)}"
    title = f"Preprocessing (stage 3) throughput, {args.device} {args.dtype}"
    paths = write_results(stem, bench.rows, COLUMNS, machine, title, notes(bench, argv))
    print("wrote " + " and ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
