"""Optimisers and the learning-rate schedule of the reference fork (AdamW betas 0.8/0.9, Prodigy; warm-up then decay)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from acestep.core.errors import AcestepError

from .config import TrainConfig

DEFAULT_LR = {"adamw": 1e-4, "adamw8bit": 1e-4, "prodigy": 1.0}
DEFAULT_FINAL_LR_FRACTION = {"adamw": 0.0, "adamw8bit": 0.0, "prodigy": 0.1}


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fork settings), 8-bit AdamW from bitsandbytes, or Prodigy (lr is its multiplier, 1.0 by default)."""
    params = list(params)
    lr = config.learning_rate if config.learning_rate is not None else DEFAULT_LR[config.optimizer]
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


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    final = config.final_lr_fraction
    if final is None:
        final = DEFAULT_FINAL_LR_FRACTION[config.optimizer]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupLinearDecay(config.warmup_steps, config.max_steps, final))
