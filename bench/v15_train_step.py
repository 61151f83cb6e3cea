"""ACE-Step 1.5: time and tensor peak of one LoRA training step on random weights, next to the planner's estimate.

`python bench/v15_train_step.py [--model 2b|xl] [--seconds 60] [--layers N] [--dtype bf16|fp32|fp8]
[--checkpointing all[,auto,none,N]] [--budget_gb 10] [--repeats 1]`

The step is the trainer's (official objective, LoRA r 64 on the attention projections, gradient checkpointing of
the first N layers, autocast in the compute dtype, AdamW; fp8: the layers' Linears stored in fp8 and computed in
bf16): acestep.families.v15.plan.StepProbe. `--layers` keeps the published width with fewer layers (a mid-size
check on small machines); without it the whole published model is built. Several --checkpointing variants take
turns step by step on one model (A, B, A, B), so load from other processes shifts them alike; auto is the
planner's fewest checkpointed layers of this model for a CUDA card of --budget_gb.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acestep.core.cli_help import make_parser  # noqa: E402
from acestep.families.v15.plan import MODELS, StepProbe, V15PlanRequest, estimate  # noqa: E402
from acestep.training.memory import peak_rss_gb  # noqa: E402
from acestep.training.planner import fewest_checkpointed_blocks  # noqa: E402
from bench.common import bf16_warning, machine_description, machine_tag, write_results  # noqa: E402


def checkpointed(variant: str, request: V15PlanRequest, budget_gb: float) -> int:
    """Layers a --checkpointing variant checkpoints: all, none, N, or auto (the planner's fewest for the card)."""
    layers = request.block_count
    if variant == "auto":
        count = fewest_checkpointed_blocks(replace(request, device="cuda", gpu_gb=budget_gb))
        return layers if count is None else count
    named = {"all": layers, "none": 0}
    return named[variant] if variant in named else int(variant)


def main() -> None:
    p = make_parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="2b", choices=sorted(MODELS), help="published 1.5 DiT")
    p.add_argument("--seconds", default="60", help="comma-separated crop lengths")
    p.add_argument("--layers", type=int, help="keep the width, use this many layers (default: all)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32", "fp8"),
                   help="base weights and autocast dtype (fp8: layer Linears in fp8, computed in bf16); fp32 on CPUs "
                   "without native bf16 (cpu_native_bf16 in the machine line)")
    p.add_argument("--condition_tokens", type=int, default=512, help="condition tokens per song")
    p.add_argument("--checkpointing", default="all", help="comma-separated variants: all, none, N or auto")
    p.add_argument("--budget_gb", type=float, default=10.0, help="CUDA card for --checkpointing auto, in GB")
    p.add_argument("--repeats", type=int, default=1, help="timed steps per variant (after one warm-up step each)")
    p.add_argument("--stem", help="results file name (default: from the settings)")
    a = p.parse_args()
    config = dict(MODELS[a.model])
    if a.layers:
        config["num_hidden_layers"] = a.layers
    warning = bf16_warning("bf16" if a.dtype == "fp8" else a.dtype, "cpu")
    if warning:
        print(f"warning: {warning}", flush=True)
    rows = []
    for seconds in [float(s) for s in a.seconds.split(",")]:
        request = V15PlanRequest(model=a.model, duration=seconds, device="cpu", base_dtype=a.dtype,
                                 condition_tokens=a.condition_tokens, transformer_config=config)
        variants = {v: checkpointed(v, request, a.budget_gb) for v in a.checkpointing.split(",")}
        started = time.perf_counter()
        probe = StepProbe(request)
        times: dict[str, list[float]] = {v: [] for v in variants}
        peaks: dict[str, int] = {}
        for v, count in variants.items():  # warm-up (AdamW state, first-call costs) and the tracked peak
            probe.run(count, track=False)
            peaks[v] = probe.run(count).tensor_peak_bytes
        for _ in range(a.repeats):
            for v, count in variants.items():
                times[v].append(probe.run(count, track=False).seconds)
        first = statistics.median(times[next(iter(variants))])
        for v, count in variants.items():
            plan = estimate(replace(request, checkpointed_blocks=count))
            median = statistics.median(times[v])
            rows.append({
                "model": a.model, "layers": request.block_count, "seconds": seconds, "dtype": a.dtype,
                "checkpointing": v, "checkpointed": count, "step_s": round(median, 2),
                "step_over_first": round(median / first, 3), "tensor_peak_gb": round(peaks[v] / 1e9, 3),
                "planner_gb": round(plan.tensor_bytes / 1e9, 3),
                "planner_over_measured": round(plan.tensor_bytes / peaks[v], 3),
                "planner_cuda_gb": round(replace(plan.request, device="cuda").plan().device_bytes / 1e9, 2),
                "peak_rss_gb": round(peak_rss_gb(), 2), "wall_s": round(time.perf_counter() - started, 1),
            })
            print(rows[-1], flush=True)
    machine = {**machine_description(), "device": "cpu", "dtype": a.dtype}
    stem = a.stem or (f"v15_train_step_{machine_tag(machine, 'cpu')}_{a.model}-{rows[0]['layers']}layers-{a.dtype}"
                      + ("" if a.checkpointing == "all" else f"-{a.checkpointing.replace(',', '-')}"))
    columns = [(k, k) for k in rows[0]]
    notes = [f"command: python bench/v15_train_step.py {' '.join(sys.argv[1:])}",
             "Random weights; one warm-up step per variant (AdamW state exists), then the tracked step; tensor peak "
             "from TensorMemoryTracker (weights + LoRA state + batch + activations), what the planner models. "
             f"step_s: median of {a.repeats} untracked steps per variant, the variants taking turns.",
             "CPU numbers: attention on the CPU holds the sliding-window layers' score matrix, the planner adds it "
             "for --device cpu only. No GPU was available for these runs."]
    for path in write_results(stem, rows, columns, machine, f"ACE-Step 1.5 {a.model} training step", notes):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
