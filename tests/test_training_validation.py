"""Validation loss: held-out songs at fixed noise levels and noise, logged beside the training loss, best step kept."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from test_training_run import TARGETS, lora_config, make_config
from training_helpers import synthetic_songs, tiny_transformer, v1_module
from v15_helpers import tiny_dit, tiny_null, v15_songs

from acestep.core.errors import AcestepError
from acestep.families.training import run_training
from acestep.families.v1.songs import SongLatents, collate_songs
from acestep.families.v15.training import training_parts
from acestep.training import summary_text
from acestep.training.callbacks import list_step_folders, read_metrics
from acestep.training.validation import ValidationSet, split_songs, validation_sigmas


def test_sigmas_spread_over_the_schedule() -> None:
    assert validation_sigmas(4) == [0.125, 0.375, 0.625, 0.875]


def test_split_holds_out_the_last_songs_and_refuses_an_empty_training_set() -> None:
    train, val = split_songs(synthetic_songs([4, 5, 6]), 1, None)
    assert len(train) == 2 and len(val) == 1 and val[0]["keys"] == "song2"
    assert split_songs(synthetic_songs([4]), 0, None)[1] is None
    with pytest.raises(AcestepError, match="no song to train on"):
        split_songs(synthetic_songs([4, 5]), 2, None)


def test_the_same_adapter_gives_the_identical_validation_loss(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    from acestep.lora import LoraSettings

    module = v1_module(tiny_transformer(), LoraSettings.from_json(config.lora_config_path), config,
                       SongLatents(synthetic_songs([6])))
    held_out = ValidationSet(SongLatents(synthetic_songs([5, 7], seed=1)), collate_songs, seed=3, timesteps=8)
    first = held_out.loss(module.transformer, module.step_objective.fixed_loss, torch.device("cpu"))
    torch.randn(100)  # the global RNG moving on changes nothing
    assert held_out.loss(module.transformer, module.step_objective.fixed_loss, torch.device("cpu")) == first
    assert module.transformer.training  # restored after evaluation
    with torch.no_grad():
        for name, param in module.transformer.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
    assert held_out.loss(module.transformer, module.step_objective.fixed_loss, torch.device("cpu")) != first


@pytest.mark.slow
def test_an_overfitting_run_shows_training_loss_below_validation_loss(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, lora_config_path=lora_config(tmp_path, 16, 16.0, False, TARGETS + ["final_layer.linear"]),
        max_steps=40, warmup_steps=0, learning_rate=1e-2, final_lr_fraction=1.0, every_n_train_steps=20,
        save_last=1, val_songs=2, val_every=10, logger="csv",
    )
    result = run_training(config, transformer=tiny_transformer(), dataset=synthetic_songs([24, 20, 22]))
    rows = read_metrics(result.metrics_file)
    validated = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in validated] == [10, 20, 30, 40]
    train_late = sum(r["loss"] for r in rows[-10:]) / 10
    assert train_late < 0.8 * validated[-1]["val_loss"], (train_late, validated[-1]["val_loss"])  # measured 0.61 vs 0.95
    best_step, best_loss = result.best_val
    assert best_loss == min(r["val_loss"] for r in validated)
    assert best_step == min(validated, key=lambda r: r["val_loss"])["step"]
    assert best_step in [s for s, _ in list_step_folders(result.run_dir)]  # kept despite save_last=1
    assert (result.run_dir / "val_loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert f"at step {best_step}" in summary_text(result)
    with next((result.run_dir / "logs").rglob("metrics.csv")).open() as handle:
        logged = [row for row in csv.DictReader(handle) if row.get("val/loss")]
    assert [int(row["step"]) for row in logged] == [10, 20, 30, 40]


def test_the_best_step_is_saved_even_between_save_steps(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_steps=3, every_n_train_steps=100, val_songs=1, val_every=1)
    result = run_training(config, transformer=tiny_transformer(), dataset=synthetic_songs([6, 8]))
    assert result.best_val is not None and (result.best_val[0], 3) <= (3, 3)
    assert result.best_val[0] in [s for s, _ in list_step_folders(result.run_dir)]


def test_validation_runs_for_ace_step_1_5(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_steps=4, val_songs=1, val_every=2, val_timesteps=3)
    parts = training_parts(config, tiny_dit(), tiny_null(), v15_songs([9, 12, 7]), "tiny")
    assert len(parts.songs) == 2 and len(parts.val_songs) == 1
    result = run_training(config, parts=parts)
    validated = [r["val_loss"] for r in read_metrics(result.metrics_file) if "val_loss" in r]
    assert len(validated) == 2 and all(v > 0 for v in validated)
    assert result.best_val is not None


def test_a_trigger_is_stamped_into_every_lora_header_and_noted_by_generate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from acestep.lora import read_lora
    from acestep.lora.io import trigger_note

    monkeypatch.setattr("acestep.training.run.dataset_trigger", lambda path: "mystyle")
    config = make_config(tmp_path, max_steps=2, trigger="mystyle")
    result = run_training(config, transformer=tiny_transformer(), dataset=synthetic_songs([6]))
    files = sorted(result.adapter_dir.rglob("*.safetensors"))
    assert len(files) == 2 and all(read_lora(f).trigger == "mystyle" for f in files)
    assert "'mystyle'" in summary_text(result)
    baked = result.baked_file
    assert "trigger tag 'mystyle'" in trigger_note(baked, "rock, loud")
    assert trigger_note(baked, "MyStyle, rock") is None
    config = make_config(tmp_path, exp_name="other", max_steps=1, trigger="else")
    with pytest.raises(AcestepError, match="trigger 'mystyle', not 'else'"):
        run_training(config, transformer=tiny_transformer(), dataset=synthetic_songs([6]))


@pytest.mark.slow
@pytest.mark.parametrize(("learning_rate", "verdict"), [(1e-2, "PASSED"), (1e-9, "FAILED")])
def test_overfit_one_says_whether_the_loss_on_one_song_fell(tmp_path: Path, learning_rate: float, verdict: str) -> None:
    config = make_config(
        tmp_path, lora_config_path=lora_config(tmp_path, 16, 16.0, False, TARGETS + ["final_layer.linear"]),
        overfit_one=True, overfit_steps=30, warmup_steps=0, learning_rate=learning_rate, final_lr_fraction=1.0,
    ).for_overfit_one()
    assert (config.exp_name, config.max_steps, config.val_every) == ("test-overfit-one", 30, 3)
    result = run_training(config, transformer=tiny_transformer(), dataset=synthetic_songs([24, 20, 22]))
    text = summary_text(result)
    assert f"Overfit check {verdict}" in text, text
    assert result.steps == 30 and result.val_start is not None
    assert 30 in [s for s, _ in list_step_folders(result.run_dir)]
    print(text)
