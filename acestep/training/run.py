"""One training run end to end: check the run folder, build model, data and Lightning trainer, fit, report."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from acestep.core.cuda_check import check_cuda
from acestep.core.errors import AcestepError
from acestep.data.preprocessed import dataset_trigger
from acestep.lora import LoraSettings
from acestep.training.fp8 import FP8_DTYPE, quantize_base

from .callbacks import (
    CONFIG_FILE,
    METRICS_FILE,
    STATE_FILE,
    AdapterSaver,
    CompactProgressBar,
    ConfigFile,
    MetricsFile,
    StopOnCtrlC,
    baked_file_name,
    list_step_folders,
    read_metrics,
    step_folder_name,
)
from .checkpointing import DTYPE_NAMES, card_gb, resolve_auto
from .config import TrainConfig
from .data import RunOrderSampler
from .family import ModelBlocks, PlanRequestFor, TrainingParts
from .lock import is_first_process, run_folder_lock
from .model import PRECISION_FOR_DTYPE
from .module import LoraTrainingModule, NonFiniteLossError
from .optim import resolve_recipe
from .regularization import check_reg_folder, reg_fraction, reg_mix_line
from .resume_check import check_resume
from .validation import VAL_CURVE_FILE, ValidationLoss, ValidationSet, write_loss_curve


@dataclass
class TrainResult:
    """What a run produced; `stopped` holds the reason when it ended early (non-finite loss)."""

    run_dir: Path
    steps: int
    seconds: float
    adapter_dir: Path | None
    baked_file: Path | None
    metrics_file: Path
    stopped: str | None = None
    interrupted: bool = False  # stopped by Ctrl-C (or SIGTERM, SIGHUP) after saving the last step
    stop_signal: str = "Ctrl-C"  # what interrupted it
    first_step: int = 0  # global step the run started (or resumed) at
    usage: list[str] | None = None  # the family's lines on how to use the saved step folder (TrainingParts.summary)
    global_rank: int = 0  # under DDP every process returns; only rank 0 reports
    best_val: tuple[int, float] | None = None  # (step, loss) of the lowest validation loss, kept from pruning
    val_curve: Path | None = None  # val_loss_curve.png
    trigger: str | None = None  # the dataset's trigger tag (stage 3 --trigger)
    val_start: float | None = None  # validation loss before the first step (fresh runs)
    val_last: float | None = None  # validation loss at the last evaluated step
    overfit_one: bool = False
    reg_line: str | None = None  # how many micro-batches came from --reg_dataset
    notes: list[str] | None = None  # what --preset and --gradient_checkpointing auto chose


def check_run_dir(config: TrainConfig) -> Path | None:
    """The state to resume from, or None for a fresh run; never reuses or clears someone else's folder."""
    state = config.run_dir / STATE_FILE
    if config.resume:
        if not state.is_file():
            raise AcestepError(f"{config.run_dir}: nothing to resume (no {STATE_FILE.as_posix()})")
        return state
    if state.is_file() or list_step_folders(config.run_dir):
        raise AcestepError(
            f"{config.run_dir}: a run with this name exists; add --resume to continue it or pick another --exp_name"
        )
    return None


def check_trigger(config: TrainConfig) -> str | None:
    """The dataset's trigger tag; refused when it is not the --trigger asked for (an empty one means none)."""
    found = dataset_trigger(config.dataset_path) if config.dataset_path else None
    wanted = config.trigger.strip() if config.trigger else None
    if config.trigger is not None and wanted != found:
        has = f"the trigger {found!r}" if found else "no trigger"
        raise AcestepError(f"{config.dataset_path}: the dataset was preprocessed with {has}, not {wanted!r}; "
                           "preprocess it again with --trigger or train with the dataset's trigger")
    return found


def _compute_dtype(transformer: torch.nn.Module) -> torch.dtype:
    """The frozen base's dtype, which Lightning's precision follows (fp8 weights compute in the 16-bit one)."""
    weights = [p for p in transformer.parameters() if p.dtype != FP8_DTYPE]
    return next((p for p in weights if not p.requires_grad), weights[0]).dtype  # before LoRA nothing is frozen


def _gpu_wanted(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _devices(value: str) -> int | str | list[int]:
    """"auto", a count ("2", "-1" = all) or a list of GPU ids ("0,1")."""
    if value == "auto":
        return value
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    return int(value)


def run_settings(config: TrainConfig, settings: LoraSettings, family: str, songs: int) -> dict[str, Any]:
    """What W&B shows as the run's config: all of train_config.json, with the learning rate the optimizer really
    uses, and the LoRA settings, model family and dataset size, so runs can be compared and filtered."""
    from .optim import DEFAULT_LR

    lora = {**dataclasses.asdict(settings), "target_modules": list(settings.target_modules)}
    lr = config.learning_rate if config.learning_rate is not None else DEFAULT_LR[config.optimizer]
    return {**config.to_dict(), "learning_rate": lr, "lora": lora, "family": family, "dataset_songs": songs}


def _logger(config: TrainConfig, run_config: dict[str, Any]) -> L.pytorch.loggers.Logger | bool:
    from lightning.pytorch import loggers

    if config.logger == "csv":
        return loggers.CSVLogger(config.run_dir, name="logs")
    if config.logger == "tensorboard":
        return loggers.TensorBoardLogger(config.run_dir, name="logs")
    if config.logger == "wandb":
        return loggers.WandbLogger(project=config.wandb_project, name=config.exp_name, save_dir=str(config.run_dir),
                                   offline=config.wandb_offline, config=run_config)
    return False


def _finish_wandb(trainer: L.Trainer) -> None:
    """End the W&B run with the training run (its files are complete then), so that a second run in the same
    process starts its own W&B run instead of logging into this one."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero and logger._experiment is not None:
            logger.experiment.finish()


def _device_count(devices: int | str | list[int]) -> int | None:
    """Processes per node the --devices value asks for (None: auto or all)."""
    if isinstance(devices, list):
        return len(devices)
    return devices if isinstance(devices, int) and devices > 0 else None


def check_devices(config: TrainConfig) -> None:
    """A GPU this torch cannot use, or more GPUs asked than this machine has: one line naming the fix, before
    anything loads."""
    check_cuda("--accelerator", config.accelerator, "--accelerator cpu")
    wanted = _device_count(_devices(config.devices))
    if not wanted or not _gpu_wanted(config.accelerator):
        return
    available = torch.cuda.device_count()
    if wanted > available:
        raise AcestepError(
            f"--devices {config.devices} asks for {wanted} GPUs but this machine has {available}: use --devices "
            f"{max(available, 1)}" + ("" if available else " --accelerator cpu")
        )


def _strategy(config: TrainConfig) -> str | L.pytorch.strategies.Strategy:
    """DDP whenever more than one process trains (several GPUs or nodes); Lightning's default otherwise.

    NCCL, DDP's GPU backend, does not exist on Windows: there the processes talk over gloo (slower, but works).
    """
    devices = _devices(config.devices)
    many = devices == -1 or (isinstance(devices, int) and devices > 1) or (isinstance(devices, list) and len(devices) > 1)
    if not (many or config.num_nodes > 1):
        return "auto"
    if _gpu_wanted(config.accelerator) and not torch.distributed.is_nccl_available():
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend="gloo")
    return "ddp"


def prepare_base(transformer: torch.nn.Module, config: TrainConfig, settings: LoraSettings, blocks: ModelBlocks,
                 plan_request: PlanRequestFor | None, notes: list[str], family: str = "this") -> TrainConfig:
    """--base_dtype fp8 and --gradient_checkpointing auto on any family's frozen base, before LoRA is attached;
    returns `config` with auto resolved (the line that says what it chose goes to `notes`)."""
    if config.base_dtype == "fp8":
        if settings.adapter_type == "dora":  # DoRA's magnitudes are norms of the base weights, kept 16-bit
            raise AcestepError("adapter_type dora needs a 16-bit base: use --base_dtype bf16 / fp16 with it")
        quantize_base(transformer, _compute_dtype(transformer), blocks.fp8_prefixes)
    if config.gradient_checkpointing == "auto":
        if plan_request is None:
            raise AcestepError(f"--gradient_checkpointing auto: the {family} family has no planner; use all / none / N")
        gpu = _gpu_wanted(config.accelerator)
        dtype = "fp8" if config.base_dtype == "fp8" else DTYPE_NAMES[_compute_dtype(transformer)]
        request = plan_request(config, card_gb(config, gpu), "cuda" if gpu else "cpu", dtype)
        config, line = resolve_auto(config, request)
        notes.append(line)
    return config


def preflight(config: TrainConfig) -> None:
    """The one-line refusals that need no model, run before a family loads one: bad options, more GPUs than the
    machine has, a trigger the dataset lacks, a run folder in the way (or nothing to resume)."""
    config.validate()
    check_devices(config)
    check_trigger(config)
    check_run_dir(config)
    if config.reg_dataset:
        check_reg_folder(config.reg_dataset)


def run_training(config: TrainConfig, parts: TrainingParts) -> TrainResult:
    """Train per `config` on a model family's parts (acestep.families.training builds them for the CLIs).
    The run folder is locked for the run: a second trainer there refuses."""
    config.validate()
    with run_folder_lock(config.run_dir):
        return _train(config, parts)


def _train(config: TrainConfig, parts: TrainingParts) -> TrainResult:
    check_devices(config)
    trigger = check_trigger(config)
    resume_from = check_run_dir(config)
    notes = [config.preset_applied] if config.preset_applied else []
    # the family's own defaults and recipe for what the user left unset
    config = resolve_recipe(dataclasses.replace(config, **parts.resolved), parts.recipe)
    notes += parts.notes
    notes.append(config.recipe)
    transformer, settings, songs = parts.transformer, parts.settings, parts.songs
    config = prepare_base(transformer, config, settings, parts.blocks, parts.plan_request, notes, parts.family)
    val_songs, collate = parts.val_songs, parts.collate
    if val_songs is not None and parts.fixed_loss is None:
        raise AcestepError(f"--val_songs / --val_dataset: the {parts.family} family has no validation loss")
    module = LoraTrainingModule(transformer, settings, config, songs, step=parts.step, collate=parts.collate,
                                reg_songs=parts.reg_songs, blocks=parts.blocks)
    for line in notes:
        print(line, flush=True)
    if resume_from is not None:  # a changed LoRA config is refused here, before Lightning restores anything
        reg_count = len(module.reg_songs) if module.reg_songs is not None else 0
        order = RunOrderSampler(len(module.dataset), config.batch_size, 1, config.seed, reg_samples=reg_count,
                                reg_weight=reg_fraction(config.reg_weight)).state_dict()
        del order["world_size"]
        step = check_resume(resume_from, settings, module, module.trainable_keys, config.max_steps, order)
        if is_first_process():  # one line per run under DDP
            print(f"Resuming {config.run_dir} at step {step}", flush=True)
    dtype = _compute_dtype(transformer)
    transformer.train()
    config.run_dir.mkdir(parents=True, exist_ok=True)
    saver = AdapterSaver(config.run_dir, config.every_n_train_steps, config.save_last, parts.write_step_files)
    saver.trigger = trigger
    ctrl_c = StopOnCtrlC(saver)
    metrics = MetricsFile(config.run_dir / METRICS_FILE)
    validation = None
    if val_songs is not None:
        held_out = ValidationSet(val_songs, collate, config.seed, config.val_timesteps)
        validation = ValidationLoss(held_out, parts.fixed_loss, config.val_every, saver)
        saver.protected_steps = validation.protected_steps
    saver.protected_steps = with_eval_best(saver.protected_steps, config.run_dir)
    samplers = list(parts.callbacks)
    trainer = L.Trainer(
        accelerator=config.accelerator,
        devices=_devices(config.devices),
        num_nodes=config.num_nodes,
        strategy=_strategy(config),
        precision=PRECISION_FOR_DTYPE[dtype],
        max_steps=config.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=config.accumulate_grad_batches,
        gradient_clip_val=config.gradient_clip_val or None,
        logger=_logger(config, run_settings(config, settings, parts.family, len(songs))),
        callbacks=[ConfigFile(config.run_dir / CONFIG_FILE, config), *([validation] if validation else []), metrics, saver,
                   ctrl_c, *samplers]
        + ([CompactProgressBar()] if config.progress_bar else []),
        enable_checkpointing=False,
        enable_progress_bar=config.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    stopped = None
    try:
        with ctrl_c.installed():
            trainer.fit(module, ckpt_path=resume_from, weights_only=True)
    except NonFiniteLossError as error:
        stopped = str(error)
    finally:
        _finish_wandb(trainer)
    latest = list_step_folders(config.run_dir)
    adapter_dir = latest[-1][1] if latest else None
    baked = adapter_dir / baked_file_name(config.exp_name, latest[-1][0]) if adapter_dir else None
    return TrainResult(
        usage=parts.summary(adapter_dir) if parts.summary and adapter_dir else None,
        run_dir=config.run_dir,
        steps=trainer.global_step,
        seconds=time.perf_counter() - started,
        adapter_dir=adapter_dir,
        baked_file=baked,
        metrics_file=config.run_dir / METRICS_FILE,
        stopped=stopped,
        interrupted=ctrl_c.stopped_at is not None,
        stop_signal=ctrl_c.signal_name,
        first_step=metrics.first_step,
        global_rank=trainer.global_rank,
        trigger=trigger,
        val_start=validation.start_loss if validation else None,
        val_last=_last_val_loss(config.run_dir / METRICS_FILE) if validation else None,
        overfit_one=config.overfit_one,
        notes=notes,
        reg_line=reg_mix_line(config.reg_dataset, config.reg_weight, trainer.global_step,
                              config.accumulate_grad_batches) if config.reg_dataset else None,
        best_val=(validation.best_step, validation.best_loss) if validation and validation.best_step > 0 else None,
        val_curve=write_loss_curve(config.run_dir / METRICS_FILE, config.run_dir / VAL_CURVE_FILE)
        if validation and trainer.is_global_zero and (config.run_dir / METRICS_FILE).is_file() else None,
    )


def with_eval_best(protected: Callable[[], set[int]], run_dir: Path) -> Callable[[], set[int]]:
    """The steps kept from pruning plus the best step of the run's listening evaluation (RUN/eval/eval.json)."""
    from acestep.evaluation.report import read_best_step

    def steps() -> set[int]:
        best = read_best_step(run_dir / "eval")
        return protected() | ({best} if best else set())

    return steps


def _last_val_loss(metrics_file: Path) -> float | None:
    values = [row["val_loss"] for row in read_metrics(metrics_file) if "val_loss" in row]
    return values[-1] if values else None


OVERFIT_FALL = 0.9  # the smoke test passes when the loss on its song ends below 90% of where it started


def overfit_lines(result: TrainResult) -> list[str]:
    """The --overfit_one verdict: did the fixed-noise loss on the one song fall?"""
    if result.val_start is None or result.val_last is None:
        return ["Overfit check: no verdict (the run did not start fresh or stopped before its first evaluation)."]
    change = 100 * (result.val_last / result.val_start - 1)
    numbers = f"loss on the song (fixed noise) {result.val_start:.4g} -> {result.val_last:.4g} ({change:+.0f}%)"
    if result.val_last < OVERFIT_FALL * result.val_start:
        return [f"Overfit check PASSED: {numbers}. The data and the LoRA learn; train on the whole dataset."]
    return [f"Overfit check FAILED: {numbers}. The LoRA barely learns even one song: raise --learning_rate, "
            "check the LoRA targets (--lora_config_path) and that the dataset matches --checkpoint_dir."]


def summary_text(result: TrainResult) -> str:
    """Plain-language end of run: what happened, where the adapter is, how to use it."""
    minutes = result.seconds / 60
    done = f"trained {result.steps - result.first_step} steps" + (
        f" (resumed at {result.first_step}, now at {result.steps})" if result.first_step else "")
    lines = [f"Training {'stopped early' if result.stopped else 'finished'}: {done} in {minutes:.1f} min."]
    if result.interrupted:
        lines[0] = f"Training stopped by {result.stop_signal} after step {result.steps}: {done} in {minutes:.1f} min; that step is saved."
    if result.stopped:
        lines.append(f"Reason: {result.stopped}")
    if result.adapter_dir is None:
        lines.append("No adapter was saved (the run stopped before its first save).")
    else:
        lines += [
            f"Latest adapter: {result.adapter_dir}", *(result.usage or []),
            "  Continue training: run the same command again with --resume"
            + (f" (it goes on from step {result.steps})." if result.interrupted else "."),
        ]
    lines += result.notes or []
    if result.overfit_one:
        lines += overfit_lines(result)
    if result.reg_line:
        lines.append(result.reg_line)
    if result.trigger:
        lines.append(f"Trigger tag: put {result.trigger!r} in your prompts to call up this LoRA.")
    if result.best_val is not None:
        step, loss = result.best_val
        lines.append(f"Lowest validation loss {loss:.4g} at step {step}: {result.run_dir / step_folder_name(step)} "
                     "(kept; try it against the latest)")
    if result.val_curve is not None:
        lines.append(f"Loss curves: {result.val_curve}")
    lines.append(f"Loss per step: {result.metrics_file}")
    return "\n".join(lines)
