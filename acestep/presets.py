"""Card presets: the fastest training settings that fit a GPU, computed by the planner of the model's family.

Speed is ranked by a simple model of one step, relative to a step without checkpointing in bf16: each checkpointed
block adds one more forward of that block (a third of its forward + backward), and an fp8 base adds the
dequantization of every weight in every pass. `FP8_SHARE` is an assumption until fp8 is timed on a GPU; the
8-bit optimizer is taken as fast as AdamW (both touch only the LoRA factors). Ties go to bf16 and AdamW (exact,
no extra package). Every function takes any family's planner request (acestep.families.v1.plan: `plan()`, `block_count`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from acestep.core.errors import AcestepError
from acestep.families.v1.plan import PlanRequest
from acestep.training.planner import FP8, fewest_checkpointed_blocks, longest_duration_that_fits

if TYPE_CHECKING:
    from acestep.training.config import TrainConfig

PRESET_GB = {"6gb": 6.0, "8gb": 8.0, "10gb": 10.0, "12gb": 12.0, "16gb": 16.0, "24gb": 24.0}
BASE_DTYPES = ("bf16", FP8)
OPTIMIZERS = ("adamw", "adamw8bit")
RECOMPUTE_SHARE = 1 / 3
FP8_SHARE = 0.1
DEFAULT_DURATION = 360.0  # stage 3 keeps at most 360 s per song by default


def relative_step_time(base_dtype: str, checkpointed: int, blocks: int) -> float:
    """Step time relative to bf16 without checkpointing, by the model in the module docstring."""
    return 1 + RECOMPUTE_SHARE * checkpointed / blocks + (FP8_SHARE if base_dtype == FP8 else 0.0)


@dataclass(frozen=True)
class CardSettings:
    """What a card trains with: `duration` is the crop (shorter than asked when nothing fits the asked one)."""

    request: Any  # the fitting plan (any family's request): duration, base dtype, optimizer, checkpointed blocks
    asked_duration: float
    blocks: int

    @property
    def relative_time(self) -> float:
        return relative_step_time(self.request.base_dtype, self.request.checkpointed_blocks, self.blocks)

    def flags(self) -> dict[str, str]:
        r = self.request
        return {"base_dtype": r.base_dtype, "optimizer": r.optimizer,
                "gradient_checkpointing": str(r.checkpointed_blocks), "max_duration": f"{r.duration:g}"}

    def text(self) -> str:
        r = self.request
        plan = r.plan()
        crop = "" if r.duration >= self.asked_duration else f" ({self.asked_duration:g} s does not fit)"
        return (f"{r.gpu_gb:g} GB, {r.duration:g} s crops{crop}: " + " ".join(f"--{k} {v}" for k, v in self.flags().items())
                + f" ({r.checkpointed_blocks} of {self.blocks} blocks checkpointed, step ~{self.relative_time:.2f}x "
                f"the uncheckpointed bf16 step; planner {plan.device_bytes / 1e9:.2f} GB)")


def settings_to_try(request: Any, optimizers: tuple[str, ...] = OPTIMIZERS) -> list[Any]:
    """Every base dtype, optimizer and checkpointed-block count, at the request's duration."""
    return [replace(request, base_dtype=d, optimizer=o, checkpointed_blocks=k)
            for d in BASE_DTYPES for o in optimizers for k in range(request.block_count + 1)]


def fastest_settings(request: Any, optimizers: tuple[str, ...] = OPTIMIZERS,
                     base_dtypes: tuple[str, ...] = BASE_DTYPES, checkpointed: int | None = None,
                     fixed_crop: bool = False) -> CardSettings | None:
    """The fastest settings that fit `request.gpu_gb` at `request.duration`, among `base_dtypes` x `optimizers`
    and, unless `checkpointed` fixes it, every checkpointed-block count. When none fits, the longest crop at which
    the leanest of them (the last dtype and optimizer, every block or `checkpointed` checkpointed) fit, and the
    fastest there; None when not even a 10 s crop fits, or with `fixed_crop` when the asked crop does not."""
    blocks = request.block_count
    if checkpointed is not None:  # the user's N, on a model with fewer blocks: all of them
        checkpointed = min(checkpointed, blocks)
    leanest = replace(request, base_dtype=base_dtypes[-1], optimizer=optimizers[-1],
                      checkpointed_blocks=blocks if checkpointed is None else checkpointed)
    crop = request.duration
    if not leanest.plan().fits:
        crop = None if fixed_crop else longest_duration_that_fits(leanest)
        if crop is None:
            return None
    best: tuple[float, PlanRequest] | None = None
    for base_dtype in base_dtypes:
        for optimizer in optimizers:
            candidate = replace(request, duration=crop, base_dtype=base_dtype, optimizer=optimizer)
            if checkpointed is None:
                count = fewest_checkpointed_blocks(candidate)
            else:
                count = checkpointed if replace(candidate, checkpointed_blocks=checkpointed).plan().fits else None
            if count is None:
                continue
            cost = relative_step_time(base_dtype, count, blocks)
            if best is None or cost < best[0]:
                best = (cost, replace(candidate, checkpointed_blocks=count))
    return CardSettings(best[1], request.duration, blocks) if best else None


def preset_request(name: str, duration: float, **changes: object) -> PlanRequest:
    """The planner's request for preset `name` (a CUDA card of its size) at `duration`."""
    if name not in PRESET_GB:
        raise AcestepError(f"--preset must be one of {', '.join(PRESET_GB)}, not {name!r}")
    return PlanRequest(duration=duration, gpu_gb=PRESET_GB[name], device="cuda", **changes)


def apply_preset(config: TrainConfig, given: set[str], model: Any = None) -> TrainConfig:
    """`config` with the preset's settings wherever the user gave no flag of their own; `preset_applied` says what
    it set. `model`: the planner's request for the model being trained (its family's; default the published v1),
    so the picks fit that model. The checkpointed blocks are left to --gradient_checkpointing auto at the card's
    size, which the run resolves on the model it is given: a preset never names more blocks than the model has."""
    import torch

    from acestep.lora import LoraSettings
    from acestep.training.optim import bitsandbytes_available

    duration = config.max_duration or DEFAULT_DURATION
    lora = {"lora_config": config.lora_config_path} if config.lora_config_path else {}
    if model is None:
        request = preset_request(config.preset, duration, batch_size=config.batch_size, ssl=config.use_ssl, **lora)
    else:
        ssl = {"ssl": config.use_ssl} if any(f.name == "ssl" for f in dataclasses.fields(model)) else {}
        request = replace(model, duration=duration, gpu_gb=PRESET_GB[config.preset], device="cuda",
                          batch_size=config.batch_size, **ssl, **lora)
    # the search keeps to the user's own flags, so what it picks for the rest fits together with them
    if "optimizer" in given:
        optimizers: tuple[str, ...] = (config.optimizer,)
    else:
        optimizers = OPTIMIZERS if bitsandbytes_available() and torch.cuda.is_available() else OPTIMIZERS[:1]
    adapter = LoraSettings.from_json(request.lora_config)  # the user's, else the family's default
    if "base_dtype" in given and config.base_dtype != "auto":
        base_dtypes: tuple[str, ...] = (config.base_dtype,)
    else:  # DoRA's magnitudes are norms of the 16-bit base: no fp8 (the trainer refuses it)
        base_dtypes = BASE_DTYPES if adapter.adapter_type != "dora" else BASE_DTYPES[:1]
    mode = config.gradient_checkpointing
    own_blocks = "gradient_checkpointing" in given and mode != "auto"
    checkpointed = None if not own_blocks else (
        request.block_count if mode == "all" else 0 if mode == "none" else int(mode))
    found = fastest_settings(request, optimizers, base_dtypes, checkpointed, fixed_crop="max_duration" in given)
    if found is None:
        own = [f"--{k}" for k in ("base_dtype", "optimizer", "gradient_checkpointing", "max_duration") if k in given]
        raise AcestepError(f"--preset {config.preset}: nothing fits {PRESET_GB[config.preset]:g} GB by the planner"
                           + (f" with your {', '.join(own)}" if own else ", not even 10 s crops")
                           + " (python -m acestep.plan --presets)")
    chosen = {k: v for k, v in found.flags().items() if k not in given}
    values: dict[str, Any] = {k: (float(v) if k == "max_duration" else v) for k, v in chosen.items()}
    if "gradient_checkpointing" in chosen:  # refit on the run's own model (same planner, same answer here)
        values["gradient_checkpointing"] = "auto"
        if "vram_gb" not in given:
            values["vram_gb"] = PRESET_GB[config.preset]
    note = (f"--preset {config.preset} set " + " ".join(f"--{k} {v}" for k, v in values.items())
            if chosen else f"--preset {config.preset} set nothing (your flags cover it)")
    kept = sorted(k for k in found.flags() if k in given)
    if kept:
        note += f"; kept your --{', --'.join(kept)}"
    if "optimizer" not in given and "adamw8bit" not in optimizers:
        note += "; adamw8bit left out (needs bitsandbytes and CUDA)"
    return dataclasses.replace(config, **values, preset_applied=note + f" ({found.text()})")


def fastest_lines(request: Any, all_cards: bool = False) -> list[str]:
    """The planner CLI's lines: the fastest settings for the request's card (or every preset card) at its
    duration, rank, batch and SSL."""
    cards = {f"--preset {name}": gb for name, gb in PRESET_GB.items()} if all_cards else {"": request.gpu_gb}
    lines = [f"Fastest settings that fit, at {request.duration:g} s (step time by acestep.presets' model; "
             "adamw8bit needs bitsandbytes and CUDA):"]
    for name, gb in cards.items():
        found = fastest_settings(replace(request, gpu_gb=gb, device="cuda"))
        text = found.text() if found else f"{gb:g} GB: nothing fits, not even 10 s crops"
        lines.append(f"  {name + ': ' if name else ''}{text}")
    return lines


def table_cell(found: CardSettings | None) -> str:
    """One cell of README's "Will it fit?" table of presets."""
    if found is None:
        return "does not fit"
    r = found.request
    crop = f", {r.duration:g} s crops" if r.duration < found.asked_duration else ""
    return (f"{r.base_dtype}, {r.optimizer}, {r.checkpointed_blocks} of {found.blocks} blocks checkpointed{crop}: "
            f"{r.plan().device_bytes / 1e9:.2f} GB")


def table_rows(durations: tuple[float, ...] = (180.0, 360.0)) -> list[str]:
    """README's table of presets (markdown rows), the published model, r 64, batch 1, SSL on."""
    rows = []
    for name, gb in PRESET_GB.items():
        cells = [table_cell(fastest_settings(preset_request(name, d))) for d in durations]
        rows.append(f"| {gb:g} GB (`--preset {name}`) | " + " | ".join(cells) + " |")
    return rows
