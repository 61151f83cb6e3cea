"""The evaluation through the model families' renderer (acestep.families.generation.load_lora_renderer) on the tiny
v1 checkpoint: an all-zero LoRA is "does nothing", a trained-looking one moves the renders, the base comes back."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from acestep.evaluation.cli import main as evaluate_main
from acestep.evaluation.tiny import write_tiny_eval_models

RATE = 48000


def _lora(checkpoint: Path, scale: float) -> dict[str, torch.Tensor]:
    """PEFT-keyed factors on every block's to_q of the tiny transformer; lora_B = scale * random (0: all-zero)."""
    from safetensors import safe_open

    g = torch.Generator().manual_seed(0)
    tensors = {}
    with safe_open(str(checkpoint / "ace_step_transformer" / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        for key in handle.keys():
            if key.endswith("attn.to_q.weight") and key.startswith("transformer_blocks."):
                out_features, in_features = handle.get_slice(key).get_shape()
                stem = key.removesuffix(".weight")
                tensors[f"{stem}.lora_A.weight"] = torch.randn(4, in_features, generator=g)
                tensors[f"{stem}.lora_B.weight"] = scale * torch.randn(out_features, 4, generator=g)
    assert tensors
    return tensors


@pytest.mark.slow
def test_zero_lora_does_nothing_and_a_trained_one_moves_the_renders(tiny_checkpoint: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    songs = tmp_path / "songs"
    songs.mkdir()
    t = np.arange(2 * RATE) / RATE
    rows = []
    for i in range(2):
        sf.write(songs / f"song{i}.wav", np.stack([np.sin(2 * np.pi * 200 * (i + 1) * t)] * 2, 1) * 0.3, RATE)
        rows.append({"keys": f"song{i}", "filename": str(songs / f"song{i}.wav"), "prompt": "pop, piano"})
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "prep"))
    run = tmp_path / "run"
    for step, scale in ((10, 0.0), (20, 5.0)):
        folder = run / f"step-{step:06d}"
        (folder / "adapter").mkdir(parents=True)
        save_file(_lora(tiny_checkpoint, scale), str(folder / "adapter" / "adapter_model.safetensors"))
        save_file(_lora(tiny_checkpoint, scale), str(folder / f"run-step{step}-comfyui.safetensors"))
    (run / "train_config.json").write_text(json.dumps({"dataset_path": str(tmp_path / "prep"),
                                                       "checkpoint_dir": str(tiny_checkpoint)}))
    clap, mert = write_tiny_eval_models(tmp_path / "models")
    result = evaluate_main(["--run", str(run), "--clap", str(clap), "--mert", str(mert), "--songs", "1",
                            "--seconds", "2", "--sampler_steps", "3", "--device", "cpu"])
    assert result.rendered == 3
    assert result.steps[10].does_nothing and result.steps[10].values["change_wave"] == 0.0
    assert not result.steps[20].does_nothing and result.steps[20].values["change_wave"] > 1e-5
    assert result.verdict.excluded[10].startswith("does nothing")
    assert "does nothing" in capsys.readouterr().out
    report = json.loads((run / "eval" / "eval.json").read_text())
    assert [s["step"] for s in report["steps"]] == [0, 10, 20] and report["best"]["step"] in (0, 20)


@pytest.mark.slow
def test_eval_every_scores_during_training_logs_and_keeps_the_best_step(tiny_checkpoint: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    import csv

    from training_helpers import short_run_config, synthetic_songs

    from acestep.families.training import run_training

    songs = synthetic_songs([40, 48]).with_format(None)
    t = np.arange(RATE) / RATE
    for i in range(2):
        sf.write(tmp_path / f"song{i}.wav", np.stack([np.sin(2 * np.pi * 300 * (i + 1) * t)] * 2, 1) * 0.3, RATE)
    songs = songs.map(lambda row, i: {"filename": str(tmp_path / f"song{i}.wav")}, with_indices=True)
    songs.save_to_disk(str(tmp_path / "prep"))
    clap, mert = write_tiny_eval_models(tmp_path / "models")
    config = short_run_config(tmp_path, dataset_path=str(tmp_path / "prep"), checkpoint_dir=str(tiny_checkpoint),
                              use_ssl=False, max_steps=4, every_n_train_steps=2, save_last=1, logger="csv",
                              eval_every=2, eval_songs=1, eval_seconds=1.0, eval_clap=str(clap), eval_mert=str(mert))
    result = run_training(config)
    printed = capsys.readouterr().out
    assert "--eval_every 2: about 2 evaluations" in printed and "evaluation at step 4: best step so far" in printed
    report = json.loads((result.run_dir / "eval" / "eval.json").read_text())
    assert [s["step"] for s in report["steps"]] == [0, 2, 4]
    best = report["best"]["step"]
    kept = sorted(p.name for p in result.run_dir.glob("step-*"))
    assert kept == sorted({"step-000004", *([f"step-{best:06d}"] if best else [])})
    logged = list(csv.DictReader((next(result.run_dir.glob("logs/version_*/metrics.csv"))).open()))
    scored = {int(row["step"]) for row in logged if row.get("eval/style_fd_clap")}
    assert scored == {0, 2, 4}
