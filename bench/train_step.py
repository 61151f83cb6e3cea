"""Time and memory of one LoRA training step at three model sizes, next to the planner's estimate.

`python bench/train_step.py [--sizes tiny,mid,full] [--seconds 10,30] [--device cpu|cuda] [--repeats 3]`

Sizes: tiny (the test model), mid (published width 2560 and lyric encoder, `--mid_blocks` blocks) and full (the
published config). Weights are random, allocated once in the base dtype (bf16), LoRA factors in fp32, the step
is the trainer's (flow-matching loss, gradient checkpointing, bf16 autocast, AdamW): acestep.families.v1.probe.
Memory: tensor peak from TensorMemoryTracker (weights + LoRA state + batch + activations; what the planner
models), process peak RSS (adds the interpreter, libraries and the CPU allocator's cache) and, on CUDA,
torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acestep.core.cli_help import make_parser  # noqa: E402
from acestep.families.v1.models.configs import PUBLISHED_TRANSFORMER_CONFIG, tiny_transformer_config  # noqa: E402
from acestep.families.v1.plan import DEFAULT_LORA_CONFIG, PlanRequest, count_parameters, estimate
from acestep.families.v1.probe import TrainingStepProbe, random_transformer, synthetic_batch  # noqa: E402
from acestep.lora import LoraSettings  # noqa: E402
from acestep.training.memory import peak_rss_gb  # noqa: E402
from acestep.training.planner import fewest_checkpointed_blocks
from bench.common import bf16_warning, machine_description, machine_tag, release, write_results  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def size_config(size: str, mid_blocks: int) -> dict:
    if size == "tiny":
        return tiny_transformer_config()
    if size == "mid":  # SSL taps moved into the few blocks there are
        return dict(PUBLISHED_TRANSFORMER_CONFIG, num_layers=mid_blocks, ssl_encoder_depths=[mid_blocks // 2] * 2)
    if size == "full":
        return dict(PUBLISHED_TRANSFORMER_CONFIG)
    raise SystemExit(f"unknown size {size!r}: use tiny, mid or full")


def step_flops(config: dict, tokens: int, context_tokens: int, lyric_tokens: int, batch: int) -> float:
    """Matmul FLOPs of one step: 2 x parameters x tokens per forward, times 4 (forward, recomputation, and the
    backward's input and weight gradients counted as 2 forwards by convention; frozen weights skip the weight
    gradient, so this overstates the work by at most 1/4), plus the attention products."""
    params = count_parameters(config)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = config["num_layers"]
    cross_kv = blocks * 2 * (width * width + width)  # applied to the context tokens, not to the latent frames
    latent_params = params.blocks - cross_kv + params.other
    lyric_params = params.lyric_encoder - config["lyric_encoder_vocab_size"] * config["lyric_hidden_size"]
    forward = 2 * (tokens * latent_params + batch * context_tokens * cross_kv + batch * lyric_tokens * lyric_params)
    head = config["attention_head_dim"]
    # linear self-attention: K^T V and its product with Q, (d+1) x d per head per token, twice
    forward += blocks * tokens * 2 * 2 * config["num_attention_heads"] * head * (head + 1)
    # cross-attention: scores and weighted sum over the context
    forward += blocks * tokens * 2 * 2 * context_tokens * width
    return 4 * forward


def checkpointed_blocks(variant: str, request: PlanRequest, budget_gb: float) -> int:
    """Blocks a --checkpointing variant checkpoints: all, none, N, or auto (the planner's fewest for a CUDA card of
    `budget_gb`, context and allocator slack included)."""
    blocks = request.transformer_config["num_layers"]
    if variant == "auto":
        count = fewest_checkpointed_blocks(replace(request, device="cuda", gpu_gb=budget_gb))
        return blocks if count is None else count
    named = {"all": blocks, "none": 0}
    return named[variant] if variant in named else int(variant)


def run_case(args: argparse.Namespace, size: str, seconds: float, device: torch.device) -> list[dict]:
    """One model and batch; the --checkpointing variants take turns step by step (A, B, A, B), so load from other
    processes shifts them alike."""
    config = size_config(size, args.mid_blocks)
    dtype = torch.bfloat16 if args.dtype == "fp8" else DTYPES[args.dtype]  # fp8 base: computed in bf16
    request = PlanRequest(
        duration=seconds, batch_size=args.batch_size, base_dtype=args.dtype, lora_config=args.lora_config,
        ssl=not args.no_ssl, lyric_tokens=args.lyric_tokens, text_tokens=args.text_tokens, device=device.type,
        transformer_config=config, release_unused_weights=not args.keep_unused_weights,
    )
    variants = {v: checkpointed_blocks(v, request, args.budget_gb) for v in args.checkpointing.split(",")}
    plans = {v: estimate(replace(request, checkpointed_blocks=k)) for v, k in variants.items()}
    total = next(iter(plans.values())).parameters.total
    print(f"[{size} {seconds:g} s] building the model ({total / 1e6:,.1f} M parameters) ...", flush=True)
    model = random_transformer(config, dtype, device)
    batch = synthetic_batch(config, request.frames, args.batch_size, args.lyric_tokens, args.text_tokens,
                            not args.no_ssl, device)
    probe = TrainingStepProbe(model, LoraSettings.from_json(args.lora_config), batch, autocast_dtype=dtype,
                              release_unused=not args.keep_unused_weights, fp8_base=args.dtype == "fp8")
    probe.run(track_memory=False)  # creates the optimizer state; first-call costs stay out of the timings
    times: dict[str, list[float]] = {v: [] for v in variants}
    for index in range(args.repeats):
        for variant, count in variants.items():
            model.set_checkpointed_blocks(count)
            times[variant].append(probe.run(track_memory=False).seconds)
            print(f"[{size} {seconds:g} s {variant}] step {index + 1}/{args.repeats}: {times[variant][-1]:.2f} s",
                  flush=True)
    rows = []
    context = 1 + args.text_tokens + args.lyric_tokens
    flops = step_flops(config, plans[next(iter(plans))].tokens_per_step, context, args.lyric_tokens, args.batch_size)
    first = next(iter(variants))
    for variant, count in variants.items():
        model.set_checkpointed_blocks(count)
        tracked = probe.run(track_memory=True)
        plan, cuda_peak, median = plans[variant], tracked.cuda_peak_bytes, statistics.median(times[variant])
        # recomputation: one more forward of each checkpointed block (step_flops counts it for every block)
        variant_flops = flops * (3 + count / config["num_layers"]) / 4
        row = {
            "size": size,
            "blocks": config["num_layers"],
            "checkpointing": variant,
            "checkpointed": count,
            "params_m": plan.parameters.total / 1e6,
            "lora_params_m": plan.lora_parameters / 1e6,
            "audio_s": seconds,
            "batch": args.batch_size,
            "tokens": plan.tokens_per_step,
            "step_min_s": min(times[variant]),
            "step_median_s": median,
            "vs_first": median / statistics.median(times[first]),
            "tensor_peak_gb": tracked.tensor_peak_bytes / 1e9,
            "plan_tensor_gb": plan.tensor_bytes / 1e9,
            "plan_over_measured": plan.tensor_bytes / tracked.tensor_peak_bytes,
            "plan_device_gb": estimate(replace(plan.request, device="cuda")).device_bytes / 1e9,
            "plan_phase": plan.peak_phase,
            "cuda_max_allocated_gb": cuda_peak / 1e9 if cuda_peak is not None else None,
            "process_peak_rss_gb": peak_rss_gb(),
            "tflop_per_step": variant_flops / 1e12,
            "tflops": variant_flops / median / 1e12,
        }
        print(f"[{size} {seconds:g} s {variant}: {count} of {config['num_layers']} blocks checkpointed] median "
              f"{median:.2f} s ({row['vs_first']:.3f}x {first}), tensor peak {row['tensor_peak_gb']:.3f} GB, planner "
              f"{row['plan_tensor_gb']:.3f} GB ({row['plan_over_measured']:.3f}x)", flush=True)
        rows.append(row)
    del probe, model, batch
    release(device)
    return rows


COLUMNS = [
    ("size", "size"), ("blocks", "blocks"), ("checkpointing", "checkpointing"), ("checkpointed", "checkpointed blocks"),
    ("params_m", "params (M)"), ("lora_params_m", "LoRA params (M)"),
    ("audio_s", "audio s"), ("batch", "batch"), ("tokens", "tokens"), ("step_min_s", "step min s"),
    ("step_median_s", "step median s"), ("vs_first", "step / first variant's"), ("tensor_peak_gb", "tensor peak GB (measured)"),
    ("plan_tensor_gb", "planner GB"), ("plan_over_measured", "planner / measured"),
    ("plan_device_gb", "planner GB on a CUDA card"),
    ("plan_phase", "peak phase (planner)"), ("cuda_max_allocated_gb", "CUDA max allocated GB"),
    ("process_peak_rss_gb", "process peak RSS GB"), ("tflop_per_step", "TFLOP / step"), ("tflops", "TFLOP/s"),
]


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,mid,full", help="comma-separated model sizes: tiny, mid, full")
    parser.add_argument("--seconds", default="10,30", help="audio seconds per song, comma-separated")
    parser.add_argument("--full_seconds", default=None, help="audio seconds for the full size (default: --seconds)")
    parser.add_argument("--batch_size", type=int, default=1, help="songs per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when present, else cpu)")
    parser.add_argument("--dtype", default="bf16", choices=[*sorted(DTYPES), "fp8"],
                        help="dtype of the random base weights and autocast (fp8: base linears in fp8, computed in "
                        "bf16); use fp32 on CPUs without native bf16 (see cpu_native_bf16 in the machine line)")
    parser.add_argument("--checkpointing", default="all",
                        help="comma-separated gradient checkpointing variants, run in turns step by step: all, none, "
                        "N (the first N blocks) or auto (the planner's fewest for a --budget_gb card)")
    parser.add_argument("--budget_gb", type=float, default=10.0,
                        help="GPU memory for --checkpointing auto, in GB (CUDA context and allocator slack included)")
    parser.add_argument("--mid_blocks", type=int, default=2, help="transformer blocks of the mid size")
    parser.add_argument("--lora_config", default=str(DEFAULT_LORA_CONFIG), help="LoRA config JSON")
    parser.add_argument("--lyric_tokens", type=int, default=512, help="lyric tokens per song")
    parser.add_argument("--text_tokens", type=int, default=64, help="prompt tokens per song")
    parser.add_argument("--no_ssl", action="store_true", help="train without MERT/mHuBERT targets")
    parser.add_argument("--keep_unused_weights", action="store_true",
                        help="keep the never-used add_* layers (the trainer's --no-release_unused_weights)")
    parser.add_argument("--stem", default=None, help="results file name (default: train_step_<machine>)")
    args = parser.parse_args()
    device = torch.device(args.device)
    seconds = [float(s) for s in args.seconds.split(",")]
    rows = []
    for size in args.sizes.split(","):
        durations = [float(s) for s in args.full_seconds.split(",")] if size == "full" and args.full_seconds else seconds
        rows += [row for duration in durations for row in run_case(args, size, duration, device)]
    machine = {**machine_description(), "device": device.type, "dtype": args.dtype}
    warning = bf16_warning(args.dtype, device.type)
    if warning:
        print(f"warning: {warning}", flush=True)
    notes = [
        "command: python bench/train_step.py " + " ".join(sys.argv[1:]),
        f"step = forward + backward (gradient checkpointing per Conformer layer and of the blocks given by "
        f"--checkpointing {args.checkpointing}, auto for a {args.budget_gb:g} GB CUDA card; the variants take turns "
        "step by step on one model, A,B,A,B) + AdamW on the LoRA "
        f"factors; base weights random in {args.dtype}, LoRA fp32 ({Path(args.lora_config).name}), {args.dtype} "
        f"autocast; {args.lyric_tokens} lyric tokens, {args.text_tokens} prompt tokens, SSL targets "
        f"{'off' if args.no_ssl else 'on (MERT + mHuBERT)'}; unused add_* layers "
        f"{'kept' if args.keep_unused_weights else 'released (trainer default)'}; {args.repeats} timed steps after "
        "one warm-up step.",
        "tensor peak: live tensor storages at the step's peak (TensorMemoryTracker), weights and optimizer state "
        "included; the planner (python -m acestep.plan) estimates the same quantity. Process peak RSS is the "
        "running maximum of the whole process (rows run in order), so it also holds the interpreter, libraries, "
        "the CPU allocator's cache and earlier rows' leftovers.",
        "TFLOP/s: matmul FLOPs per step (bench/train_step.py step_flops: 4 x forward, i.e. forward, "
        "recomputation and backward; 3 x forward + the checkpointed blocks' share) over the median step time.",
    ]
    stem = args.stem or f"train_step_{machine_tag(machine, device.type)}"
    json_path, md_path = write_results(stem, rows, COLUMNS, machine, f"One LoRA training step, {device.type} "
                                       f"{args.dtype}", notes)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
