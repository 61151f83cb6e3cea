"""`--eval_every N`: the listening evaluation (python -m acestep.evaluate) of the run's saved steps during training.
The CLI layer (acestep.families.training) adds the callback to a family's parts: it renders through the families.

Every N optimizer steps (and at the end) the steps saved so far are scored; renders and scores of earlier steps
come from RUN/eval, so each evaluation costs only the new steps. The listening models load once at the start (a
missing one stops the run there, in one line), the cost is printed before training begins, the new scores go to
the logger (csv, TensorBoard, Wandb) as eval/<score>, and the best step is kept from pruning.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from acestep.core.errors import AcestepError
from acestep.training.sample_prompts import restore_rng, rng_state


class EvaluateDuringTraining(Callback):
    def __init__(self, run_dir: Path, every: int, max_steps: int, settings: list[str]) -> None:
        """`settings`: extra `python -m acestep.evaluate` flags (checkpoint, songs, seconds, models)."""
        from acestep.evaluation.cli import build_parser

        self.run_dir, self.every, self.max_steps = Path(run_dir), every, max_steps
        self.args: argparse.Namespace = build_parser().parse_args(["--run", str(run_dir), *settings])
        self.listeners: Any = None
        self._renderer: Any = None
        self.last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from acestep.evaluation.cli import cost_line, device_and_dtype, load_listeners

        device, _ = device_and_dtype(self.args)
        self.listeners = load_listeners(self.args, device)
        evaluations = max(1, (self.max_steps - trainer.global_step) // self.every)
        renders = self.args.songs * self.args.seeds
        print(f"--eval_every {self.every}: about {evaluations} evaluations; each renders {renders} prompts per new "
              f"saved step (the base model once). {cost_line(renders * (evaluations + 1), self.args.seconds, device)}",
              flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every == 0 and step != self.last_step:
            self.evaluate(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self.last_step:
            self.evaluate(trainer)

    def _open_renderer(self, args: argparse.Namespace, device: str, dtype: str) -> Any:
        if self._renderer is None:
            from acestep.evaluation.cli import family_renderer

            self._renderer = family_renderer(args, device, dtype)
        return self._renderer

    def evaluate(self, trainer: L.Trainer) -> None:
        self.last_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        from acestep.evaluation.cli import evaluate

        state = rng_state()  # the training run goes on exactly as without the evaluation
        try:
            result = evaluate(self.args, self._open_renderer, self.listeners, log=lambda line: None)
        except AcestepError as error:
            print(f"evaluation at step {trainer.global_step} skipped: {error}", flush=True)
            return
        finally:
            restore_rng(state)
        newest = max(result.steps)
        if trainer.logger is not None:
            for step in result.embedded_steps:
                trainer.logger.log_metrics({f"eval/{k}": v for k, v in result.steps[step].values.items()}, step=step)
        print(f"evaluation at step {trainer.global_step}: best step so far {result.verdict.step or 'base'} "
              f"({result.verdict.why}); step {newest}: " + ", ".join(
                  f"{k} {v:.4g}" for k, v in result.steps[newest].values.items()), flush=True)


def eval_callback(config: Any) -> L.Callback:
    """The callback for the trainer's --eval_every and --eval_* options (a TrainConfig)."""
    settings = ["--songs", str(config.eval_songs), "--seconds", str(config.eval_seconds), "--clap", config.eval_clap,
                *(["--mert", config.eval_mert] if config.eval_mert else []),
                *(["--checkpoint_dir", config.checkpoint_dir] if config.checkpoint_dir else []),
                *(["--dit", config.dit] if config.dit else [])]
    return EvaluateDuringTraining(config.run_dir, config.eval_every, config.max_steps, settings)
