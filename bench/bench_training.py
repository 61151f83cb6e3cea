"""Training speed and peak memory at the tiny size on this machine: steps/s (median) and peak RSS / GPU memory.

`python bench/bench_training.py [--steps 100] [--batch_size 1] [--seconds 30] [--ssl] [--dtype auto|bf16|fp16|fp32]`
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from training_helpers import synthetic_songs  # noqa: E402

from acestep.core.cli_help import make_parser  # noqa: E402
from acestep.families.training import run_training  # noqa: E402
from acestep.families.v1.tiny import write_tiny_checkpoint  # noqa: E402
from acestep.training import TrainConfig  # noqa: E402
from acestep.training.callbacks import read_metrics  # noqa: E402
from acestep.training.memory import peak_rss_gb  # noqa: E402
from acestep.training.model import DTYPES, resolve_base_dtype  # noqa: E402
from bench.common import bf16_warning, cpu_native_bf16  # noqa: E402

DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps (the first 5 are not timed)")
    parser.add_argument("--batch_size", type=int, default=1, help="songs per step")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each synthetic song")
    parser.add_argument("--ssl", action="store_true", help="songs with MERT/mHuBERT targets (SSL losses on)")
    parser.add_argument("--no_checkpointing", action="store_true", help="train without gradient checkpointing")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                        help="the trainer's --base_dtype (auto: fp32 on CPU); fp32 on CPUs without native bf16")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_base_dtype(args.dtype, device == "cuda")
    warning = bf16_warning(DTYPE_NAMES[dtype], device)
    if warning:
        print(f"warning: {warning}", flush=True)
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        checkpoint = write_tiny_checkpoint(root / "ckpt")
        frames = int(args.seconds * 10.7666)
        prep = root / "prep"
        synthetic_songs([frames] * 4, ssl=args.ssl).save_to_disk(str(prep))
        config = TrainConfig(
            dataset_path=str(prep), checkpoint_dir=str(checkpoint), output_dir=str(root / "runs"), exp_name="bench",
            max_steps=args.steps, every_n_train_steps=args.steps, batch_size=args.batch_size, logger="none",
            progress_bar=False, gradient_checkpointing=not args.no_checkpointing, use_ssl=args.ssl,
            base_dtype=args.dtype,
        )
        result = run_training(config)
        rows = read_metrics(result.metrics_file)[5:]  # skip warm-up steps (imports, first allocations)
    speed = statistics.median(r["steps_per_s"] for r in rows)
    print(f"tiny model, batch {args.batch_size}, {args.seconds:g} s songs ({frames} frames), ssl {args.ssl}, "
          f"checkpointing {not args.no_checkpointing}, {DTYPE_NAMES[dtype]} on {device} (CPU native bf16: "
          f"{cpu_native_bf16()}): {speed:.1f} steps/s (median), peak memory "
          f"{rows[-1]['peak_mem_gb']:.2f} GB, process peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
