"""The demo: synthetic songs, and the whole chain from an empty folder (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from safetensors import safe_open

from acestep.demo import main
from acestep.demo_songs import synth_song, write_synthetic_songs


def test_synthetic_songs_are_stereo_audible_and_have_side_files(tmp_path: Path) -> None:
    audio = synth_song(2.0, 220.0, seed=0)
    assert audio.shape == (96000, 2) and audio.dtype == np.float32
    assert 0.01 < np.sqrt((audio**2).mean()) and np.abs(audio).max() <= 1.0
    assert not np.allclose(audio[:, 0], audio[:, 1])  # panned
    folder = write_synthetic_songs(tmp_path / "songs", count=2, seconds=1.5)
    data, rate = sf.read(folder / "song01.wav")
    assert rate == 48000 and data.shape == (72000, 2)
    assert (folder / "song00_lyrics.txt").read_text(encoding="utf-8").strip() == "[instrumental]"
    assert "bass" in (folder / "song01_prompt.txt").read_text(encoding="utf-8")
    (folder / "song00_prompt.txt").write_text("my own tags", encoding="utf-8")
    write_synthetic_songs(folder, count=2, seconds=1.5)
    assert (folder / "song00_prompt.txt").read_text(encoding="utf-8") == "my own tags"  # never overwritten


@pytest.mark.slow
def test_demo_runs_the_whole_chain_from_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from acestep.data.preprocessed import load_preprocessed
    from acestep.lora import load_adapter
    from acestep.training.callbacks import read_metrics

    out = tmp_path / "demo_output"
    main(["--output_dir", str(out), "--songs", "3", "--seconds", "4", "--steps", "12"])
    printed = capsys.readouterr().out
    assert "Demo done" in printed and "(12 training steps)" in printed
    prep = next(out.glob("prep-*"))
    dataset = load_preprocessed(prep)
    assert len(dataset) == 3 and "mert_ssl_hidden_states" in dataset.column_names
    run_dir = next((out / "runs").glob("demo-*"))
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all("mert_loss" in r and np.isfinite(r["loss"]) for r in rows)
    baked = next((run_dir / "step-000012").glob("*-comfyui.safetensors"))
    tensors, _ = load_adapter(baked)
    assert len(tensors) == 2 * 4 * 2 * 3  # A and B of to_q/k/v/out.0 in self- and cross-attention, 3 blocks
    with safe_open(str(baked), "pt") as handle:
        assert "lora_adapter_metadata" not in (handle.metadata() or {})
    curve = run_dir / "loss_curve.png"
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(baked) in printed and str(curve) in printed
    _assert_evaluated(run_dir, printed, [0, 4, 8, 12])


def _assert_evaluated(run_dir: Path, printed: str, steps: list[int]) -> None:
    """The demo ends with the evaluation of its run: base + every saved step scored, a best step named."""
    import json

    report = json.loads((run_dir / "eval" / "eval.json").read_text(encoding="utf-8"))
    assert [s["step"] for s in report["steps"]] == steps
    assert all(np.isfinite(s["scores"]["style_fd_clap"]) and np.isfinite(s["scores"]["style_fd_mert"])
               for s in report["steps"])
    assert report["best"]["step"] in steps and report["best"]["why"]
    assert (run_dir / "eval" / "eval.png").read_bytes()[:4] == b"\x89PNG"
    assert "Best step: " in printed


@pytest.mark.slow
def test_demo_on_your_songs_names_each_skipped_song_and_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    songs = write_synthetic_songs(tmp_path / "songs", count=2, seconds=3.0)
    (songs / "broken.wav").write_bytes(b"RIFF\x00\x00 not audio")
    main(["--output_dir", str(tmp_path / "out"), "--data_dir", str(songs), "--steps", "2", "--no-ssl",
          "--max_duration", "3", "--no-eval"])
    printed = capsys.readouterr().out
    skipped = [line.strip() for line in printed.splitlines() if line.strip().startswith("skipped ")]
    assert len(skipped) == 1 and str(songs / "broken.wav") in skipped[0]
    assert len(skipped[0]) > len(f"skipped {songs / 'broken.wav'}: ")  # a reason follows the name
    assert "2 songs listed" in printed and "Demo done" in printed


def test_demo_runs_the_1_5_chain_from_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`python demo.py --family ace-step-1.5`: tiny 1.5 checkpoint, stages 2-5 and one rendering with the LoRA."""
    from acestep.data.preprocessed import dataset_family, load_preprocessed
    from acestep.lora import read_lora

    out = tmp_path / "demo_output"
    main(["--family", "ace-step-1.5", "--output_dir", str(out), "--songs", "2", "--seconds", "3.5", "--steps", "3"])
    printed = capsys.readouterr().out
    assert "ACE-Step 1.5 demo done" in printed and "(3 training steps)" in printed
    assert "original layout" in printed
    prep = next(out.glob("prep-v15-*"))
    assert dataset_family(prep) == "ace-step-1.5" and len(load_preprocessed(prep)) == 2
    assert load_preprocessed(prep)[0]["bpm"] == 120  # the demo's bpm/key side files reach the stored prompt
    step = next(out.glob("runs/demo15-*/step-000003"))
    comfy = next(step.glob("*-comfyui.safetensors"))
    assert read_lora(comfy).family == "ace-step-1.5"
    assert (step / "diffusers" / "pytorch_lora_weights.safetensors").is_file()
    _assert_evaluated(step.parent, printed, [0, 1, 2, 3])
    wav, rate = sf.read(next(out.glob("samples-v15-*/*.wav")))
    assert rate == 48000 and wav.shape == (88 * 1920, 2)  # ceil(3.5 s * 25 Hz) frames and np.abs(wav).max() > 0


def test_real_songs_are_not_cropped_to_the_synthetic_length() -> None:
    """`demo.py --data_dir SONGS` (the README's suggestion for real songs) keeps each song whole, as the stage
    scripts do; the 30 s cut is for the synthetic songs only, and any crop is said before the run."""
    from acestep.demo import parse_args
    from acestep.demo_songs import crop_note, song_seconds

    assert song_seconds(parse_args(["--data_dir", "songs"])) == (360.0, None)
    assert song_seconds(parse_args([])) == (30.0, 30.0)
    assert song_seconds(parse_args(["--data_dir", "songs", "--max_duration", "90"])) == (90.0, 90.0)
    assert crop_note(360.0, None).startswith("songs used whole (stage 3 keeps up to 360 s each); --max_duration N")
    assert crop_note(90.0, 90.0) == "songs cut to 90 s and trained in 90-second crops (--max_duration)"


def adapter_hashes(output_dir: Path) -> dict[str, str]:
    """sha256 of every adapter, ComfyUI and diffusers LoRA file (and adapter_config.json) under runs/, by a name
    with the run's time stamp taken out."""
    import hashlib
    import re

    files = sorted(output_dir.glob("runs/*/step-*/**/*.safetensors")) + sorted(
        output_dir.glob("runs/*/step-*/**/adapter_config.json"))
    return {re.sub(r"\d{8}-\d{6}", "STAMP", path.relative_to(output_dir).as_posix()):
            hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ace-step-v1", "ace-step-1.5"])
def test_two_fresh_demos_give_byte_identical_loras(tmp_path: Path, family: str) -> None:
    """Two `python demo.py` runs from nothing (tiny checkpoint, songs, preprocessing, training) give the same bytes.

    Both run in the same place (the first one's folder is moved aside): a tiny checkpoint is recorded in the
    LoRA's metadata by its absolute path, so only there would two folders differ (the published model is recorded
    by name)."""
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    hashes = []
    for name in ("first", "second"):
        subprocess.run([sys.executable, str(repo / "demo.py"), "--family", family, "--output_dir", "out",
                        "--songs", "2", "--seconds", "3", "--steps", "2"], cwd=tmp_path, check=True,
                       capture_output=True)
        hashes.append(adapter_hashes(tmp_path / "out"))
        shutil.move(tmp_path / "out", tmp_path / name)
    assert len(hashes[0]) >= 4 and hashes[0].keys() == hashes[1].keys()
    assert any(name.endswith("-comfyui.safetensors") for name in hashes[0])
    assert [name for name in hashes[0] if hashes[0][name] != hashes[1][name]] == []
