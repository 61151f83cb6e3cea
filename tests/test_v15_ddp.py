"""ACE-Step 1.5 DDP proven on CPU processes: `trainer_new.py --accelerator cpu --devices 2` (gloo) end to end.

Two processes with batch 1 must take exactly the step one process takes with batch 2 on the same songs: the same
crops, condition dropout, timesteps and noise, since each song's draws come from its slot in the run's order
(acestep.families.v15.objective.draw_per_song). A resume continues exactly, and only rank 0 writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from data_helpers import write_audio
from training_helpers import train_cli

from acestep import families
from acestep.data.filenames import build_filename_dataset
from acestep.data.preprocessed import load_preprocessed
from acestep.lora import load_adapter
from acestep.training.callbacks import read_metrics


def encoded_songs(checkpoint: Path, folder: Path) -> Path:
    """Stage 2 + 3 of four songs (padded to 3 s) with one prompt: the DiT's cross-attention has no padding mask, so songs
    batched together must have conditions of one length to equal songs trained alone (the audio differs)."""
    from acestep.families.preprocess import main as preprocess_main

    songs = folder / "songs"
    for index, freq in enumerate((220.0, 330.0, 440.0, 550.0)):
        write_audio(songs / f"s{index}.wav", seconds=1.6, freq=freq)
        (songs / f"s{index}_prompt.txt").write_text("acoustic, guitar", encoding="utf-8")
    build_filename_dataset(songs, folder / "names")
    prep = folder / "prep"
    preprocess_main(["--input_name", str(folder / "names"), "--output_dir", str(prep), "--checkpoint_dir",
                     str(checkpoint / "original"), "--device", "cpu", "--dtype", "float32", "--num_workers", "0"],
                    song_stages=families.song_stages_for_args)
    return prep


@pytest.mark.slow
def test_two_cpu_processes_equal_one_process_with_twice_the_batch(tmp_path: Path, tiny_v15_checkpoint: Path) -> None:
    prep = encoded_songs(tiny_v15_checkpoint, tmp_path)
    stored = load_preprocessed(str(prep))
    assert len({row["encoder_hidden_states"].shape[0] for row in stored}) == 1
    lora = tmp_path / "lora.json"  # no LoRA dropout: its mask draws per micro-batch and rank, not per song
    lora.write_text(json.dumps({"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}))
    prompts = tmp_path / "samples.json"
    prompts.write_text(json.dumps([{"prompt": "acoustic", "duration": 0.4, "seed": 1, "name": "probe"}]))
    # 1.2 s crops of 3 s songs: every song is cropped at its own random start; condition dropout 0.5 and the
    # max-of-two timesteps are drawn per song. A constant lr: the schedule's length is max_steps, which the resume
    # changes; the official betas (0.9, 0.999) run.
    common = ["--dataset_path", str(prep), "--checkpoint_dir", str(tiny_v15_checkpoint / "original"),
              "--output_dir", str(tmp_path), "--lora_config_path", str(lora), "--accelerator", "cpu",
              "--base_dtype", "fp32", "--max_duration", "1.2", "--learning_rate", "1e-3", "--condition_dropout", "0.5",
              "--warmup_steps", "0", "--final_lr_fraction", "1",
              "--every_n_train_steps", "1", "--save_last", "5", "--logger", "csv", "--no-progress_bar"]
    ddp = common + ["--exp_name", "ddp", "--devices", "2", "--batch_size", "1"]
    first = train_cli(ddp + ["--max_steps", "2", "--sample_every", "1", "--sample_prompts", str(prompts)], tmp_path)
    run = tmp_path / "ddp"
    # One process reports and writes: one summary, one metrics row per step, one sample per step, one log.
    assert first.stdout.count("Training finished") == 1 and "condition dropout 0.5" in first.stdout
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert sorted(p.relative_to(run).as_posix() for p in (run / "samples").rglob("*.wav")) == [
        "samples/step_000001/probe_seed1.wav", "samples/step_000002/probe_seed1.wav"]
    assert [p.name for p in (run / "logs").iterdir()] == ["version_0"]
    resumed = train_cli(ddp + ["--max_steps", "3", "--resume"], tmp_path)
    assert resumed.stdout.count("Training finished") == 1 and "resumed at 2" in resumed.stdout
    train_cli(common + ["--exp_name", "one", "--devices", "1", "--batch_size", "2", "--max_steps", "3"], tmp_path)

    assert sorted(p.name for p in run.iterdir()) == ["logs", "metrics.jsonl", "samples", "state", "step-000001",
                                                     "step-000002", "step-000003", "summary.txt", "train_config.json"]
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    for step in (1, 2, 3):
        folder = f"step-{step:06d}"
        assert sorted(p.name for p in (run / folder).iterdir()) == [
            "adapter", f"ddp-step{step}-comfyui.safetensors", "diffusers", "official"]
        two, _ = load_adapter(run / folder / "adapter" / "adapter_model.safetensors")
        one, _ = load_adapter(tmp_path / "one" / folder / "adapter" / "adapter_model.safetensors")
        assert two.keys() == one.keys() and len(one) > 0
        for key, value in one.items():
            # fp32 sums in another order, amplified by Adam where a gradient is near 0
            torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-6, msg=f"step {step} {key}")
    two_rows, one_rows = read_metrics(run / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert [r["step"] for r in two_rows] == [1, 2, 3]
    for key in ("loss", "grad_norm", "learning_rate"):
        assert [r[key] for r in two_rows] == pytest.approx([r[key] for r in one_rows], rel=1e-5), key
    saved = json.loads((run / "train_config.json").read_text(encoding="utf-8"))
    assert (saved["beta1"], saved["beta2"], saved["lr_schedule"]) == (0.9, 0.999, "cosine")
