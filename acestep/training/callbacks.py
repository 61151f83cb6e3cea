"""Saving during training: adapters per step (un-baked + ComfyUI-baked), the resumable state, the metrics file.

Run folder layout (OUTPUT_DIR/EXP_NAME):
  step-000100/pytorch_lora_weights.safetensors   un-baked, PEFT keys, our settings in the header
  step-000100/EXP-step100-comfyui.safetensors    alpha baked in: strength 1 in ComfyUI and the upstream pipeline
  state/last.ckpt                                Lightning state of the LoRA only (optimizer, schedule, step)
  metrics.jsonl                                  one line per optimizer step (loss, lr, grad norm, it/s, memory)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from acestep.data.atomic import atomic_write_text, temp_sibling
from acestep.lora import WEIGHTS_NAME, LoraSettings, bake_file, save_adapter
from acestep.lora.keys import V1_FAMILY

from .family import StepFileWriter
from .model import adapter_state_dict

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = Path("state") / "last.ckpt"
METRICS_FILE = "metrics.jsonl"
# The PEFT-standard adapter of a step folder (LAYOUT.md); older v1 folders hold WEIGHTS_NAME at the top instead.
ADAPTER_FILE = Path("adapter") / "adapter_model.safetensors"
STEP_SUBFOLDERS = ("adapter", "diffusers")


def step_folder_name(step: int) -> str:
    return f"step-{step:06d}"


def baked_file_name(exp_name: str, step: int) -> str:
    return f"{exp_name}-step{step}-comfyui.safetensors"


def list_step_folders(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every saved adapter in the run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(f for f in found if (f[1] / WEIGHTS_NAME).is_file() or (f[1] / ADAPTER_FILE).is_file())


class AdapterSaver(Callback):
    """Every N steps and at the end: write the adapter pair atomically, the resumable state, prune old steps."""

    def __init__(
        self, run_dir: Path, every_n_steps: int, keep_last: int, settings: LoraSettings, base_model: str, exp_name: str,
        write_files: StepFileWriter | None = None,
    ) -> None:
        """`write_files`: the family's step-folder writer (default: the v1 adapter + its baked ComfyUI file)."""
        self.run_dir = Path(run_dir)
        self.write_files = write_files
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.settings = settings
        self.base_model = base_model
        self.exp_name = exp_name
        self.last_saved_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self.last_saved_step:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0 and trainer.global_step != self.last_saved_step:
            self.save(trainer, pl_module)

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        step = trainer.global_step
        folder = self.run_dir / step_folder_name(step)
        self.last_saved_step = step
        if trainer.is_global_zero:
            self._write_step_folder(folder, adapter_state_dict(pl_module.transformer, pl_module.adapter_name), step)
        state = self.run_dir / STATE_FILE
        temp = temp_sibling(state)
        trainer.save_checkpoint(temp, weights_only=False)  # the full training state; collective under DDP
        if trainer.is_global_zero:
            os.replace(temp, state)
            self._prune()
        return folder

    def _write_step_folder(self, folder: Path, tensors: dict, step: int) -> None:
        """Both files go into a temp folder first, so a step folder is either complete or absent."""
        temp = temp_sibling(folder)
        try:
            if self.write_files is not None:
                self.write_files(tensors, temp, step)
            else:
                weights = save_adapter(tensors, temp, self.settings, self.base_model, step, V1_FAMILY)
                bake_file(weights, temp / baked_file_name(self.exp_name, step))
            if not folder.exists():
                os.replace(temp, folder)
            else:  # the same step saved again after a resume: replace its files one by one
                for file in sorted(temp.rglob("*")):
                    if file.is_file():
                        target = folder / file.relative_to(temp)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(file, target)
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)

    def _prune(self) -> None:
        """Remove our files from step folders older than the last `keep_last`; a folder holding more stays."""
        for _, folder in list_step_folders(self.run_dir)[: -self.keep_last]:
            for file in [folder / WEIGHTS_NAME, *folder.glob("*-comfyui.safetensors")]:
                file.unlink(missing_ok=True)
            for name in STEP_SUBFOLDERS:
                for file in (folder / name).glob("*"):
                    if file.name in (ADAPTER_FILE.name, "adapter_config.json", WEIGHTS_NAME):
                        file.unlink(missing_ok=True)
                if (folder / name).is_dir() and not any((folder / name).iterdir()):
                    (folder / name).rmdir()
            try:
                folder.rmdir()
            except OSError:
                warnings.warn(f"{folder}: kept, it holds files the trainer did not write", stacklevel=2)

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_step": self.last_saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_saved_step = int(state_dict.get("last_saved_step", -1))


class MetricsFile(Callback):
    """Appends each optimizer step's metrics to metrics.jsonl; a resume first drops steps after its state."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._written = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._written = trainer.global_step
        if trainer.is_global_zero:
            kept = [r for r in read_metrics(self.path) if r["step"] <= trainer.global_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        metrics = getattr(pl_module, "step_metrics", {})
        if not trainer.is_global_zero or metrics.get("step", -1) <= self._written:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")
        self._written = metrics["step"]


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.jsonl file (empty when absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class CompactProgressBar(TQDMProgressBar):
    """tqdm bar (plain text, fine on Windows consoles) showing 3 significant digits, so lr 1e-4 is not 0.000."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {k: f"{v:.3g}" if isinstance(v, float) else v for k, v in metrics.items()}
