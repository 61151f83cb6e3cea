"""Cost of the listening evaluation (python -m acestep.evaluate) per rendered second of audio, split into rendering
(the diffusion model, base or one LoRA step) and scoring (CLAP, MERT, and the bookkeeping), on this machine.

`python bench/eval_cost.py [--family ace-step-v1|ace-step-1.5] [--seconds 4] [--prompts 2] [--sampler_steps 8]`

Tiny random checkpoints and tiny CLAP/MERT, as in the demo: the numbers say what the demo's evaluation costs, and
the scoring share is a floor for real models. Results: bench/results/eval_cost_<family>_<machine-tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from acestep.core.cli_help import make_parser  # noqa: E402
from acestep.evaluation.cache import EvalPrompt  # noqa: E402
from acestep.evaluation.cli import family_renderer, load_mert  # noqa: E402
from acestep.evaluation.embedders import ClapEmbedder  # noqa: E402
from acestep.evaluation.runner import EvalPlan, Evaluator, Listeners  # noqa: E402
from acestep.evaluation.tiny import write_tiny_eval_models  # noqa: E402
from acestep.families import V15  # noqa: E402
from bench.common import machine_description, machine_tag, markdown_table, write_results  # noqa: E402

RATE = 48000


def make_checkpoint(root: Path, family: str) -> Path:
    if family == V15:
        from acestep.families.v15.tiny import write_tiny_v15_checkpoint

        return write_tiny_v15_checkpoint(root / "ckpt")[0]
    from acestep.families.v1.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(root / "ckpt")


def make_songs(root: Path) -> list[tuple[str, Path]]:
    t = np.arange(4 * RATE) / RATE
    songs = []
    for i in range(2):
        path = root / f"song{i}.wav"
        sf.write(path, np.stack([np.sin(2 * np.pi * 220 * (i + 1) * t)] * 2, 1) * 0.3, RATE)
        songs.append((f"song{i}", path))
    return songs


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--family", default="ace-step-v1", choices=("ace-step-v1", V15), help="tiny model family")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per render")
    parser.add_argument("--prompts", type=int, default=2, help="renders of the base model")
    parser.add_argument("--sampler_steps", type=int, default=8, help="diffusion steps per render")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        checkpoint = make_checkpoint(root, args.family)
        clap, mert = write_tiny_eval_models(root / "models")
        options = argparse.Namespace(checkpoint_dir=str(checkpoint), dit=None, sampler_steps=args.sampler_steps)
        prompts = [EvalPrompt(f"p{i}", "pop, piano, calm", "[verse]\nla la la", args.seconds, i)
                   for i in range(args.prompts)]
        plan = EvalPlan(root / "eval", prompts, make_songs(root), ["song0", "song1"], [(0, None)],
                        args.sampler_steps)
        started = time.perf_counter()
        listeners = Listeners(ClapEmbedder.from_pretrained(clap), load_mert(str(mert), "cpu"))
        loaded = time.perf_counter()
        load = {"s": 0.0}

        def open_renderer() -> tuple:
            begun = time.perf_counter()
            renderer = family_renderer(options, "cpu", "float32")
            load["s"] = time.perf_counter() - begun
            return renderer

        evaluator = Evaluator(plan, listeners, open_renderer, log=lambda _: None)
        evaluator.run()
        total = time.perf_counter() - loaded
    audio = evaluator.rendered * args.seconds
    row = {"family": args.family, "renders": evaluator.rendered, "audio_s": audio,
           "sampler_steps": args.sampler_steps, "listeners_load_s": loaded - started, "model_load_s": load["s"],
           "render_s_per_audio_s": evaluator.render_seconds / audio,
           "scoring_s_per_audio_s": (total - load["s"] - evaluator.render_seconds) / audio, "total_s_per_audio_s": total / audio}
    columns = [("family", "family"), ("renders", "renders"), ("audio_s", "audio s"), ("sampler_steps", "steps"),
               ("render_s_per_audio_s", "render s / audio s"), ("scoring_s_per_audio_s", "scoring s / audio s"),
               ("total_s_per_audio_s", "total s / audio s")]
    machine = machine_description()
    write_results(f"eval_cost_{args.family}_{machine_tag(machine, 'cpu')}", [row], columns, machine,
                  "Evaluation cost per rendered second (tiny models, CPU)",
                  ["total = loading the diffusion model once (model_load_s) + rendering + scoring, per audio "
                   "second; loading the listeners (listeners_load_s) is not in it",
                   "real models: rendering dominates; see the README"])
    print(markdown_table([row], columns))


if __name__ == "__main__":
    main()
