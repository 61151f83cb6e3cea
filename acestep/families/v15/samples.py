"""Audio samples during ACE-Step 1.5 training: every N steps the DiT being trained renders a few prompts.

The other components (VAE, text encoder, condition encoder) load once from the checkpoint; the DiT is the trainer's
own, LoRA active. Rendering runs on rank 0 in eval mode under no_grad and restores the train mode and the torch
RNG, so the run is exactly what it would have been without samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from acestep.training.sample_prompts import read_sample_prompts

from .checkpoint import V15Checkpoint, load_pipeline
from .generate import V15Params, render, write_outputs


def read_v15_prompts(path: str | Path) -> list[tuple[str, V15Params]]:
    """The trainer's sample file (JSON list / TOML [[samples]] of {prompt, lyrics, duration, seed, name}); steps
    and guidance follow the checkpoint's variant."""
    return [(s.name, V15Params(prompt=s.params.prompt, lyrics=s.params.lyrics, duration=s.params.duration,
                               seeds=[s.params.seed])) for s in read_sample_prompts(path, steps=1)]


class V15SampleRenderer(Callback):
    """Writes run_dir/samples/step_XXXXXX/NAME_seedS.wav (+ .json)."""

    def __init__(self, run_dir: Path, every: int, prompts: list[tuple[str, V15Params]],
                 checkpoint: V15Checkpoint) -> None:
        self.run_dir, self.every, self.prompts, self.checkpoint = Path(run_dir), every, prompts, checkpoint
        self._pipe: Any = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every or not trainer.is_global_zero:
            return
        self.render(pl_module.transformer, step)

    def render(self, transformer: torch.nn.Module, step: int) -> list[Path]:
        device = next(transformer.parameters()).device
        if self._pipe is None:
            self._pipe = load_pipeline(self.checkpoint, transformer.dtype, with_transformer=False).to(device)
        pipe = self._pipe
        pipe.transformer = transformer
        pipe.is_turbo = self.checkpoint.is_turbo
        was_training, written = transformer.training, []
        transformer.eval()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                for name, params in self.prompts:
                    wavs = render(pipe, params, self.checkpoint.is_turbo)
                    written += write_outputs(wavs, params.for_variant(self.checkpoint.is_turbo), pipe.sample_rate,
                                             self.run_dir / "samples" / f"step_{step:06d}", name,
                                             {"training_step": step}, overwrite=True)
        finally:
            transformer.train(was_training)
        return written
