"""One training run end to end: check the run folder, build model, data and Lightning trainer, fit, report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import lightning as L
import torch

from acestep.data.preprocessed import load_preprocessed
from acestep.errors import AcestepError
from acestep.lora import LoraSettings
from acestep.lora.io import ADAPTER_DIR
from acestep.models import ACEStepTransformer2DModel
from acestep.models.fp8 import FP8_DTYPE, quantize_base

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
)
from .config import DEFAULT_V1_LORA_CONFIG, TrainConfig
from .data import SongLatents, frames_for_seconds
from .family import TrainingParts
from .model import PRECISION_FOR_DTYPE, load_base_transformer, release_unused_weights, resolve_base_dtype
from .module import LoraTrainingModule, NonFiniteLossError
from .samples import SampleRenderer, read_sample_prompts


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
    interrupted: bool = False  # stopped by Ctrl-C after saving the last step
    first_step: int = 0  # global step the run started (or resumed) at
    usage: list[str] | None = None  # the family's own lines on how to use the saved step folder


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


def _compute_dtype(transformer: torch.nn.Module) -> torch.dtype:
    """The frozen base's dtype, which Lightning's precision follows (fp8 weights compute in the 16-bit one)."""
    return next(p for p in transformer.parameters() if not p.requires_grad and p.dtype != FP8_DTYPE).dtype


def _gpu_wanted(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _devices(value: str) -> int | str | list[int]:
    """"auto", a count ("2", "-1" = all) or a list of GPU ids ("0,1")."""
    if value == "auto":
        return value
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    return int(value)


def _logger(config: TrainConfig) -> L.pytorch.loggers.Logger | bool:
    from lightning.pytorch import loggers

    if config.logger == "csv":
        return loggers.CSVLogger(config.run_dir, name="logs")
    if config.logger == "tensorboard":
        return loggers.TensorBoardLogger(config.run_dir, name="logs")
    if config.logger == "wandb":
        return loggers.WandbLogger(project=config.wandb_project, name=config.exp_name, save_dir=str(config.run_dir),
                                   offline=config.wandb_offline)
    return False


def _strategy(config: TrainConfig) -> str:
    """DDP whenever more than one process trains (several GPUs or nodes); Lightning's default otherwise."""
    devices = _devices(config.devices)
    many = devices == -1 or (isinstance(devices, int) and devices > 1) or (isinstance(devices, list) and len(devices) > 1)
    return "ddp" if many or config.num_nodes > 1 else "auto"


def run_training(
    config: TrainConfig,
    transformer: ACEStepTransformer2DModel | None = None,
    dataset: datasets.Dataset | None = None,
    base_model: str | None = None,
    parts: TrainingParts | None = None,
) -> TrainResult:
    """Train per `config`. Tests and the demo may pass a ready transformer (its dtype is kept) or dataset.

    `parts`: another model family's model, data, objective and step-folder writer (default: ACE-Step v1).
    """
    config.validate()
    resume_from = check_run_dir(config)
    if parts is not None:
        transformer, settings, songs = parts.transformer, parts.settings, parts.songs
        module = LoraTrainingModule(transformer, settings, config, songs, step=parts.step, collate=parts.collate)
        base_model = parts.base_model
    else:
        settings = LoraSettings.from_json(config.lora_config_path or DEFAULT_V1_LORA_CONFIG)
        songs = SongLatents(
            dataset if dataset is not None else load_preprocessed(config.dataset_path),
            max_frames=frames_for_seconds(config.max_duration),
            use_ssl=config.use_ssl,
        )
        if transformer is None:
            dtype = resolve_base_dtype(config.base_dtype, _gpu_wanted(config.accelerator))
            transformer, base_model = load_base_transformer(config.checkpoint_dir, dtype)
        if config.release_unused_weights:
            release_unused_weights(transformer, keep_ssl_projectors=songs.has_ssl and config.ssl_coeff > 0)
        if config.base_dtype == "fp8":
            quantize_base(transformer, _compute_dtype(transformer))
        module = LoraTrainingModule(transformer, settings, config, songs)
    dtype = _compute_dtype(transformer)
    transformer.train()
    config.run_dir.mkdir(parents=True, exist_ok=True)
    saver = AdapterSaver(config.run_dir, config.every_n_train_steps, config.save_last, settings,
                         base_model or "ACE-Step/ACE-Step-v1-3.5B", config.exp_name,
                         parts.write_step_files if parts is not None else None)
    ctrl_c = StopOnCtrlC(saver)
    metrics = MetricsFile(config.run_dir / METRICS_FILE)
    samplers = list(parts.callbacks) if parts is not None else []
    if config.sample_every > 0 and parts is None:
        if not config.sample_prompts:
            raise AcestepError("--sample_every needs --sample_prompts FILE")
        prompts = read_sample_prompts(config.sample_prompts, config.sample_steps)
        samplers.append(SampleRenderer(config.run_dir, config.sample_every, prompts, config.checkpoint_dir))
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
        logger=_logger(config),
        callbacks=[ConfigFile(config.run_dir / CONFIG_FILE, config), metrics, saver,
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
    latest = list_step_folders(config.run_dir)
    adapter_dir = latest[-1][1] if latest else None
    baked = adapter_dir / baked_file_name(config.exp_name, latest[-1][0]) if adapter_dir else None
    return TrainResult(
        usage=parts.summary(adapter_dir) if parts is not None and parts.summary and adapter_dir else None,
        run_dir=config.run_dir,
        steps=trainer.global_step,
        seconds=time.perf_counter() - started,
        adapter_dir=adapter_dir,
        baked_file=baked,
        metrics_file=config.run_dir / METRICS_FILE,
        stopped=stopped,
        interrupted=ctrl_c.stopped_at is not None,
        first_step=metrics.first_step,
    )


def summary_text(result: TrainResult) -> str:
    """Plain-language end of run: what happened, where the adapter is, how to use it."""
    minutes = result.seconds / 60
    done = f"trained {result.steps - result.first_step} steps" + (
        f" (resumed at {result.first_step}, now at {result.steps})" if result.first_step else "")
    lines = [f"Training {'stopped early' if result.stopped else 'finished'}: {done} in {minutes:.1f} min."]
    if result.interrupted:
        lines[0] = f"Training stopped by Ctrl-C after step {result.steps}: {done} in {minutes:.1f} min; that step is saved."
    if result.stopped:
        lines.append(f"Reason: {result.stopped}")
    if result.adapter_dir is None:
        lines.append("No adapter was saved (the run stopped before its first save).")
    elif result.usage:
        lines += [f"Latest adapter: {result.adapter_dir}", *result.usage]
    else:
        lines += [
            f"Latest adapter: {result.adapter_dir}",
            f"  ComfyUI: copy {result.baked_file} into ComfyUI/models/loras and load it at strength 1.0.",
            "  ACE-Step pipeline: put that same file in a folder as pytorch_lora_weights.safetensors and call",
            "    load_lora(folder) with weight 1.0.",
            f"  PEFT / diffusers: {result.adapter_dir / ADAPTER_DIR} is the un-baked adapter at its trained scale "
            "(PeftModel.from_pretrained(model, folder), or load_lora_adapter(folder, "
            "weight_name='adapter_model.safetensors', prefix='base_model.model')).",
            "  Continue training: run the same command again with --resume"
            + (f" (it goes on from step {result.steps})." if result.interrupted else "."),
        ]
    lines.append(f"Loss per step: {result.metrics_file}")
    return "\n".join(lines)
