"""The demo's last stage: the evaluation of its own run. On the tiny checkpoint the listening models are tiny random
ones written beside it, and renders are short with few sampler steps, so the whole chain stays quick on a CPU."""

from __future__ import annotations

from pathlib import Path

from .runner import EvalResult
from .tiny import CLAP_DIR, MERT_DIR, write_tiny_eval_models

TINY_MODELS_DIR = "tiny_eval_models"
TINY_SAMPLER_STEPS = "8"
DEMO_PROMPTS = "2"


def evaluate_demo_run(run_dir: Path, output_dir: Path, tiny: bool, seconds: float, device: str) -> EvalResult:
    """Score the base model and every saved step of the demo's run (eval/ inside the run folder)."""
    from .cli import main

    argv = ["--run", str(run_dir), "--songs", DEMO_PROMPTS, "--seconds", f"{seconds:g}"]
    if tiny:
        models = Path(output_dir) / TINY_MODELS_DIR
        if not ((models / CLAP_DIR / "config.json").is_file() and (models / MERT_DIR / "config.json").is_file()):
            write_tiny_eval_models(models, overwrite=True)  # the demo's own folder, maybe left half-written
        argv += ["--clap", str(models / CLAP_DIR), "--mert", str(models / MERT_DIR), "--sampler_steps",
                 TINY_SAMPLER_STEPS, "--device", "cpu"]
    elif device and device != "auto":
        argv += ["--device", device]
    return main(argv)
