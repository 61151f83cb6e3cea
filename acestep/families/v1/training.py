"""ACE-Step v1's training parts: its transformer from the checkpoint, its stored songs, its flow-matching step and
validation loss (objective.py), its step-folder writer (export.py), its sample renderer, its blocks and planner
request (what --base_dtype fp8 and --gradient_checkpointing auto act on). The trainer (acestep.training.run) gets
them as `TrainingParts` and never imports v1 code."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import datasets
import torch

from acestep.core.errors import AcestepError
from acestep.data.preprocessed import load_preprocessed
from acestep.families.v1.lora_keys import NAME as V1_FAMILY
from acestep.families.v1.models import ACEStepTransformer2DModel
from acestep.families.v1.models.attention import CrossAttention
from acestep.lora import LoraSettings
from acestep.training.config import CONFIG_DIR, TrainConfig
from acestep.training.family import TrainingParts
from acestep.training.model import resolve_base_dtype
from acestep.training.optim import OptimizerRecipe
from acestep.training.regularization import load_reg_rows
from acestep.training.run import _gpu_wanted as gpu_wanted
from acestep.training.sample_prompts import read_sample_prompts
from acestep.training.validation import split_songs

from .blocks import BLOCKS
from .export import usage_lines, write_step_files
from .objective import V1Step
from .songs import SongLatents, collate_songs, frames_for_seconds

OFFICIAL_MODEL = "ACE-Step/ACE-Step-v1-3.5B"
DEFAULT_LORA_CONFIG = str(CONFIG_DIR / "lora_config_transformer_only.json")  # the repository's, from any folder
# the reference fork's trainer_new.py: AdamW(betas=(0.8, 0.9)), 10 warm-up steps from 0, linear decay
FORK_RECIPE = OptimizerRecipe("v1 fork", (0.8, 0.9), "linear", 10, {"adamw": 0.0, "adamw8bit": 0.0, "prodigy": 0.1})


def training_parts(
    config: TrainConfig,
    transformer: ACEStepTransformer2DModel | None = None,
    dataset: datasets.Dataset | None = None,
    base_model: str | None = None,
) -> TrainingParts:
    """v1's parts for `config`; tests and the demo may pass a ready transformer (its dtype is kept) or dataset."""
    from acestep.families.v1.plan import request_for_run  # the planner's terms load only with the parts
    from acestep.families.v1.samples import SampleRenderer

    settings = LoraSettings.from_json(config.lora_config_path or DEFAULT_LORA_CONFIG)
    train_rows, val_rows = split_songs(
        dataset if dataset is not None else load_preprocessed(config.dataset_path), config.val_songs,
        config.val_dataset, config.overfit_one)
    songs = SongLatents(train_rows, max_frames=frames_for_seconds(config.max_duration), use_ssl=config.use_ssl)
    val_songs = (SongLatents(val_rows, max_frames=frames_for_seconds(config.max_duration), use_ssl=False)
                 if val_rows is not None else None)
    reg_songs = (SongLatents(load_reg_rows(config.reg_dataset, V1_FAMILY), frames_for_seconds(config.max_duration),
                             use_ssl=songs.has_ssl) if config.reg_dataset else None)
    gpu = gpu_wanted(config.accelerator)
    if transformer is None:
        dtype = resolve_base_dtype(config.base_dtype, gpu)
        transformer, base_model = load_base_transformer(config.checkpoint_dir, dtype)
    ssl = songs.has_ssl and config.ssl_coeff > 0
    if config.release_unused_weights:
        release_unused_weights(transformer, keep_ssl_projectors=ssl)
    callbacks = []
    if config.sample_every > 0:
        if not config.sample_prompts:
            raise AcestepError("--sample_every needs --sample_prompts FILE")
        prompts = read_sample_prompts(config.sample_prompts, config.sample_steps)
        callbacks.append(SampleRenderer(config.run_dir, config.sample_every, prompts, config.checkpoint_dir))
    base_model = base_model or OFFICIAL_MODEL
    step = V1Step(config)
    return TrainingParts(
        family=V1_FAMILY, transformer=transformer, songs=songs, collate=collate_songs, step=step, settings=settings,
        base_model=base_model, blocks=BLOCKS, recipe=FORK_RECIPE, fixed_loss=step.fixed_loss,
        write_step_files=partial(write_step_files, settings=settings, base_model=base_model, exp_name=config.exp_name),
        summary=usage_lines, callbacks=callbacks, val_songs=val_songs, reg_songs=reg_songs,
        plan_request=partial(request_for_run, dict(transformer.config), ssl),
    )


def load_base_transformer(checkpoint_dir: str | None, dtype: torch.dtype) -> tuple[ACEStepTransformer2DModel, str]:
    """The transformer of a checkpoint folder or Hub repo, and the name recorded in the adapter's metadata."""
    from acestep.families.v1.checkpoint import resolve_checkpoint

    paths = resolve_checkpoint(checkpoint_dir)
    model = ACEStepTransformer2DModel.from_pretrained(paths.transformer, torch_dtype=dtype)
    if checkpoint_dir is None or is_published_size(paths.transformer):
        return model, OFFICIAL_MODEL
    local = Path(checkpoint_dir)
    return model, str(local.resolve()) if local.exists() else checkpoint_dir


def is_published_size(transformer_dir: Path) -> bool:
    """The published model has 24 blocks of 20 heads; anything else (the tiny test model) is named by path."""
    config = ACEStepTransformer2DModel.load_config(transformer_dir)
    return config.get("num_layers") == 24 and config.get("num_attention_heads") == 20


def release_unused_weights(model: ACEStepTransformer2DModel, keep_ssl_projectors: bool) -> int:
    """Swap weights that no training or sampling forward reads for empty tensors; returns the bytes released.

    The published checkpoint carries cross-attention `add_*` layers (629 M parameters) that the forward pass
    never uses, and the SSL projectors (88 M) only serve the SSL losses. Loading them is what keeps the files
    interchangeable; holding them on a small GPU is waste. Only LoRA factors are ever saved, so nothing is lost.
    """
    layers: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, CrossAttention):
            layers += [getattr(module, name) for name in module.UNUSED_LAYERS]
    if not keep_ssl_projectors:
        layers.append(model.projectors)
    released = 0
    for layer in layers:
        for module in layer.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                released += param.numel() * param.element_size()
                empty = torch.empty(0, dtype=param.dtype, device=param.device)
                setattr(module, name, torch.nn.Parameter(empty, requires_grad=False))
    return released
