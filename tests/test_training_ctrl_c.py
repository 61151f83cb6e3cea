"""Ctrl-C during training, with real SIGINTs to a training process: save at the step boundary and exit 0;
a second Ctrl-C quits at once and leaves no half-written file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from training_helpers import synthetic_songs

from acestep.families.training import main as cli_main
from acestep.lora import load_adapter

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]


def wait_for_steps(metrics: Path, process: subprocess.Popen, steps: int = 3, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text(encoding="utf-8").splitlines()) >= steps:
            return
        assert process.poll() is None, "training ended before the signal"
        time.sleep(0.1)
    raise AssertionError("training did not start")


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "PYTHONUNBUFFERED": "1"}


def test_ctrl_c_saves_the_step_says_how_to_resume_and_exits_0(tmp_path: Path, tiny_checkpoint: Path) -> None:
    prep = tmp_path / "prep"
    synthetic_songs([8, 11]).save_to_disk(str(prep))
    args = ["--dataset_path", str(prep), "--checkpoint_dir", str(tiny_checkpoint), "--output_dir", str(tmp_path),
            "--exp_name", "ctrlc", "--max_steps", "100000", "--every_n_train_steps", "100000", "--logger", "none",
            "--no-progress_bar", "--base_dtype", "fp32", "--no-gradient_checkpointing"]
    run_dir = tmp_path / "ctrlc"
    log = (tmp_path / "out.txt").open("w+", encoding="utf-8")
    process = subprocess.Popen([sys.executable, str(REPO / "trainer_new.py"), *args], stdout=log,
                               stderr=subprocess.STDOUT, env=environment(), cwd=REPO)
    try:
        wait_for_steps(run_dir / "metrics.jsonl", process)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
    log.seek(0)
    out = log.read()
    steps = [row["step"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    stopped = steps[-1]
    assert steps == list(range(1, stopped + 1))
    step = run_dir / f"step-{stopped:06d}"
    assert sorted(p.name for p in step.iterdir()) == ["adapter", f"ctrlc-step{stopped}-comfyui.safetensors"]
    assert load_adapter(step)[1]["acestep_step"] == str(stopped)
    state = torch.load(run_dir / "state" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == stopped
    assert f"stopped by Ctrl-C after step {stopped}" in out and str(step) in out
    assert "Resume with: python trainer_new.py" in out and out.rstrip().endswith("--resume")
    cli_main([*args[:8], "--max_steps", str(stopped + 2), *args[10:], "--resume"])
    assert (run_dir / f"step-{stopped + 2:06d}").is_dir()


DRIVER = """
import sys, time
from pathlib import Path
from training_helpers import synthetic_songs, tiny_transformer
from acestep.families.training import run_training
from acestep.training import TrainConfig
from acestep.training.callbacks import AdapterSaver

original = AdapterSaver._write_step_folder

def slow_save(self, *args):
    print("SAVING", flush=True)
    time.sleep(60)
    original(self, *args)

AdapterSaver._write_step_folder = slow_save
out = Path(sys.argv[1])
config = TrainConfig(dataset_path="in-memory", lora_config_path="config/lora_config_transformer_only.json",
                     output_dir=str(out), exp_name="twice", max_steps=100000, every_n_train_steps=100000,
                     logger="none", progress_bar=False, gradient_checkpointing=False)
run_training(config, tiny_transformer(), synthetic_songs([6, 8]))
"""


def test_a_second_ctrl_c_quits_at_once_without_half_written_files(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER), str(tmp_path)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment())
    run_dir = tmp_path / "twice"
    try:
        wait_for_steps(run_dir / "metrics.jsonl", process)
        process.send_signal(signal.SIGINT)
        lines = []
        for line in process.stdout:  # wait until the save has begun (it would take 60 s)
            lines.append(line)
            if line.startswith("SAVING"):
                break
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        process.kill()
    assert code != 0 and time.monotonic() - started < 30
    assert any("Ctrl-C: saving after this step" in line for line in lines)
    assert not list(run_dir.glob("step-*")) and not (run_dir / "state" / "last.ckpt").exists()
    assert not [p for p in run_dir.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".ckpt")]
