"""ACE-Step 1.5: time and tensor peak of one LoRA training step on random weights, next to the planner's estimate.

`python bench/v15_train_step.py [--model 2b|xl] [--seconds 60] [--layers N] [--dtype bf16|fp32]`

The step is the trainer's (official objective, LoRA r 64 on the attention projections, gradient checkpointing,
autocast in the base dtype, AdamW): acestep.families.v15.plan.measure_step. `--layers` keeps the published width
with fewer layers (a mid-size check on small machines); without it the whole published model is built.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acestep.core.cli_help import make_parser  # noqa: E402
from acestep.families.v15.plan import MODELS, V15PlanRequest, estimate, measure_step  # noqa: E402
from acestep.training.memory import peak_rss_gb  # noqa: E402
from bench.common import bf16_warning, machine_description, machine_tag, write_results  # noqa: E402


def main() -> None:
    p = make_parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="2b", choices=sorted(MODELS), help="published 1.5 DiT")
    p.add_argument("--seconds", default="60", help="comma-separated crop lengths")
    p.add_argument("--layers", type=int, help="keep the width, use this many layers (default: all)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"),
                   help="base weights and autocast dtype; fp32 on CPUs without native bf16 (cpu_native_bf16 in the "
                   "machine line)")
    p.add_argument("--condition_tokens", type=int, default=512, help="condition tokens per song")
    a = p.parse_args()
    config = dict(MODELS[a.model])
    if a.layers:
        config["num_hidden_layers"] = a.layers
    warning = bf16_warning(a.dtype, "cpu")
    if warning:
        print(f"warning: {warning}", flush=True)
    rows = []
    for seconds in [float(s) for s in a.seconds.split(",")]:
        request = V15PlanRequest(model=a.model, duration=seconds, device="cpu", base_dtype=a.dtype,
                                 condition_tokens=a.condition_tokens, transformer_config=config)
        plan = estimate(request)
        started = time.perf_counter()
        measured = measure_step(request)
        rows.append({
            "model": a.model, "layers": config.get("num_hidden_layers", 24), "seconds": seconds, "dtype": a.dtype,
            "step_s": round(measured.seconds, 2), "tensor_peak_gb": round(measured.tensor_peak_bytes / 1e9, 3),
            "planner_gb": round(plan.tensor_bytes / 1e9, 3),
            "planner_over_measured": round(plan.tensor_bytes / measured.tensor_peak_bytes, 3),
            "peak_rss_gb": round(peak_rss_gb(), 2), "wall_s": round(time.perf_counter() - started, 1),
        })
        print(rows[-1], flush=True)
    machine = {**machine_description(), "device": "cpu", "dtype": a.dtype}
    stem = f"v15_train_step_{machine_tag(machine, 'cpu')}_{a.model}-{rows[0]['layers']}layers-{a.dtype}"
    columns = [(k, k) for k in rows[0]]
    notes = ["Random weights; one step after a warm-up step (AdamW state exists); tensor peak from "
             "TensorMemoryTracker (weights + LoRA state + batch + activations), what the planner models.",
             "CPU numbers: attention on the CPU holds the sliding-window layers' score matrix, the planner adds it "
             "for --device cpu only."]
    for path in write_results(stem, rows, columns, machine, f"ACE-Step 1.5 {a.model} training step", notes):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
