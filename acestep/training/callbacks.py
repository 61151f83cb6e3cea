"""Saving during training: adapters per step (ComfyUI-baked + PEFT adapter), the resumable state, the metrics file.

Run folder layout (OUTPUT_DIR/EXP_NAME):
  step-000100/EXP-step100-comfyui.safetensors    the only LoRA file at the top: alpha baked in, strength 1 in
                                                 ComfyUI and the upstream pipeline
  step-000100/adapter/adapter_model.safetensors  PEFT-standard un-baked adapter (true scale in PEFT/diffusers)
  step-000100/adapter/adapter_config.json
  state/last.ckpt                                Lightning state of the LoRA only (optimizer, schedule, step)
  metrics.jsonl                                  one line per optimizer step (loss, lr, grad norm, it/s, memory)
Runs of older versions hold step-*/pytorch_lora_weights.safetensors (un-baked) instead of adapter/; they are
still listed, resumed and pruned.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from acestep.core.atomic import atomic_write_text, replace_folder, replace_with_retry, temp_sibling
from acestep.core.errors import AcestepError
from acestep.core.progress import progress
from acestep.lora import WEIGHTS_NAME
from acestep.lora.adapters import BaseWeight
from acestep.lora.io import (
    ADAPTER_DIR,
    DIFFUSERS_DIR,
    OFFICIAL_DIR,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    stamp_trigger,
)

from .family import StepFileWriter
from .model import adapter_state_dict, base_weight_lookup

DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = Path("state") / "last.ckpt"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"


def step_folder_name(step: int) -> str:
    return f"step-{step:06d}"


def baked_file_name(exp_name: str, step: int) -> str:
    return f"{exp_name}-step{step}-comfyui.safetensors"


def adapter_files(folder: Path) -> list[Path]:
    """The files the trainer writes into a step folder (this layout's and older versions')."""
    adapter = folder / ADAPTER_DIR
    official = folder / OFFICIAL_DIR
    return [adapter / PEFT_WEIGHTS_NAME, adapter / PEFT_CONFIG_NAME, folder / WEIGHTS_NAME,
            folder / DIFFUSERS_DIR / WEIGHTS_NAME, official / PEFT_WEIGHTS_NAME, official / PEFT_CONFIG_NAME,
            *folder.glob("*-comfyui.safetensors")]


def list_step_folders(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every saved adapter in the run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(f for f in found
                  if (f[1] / ADAPTER_DIR / PEFT_WEIGHTS_NAME).is_file() or (f[1] / WEIGHTS_NAME).is_file())


class DiskFullError(AcestepError):
    """A save ran out of disk space; what was saved before is intact and no temp file is left."""


def is_disk_full(error: BaseException | None) -> bool:
    """ENOSPC (or a quota, EDQUOT) anywhere in the error's chain: our writers wrap OSErrors in one-line errors."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


class AdapterSaver(Callback):
    """Every N steps and at the end: write the adapter pair atomically, the resumable state, prune old steps."""

    def __init__(
        self, run_dir: Path, every_n_steps: int, keep_last: int, write_files: StepFileWriter,
    ) -> None:
        """`write_files`: the family's step-folder writer (its adapter files and ComfyUI file)."""
        self.run_dir = Path(run_dir)
        self.write_files = write_files
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.last_saved_step = -1
        self.trigger: str | None = None  # stamped into every LoRA header of a step folder
        self.protected_steps: Callable[[], set[int]] = set  # steps never pruned (the best validation step)

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
        state = self.run_dir / STATE_FILE
        temp = temp_sibling(state)
        previous, self.last_saved_step = self.last_saved_step, step  # the saved state records this step as saved
        try:
            if trainer.is_global_zero:
                tensors = adapter_state_dict(pl_module.transformer, pl_module.adapter_name)
                self._write_step_folder(folder, tensors, step, base_weight_lookup(pl_module.transformer))
            trainer.save_checkpoint(temp, weights_only=False)  # the full training state; collective under DDP
            if trainer.is_global_zero:
                replace_with_retry(temp, state)
        except BaseException as error:
            temp.unlink(missing_ok=True)
            self.last_saved_step = previous
            if not is_disk_full(error):
                raise
            saved = list_step_folders(self.run_dir)
            kept = (f"what was saved before is intact: latest adapter {saved[-1][1].name}, resumable state at step "
                    f"{self.last_saved_step}" if saved and self.last_saved_step > 0 else "nothing was saved yet")
            raise DiskFullError(f"disk full: saving step {step} into {self.run_dir} failed ({kept}); free some space, "
                                "then run the same command" + (" with --resume" if self.last_saved_step > 0 else "")
                                ) from None
        if trainer.is_global_zero:
            self._prune()
        return folder

    def _write_step_folder(self, folder: Path, tensors: dict, step: int, base_weight: BaseWeight | None = None) -> None:
        """Everything goes into a temp folder first, so a step folder is either complete or absent."""
        temp = temp_sibling(folder)
        try:
            self.write_files(tensors, temp, step, base_weight=base_weight)
            if self.trigger:
                for file in temp.rglob("*.safetensors"):
                    stamp_trigger(file, self.trigger)
            if not folder.exists():
                replace_with_retry(temp, folder)
            else:  # the same step saved again after a resume: replace our files, keep anything else
                (folder / WEIGHTS_NAME).unlink(missing_ok=True)  # an older version's un-baked file
                for item in temp.iterdir():
                    if item.is_dir():
                        replace_folder(item, folder / item.name)
                    else:
                        replace_with_retry(item, folder / item.name)
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)

    def _prune(self) -> None:
        """Remove our files from step folders older than the last `keep_last` (protected steps stay); a folder
        holding more stays."""
        keep = self.protected_steps()
        for step, folder in list_step_folders(self.run_dir)[: -self.keep_last]:
            if step in keep:
                continue
            for file in adapter_files(folder):
                file.unlink(missing_ok=True)
            try:
                for name in (ADAPTER_DIR, DIFFUSERS_DIR, OFFICIAL_DIR):
                    if (folder / name).is_dir():
                        (folder / name).rmdir()
                folder.rmdir()
            except OSError:
                warnings.warn(f"{folder}: kept, it holds files the trainer did not write", stacklevel=2)

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_step": self.last_saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_saved_step = int(state_dict.get("last_saved_step", -1))


SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
if hasattr(signal, "SIGHUP"):  # POSIX: the terminal was closed
    SIGNAL_NAMES[signal.SIGHUP] = "SIGHUP"


class StopOnCtrlC(Callback):
    """First Ctrl-C, SIGTERM (schedulers, Docker) or SIGHUP (closed terminal): finish the current optimizer step,
    save (adapter, baked file, resumable state), stop. A second one raises KeyboardInterrupt at once; every file
    is written atomically, so nothing is left half-written (only the last completed save is kept)."""

    def __init__(self, saver: AdapterSaver) -> None:
        self.saver = saver
        self.requested = False
        self.stopped_at: int | None = None
        self.signal_name = "Ctrl-C"  # what asked to stop
        self._seen_step = -1

    def request_stop(self, signum: int = signal.SIGINT, frame: Any = None) -> None:
        """The signal handler."""
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = name = SIGNAL_NAMES.get(signum, f"signal {signum}")
        print(f"\n{name}: saving after this step, then stopping ({'press Ctrl-C' if name == 'Ctrl-C' else 'send it'} "
              "again to quit at once without saving it)", file=sys.stderr, flush=True)

    def _install(self) -> dict[int, Any]:
        """Our handler for each stop signal (SIGHUP stays ignored under nohup); returns the handlers replaced."""
        previous = {}
        for signum in SIGNAL_NAMES:
            handler = signal.getsignal(signum)
            if signum != signal.SIGINT and handler == signal.SIG_IGN:
                continue
            previous[signum] = signal.signal(signum, self.request_stop)
        return previous

    @contextmanager
    def installed(self) -> Iterator[None]:
        """The handlers for the duration of the block (main thread only: Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = self._install()
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen_step = trainer.global_step
        # Lightning put its own SIGTERM handler in front of ours as fit began: it ends the run without saving
        # (SystemExit 0). Ours again; Lightning's teardown restores what was there before fit, ours too.
        if threading.current_thread() is threading.main_thread():
            self._install()
        connector = getattr(trainer, "_signal_connector", None)
        if self.requested and connector is not None:  # a SIGTERM during setup reached both handlers: ours saves
            connector.received_sigterm = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step_done = trainer.global_step != self._seen_step  # this micro-batch finished an optimizer step
        self._seen_step = trainer.global_step
        if self.requested and step_done and self.stopped_at is None:
            if self.saver.last_saved_step != trainer.global_step:
                self.saver.save(trainer, pl_module)
            self.stopped_at = trainer.global_step
            trainer.should_stop = True


class ConfigFile(Callback):
    """Writes train_config.json once training really starts: a refused --resume leaves the old file as it was."""

    def __init__(self, path: Path, config: Any) -> None:
        self.path = Path(path)
        self.config = config

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.config.save(self.path)


class MetricsFile(Callback):
    """Appends each optimizer step's metrics to metrics.jsonl; a resume first drops steps after its state."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._written = -1
        self.first_step = 0  # the step this run started at (> 0 after --resume)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._written = self.first_step = trainer.global_step
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
    """tqdm bar (plain text, fine on Windows consoles) in optimizer steps of the whole run, so a resumed run shows
    its total and an ETA from this run's speed; metrics with 3 significant digits, so lr 1e-4 is not 0.000."""

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        self._whole_run(trainer)  # a resume restarts mid-epoch: Lightning calls no epoch start then

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._whole_run(trainer)

    def _whole_run(self, trainer: L.Trainer) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = bar.n = bar.last_print_n = trainer.global_step  # tqdm's rate counts from `initial`
        bar.set_description("training")
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        bar = self.train_progress_bar
        if bar is not None and trainer.global_step > bar.n:
            bar.update(trainer.global_step - bar.n)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {k: f"{v:.3g}" if isinstance(v, float) else v for k, v in metrics.items()}

    def init_train_tqdm(self) -> Any:
        """Lightning's live bar on a terminal; in a log file or CI one whole line per interval instead."""
        if sys.stdout.isatty():
            return super().init_train_tqdm()
        # delay > 0: no line before _whole_run has set the run's total
        return progress(desc=self.train_description, unit="step", file=sys.stdout, disable=self.is_disabled,
                        leave=True, smoothing=0, bar_format=self.BAR_FORMAT, delay=1e-9)
