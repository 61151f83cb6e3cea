"""Ctrl-C and SIGTERM during training, with real signals to a training process: save at the step boundary and
exit 0, even when the console is gone; a second Ctrl-C quits at once and leaves no half-written file."""

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


def trainer_args(tmp_path: Path, checkpoint: Path, name: str) -> list[str]:
    prep = tmp_path / "prep"
    if not prep.exists():
        synthetic_songs([8, 11]).save_to_disk(str(prep))
    return ["--dataset_path", str(prep), "--checkpoint_dir", str(checkpoint), "--output_dir", str(tmp_path),
            "--exp_name", name, "--max_steps", "100000", "--every_n_train_steps", "100000", "--logger", "none",
            "--no-progress_bar", "--base_dtype", "fp32", "--no-gradient_checkpointing"]


def check_saved_step(run_dir: Path, name: str) -> int:
    """The run stopped at a step boundary with that step saved in full; returns the step."""
    steps = [row["step"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    stopped = steps[-1]
    assert steps == list(range(1, stopped + 1))
    step = run_dir / f"step-{stopped:06d}"
    assert sorted(p.name for p in step.iterdir()) == ["adapter", f"{name}-step{stopped}-comfyui.safetensors"]
    assert load_adapter(step)[1]["acestep_step"] == str(stopped)
    state = torch.load(run_dir / "state" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == stopped
    assert not (run_dir / "trainer.lock").exists()
    return stopped


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_ctrl_c_or_sigterm_saves_the_step_says_how_to_resume_and_exits_0(
    tmp_path: Path, tiny_checkpoint: Path, signum: int
) -> None:
    """SIGTERM (schedulers, Docker) and SIGHUP (a closed terminal) stop the run as Ctrl-C does, not Lightning's
    way for SIGTERM (exit 0 without saving) or the default one for SIGHUP (killed)."""
    if signum == getattr(signal, "SIGHUP", None) and signal.getsignal(signum) == signal.SIG_IGN:
        pytest.skip("started under nohup: the trainer keeps SIGHUP ignored, as it should")
    args = trainer_args(tmp_path, tiny_checkpoint, "ctrlc")
    run_dir = tmp_path / "ctrlc"
    log = (tmp_path / "out.txt").open("w+", encoding="utf-8")
    process = subprocess.Popen([sys.executable, str(REPO / "trainer_new.py"), *args], stdout=log,
                               stderr=subprocess.STDOUT, env=environment(), cwd=REPO)
    try:
        wait_for_steps(run_dir / "metrics.jsonl", process)
        process.send_signal(signum)
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
    log.seek(0)
    out = log.read()
    stopped = check_saved_step(run_dir, "ctrlc")
    name = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}.get(signum, "SIGHUP")
    assert f"{name}: saving after this step" in out
    assert f"stopped by {name} after step {stopped}" in out and str(run_dir / f"step-{stopped:06d}") in out
    assert "Resume with: python trainer_new.py" in out and out.rstrip().endswith("--resume")
    assert (run_dir / "summary.txt").read_text().rstrip().endswith("--resume")
    cli_main([*args[:8], "--max_steps", str(stopped + 2), *args[10:], "--resume"])
    assert (run_dir / f"step-{stopped + 2:06d}").is_dir()


def test_ctrl_c_saves_when_the_console_is_gone(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """`trainer_new.py ... 2>&1 | tee log.txt` and Ctrl-C: tee ends first, every later print hits a closed pipe.
    The run still saves its step and writes the resume command into the run folder."""
    args = trainer_args(tmp_path, tiny_checkpoint, "piped")
    args[args.index("--no-progress_bar")] = "--progress_bar"  # the bar writes to the closed pipe at every step
    run_dir = tmp_path / "piped"
    process = subprocess.Popen([sys.executable, str(REPO / "trainer_new.py"), *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=environment(), cwd=REPO)
    try:
        wait_for_steps(run_dir / "metrics.jsonl", process, steps=1)
        process.stdout.close()  # the reader (tee) is gone
        wait_for_steps(run_dir / "metrics.jsonl", process, steps=3)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
    stopped = check_saved_step(run_dir, "piped")
    summary = (run_dir / "summary.txt").read_text()
    assert f"stopped by Ctrl-C after step {stopped}" in summary
    assert summary.rstrip().splitlines()[-1].startswith("Resume with: python trainer_new.py")


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
