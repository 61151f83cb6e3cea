"""Every tool given an output folder it cannot write into says so in one line (no OSError traceback)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from data_helpers import write_audio
from lora_helpers import random_lora
from training_helpers import synthetic_songs

from acestep.lora import LoraSettings, save_adapter


def one_line_exit(main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert "writable output folder" in message or "cannot write here" in message, message
    return message


def test_stage_2_and_3(tmp_path: Path, read_only_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_data_preprocess_fake import make_encoders

    from acestep.data import preprocess
    from acestep.data.filenames import main as stage2
    from acestep.families.v1 import encoders

    stage3 = functools.partial(preprocess.main, song_stages=encoders.v1_song_stages)  # v1, no checkpoint needed

    songs = tmp_path / "songs"
    write_audio(songs / "a.wav", 1.0, 48000, 2)
    one_line_exit(stage2, ["--data_dir", str(songs), "--output_name", str(read_only_folder / "filenames")])
    stage2(["--data_dir", str(songs), "--output_name", str(tmp_path / "filenames")])
    monkeypatch.setattr(encoders, "load_encoders", lambda *args: make_encoders(ssl=False))
    one_line_exit(stage3, ["--input_name", str(tmp_path / "filenames"), "--output_dir", str(read_only_folder / "p"),
                           "--no-ssl", "--num_workers", "0"])


def test_trainer(tmp_path: Path, read_only_folder: Path, tiny_checkpoint: Path) -> None:
    from acestep.families.training import main as trainer

    synthetic_songs([6]).save_to_disk(str(tmp_path / "prep"))
    one_line_exit(trainer, ["--dataset_path", str(tmp_path / "prep"), "--checkpoint_dir", str(tiny_checkpoint),
                            "--output_dir", str(read_only_folder / "runs"), "--max_steps", "1", "--no-progress_bar",
                            "--logger", "none"])


def test_lora_tools_and_tiny_checkpoint(tmp_path: Path, read_only_folder: Path) -> None:
    from acestep.lora.bake import main as bake
    from acestep.lora.cli import main as lora
    from acestep.tiny_checkpoint import main as tiny

    adapter = save_adapter(random_lora(4), tmp_path / "run", LoraSettings(r=4, target_modules=("to_q",)))
    one_line_exit(bake, ["--input_name", str(adapter), "--output_name", str(read_only_folder / "b.safetensors")])
    for command in ("bake", "convert", "resize"):
        extra = ["--rank", "2"] if command == "resize" else []
        one_line_exit(lora, [command, str(adapter), str(read_only_folder / f"{command}.safetensors"), *extra])
    one_line_exit(tiny, [str(read_only_folder / "ckpt")])
