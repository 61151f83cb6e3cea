"""Audio samples during training: every N steps the current adapter renders a few prompts.

Rendering runs on rank 0 under no_grad with the model in eval mode, and restores the train mode and every RNG
state afterwards, so the training run (noise, timesteps, dropout, LoRA weights) is exactly what it would have
been without samples.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import tomllib
import torch
from lightning.pytorch.callbacks import Callback

from acestep.core.errors import AcestepError
from acestep.families.v1.checkpoint import resolve_checkpoint
from acestep.families.v1.lyrics import LyricTokenizer, resolve_lyrics_vocab
from acestep.families.v1.models.dcae import MusicDCAE
from acestep.families.v1.pipeline.cli import save_outputs
from acestep.families.v1.pipeline.pipeline import ACEStepPipeline, GenerationParams
from acestep.families.v1.text_encoder import TextEncoder

SAMPLE_RATE = 44100


@dataclass(frozen=True)
class SamplePrompt:
    name: str
    params: GenerationParams


def read_sample_prompts(path: str | Path, steps: int) -> list[SamplePrompt]:
    """A JSON list, or a TOML file with [[samples]] tables, of {prompt, lyrics, duration, seed, name}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = tomllib.loads(text)["samples"] if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, ValueError, KeyError) as error:
        raise AcestepError(f"{path}: cannot read sample prompts ({error}); expected a JSON list or TOML [[samples]]") from error
    if not isinstance(data, list) or not data:
        raise AcestepError(f"{path}: sample prompts must be a non-empty list")
    prompts = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or "prompt" not in item:
            raise AcestepError(f"{path}: sample {index} needs at least a 'prompt'")
        params = GenerationParams(
            prompt=str(item["prompt"]), lyrics=str(item.get("lyrics", "")), duration=float(item.get("duration", 30.0)),
            seed=int(item.get("seed", index)), steps=int(item.get("steps", steps)),
        )
        prompts.append(SamplePrompt(str(item.get("name", f"sample{index}")), params))
    return prompts


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class SampleRenderer(Callback):
    """Writes run_dir/samples/step_XXXXXX/NAME_seedS.wav (+ .json) and logs them as audio when it can."""

    def __init__(self, run_dir: Path, every: int, prompts: list[SamplePrompt], checkpoint_dir: str | None,
                 lyrics_vocab: str | None = None) -> None:
        self.run_dir, self.every, self.prompts = run_dir, every, prompts
        self.checkpoint_dir, self.lyrics_vocab = checkpoint_dir, lyrics_vocab
        self._parts: tuple[MusicDCAE, TextEncoder, LyricTokenizer] | None = None

    def _components(self, device: torch.device) -> tuple[MusicDCAE, TextEncoder, LyricTokenizer]:
        if self._parts is None:
            paths = resolve_checkpoint(self.checkpoint_dir)
            self._parts = (
                MusicDCAE.from_pretrained(paths.dcae, paths.vocoder).to(device),
                TextEncoder.from_pretrained(paths.text_encoder, device=device),
                LyricTokenizer.from_file(resolve_lyrics_vocab(self.lyrics_vocab, checkpoint_dir=paths.root)),
            )
        return self._parts

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every or not trainer.is_global_zero:
            return
        self.render(trainer, pl_module, step)

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> list[Path]:
        transformer = pl_module.transformer
        device = next(transformer.parameters()).device
        dcae, text, lyrics = self._components(device)
        state, was_training = _rng_state(), transformer.training
        written: list[Path] = []
        try:
            pipeline = ACEStepPipeline(transformer, dcae, text, lyrics, device=device)
            out_dir = self.run_dir / "samples" / f"step_{step:06d}"
            for prompt in self.prompts:
                wavs = pipeline.generate(prompt.params, sample_rate=SAMPLE_RATE)
                written += save_outputs(wavs, prompt.params, [prompt.params.seed], out_dir, SAMPLE_RATE,
                                        {"training_step": step}, stem=prompt.name)
                self._log_audio(trainer, prompt.name, wavs[0], step)
        finally:
            transformer.train(was_training)
            _restore_rng(state)
        return written

    @staticmethod
    def _log_audio(trainer: L.Trainer, name: str, wav: torch.Tensor, step: int) -> None:
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_audio"):  # TensorBoard
                experiment.add_audio(f"samples/{name}", wav.mean(0, keepdim=True), step, SAMPLE_RATE)
            elif type(logger).__name__ == "WandbLogger":
                import wandb

                experiment.log({f"samples/{name}": wandb.Audio(wav.T.numpy(), sample_rate=SAMPLE_RATE)}, step=step)
