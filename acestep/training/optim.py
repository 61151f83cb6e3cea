"""Optimisers and learning-rate schedules, with each family's recipe for what the user leaves unset.

Every family hands its recipe in (`TrainingParts.recipe`: betas, schedule, warm-up, final lr), as its reference
trainer runs; the run resolves it into the config once (`resolve_recipe`) before the optimizer is built.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from acestep.core.errors import AcestepError

from .config import TrainConfig

DEFAULT_LR = {"adamw": 1e-4, "adamw8bit": 1e-4, "prodigy": 1.0}
RECIPE_FIELDS = ("beta1", "beta2", "lr_schedule", "warmup_steps", "final_lr_fraction")


@dataclass(frozen=True)
class OptimizerRecipe:
    """A family's defaults for the optimizer options the user left unset."""

    name: str
    betas: tuple[float, float]
    lr_schedule: str  # "linear" (warm-up from 0) or "cosine" (warm-up from WARMUP_START)
    warmup_steps: int  # with warmup_fraction: at most this many, and at most that fraction of the run (at least 1)
    final_lr_fraction: dict[str, float] = field(default_factory=dict)  # per optimizer
    warmup_fraction: float | None = None

    def warmup(self, max_steps: int) -> int:
        if self.warmup_fraction is None:
            return self.warmup_steps
        return min(self.warmup_steps, max(1, int(max_steps * self.warmup_fraction)))


def resolve_recipe(config: TrainConfig, recipe: OptimizerRecipe) -> TrainConfig:
    """The config with the recipe's values where the user gave none, and `recipe` saying which ran (the run summary
    and train_config.json show it). Fields already set stay: the user's flags win, and resolving twice is a no-op."""
    if config.recipe:
        return config
    given = [name for name in RECIPE_FIELDS if getattr(config, name) is not None]
    values = {
        "beta1": recipe.betas[0], "beta2": recipe.betas[1], "lr_schedule": recipe.lr_schedule,
        "warmup_steps": recipe.warmup(config.max_steps),
        "final_lr_fraction": recipe.final_lr_fraction[config.optimizer],
    }
    resolved = dataclasses.replace(config, **{k: v for k, v in values.items() if k not in given})
    return dataclasses.replace(resolved, recipe=_describe(resolved, recipe.name, given))


def check_resolved(config: TrainConfig) -> None:
    """The optimizer and schedule read the recipe's values: a config nobody resolved is a programming error."""
    if not config.recipe:
        raise ValueError("the config's optimizer recipe is not resolved: resolve_recipe(config, the family's recipe)")


def _describe(config: TrainConfig, name: str, given: list[str]) -> str:
    betas = "" if config.optimizer == "prodigy" else f" betas ({config.beta1:g}, {config.beta2:g}),"
    start = f"{WARMUP_START:g}x" if config.lr_schedule == "cosine" else "0"
    text = (f"Optimizer recipe: {name}: {config.optimizer}{betas} warm-up from {start} over {config.warmup_steps} "
            f"steps, {config.lr_schedule} decay to {config.final_lr_fraction:.0%} of the peak lr")
    return text + (f" (your flags: {', '.join('--' + g for g in given)})" if given else "")


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (the recipe's betas), 8-bit AdamW from bitsandbytes, or Prodigy (lr is its multiplier, 1.0 by default);
    `config` resolved by the family's recipe."""
    params = list(params)
    lr = config.learning_rate if config.learning_rate is not None else DEFAULT_LR[config.optimizer]
    check_resolved(config)
    betas = (config.beta1, config.beta2)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=config.weight_decay)
    if config.optimizer == "adamw8bit":
        if not bitsandbytes_available():
            raise AcestepError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes (CUDA only)")
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(params, lr=lr, betas=betas, weight_decay=config.weight_decay)
    if config.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=lr, weight_decay=config.weight_decay, use_bias_correction=True,
                       safeguard_warmup=True)
    raise AcestepError(f"unknown optimizer {config.optimizer!r}")


@dataclass
class WarmupLinearDecay:
    """LR multiplier: step/warmup during warm-up, then linear decay from 1 to `final` at `max_steps`.

    A dataclass (not a closure) so LambdaLR's state_dict holds plain numbers and resumes exactly.
    """

    warmup_steps: int
    max_steps: int
    final: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return max(0.0, 1.0 - progress) * (1.0 - self.final) + self.final


WARMUP_START = 0.1  # the cosine schedule's warm-up starts at 0.1x lr: LinearLR(start_factor=0.1)


@dataclass
class WarmupCosineDecay:
    """LR multiplier: from `start` up to 1 over the warm-up, then a cosine from 1 down to `final` at `max_steps`
    (torch's LinearLR then CosineAnnealingLR(eta_min=final*lr), in closed form)."""

    warmup_steps: int
    max_steps: int
    final: float = 0.01
    start: float = WARMUP_START

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start + (1.0 - self.start) * step / self.warmup_steps
        length = max(1, self.max_steps - self.warmup_steps)
        progress = min(step - self.warmup_steps, length) / length
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress))


class RunSchedule(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR whose resume keeps this run's --max_steps: the saved state holds the interrupted run's end, so a
    run resumed with a raised --max_steps (to train on) would otherwise stay at the old end's rate (0 for v1).

    Loaded after the optimizer (Lightning's order), it sets the rate of the next step from the schedule; with the
    same --max_steps that is the saved rate itself, so a plain resume repeats the interrupted run exactly."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ends = [fn.max_steps for fn in self.lr_lambdas]
        super().load_state_dict(state_dict)
        for fn, end in zip(self.lr_lambdas, ends):
            fn.max_steps = end
        self._last_lr = self.get_lr()
        for group, rate in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = rate


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> RunSchedule:
    check_resolved(config)
    schedule = WarmupCosineDecay if config.lr_schedule == "cosine" else WarmupLinearDecay
    return RunSchedule(optimizer, schedule(config.warmup_steps, config.max_steps, config.final_lr_fraction))
