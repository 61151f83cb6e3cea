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


@pytest.mark.slow
def test_demo_on_your_songs_names_each_skipped_song_and_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    songs = write_synthetic_songs(tmp_path / "songs", count=2, seconds=3.0)
    (songs / "broken.wav").write_bytes(b"RIFF\x00\x00 not audio")
    main(["--output_dir", str(tmp_path / "out"), "--data_dir", str(songs), "--steps", "2", "--no-ssl",
          "--max_duration", "3"])
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
    wav, rate = sf.read(next(out.glob("samples-v15-*/*.wav")))
    assert rate == 48000 and wav.shape == (88 * 1920, 2)  # ceil(3.5 s * 25 Hz) frames and np.abs(wav).max() > 0
