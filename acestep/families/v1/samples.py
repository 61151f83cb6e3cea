"""Audio samples during training: every N steps the current adapter renders a few prompts.

Rendering runs on rank 0 under no_grad with the model in eval mode, and restores the train mode and every RNG
state afterwards, so the training run (noise, timesteps, dropout, LoRA weights) is exactly what it would have
been without samples.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from acestep.families.v1.checkpoint import resolve_checkpoint
from acestep.families.v1.lyrics import LyricTokenizer, resolve_lyrics_vocab
from acestep.families.v1.models.dcae import MusicDCAE
from acestep.families.v1.pipeline.cli import save_outputs
from acestep.families.v1.pipeline.pipeline import ACEStepPipeline, GenerationParams
from acestep.families.v1.text_encoder import TextEncoder
from acestep.training.sample_prompts import SamplePrompt, restore_rng, rng_state

SAMPLE_RATE = 44100


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
        state, was_training = rng_state(), transformer.training
        written: list[Path] = []
        try:
            pipeline = ACEStepPipeline(transformer, dcae, text, lyrics, device=device)
            out_dir = self.run_dir / "samples" / f"step_{step:06d}"
            for prompt in self.prompts:
                params = GenerationParams(**dataclasses.asdict(prompt.params))
                wavs = pipeline.generate(params, sample_rate=SAMPLE_RATE)
                written += save_outputs(wavs, params, [params.seed], out_dir, SAMPLE_RATE,
                                        {"training_step": step}, stem=prompt.name)
                self._log_audio(trainer, prompt.name, wavs[0], step)
        finally:
            transformer.train(was_training)
            restore_rng(state)
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
