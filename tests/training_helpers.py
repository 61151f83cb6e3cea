"""Small in-memory datasets in the stored preprocessed format, and the tiny transformer, for training tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch

from acestep.data.preprocessed import EncodedSong, features_for_record
from acestep.families.v1.blocks import BLOCKS
from acestep.families.v1.models import ACEStepTransformer2DModel
from acestep.families.v1.models.configs import tiny_transformer_config
from acestep.training import TrainConfig


def synthetic_songs(
    lengths: list[int], ssl: bool = False, text_dim: int = 32, ssl_dims: tuple[int, int] = (32, 24), seed: int = 0
) -> datasets.Dataset:
    """Songs of the given latent lengths, built through the stage-3 record code (float16 storage, torch format)."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for row, frames in enumerate(lengths):
        seconds = frames / 10.7666
        song = EncodedSong(
            row=row,
            key=f"song{row}",
            filename=f"/music/song{row}.wav",
            prompt="synth, test",
            latents=_song_latents(frames, generator),
            text_hidden=torch.randn(3 + row, text_dim, generator=generator),
            lyric_ids=[int(v) for v in torch.randint(1, 200, (5 + 2 * row,), generator=generator)],
            duration=seconds,
            mert=torch.randn(round(seconds * 75), ssl_dims[0], generator=generator) if ssl else None,
            mhubert=torch.randn(round(seconds * 50), ssl_dims[1], generator=generator) if ssl else None,
        )
        records.append(song.to_record())
    features = features_for_record(records[0])
    columns = {name: [r[name] for r in records] for name in features}
    return datasets.Dataset.from_dict(columns, features=features).with_format("torch")


def _song_latents(frames: int, generator: torch.Generator) -> torch.Tensor:
    """A per-song timbre (one value per channel and row) held over time plus a little noise: learnable."""
    timbre = torch.randn(8, 16, 1, generator=generator)
    return timbre + 0.1 * torch.randn(8, 16, frames, generator=generator)


def tiny_transformer(seed: int = 0, dtype: torch.dtype = torch.float32) -> ACEStepTransformer2DModel:
    torch.manual_seed(seed)
    return ACEStepTransformer2DModel(**tiny_transformer_config()).to(dtype)


def v1_module(transformer: torch.nn.Module, settings: Any, config: TrainConfig, songs: Any) -> Any:
    """The trainer's LightningModule with v1's parts (its step, collate and blocks), as its training parts hand them."""
    from acestep.families.v1.objective import V1Step
    from acestep.families.v1.songs import collate_songs
    from acestep.training.module import LoraTrainingModule

    return LoraTrainingModule(transformer, settings, config, songs, step=V1Step(config), collate=collate_songs,
                              blocks=BLOCKS)


def crash_at_step(monkeypatch: pytest.MonkeyPatch, step: int, run: Callable[[], object]) -> None:
    """Call `run` with training raising as optimizer step `step` begins (a simulated crash after the saves before
    it), then restore the training step so that the test can resume."""
    from acestep.training.module import LoraTrainingModule

    original = LoraTrainingModule.training_step

    def crashing(self: LoraTrainingModule, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.global_step == step - 1:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LoraTrainingModule, "training_step", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run()
    monkeypatch.setattr(LoraTrainingModule, "training_step", original)


def write_lora_config(folder: Path, r: int, **fields: Any) -> str:
    """A LoRA config JSON `lora_r<r>.json` in `folder` with these fields; returns its path."""
    path = folder / f"lora_r{r}.json"
    path.write_text(json.dumps({"r": r, **fields}))
    return str(path)


def short_run_config(tmp_path: Path, **overrides: Any) -> TrainConfig:
    """A few quick steps into tmp_path/runs, no logger or progress bar, no checkpointing; `overrides` (the LoRA
    config path among them) win."""
    options: dict[str, Any] = dict(
        dataset_path="in-memory", output_dir=str(tmp_path / "runs"),
        exp_name="test", max_steps=6, warmup_steps=2, every_n_train_steps=2, learning_rate=1e-3,
        logger="none", progress_bar=False, gradient_checkpointing=False,
    )
    options.update(overrides)
    return TrainConfig(**options)


def train_cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """trainer_new.py ARGS in a process of its own (one thread per process, unbuffered); it must succeed."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, str(root / "trainer_new.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done
