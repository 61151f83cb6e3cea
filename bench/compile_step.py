"""Speed-up of `--compile` (torch.compile per transformer block) on one LoRA training step, compiled and eager
interleaved.

`python bench/compile_step.py [--blocks 2] [--seconds 10] [--dtype bf16|fp8|fp32] [--repeats 4]`

Two copies of the same random mid-size model (published width, `--blocks` blocks) in one process, one eager and
one with its blocks compiled (acestep.training.compile), each running the trainer's step (acestep.families.v1.probe:
LoRA, gradient checkpointing, autocast, AdamW). The first compiled step includes compiling and is reported
apart; then the steps alternate eager, compiled, eager, ... so load from other processes hits both alike. The
first step's loss of both is printed: they must agree to bf16 rounding.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acestep.core.cli_help import make_parser  # noqa: E402
from acestep.core.progress import progress  # noqa: E402
from acestep.families.v1.blocks import BLOCKS  # noqa: E402
from acestep.families.v1.plan import DEFAULT_LORA_CONFIG, PlanRequest  # noqa: E402
from acestep.families.v1.probe import TrainingStepProbe, random_transformer, synthetic_batch  # noqa: E402
from acestep.lora import LoraSettings  # noqa: E402
from acestep.training.compile import compile_blocks  # noqa: E402
from bench.common import bf16_warning, machine_description, machine_tag, write_results  # noqa: E402
from bench.train_step import size_config  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": torch.bfloat16}
COLUMNS = [
    ("variant", "variant"), ("blocks", "blocks"), ("audio_s", "audio s"), ("tokens", "tokens"),
    ("first_step_s", "first step s (compiling included)"), ("step_min_s", "step min s"),
    ("step_median_s", "step median s"), ("speedup", "speed-up (eager median / median)"),
    ("first_loss", "step-1 loss"),
]


def build(args, config: dict, frames: int, compiled: bool) -> TrainingStepProbe:  # noqa: ANN001
    dtype = DTYPES[args.dtype]
    model = random_transformer(config, dtype, "cpu")
    batch = synthetic_batch(config, frames, 1, args.lyric_tokens, args.text_tokens, True, "cpu")
    probe = TrainingStepProbe(model, LoraSettings.from_json(args.lora_config), batch,
                              autocast_dtype=None if args.dtype == "fp32" else dtype, fp8_base=args.dtype == "fp8")
    if compiled and not compile_blocks(BLOCKS.blocks(model), "cpu", warn=print):
        raise SystemExit("torch.compile cannot run here (see the line above)")
    return probe


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2, help="transformer blocks of the mid-size model")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio seconds per song")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES),
                        help="base dtype (fp8: base linears in fp8 computed in bf16; fp32 on CPUs without bf16)")
    parser.add_argument("--repeats", type=int, default=4, help="timed steps of each variant, interleaved")
    parser.add_argument("--lora_config", default=str(DEFAULT_LORA_CONFIG), help="LoRA config JSON")
    parser.add_argument("--lyric_tokens", type=int, default=512, help="lyric tokens per song")
    parser.add_argument("--text_tokens", type=int, default=64, help="prompt tokens per song")
    parser.add_argument("--stem", default=None, help="results file name (default: compile_step_<machine>)")
    args = parser.parse_args()
    config = size_config("mid", args.blocks)
    frames = PlanRequest(duration=args.seconds).frames
    probes = {"eager": build(args, config, frames, False), "compiled": build(args, config, frames, True)}
    first, losses = {}, {}
    for name, probe in probes.items():
        torch.manual_seed(0)  # the lyric encoder's dropout
        with torch.no_grad():
            losses[name] = probe.loss(0).item()
        started = time.perf_counter()
        probe.run(track_memory=False)
        first[name] = time.perf_counter() - started
        print(f"{name}: step-1 loss {losses[name]:.6f}, first step {first[name]:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in probes}
    for _ in progress(range(args.repeats), desc="interleaved steps", unit="pair"):
        for name, probe in probes.items():
            times[name].append(probe.run(track_memory=False).seconds)
    eager = statistics.median(times["eager"])
    rows = [{
        "variant": name, "blocks": args.blocks, "audio_s": args.seconds, "tokens": frames,
        "first_step_s": first[name], "step_min_s": min(times[name]), "step_median_s": statistics.median(times[name]),
        "speedup": eager / statistics.median(times[name]), "first_loss": losses[name],
    } for name in probes]
    for row in rows:
        print(f"{row['variant']}: median {row['step_median_s']:.2f} s, speed-up {row['speedup']:.3f}x", flush=True)
    machine = {**machine_description(), "device": "cpu", "dtype": args.dtype}
    warning = bf16_warning(args.dtype, "cpu")
    notes = [
        "command: python bench/compile_step.py " + " ".join(sys.argv[1:]),
        f"step = forward + backward (gradient checkpointing) + AdamW on the LoRA factors, mid size (width 2560, "
        f"{args.blocks} blocks, published lyric encoder), random weights, {args.dtype} base, LoRA fp32 "
        f"({Path(args.lora_config).name}); compiled = each transformer block torch.compile'd in place (inductor).",
        f"steps interleaved eager, compiled, eager, ... ({args.repeats} each after one first step each), so load from "
        "other processes on the machine shifts both alike; absolute times are not comparable across result files.",
        *([f"warning: {warning}"] if warning else []),
    ]
    stem = args.stem or f"compile_step_{machine_tag(machine, 'cpu')}"
    json_path, md_path = write_results(stem, rows, COLUMNS, machine, "--compile: one LoRA training step, eager vs "
                                       "compiled blocks", notes)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
