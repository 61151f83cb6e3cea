"""The LightningModule: the family's step on a LoRA-adapted transformer, and only trainable state saved.

Every random choice of a song (crop, condition dropout, timestep, noise) is seeded from (seed, its position in
the run's order), so a resumed run repeats the interrupted one exactly and 2 DDP processes x batch 1 take the same
step as 1 process x batch 2. Randomness inside the model (dropout layers) draws from (seed, micro-batch index, rank).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

from acestep.core.errors import AcestepError
from acestep.lora import LoraSettings

from .checkpointing import checkpoint_first_blocks
from .compile import compile_blocks
from .config import TrainConfig
from .data import RunLoader, RunOrderSampler, stream_seed
from .family import ModelBlocks, StepObjective
from .memory import peak_memory_gb
from .model import attach_lora
from .optim import build_lr_scheduler, build_optimizer
from .regularization import MixedCollate, MixedSongs, reg_fraction
from .resume_check import SETTINGS_KEY

INIT_STREAM = 0x1E17  # keeps the start-weight stream apart from the per-micro-batch streams


class NonFiniteLossError(AcestepError):
    """The loss or the gradient became NaN/inf; training stops before the weights are touched."""


def enable_checkpointing(transformer: torch.nn.Module, config: TrainConfig, blocks: ModelBlocks) -> None:
    """--gradient_checkpointing all / none / N on the family's blocks; auto is resolved to N before, by the run."""
    mode = config.gradient_checkpointing
    if mode == "none":
        return
    if mode == "auto":
        raise AcestepError("--gradient_checkpointing auto must be resolved to a number of blocks first")
    checkpoint_first_blocks(transformer, blocks.blocks(transformer), config.checkpointed_blocks)


class LoraTrainingModule(L.LightningModule):
    """Holds the frozen transformer with its LoRA; `step_metrics` describes the last optimizer step."""

    def __init__(
        self,
        transformer: torch.nn.Module,
        settings: LoraSettings,
        config: TrainConfig,
        dataset: Dataset,
        *,
        step: StepObjective,
        collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
        blocks: ModelBlocks,
        reg_songs: Dataset | None = None,
        adapter_name: str = "acestep_lora",
    ) -> None:
        """`step`, `collate` and `blocks` (what checkpointing and --compile act on) come from the model family;
        `reg_songs`: the regularization songs (--reg_dataset), mixed in at --reg_weight of the micro-batches."""
        super().__init__()
        self.step_objective = step
        self.collate = collate
        self.transformer = transformer
        self.settings = settings
        self.config = config
        self.dataset = dataset
        self.reg_songs = reg_songs
        self.adapter_name = adapter_name
        self.blocks = blocks
        # The start weights come from --seed alone (not from whatever used the global RNG before): the same seed
        # gives the same adapter, byte for byte. A resume overwrites them with the saved state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(config.seed, INIT_STREAM))
            self.trainable_keys = {f"transformer.{n}" for n in attach_lora(transformer, settings, adapter_name)}
        enable_checkpointing(transformer, config, blocks)
        # The checkpoint holds only the LoRA factors; the frozen base comes from the model folder.
        self.strict_loading = False
        self.step_metrics: dict[str, float] = {}
        self._sums: dict[str, float] = {}
        self._micro_batches = 0
        self._reg_micro_batches = 0
        self._grad_norm = float("nan")
        self._lr = float("nan")
        self._last_step = -1
        self._step_started = time.perf_counter()
        self._compiled = False

    # ---- data and optimisation ----
    def train_dataloader(self) -> RunLoader:
        acc = self.config.accumulate_grad_batches
        sampler = RunOrderSampler(
            num_samples=len(self.dataset),
            batch_size=self.config.batch_size,
            total_micro_batches=self.config.max_steps * acc,
            seed=self.config.seed,
            start=self.trainer.global_step * acc,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
            reg_samples=len(self.reg_songs) if self.reg_songs is not None else 0,
            reg_weight=reg_fraction(self.config.reg_weight),
        )
        if self.reg_songs is None:
            return RunLoader(self.dataset, sampler, self.config.num_workers, self.collate)
        return RunLoader(MixedSongs(self.dataset, self.reg_songs), sampler, self.config.num_workers,
                         MixedCollate(self.collate))

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.transformer.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, self.config)
        scheduler = build_lr_scheduler(optimizer, self.config)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- the step ----
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        reg = bool(batch.pop("reg", False))  # a micro-batch of regularization songs
        rank = self.global_rank
        torch.manual_seed(stream_seed(self.config.seed, batch["micro_batch"], rank, 2))
        songs = [torch.Generator().manual_seed(stream_seed(seed, 1)) for seed in batch["seeds"]]
        loss, extra = self.step_objective(self.transformer, batch, songs)
        return self._record(loss, {"loss": loss.detach(), **extra}, reg)

    def _record(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], reg: bool = False) -> torch.Tensor:
        """Stop on a non-finite loss; add the micro-batch's values to the step's running sums (a regularization
        micro-batch's loss only as reg_loss: `loss` stays the loss on the user's songs)."""
        values = {k: float(v) for k, v in parts.items()}
        if not math.isfinite(values["loss"]):
            detail = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"the loss became non-finite at step {self.global_step + 1} ({detail}"
                f"{' on regularization songs' if reg else ''}); training stopped, "
                "the adapters saved so far are untouched (lower --learning_rate or check the dataset)"
            )
        if reg:
            values = {"reg_loss": values["loss"]}
            self._reg_micro_batches += 1
        else:
            self._micro_batches += 1
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        group = optimizer.param_groups[0]
        self._lr = group["lr"] * group.get("d", 1.0)  # Prodigy's effective rate is d * lr
        grads = [p.grad.detach().float().norm() for p in self.transformer.parameters() if p.grad is not None]
        self._grad_norm = float(torch.stack(grads).norm()) if grads else 0.0
        scaled_fp16 = self.trainer.precision == "16-mixed"  # the grad scaler skips inf steps by itself
        if not math.isfinite(self._grad_norm) and not scaled_fp16:
            raise NonFiniteLossError(
                f"the gradient became non-finite at step {self.global_step + 1}; training stopped before the "
                "update, the adapters saved so far are untouched (lower --learning_rate)"
            )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """After each real update, average the micro-batch losses into `step_metrics`."""
        super().optimizer_step(*args, **kwargs)
        now = time.perf_counter()
        counts = {"reg_loss": self._reg_micro_batches}  # a step of regularization micro-batches only has no loss
        metrics = {k: v / max(counts.get(k, self._micro_batches), 1) for k, v in self._sums.items()}
        if self.trainer.world_size > 1:  # every rank's songs count: the logged loss is the mean over the ranks
            keys = sorted(metrics)
            mean = self.trainer.strategy.reduce(torch.tensor([metrics[k] for k in keys], dtype=torch.float64,
                                                             device=self.device), reduce_op="mean")
            metrics = dict(zip(keys, mean.tolist()))
        metrics.update(
            learning_rate=self._lr,
            grad_norm=self._grad_norm,
            steps_per_s=1.0 / max(now - self._step_started, 1e-9),
            peak_mem_gb=peak_memory_gb(self.device),
        )
        # Lightning counts the step as completed only after this hook returns.
        self.step_metrics = {"step": self.trainer.global_step + 1, **metrics}
        self._sums, self._micro_batches, self._reg_micro_batches, self._step_started = {}, 0, 0, now

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.step_metrics.get("step", -1)
        if step in (self._last_step, -1):
            return  # still accumulating
        self._last_step = step
        metrics = {k: v for k, v in self.step_metrics.items() if k != "step"}
        for logger in self.loggers:  # not through self.log, which repeats a value a step lacks (reg_loss, loss)
            logger.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step=step)
            logger.save()
        on_bar = {"loss": "loss", "reg_loss": "reg", "learning_rate": "lr", "grad_norm": "gnorm", "mert_loss": "mert",
                  "m-hubert_loss": "mhubert", "steps_per_s": "step/s", "peak_mem_gb": "mem_gb"}
        self.log_dict({short: metrics[k] for k, short in on_bar.items() if k in metrics},
                      on_step=True, prog_bar=True, logger=False)

    def on_fit_start(self) -> None:
        """--compile: the blocks are compiled once the model is on its device (the compile check runs there)."""
        if self.config.compile and not self._compiled:
            self._compiled = True
            compile_blocks(self.blocks.blocks(self.transformer), self.device, warn=self._warn)

    def _warn(self, line: str) -> None:
        if self.global_rank == 0:
            print(line, file=sys.stderr, flush=True)

    def on_train_start(self) -> None:
        self._last_step = self.trainer.global_step
        self._step_started = time.perf_counter()

    # ---- checkpoints hold the LoRA factors only ----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in self.trainable_keys}
        checkpoint[SETTINGS_KEY] = self.settings.to_dict()  # a --resume with other settings is refused by name

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = set(checkpoint.get("state_dict", {}))
        if stored != self.trainable_keys:
            missing, extra = len(self.trainable_keys - stored), len(stored - self.trainable_keys)
            raise AcestepError(
                f"the saved training state does not fit this LoRA config ({missing} tensors missing, {extra} "
                "unexpected): resume with the same --lora_config_path"
            )
