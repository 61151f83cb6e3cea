"""ACE-Step 1.5 training parts for the shared trainer: the DiT and its null condition, the stored songs, the step.

The trainer machinery (acestep/training/) runs the loop, resume, saving and logging; this module only says what a
1.5 micro-batch holds, which objective it trains and which files a step folder gets.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import Dataset

from acestep.core.errors import AcestepError
from acestep.lora import LoraSettings
from acestep.lora.adapters import BaseWeight
from acestep.training.config import CONFIG_DIR, TrainConfig
from acestep.training.data import Draw, pad_stack
from acestep.training.family import TrainingParts
from acestep.training.optim import OptimizerRecipe
from acestep.training.regularization import load_reg_rows
from acestep.training.validation import split_songs

from .blocks import BLOCKS, LATENT_FRAMES_PER_SECOND
from .checkpoint import V15Checkpoint, dit_config, load_components
from .export import usage_lines, write_step_files
from .lora_keys import NAME as V15_FAMILY
from .objective import PUBLISHED_MU, PUBLISHED_SIGMA, TimestepSampler, V15Step, resolve_schedule

DEFAULT_LORA_CONFIG = str(CONFIG_DIR / "lora_config_v15.json")  # the repository's, from any current folder
LATENT_COLUMNS = ("target_latents", "context_latents")
OUTPUT_COLUMNS = ("encoder_hidden_states", "encoder_attention_mask")  # --condition_store outputs (cached)
INPUT_COLUMNS = ("text_hidden_states", "text_attention_mask", "lyric_hidden_states", "lyric_attention_mask")
CONDITION_DROPOUT = 0.15  # cfg_ratio of the models' pre-training and the current official trainer's default
# the official trainer (acestep/training/trainer.py, and training_v2/optim.py since): torch's AdamW betas, warm-up
# LinearLR from 0.1x over min(100, total/10) steps, then a cosine to 1 % of lr (Prodigy: constant after warm-up)
OFFICIAL_RECIPE = OptimizerRecipe("ACE-Step 1.5 official trainer", (0.9, 0.999), "cosine", 100,
                                  {"adamw": 0.01, "adamw8bit": 0.01, "prodigy": 1.0}, warmup_fraction=0.1)


def frames_for_seconds(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, math.floor(seconds * LATENT_FRAMES_PER_SECOND))


class V15Songs(Dataset):
    """Stored 1.5 rows as float tensors; latents and context latents cropped together to `max_frames`.

    The condition (prompt, lyrics, metadata, timbre) always describes the whole song, as in the official trainer.
    """

    def __init__(self, dataset: datasets.Dataset, max_frames: int | None = None) -> None:
        names = set(dataset.column_names)
        self.stores_inputs = not set(OUTPUT_COLUMNS) <= names and set(INPUT_COLUMNS) <= names
        self.condition_columns = INPUT_COLUMNS if self.stores_inputs else OUTPUT_COLUMNS
        missing = [c for c in LATENT_COLUMNS + self.condition_columns if c not in names]
        if missing:
            raise AcestepError(f"the dataset lacks the column(s) {', '.join(missing)}: not an ACE-Step 1.5 dataset")
        self.dataset = dataset.select_columns(list(LATENT_COLUMNS + self.condition_columns)).with_format("torch")
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, draw: Draw) -> dict[str, Any]:
        row = self.dataset[draw.index]
        latents, context = row["target_latents"].float(), row["context_latents"].float()
        frames = latents.shape[0]
        if self.max_frames is not None and frames > self.max_frames:
            generator = torch.Generator().manual_seed(draw.seed)
            start = int(torch.randint(0, frames - self.max_frames + 1, (1,), generator=generator))
            latents, context = latents[start:start + self.max_frames], context[start:start + self.max_frames]
        item = {"target_latents": latents, "context_latents": context, "micro_batch": draw.micro_batch,
                "seed": draw.seed}
        item.update({name: row[name].float() for name in self.condition_columns})
        return item


def collate_v15(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad frames and condition tokens to the longest in the batch.

    diffusers' DiT takes no padding masks, so padded frames and tokens are attended to; the loss ignores padded
    frames. Batch size 1 (the default) or equal crops (--max_duration) avoid padding altogether.
    """
    latents, frame_mask = pad_stack([i["target_latents"] for i in items])
    batch = {"target_latents": latents, "attention_mask": frame_mask, "micro_batch": items[0]["micro_batch"],
             "seeds": [i["seed"] for i in items]}  # each song's own stream: its draws do not depend on its batch
    for name in items[0]:
        if name not in batch and name not in ("micro_batch", "seed"):
            batch[name] = pad_stack([i[name] for i in items])[0]
    return batch


def parts_from_config(config: TrainConfig, checkpoint: V15Checkpoint) -> TrainingParts:
    """The trainer CLI's 1.5 path: DiT and condition encoder from either layout, the stored songs of --dataset_path."""
    from acestep.data.preprocessed import dataset_family, load_preprocessed
    from acestep.families.base import check_same_family
    from acestep.training.model import resolve_base_dtype

    found = dataset_family(config.dataset_path)
    if found is None:
        raise AcestepError(f"{config.dataset_path}: not a preprocessed dataset")
    check_same_family(found, V15_FAMILY, f"the dataset {config.dataset_path}", "--checkpoint_dir")
    reg_rows = load_reg_rows(config.reg_dataset, V15_FAMILY) if config.reg_dataset else None
    gpu = config.accelerator in ("gpu", "cuda") or (config.accelerator == "auto" and torch.cuda.is_available())
    dtype = resolve_base_dtype(config.base_dtype, gpu)
    modules = load_components(checkpoint, ("transformer", "condition_encoder"), dtype)
    encoder = modules["condition_encoder"].requires_grad_(False)
    null = encoder.null_condition_emb.detach().clone()
    parts = training_parts(config, modules["transformer"], null, load_preprocessed(config.dataset_path),
                           base_model_name(checkpoint), encoder, reg_rows, dit_config(checkpoint))
    if config.sample_every > 0:
        from .samples import V15SampleRenderer, read_v15_prompts

        if not config.sample_prompts:
            raise AcestepError("--sample_every needs --sample_prompts FILE")
        prompts = read_v15_prompts(config.sample_prompts)
        parts.callbacks.append(V15SampleRenderer(config.run_dir, config.sample_every, prompts, checkpoint))
    return parts


def base_model_name(checkpoint: V15Checkpoint) -> str:
    """What the LoRA header records: the checkpoint folder and the DiT variant."""
    return f"{checkpoint.root.resolve()}" + (f" ({checkpoint.dit.name})" if checkpoint.dit else "")


def objective_values(config: TrainConfig, dit: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The objective's settings the user left unset, filled in (timestep mu/sigma from the DiT's config.json
    `dit`, condition dropout 0.15), and the run summary's line on what the objective uses."""
    found = dit is not None and "timestep_mu" in dit and "timestep_sigma" in dit
    values = {
        "timestep_schedule": resolve_schedule(config.timestep_schedule),
        "timestep_mu": config.timestep_mu if config.timestep_mu is not None else
        float(dit["timestep_mu"]) if found else PUBLISHED_MU,
        "timestep_sigma": config.timestep_sigma if config.timestep_sigma is not None else
        float(dit["timestep_sigma"]) if found else PUBLISHED_SIGMA,
        "condition_dropout": CONDITION_DROPOUT if config.condition_dropout is None else config.condition_dropout,
    }
    sampler = TimestepSampler(values["timestep_schedule"], values["timestep_mu"], values["timestep_sigma"])
    source = ("your flags" if config.timestep_mu is not None and config.timestep_sigma is not None
              else "the DiT's config.json" if found else "the published values")
    density = sampler.describe() + (f", mu/sigma from {source}" if sampler.schedule == "logit_normal" else "")
    dropout = values["condition_dropout"]
    line = (f"ACE-Step 1.5 objective: {density}; condition dropout {dropout:g} (null_condition_emb"
            f"{', your flag' if config.condition_dropout is not None else ', the official default'})")
    return values, line


def training_parts(
    config: TrainConfig,
    transformer: torch.nn.Module,
    null_embedding: torch.Tensor | None,
    dataset: datasets.Dataset,
    base_model: str,
    condition_encoder: torch.nn.Module | None = None,
    reg_rows: datasets.Dataset | None = None,
    dit: dict[str, Any] | None = None,
) -> TrainingParts:
    """Everything the shared trainer needs for a 1.5 run on `transformer` (frozen base in its dtype).

    `condition_encoder` (frozen) runs in the step when the dataset stores its inputs (--condition_store inputs).
    `reg_rows`: the regularization songs (--reg_dataset), stored the same way as the training songs.
    `dit`: the DiT's config.json (timestep_mu / timestep_sigma; without it the published values).
    """
    settings = LoraSettings.from_json(config.lora_config_path or DEFAULT_LORA_CONFIG)
    values, objective_line = objective_values(config, dit)
    train_rows, val_rows = split_songs(dataset, config.val_songs, config.val_dataset, config.overfit_one)
    songs = V15Songs(train_rows, frames_for_seconds(config.max_duration))
    if songs.stores_inputs and condition_encoder is None:
        raise AcestepError("the dataset stores the condition encoder's inputs: the run needs the condition encoder")
    reg_songs = V15Songs(reg_rows, frames_for_seconds(config.max_duration)) if reg_rows is not None else None
    if reg_songs is not None and reg_songs.stores_inputs != songs.stores_inputs:
        raise AcestepError("--reg_dataset was preprocessed with another --condition_store than the dataset; "
                           "preprocess both the same way")
    sampler = TimestepSampler(values["timestep_schedule"], values["timestep_mu"], values["timestep_sigma"])
    step = V15Step(sampler, null_embedding, values["condition_dropout"],
                   condition_encoder if songs.stores_inputs else None)
    return TrainingParts(
        family=V15_FAMILY,
        transformer=transformer,
        songs=songs,
        collate=collate_v15,
        step=step,
        settings=settings,
        base_model=base_model,
        write_step_files=partial(_write, settings=settings, base_model=base_model, exp_name=config.exp_name),
        summary=usage_lines,
        fixed_loss=step.fixed_loss,
        val_songs=V15Songs(val_rows, frames_for_seconds(config.max_duration)) if val_rows is not None else None,
        reg_songs=reg_songs,
        recipe=OFFICIAL_RECIPE,
        resolved=values,
        notes=[objective_line],
        blocks=BLOCKS,
        plan_request=partial(_plan_request, transformer_config=dict(transformer.config)),
    )


def _plan_request(config: TrainConfig, gpu_gb: float, device: str, base_dtype: str, *,
                  transformer_config: dict) -> Any:
    """The 1.5 planner's request for this run on this DiT (--gradient_checkpointing auto)."""
    from .plan import request_for_run

    return request_for_run(config, gpu_gb, device, base_dtype, transformer_config)


def _write(tensors: dict[str, torch.Tensor], folder: Path, step: int, *, settings: LoraSettings, base_model: str,
           exp_name: str, base_weight: BaseWeight | None = None) -> list[Path]:
    return write_step_files(tensors, folder, step, settings, base_model, exp_name, base_weight)
