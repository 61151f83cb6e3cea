"""--resume with LoRA settings other than the run's: said in one line before Lightning loads anything.

Without this check a changed rank reaches torch's load_state_dict, which prints one size-mismatch line per
tensor (75 for the default targets) after Lightning has announced that it restores the run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from acestep.core.errors import AcestepError
from acestep.lora import LoraSettings

SETTINGS_KEY = "acestep_lora_settings"  # what the training state stores beside Lightning's own keys


def read_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises several kinds for a damaged file
        raise AcestepError(f"{path}: cannot read the saved training state ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''}); the step folders hold the "
                           "adapters saved so far") from error


def settings_changes(saved: LoraSettings, now: LoraSettings) -> list[str]:
    """`name old -> new` for every LoRA setting that differs."""
    changes = []
    for field in dataclasses.fields(LoraSettings):
        old, new = getattr(saved, field.name), getattr(now, field.name)
        if old != new:
            show = (lambda v: ",".join(v)) if field.name == "target_modules" else (lambda v: v)
            changes.append(f"{field.name} {show(old)} -> {show(new)}")
    return changes


def shape_changes(stored: dict[str, torch.Tensor], current: dict[str, torch.Size]) -> list[str]:
    """For states saved before the settings were stored: what the tensors say changed."""
    missing, extra = set(current) - set(stored), set(stored) - set(current)
    if missing or extra:
        return [f"the LoRA targets or adapter type ({len(missing)} tensors missing, {len(extra)} unexpected)"]
    for name, shape in current.items():
        if tuple(stored[name].shape) != tuple(shape):
            short = name.removeprefix("transformer.")
            return [f"tensor shapes, e.g. {short} {list(stored[name].shape)} -> {list(shape)} (the rank?)"]
    return []


def _saved_data_order(state: dict[str, Any]) -> dict[str, Any]:
    """What the saved run's loader said decides its batches (acestep.training.data.RunLoader.state_dict)."""
    loaders = state.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or [{}]
    return {"reg_samples": 0, "reg_weight": "0", **loaders[0]} if loaders[0] else {}


def check_resume(state_path: Path, settings: LoraSettings, module: torch.nn.Module, trainable: set[str],
                 max_steps: int, data_order: dict[str, Any]) -> int:
    """The step the run resumes at; refuses a changed LoRA config or data order (`data_order`: this run's
    loader state without world_size, which only the launched processes know), or a run already at --max_steps."""
    state = read_state(state_path)
    saved = state.get(SETTINGS_KEY)
    if saved is not None:
        changes = settings_changes(LoraSettings.from_dict(saved), settings)
    else:
        params = {name: p.shape for name, p in module.named_parameters() if name in trainable}
        changes = shape_changes(state.get("state_dict", {}), params)
    if changes:
        raise AcestepError(f"--resume: the run was trained with other LoRA settings ({'; '.join(changes)}); resume "
                           "with the LoRA config it started with (train_config.json names it) or start a new "
                           "--exp_name")
    saved_order = _saved_data_order(state)
    changed = [f"{k} {v} -> {data_order[k]}" for k, v in saved_order.items() if k in data_order and data_order[k] != v]
    if changed:  # the loader itself refuses this too, but only after Lightning has restored the run
        raise AcestepError(f"cannot resume with a different data order ({'; '.join(changed)}): use the interrupted "
                           "run's settings")
    step = int(state.get("global_step", 0))
    if step >= max_steps:
        raise AcestepError(f"--resume: the run is already at step {step} (--max_steps {max_steps}); raise --max_steps "
                           "to train on")
    return step
