"""Will a LoRA training run fit on my GPU? An estimate of training memory, and what to change when it does not.

`python -m acestep.plan --duration 360 --rank 64 [--model v1|2b|xl] [--gpu_gb 10] [--presets]`: the planner of the
model family asked for (acestep/families/<name>/plan.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from acestep.core.cli_help import make_parser
from acestep.core.errors import AcestepError
from acestep.families.v1.plan import BASE_DTYPES, DEFAULT_LORA_CONFIG, MODELS, PlanRequest, check_bounds
from acestep.training.planner import OPTIMIZER_STATE_BYTES, fewest_checkpointed_blocks


def parse_cli(argv: Sequence[str] | None) -> tuple[Any, bool]:
    """The request, and whether --presets asks for the table of cards instead of one plan."""
    p = make_parser(__doc__.splitlines()[0], "python -m acestep.plan")
    p.add_argument("--duration", type=float, default=360.0, help="seconds of audio per song (the crop length)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the LoRA config's r)")
    p.add_argument("--batch_size", type=int, default=1, help="songs per micro-batch")
    p.add_argument("--gpu_gb", type=float, default=10.0, help="GPU memory to plan for, in GB (1e9 bytes), per GPU")
    p.add_argument("--devices", type=int, default=1,
                   help="GPUs training together (the trainer's --devices x --num_nodes): memory is per GPU")
    p.add_argument("--optimizer", default="adamw", choices=sorted(OPTIMIZER_STATE_BYTES),
                   help="the trainer's --optimizer (its state bytes per LoRA weight)")
    p.add_argument("--base_dtype", default="bf16", choices=BASE_DTYPES,
                   help="dtype of the frozen base model (fp8: the blocks' linear weights in fp8)")
    p.add_argument("--lora_config", default=str(DEFAULT_LORA_CONFIG), help="LoRA config JSON (r, alpha, targets)")
    p.add_argument("--no_ssl", action="store_true", help="the dataset has no MERT/mHuBERT features")
    p.add_argument("--lyric_tokens", type=int, default=1024, help="lyric tokens per song (at most 4096)")
    p.add_argument("--text_tokens", type=int, default=64, help="prompt tokens per song")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda adds the CUDA context and allocator slack to the estimate")
    p.add_argument("--keep_unused_weights", action="store_true",
                   help="plan for the trainer's --no-release_unused_weights")
    p.add_argument("--gradient_checkpointing", default="all",
                   help="the trainer's --gradient_checkpointing: all, none, N (the first N blocks) or auto (the fewest "
                   "blocks that fit --gpu_gb)")
    p.add_argument("--presets", action="store_true",
                   help="print the fastest settings for every --preset card (6-24 GB) at --duration, not one plan")
    p.add_argument("--model", default="v1", choices=MODELS,
                   help="v1 (the default): ACE-Step v1 3.5B; 2b / xl: ACE-Step 1.5 2B (turbo/base/sft) or XL 4B")
    p.add_argument("--condition_tokens", type=int, default=512,
                   help="ACE-Step 1.5: condition tokens per song (prompt + lyrics + timbre, after the encoder; 512 by default)")
    a = p.parse_args(argv)
    mode = a.gradient_checkpointing
    if mode not in ("all", "none", "auto") and not mode.isdigit():
        p.error(f"--gradient_checkpointing must be all, none, auto or a number of blocks, not {mode!r}")
    request: Any = v15_request(a) if a.model != "v1" else PlanRequest(
        duration=a.duration, rank=a.rank, batch_size=a.batch_size, gpu_gb=a.gpu_gb, optimizer=a.optimizer,
        base_dtype=a.base_dtype, lora_config=a.lora_config, ssl=not a.no_ssl, lyric_tokens=a.lyric_tokens,
        text_tokens=a.text_tokens, device=a.device, release_unused_weights=not a.keep_unused_weights,
        devices=a.devices)
    if mode == "auto":
        check_bounds(request)
        count = fewest_checkpointed_blocks(request)
        return replace(request, checkpointed_blocks=request.block_count if count is None else count), a.presets
    counts = {"all": None, "none": 0}
    return replace(request, checkpointed_blocks=counts[mode] if mode in counts else int(mode)), a.presets


def v15_request(a: argparse.Namespace) -> Any:
    """The ACE-Step 1.5 planner's request (acestep.families.v15.plan) from the same flags."""
    from acestep.families.v15.plan import DEFAULT_LORA_CONFIG as V15_LORA_CONFIG
    from acestep.families.v15.plan import V15PlanRequest

    lora_config = V15_LORA_CONFIG if Path(a.lora_config) == DEFAULT_LORA_CONFIG else a.lora_config
    return V15PlanRequest(model=a.model, duration=a.duration, rank=a.rank, batch_size=a.batch_size, gpu_gb=a.gpu_gb,
                          optimizer=a.optimizer, base_dtype=a.base_dtype, lora_config=lora_config,
                          condition_tokens=a.condition_tokens, device=a.device, devices=a.devices)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        request, presets = parse_cli(argv)
        check_bounds(request)
        from acestep.presets import fastest_lines

        if presets:
            print("\n".join(fastest_lines(request, all_cards=True)))
            return
        print(request.plan().text())
        print("\n".join(fastest_lines(request)))
    except AcestepError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
