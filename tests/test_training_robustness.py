"""What goes wrong around a run: a second trainer in the folder, a full disk, a resume with other LoRA settings,
impossible numbers, a GPU the installed torch cannot use, and the run's settings in Weights & Biases."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import short_run_config, synthetic_songs, tiny_transformer, write_lora_config

from acestep.core.errors import AcestepError, os_error_line
from acestep.families.training import main as cli_main
from acestep.families.training import run_training
from acestep.training.callbacks import read_metrics
from acestep.training.lock import LOCK_FILE, acquire, release
from acestep.training.resume_check import SETTINGS_KEY


def config(tmp_path: Path, r: int = 4, **overrides: Any):
    fields = {"lora_alpha": 4, "use_rslora": False, "target_modules": ["to_q", "to_k"]}
    fields.update(overrides.pop("lora", {}))
    return short_run_config(tmp_path, lora_config_path=write_lora_config(tmp_path, r, **fields), **overrides)


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- resume with other LoRA settings: one line, before Lightning restores anything ----

def test_a_resume_with_other_lora_settings_names_what_changed(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    songs = synthetic_songs([6, 8])
    run_training(config(tmp_path, max_steps=2), tiny_transformer(), songs)
    capfd.readouterr()
    changes = {
        "r 4 -> 8": dict(r=8),
        "lora_alpha 4.0 -> 16.0": dict(lora={"lora_alpha": 16}),
        "target_modules to_q,to_k -> to_q,to_k,to_v": dict(lora={"target_modules": ["to_q", "to_k", "to_v"]}),
        "adapter_type lora -> dora": dict(lora={"adapter_type": "dora"}),
        "data order (batch_size 1 -> 2)": dict(batch_size=2),
    }
    for expected, change in changes.items():
        with pytest.raises(AcestepError) as error:
            run_training(config(tmp_path, max_steps=4, resume=True, **change), tiny_transformer(), songs)
        assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)
    with pytest.raises(AcestepError, match=r"already at step 2 \(--max_steps 2\); raise --max_steps"):
        run_training(config(tmp_path, max_steps=2, resume=True), tiny_transformer(), songs)
    out = capfd.readouterr()
    assert "Restor" not in out.out + out.err and "size mismatch" not in out.out + out.err
    # A state saved before the settings were stored: the tensor shapes say it.
    state_file = tmp_path / "runs" / "test" / "state" / "last.ckpt"
    state = torch.load(state_file, weights_only=True)
    del state[SETTINGS_KEY]
    torch.save(state, state_file)
    with pytest.raises(AcestepError, match=r"tensor shapes, e\.g\. .*lora_A.* \[4, 64\] -> \[8, 64\]"):
        run_training(config(tmp_path, r=8, max_steps=4, resume=True), tiny_transformer(), songs)
    good = state_file.read_bytes()
    state_file.write_bytes(good[: len(good) // 2])  # a truncated state: one line, the step folders named
    with pytest.raises(AcestepError, match=r"last\.ckpt: cannot read the saved training state \(.*\); the step "):
        run_training(config(tmp_path, max_steps=4, resume=True), tiny_transformer(), songs)
    state_file.write_bytes(good)
    resumed = run_training(config(tmp_path, max_steps=3, resume=True), tiny_transformer(), songs)
    assert resumed.steps == 3 and resumed.first_step == 2
    out = capfd.readouterr().out
    assert f"Resuming {tmp_path / 'runs' / 'test'} at step 2" in out and "Restor" not in out


def test_a_v15_resume_with_another_rank_is_refused_the_same_way(tmp_path: Path) -> None:
    from v15_helpers import tiny_dit, tiny_null, v15_songs

    from acestep.families.v15.training import training_parts

    songs = v15_songs([9, 12])

    def run(r: int, **extra: Any) -> Any:
        settings = config(tmp_path, r=r, max_steps=2, **extra)
        return run_training(settings, parts=training_parts(settings, tiny_dit(), tiny_null(), songs, "tiny"))

    run(4)
    with pytest.raises(AcestepError, match=r"^--resume: the run was trained with other LoRA settings \(r 4 -> 8\)"):
        run(8, resume=True)


# ---- one trainer per run folder ----

def test_a_second_trainer_in_the_run_folder_is_refused_naming_the_holder(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    songs = synthetic_songs([6, 8])
    first = run_training(config(tmp_path, max_steps=2), tiny_transformer(), songs)
    run_dir = first.run_dir
    assert not (run_dir / LOCK_FILE).exists()  # released at the end
    path = acquire(run_dir)
    owner = json.loads(path.read_text())
    assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname()) and owner["started"]
    assert owner["command"] == " ".join(sys.argv)
    release(path)
    assert not path.exists()
    before, metrics = file_hashes(run_dir), read_metrics(first.metrics_file)
    # Another trainer, alive on this machine, holds the folder (its lock file as acquire() writes it).
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run_dir / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                     "started": "now", "command": "trainer_new.py --exp_name test"}))
        for resume in (True, False):
            with pytest.raises(AcestepError) as error:
                run_training(config(tmp_path, max_steps=4, resume=resume), tiny_transformer(), songs)
            line = str(error.value)
            assert "another trainer is using this run folder" in line and f"pid {holder.pid} on " in line
            assert "\n" not in line
        with pytest.raises(SystemExit) as exit_info:  # the CLI refuses before loading any model
            cli_main(["--dataset_path", "nowhere", "--output_dir", str(tmp_path / "runs"), "--exp_name", "test",
                      "--resume"])
        assert f"pid {holder.pid}" in str(exit_info.value.code)
        assert file_hashes(run_dir) == before | {LOCK_FILE: file_hashes(run_dir)[LOCK_FILE]}
        assert read_metrics(first.metrics_file) == metrics
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock is taken over with a note, and the run resumes.
    capfd.readouterr()
    resumed = run_training(config(tmp_path, max_steps=4, resume=True), tiny_transformer(), songs)
    assert f"took over the lock of a trainer that is gone (pid {holder.pid}" in capfd.readouterr().err
    assert [row["step"] for row in read_metrics(resumed.metrics_file)] == [1, 2, 3, 4]
    assert not (run_dir / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_only_named_and_a_refused_start_leaves_no_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "test"
    run_dir.mkdir(parents=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "render-box", "started": "yesterday",
                                                 "command": "trainer_new.py --exp_name test"}))
    with pytest.raises(AcestepError, match=r"pid 1 on render-box, started yesterday: trainer_new.py --exp_name test"):
        run_training(config(tmp_path), tiny_transformer(), synthetic_songs([6]))
    fresh = tmp_path / "runs" / "fresh"
    with pytest.raises(AcestepError, match="nothing to resume"):
        run_training(config(tmp_path, exp_name="fresh", resume=True), tiny_transformer(), synthetic_songs([6]))
    assert not fresh.exists()
    path = acquire(fresh)  # nested use in one process (the CLI and run_training both lock) is fine
    assert acquire(fresh) == path
    release(path)
    assert path.exists()
    release(path)
    assert not path.exists()


# ---- a full disk while saving ----

def no_space(path: Any) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("where", ["state", "adapter"])
def test_a_full_disk_while_saving_says_so_and_leaves_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    songs = synthetic_songs([6, 8])
    first = run_training(config(tmp_path, max_steps=2), tiny_transformer(), songs)
    before = file_hashes(first.run_dir)
    if where == "state":  # Lightning's writer: half the checkpoint lands in our temp file, then the disk is full
        import lightning.fabric.plugins.io.torch_io as torch_io

        def full_disk(checkpoint: dict, path: Any) -> None:
            Path(path).write_bytes(b"half a checkpoint")
            raise no_space(path)

        monkeypatch.setattr(torch_io, "_atomic_save", full_disk)
    else:  # our safetensors writer
        import acestep.core.atomic as atomic

        write_bytes = atomic._write_bytes

        def full_disk_bytes(path: Path, data: bytes) -> None:
            if ".safetensors" not in path.name:  # metrics and config files still fit
                return write_bytes(path, data)
            path.write_bytes(data[: len(data) // 2])
            raise no_space(path)

        monkeypatch.setattr(atomic, "_write_bytes", full_disk_bytes)
    with pytest.raises(AcestepError) as error:
        run_training(config(tmp_path, max_steps=4, resume=True), tiny_transformer(), songs)
    line = str(error.value)
    latest = "step-000004" if where == "state" else "step-000002"  # a complete step folder stays
    assert line.startswith("disk full: saving step 4 into ") and line.endswith(
        f"failed (what was saved before is intact: latest adapter {latest}, resumable state at step 2); free some "
        "space, then run the same command with --resume"), line
    assert ".tmp-" not in line and "permission" not in line and "\n" not in line
    after = file_hashes(first.run_dir)
    assert not [name for name in after if ".tmp" in name]
    saved = [name for name in before if name.startswith(("step-", "state/"))]
    assert len(saved) == 4 and {name: after.get(name) for name in saved} == {name: before[name] for name in saved}
    assert (first.run_dir / "step-000004").exists() == (where == "state")


def test_the_one_line_for_a_full_disk_names_the_folder_not_the_temp_file(tmp_path: Path) -> None:
    line = os_error_line(no_space(tmp_path / "step-000004.tmp-0123abcd" / "adapter" / "x.safetensors.tmp-89abcdef"))
    assert line == f"disk full: cannot write into {tmp_path / 'step-000004' / 'adapter'} (No space left on device); " \
                   "free some space or choose a folder on another disk"


def test_generate_writes_a_wav_atomically_and_says_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import soundfile as sf

    from acestep.audio.write import write_wav

    wav = torch.zeros(2, 4800)
    write_wav(wav, 48000, tmp_path / "ok.wav")
    assert sf.info(str(tmp_path / "ok.wav")).frames == 4800

    def failing_write(path: str, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"RIFF")
        raise sf.LibsndfileError(0, prefix="Error writing: ")

    monkeypatch.setattr(sf, "write", failing_write)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(AcestepError, match=r"^disk full: cannot write into .* free some space"):
        write_wav(wav, 48000, tmp_path / "full.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.wav"]


# ---- numbers that cannot be, and a GPU the installed torch cannot use ----

@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e9"])
def test_max_duration_must_be_a_real_crop_length(tmp_path: Path, value: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--dataset_path", "x", "--output_dir", str(tmp_path), "--max_duration", value])
    message = str(exit_info.value.code)
    assert message.startswith("error: --max_duration must be more than 0 and at most 3600 seconds, not ")
    assert "\n" not in message and not (tmp_path / "lora").exists()


def test_nan_in_any_number_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"--learning_rate must be a finite number, not nan"):
        cli_main(["--dataset_path", "x", "--output_dir", str(tmp_path), "--learning_rate", "nan"])


def cpu_only_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)


def test_a_gpu_asked_of_the_cpu_torch_names_torch_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from acestep.families.generation import main as generate_main

    cpu_only_torch(monkeypatch)
    train = ["--dataset_path", "x", "--output_dir", str(tmp_path)]
    generate = ["--prompt", "x", "--out_dir", str(tmp_path)]
    for flag, value, main, args in (("--accelerator", "gpu", cli_main, train),
                                    ("--device", "cuda", generate_main, generate),
                                    ("--device", "cuda:1", generate_main, generate)):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, flag, value])
        message = str(exit_info.value.code)
        assert message.startswith(f"error: {flag} {value}: the installed torch ") and "CPU-only build" in message
        assert 'TORCH_SPEC="torch==' in message and "--index-url https://download.pytorch.org/whl/cu" in message
        assert "\n" not in message
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build on a machine without a GPU
    with pytest.raises(SystemExit, match="is a CUDA build but sees no GPU"):
        cli_main(["--dataset_path", "x", "--output_dir", str(tmp_path), "--accelerator", "cuda"])


# ---- Weights & Biases: the run's settings as the W&B run config ----

def wandb_records(path: Path) -> Iterator[bytes]:
    """The records of an offline run's .wandb file: a LevelDB-style log (a 7-byte file header, then 32 KiB blocks
    of chunks, each with a 7-byte header: crc32, length, type full/first/middle/last). wandb reads it in Go only."""
    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or (length == 0 and kind == 0):  # block padding
            position += left
            continue
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending


def wandb_run_config(path: Path, timeout: float = 60.0) -> dict[str, Any]:
    """The run config an offline run recorded; waits for the run's exit record (wandb's service writes the file
    on its own schedule, after the run has finished in Python)."""
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        config: dict[str, Any] = {}
        kinds = []
        for raw in wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            kinds.append(kind := record.WhichOneof("record_type"))
            if kind in ("run", "config"):
                items = record.run.config.update if kind == "run" else record.config.update
                config.update({item.key: json.loads(item.value_json) for item in items})
        if "exit" in kinds or time.monotonic() > deadline:
            return config
        time.sleep(0.2)


def test_wandb_gets_the_whole_config_and_the_lora_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    songs = synthetic_songs([6, 8, 7])
    result = run_training(config(tmp_path, max_steps=1, logger="wandb", seed=7, max_duration=12.5,
                                 lora={"adapter_type": "dora"}), tiny_transformer(), songs)
    runs = list((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    values = wandb_run_config(runs[0])
    saved = json.loads((result.run_dir / "train_config.json").read_text())
    assert {key: values[key] for key in saved} == saved
    assert values["learning_rate"] == 1e-3 and values["seed"] == 7 and values["max_duration"] == 12.5
    assert values["family"] == "ace-step-v1" and values["dataset_songs"] == 3 and values["preset"] is None
    lora = values["lora"]
    assert (lora["r"], lora["lora_alpha"], lora["adapter_type"]) == (4, 4.0, "dora")
    assert lora["target_modules"] == ["to_q", "to_k"]


# ---- a console that went away ----

def test_a_guarded_stream_outlives_its_reader() -> None:
    from acestep.core.broken_pipe import GuardedStream

    read_end, write_end = os.pipe()
    stream = GuardedStream(os.fdopen(write_end, "w", buffering=1))
    stream.write("seen\n")
    assert os.read(read_end, 100) == b"seen\n"
    os.close(read_end)  # tee ended
    for _ in range(3):
        assert stream.write("lost\n") == 5
        stream.flush()
    assert stream.broken and not stream.isatty()
    if sys.platform == "linux":  # the descriptor now writes to the null device
        assert os.path.samefile(f"/proc/self/fd/{stream.fileno()}", os.devnull)
    stream.close()


def test_a_resume_with_a_raised_max_steps_decays_to_the_new_end(tmp_path: Path) -> None:
    """Training on past the first --max_steps: the resumed steps take the rates of a run planned that long from the
    start, not the first run's end rate (0 with the linear schedule)."""
    songs = synthetic_songs([6, 8])
    settings = dict(warmup_steps=0, lr_schedule="linear", final_lr_fraction=0.0, every_n_train_steps=4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_training(config(tmp_path / "a", max_steps=4, **settings), tiny_transformer(), songs)
    resumed = run_training(config(tmp_path / "a", max_steps=8, resume=True, **settings), tiny_transformer(), songs)
    planned = run_training(config(tmp_path / "b", max_steps=8, **settings), tiny_transformer(), songs)
    rates = {row["step"]: row["learning_rate"] for row in read_metrics(resumed.run_dir / "metrics.jsonl")}
    expected = {row["step"]: row["learning_rate"] for row in read_metrics(planned.run_dir / "metrics.jsonl")}
    assert sorted(rates) == list(range(1, 9))
    assert [rates[step] for step in range(5, 9)] == pytest.approx([expected[step] for step in range(5, 9)])
    assert all(rates[step] > 0 for step in range(5, 9))
