"""Validation loss that means something: held-out songs, fixed noise levels, fixed noise per song.

Every evaluation feeds each held-out song the same noise at the same noise levels (sigma), so two evaluations
differ only through the adapter; the family's `FixedPointLoss` computes the denoising loss at one sigma and noise.
The step with the lowest validation loss is saved (if it was not already) and kept from pruning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import datasets
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset

from acestep.core.atomic import replace_with_retry, temp_sibling
from acestep.core.errors import AcestepError

from .data import Draw, stream_seed

VAL_STREAM = 0x5A1  # keeps the validation noise apart from the training streams
VAL_CURVE_FILE = "val_loss_curve.png"


class FixedPointLoss(Protocol):
    """The denoising loss of one batch at noise level `sigma` in (0, 1) with the given noise (no dropout)."""

    def __call__(
        self, transformer: torch.nn.Module, batch: dict[str, Any], sigma: float, noise: torch.Tensor
    ) -> torch.Tensor: ...


def validation_sigmas(count: int) -> list[float]:
    """`count` noise levels spread evenly over (0, 1): the midpoints of equal bins."""
    return [(i + 0.5) / count for i in range(count)]


def split_songs(
    dataset: datasets.Dataset, val_songs: int, val_dataset: str | None, overfit_one: bool = False
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(training songs, held-out songs): the last `val_songs` rows, or a separate preprocessed dataset.

    `overfit_one`: the first song alone, evaluated on itself (the smoke test: does the loss on it fall?)."""
    if overfit_one:
        one = dataset.select([0])
        return one, one
    if val_dataset:
        from acestep.data.preprocessed import load_preprocessed

        return dataset, load_preprocessed(val_dataset)
    if val_songs <= 0:
        return dataset, None
    if val_songs >= len(dataset):
        raise AcestepError(f"--val_songs {val_songs} leaves no song to train on (the dataset has {len(dataset)})")
    cut = len(dataset) - val_songs
    return dataset.select(range(cut)), dataset.select(range(cut, len(dataset)))


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class ValidationSet:
    """Held-out songs as single-song batches with a fixed crop and fixed noise each."""

    def __init__(self, songs: Dataset, collate: Any, seed: int, timesteps: int) -> None:
        self.batches = []
        for index in range(len(songs)):
            song_seed = stream_seed(seed, VAL_STREAM, index)
            self.batches.append(collate([songs[Draw(index=index, micro_batch=-1, seed=song_seed)]]))
        self.seeds = [stream_seed(seed, VAL_STREAM, index, 1) for index in range(len(songs))]
        self.sigmas = validation_sigmas(timesteps)

    def loss(
        self, transformer: torch.nn.Module, fixed_loss: FixedPointLoss, device: torch.device,
        convert: Callable[[Any], Any] = lambda batch: batch,
    ) -> float:
        """Mean over songs and noise levels; the model is put in eval mode (no dropout) and restored after.

        `convert`: the trainer's precision conversion of a batch (as Lightning applies to training batches)."""
        was_training = transformer.training
        transformer.eval()
        total = 0.0
        try:
            with torch.no_grad():
                for batch, seed in zip(self.batches, self.seeds, strict=True):
                    latents = batch["target_latents"]
                    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
                    on_device = convert(_to_device(batch, device))
                    noise = noise.to(device, on_device["target_latents"].dtype)
                    for sigma in self.sigmas:
                        total += float(fixed_loss(transformer, on_device, sigma, noise))
        finally:
            transformer.train(was_training)
        return total / (len(self.batches) * len(self.sigmas))


class ValidationLoss(Callback):
    """Every `every` steps: the validation loss into step_metrics (metrics.jsonl) and the logger; the best step saved.

    Must run before MetricsFile and AdapterSaver in the callback list (it adds to the step's metrics and may save).
    """

    def __init__(self, validation: ValidationSet, fixed_loss: FixedPointLoss, every: int, saver: Any) -> None:
        self.validation = validation
        self.fixed_loss = fixed_loss
        self.every = every
        self.saver = saver
        self.best_step = -1
        self.best_loss = float("inf")
        self.start_loss: float | None = None  # before the first step of a fresh run
        self._done = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            self.start_loss = self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        last_step = step == trainer.max_steps
        if step == self._done or step == 0 or not (step % self.every == 0 or last_step):
            return
        if pl_module.step_metrics.get("step") != step:
            return  # still accumulating
        self._done = step
        value = self._evaluate(trainer, pl_module)
        pl_module.step_metrics["val_loss"] = value
        if trainer.logger is not None:
            trainer.logger.log_metrics({"val/loss": value}, step=step)
        if value < self.best_loss:
            self.best_loss, self.best_step = value, step
            if self.saver.last_saved_step != step:
                self.saver.save(trainer, pl_module)

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        plugin = trainer.precision_plugin
        with plugin.forward_context():
            return self.validation.loss(pl_module.transformer, self.fixed_loss, pl_module.device, plugin.convert_input)

    def protected_steps(self) -> set[int]:
        return {self.best_step} if self.best_step > 0 else set()

    def state_dict(self) -> dict[str, Any]:
        return {"best_step": self.best_step, "best_loss": self.best_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_step = int(state_dict.get("best_step", -1))
        self.best_loss = float(state_dict.get("best_loss", float("inf")))


def write_loss_curve(metrics_file: Path, out: Path) -> Path | None:
    """Training (and regularization) and validation loss per step as a PNG (atomic); None when the run logged no
    validation loss."""
    rows = [json.loads(line) for line in Path(metrics_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    trained = [r for r in rows if "loss" in r]  # steps of regularization songs only (--reg_dataset) have none
    axes.plot([r["step"] for r in trained], [r["loss"] for r in trained], label="training loss", alpha=0.5)
    reg = [r for r in rows if "reg_loss" in r]
    if reg:
        axes.plot([r["step"] for r in reg], [r["reg_loss"] for r in reg], label="regularization loss", alpha=0.5)
    axes.plot([s for s, _ in val], [v for _, v in val], marker="o", label="validation loss")
    best = min(val, key=lambda sv: sv[1])
    axes.axvline(best[0], linestyle="--", color="gray", label=f"best step {best[0]}")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    temp = temp_sibling(out)
    figure.savefig(temp, format="png", dpi=100)
    plt.close(figure)
    temp.chmod(0o644)
    replace_with_retry(temp, out)
    return out
