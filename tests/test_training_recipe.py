"""Optimizer recipes per family: v1 keeps the fork's, 1.5 gets the official trainer's; the user's flags win."""

from __future__ import annotations

import math

import pytest
import torch

from acestep.families.training import parse_config
from acestep.families.v1.training import FORK_RECIPE
from acestep.families.v15.training import OFFICIAL_RECIPE
from acestep.training import TrainConfig
from acestep.training.optim import (
    WarmupCosineDecay,
    build_lr_scheduler,
    build_optimizer,
    resolve_recipe,
)


def lrs(config: TrainConfig, steps: int, lr: float = 1e-4) -> list[float]:
    """The learning rate of optimizer steps 0 .. steps-1 under the run's scheduler."""
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], config)
    scheduler = build_lr_scheduler(optimizer, config)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_betas_and_schedule_per_family() -> None:
    config = TrainConfig(dataset_path="p", max_steps=1000)
    v1, v15 = resolve_recipe(config, FORK_RECIPE), resolve_recipe(config, OFFICIAL_RECIPE)
    assert (v1.beta1, v1.beta2, v1.lr_schedule, v1.warmup_steps, v1.final_lr_fraction) == (0.8, 0.9, "linear", 10, 0.0)
    assert (v15.beta1, v15.beta2, v15.lr_schedule, v15.warmup_steps, v15.final_lr_fraction) == (
        0.9, 0.999, "cosine", 100, 0.01)
    assert build_optimizer([torch.nn.Parameter(torch.zeros(1))], v15).param_groups[0]["betas"] == (0.9, 0.999)
    assert build_optimizer([torch.nn.Parameter(torch.zeros(1))], v1).param_groups[0]["betas"] == (0.8, 0.9)
    assert v1.recipe == ("Optimizer recipe: v1 fork: adamw betas (0.8, 0.9), warm-up from 0 over 10 steps, linear "
                         "decay to 0% of the peak lr")
    assert v15.recipe == ("Optimizer recipe: ACE-Step 1.5 official trainer: adamw betas (0.9, 0.999), warm-up from "
                          "0.1x over 100 steps, cosine decay to 1% of the peak lr")
    # the official warm-up: min(100, total / 10) steps, at least 1
    assert [resolve_recipe(TrainConfig(dataset_path="p", max_steps=n), OFFICIAL_RECIPE).warmup_steps
            for n in (5, 300, 999, 5000)] == [1, 30, 99, 100]
    prodigy = resolve_recipe(TrainConfig(dataset_path="p", optimizer="prodigy"), OFFICIAL_RECIPE)
    assert prodigy.final_lr_fraction == 1.0 and "betas" not in prodigy.recipe  # constant after warm-up, as official


def test_official_lr_is_the_closed_form_and_torchs_warmup_then_cosine() -> None:
    """lr(s) = lr (0.1 + 0.9 s/W) in warm-up, then 0.01 lr + 0.99 lr (1 + cos(pi (s-W)/(N-W)))/2: the same numbers
    as the official construction SequentialLR(LinearLR(0.1 -> 1, W), CosineAnnealingLR(N-W, eta_min=0.01 lr))."""
    total, lr = 200, 1e-4
    config = resolve_recipe(TrainConfig(dataset_path="p", max_steps=total, learning_rate=lr), OFFICIAL_RECIPE)
    warmup = config.warmup_steps
    ours = lrs(config, total + 1)
    assert warmup == 20
    closed = {0: 0.1 * lr, 10: 0.55 * lr, 20: lr, 110: 0.505 * lr, 200: 0.01 * lr,
              65: lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 45 / 180)))}
    for step, value in closed.items():
        assert ours[step] == pytest.approx(value, rel=1e-9), step
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=lr)
    official = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=0.01 * lr),
    ], milestones=[warmup])
    theirs = []
    for _ in range(total + 1):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        official.step()
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-12)
    assert WarmupCosineDecay(0, 10, 0.5)(0) == 1.0 and WarmupCosineDecay(0, 10, 0.5)(10) == pytest.approx(0.5)


def test_v1_lr_is_unchanged() -> None:
    ours = lrs(resolve_recipe(TrainConfig(dataset_path="p", max_steps=110, learning_rate=1e-3), FORK_RECIPE), 111)
    assert ours[0] == 0.0 and ours[5] == pytest.approx(5e-4) and ours[10] == pytest.approx(1e-3)
    assert ours[60] == pytest.approx(5e-4) and ours[110] == pytest.approx(0.0, abs=1e-15)


def test_the_users_flags_win_and_the_recipe_says_so() -> None:
    config = parse_config(["--dataset_path", "p", "--beta1", "0.95", "--warmup_steps", "7", "--lr_schedule", "linear",
                           "--max_steps", "100"])
    resolved = resolve_recipe(config, OFFICIAL_RECIPE)
    assert (resolved.beta1, resolved.beta2, resolved.warmup_steps, resolved.lr_schedule) == (0.95, 0.999, 7, "linear")
    assert resolved.recipe.endswith("(your flags: --beta1, --lr_schedule, --warmup_steps)")
    assert resolve_recipe(resolved, FORK_RECIPE) is resolved  # resolving again changes nothing
    assert build_optimizer([torch.nn.Parameter(torch.zeros(1))], resolved).param_groups[0]["betas"] == (0.95, 0.999)
    ours = lrs(resolved, 8, lr=1e-4)
    assert ours[0] == 0.0 and ours[7] == pytest.approx(1e-4)  # linear: warm-up from 0 over the user's 7 steps
