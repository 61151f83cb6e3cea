"""Regularization songs (--reg_dataset, --reg_weight): an exact, resumable mix of micro-batches, their own loss."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
from test_training_run import make_config
from training_helpers import crash_at_step, synthetic_songs, tiny_transformer
from v15_helpers import tiny_dit, tiny_null, v15_songs

from acestep.core.errors import AcestepError
from acestep.families.training import main as cli_main
from acestep.families.training import run_training
from acestep.families.v15.training import training_parts
from acestep.training import summary_text
from acestep.training.callbacks import read_metrics
from acestep.training.data import RunOrderSampler, reg_count
from acestep.training.module import LoraTrainingModule
from acestep.training.regularization import load_reg_rows

TRAIN_LENGTHS = [9, 12, 7]
REG_LENGTHS = [20, 22]  # no training song is this long: a batch's frame count tells where it came from


def flat(sampler: RunOrderSampler) -> list[Any]:
    return [draw for batch in sampler for draw in batch]


@pytest.mark.parametrize("weight", ["0.25", "0.1", "0.3", "0.5"])
def test_the_mix_holds_exactly_over_a_run_and_spreads_evenly(weight: str) -> None:
    w = Fraction(weight)
    total = 137
    draws = flat(RunOrderSampler(5, 1, total, seed=7, reg_samples=3, reg_weight=w))
    flags = [d.reg for d in draws]
    assert sum(flags) == int(total * float(weight)) == reg_count(total, w)
    for n in range(total + 1):  # every stretch of the run holds its share, off by less than one micro-batch
        assert abs(sum(flags[:n]) - n * float(weight)) < 1
    assert all(d.index < 3 for d in draws if d.reg) and {d.index for d in draws if d.reg} == {0, 1, 2}
    # the user's songs come in the order they have without regularization, interleaved
    plain = flat(RunOrderSampler(5, 1, total - sum(flags), seed=7))
    assert [(d.index, d.seed) for d in draws if not d.reg] == [(d.index, d.seed) for d in plain]


def test_a_resume_and_every_ddp_rank_follow_the_same_schedule() -> None:
    args = dict(num_samples=5, batch_size=2, total_micro_batches=40, seed=3, reg_samples=4, reg_weight=Fraction(1, 3))
    whole = list(RunOrderSampler(**args))
    assert list(RunOrderSampler(**args, start=17)) == whole[17:]
    ranks = [list(RunOrderSampler(**args, rank=r, world_size=2)) for r in (0, 1)]
    assert [b[0].reg for b in ranks[0]] == [b[0].reg for b in ranks[1]] == [b[0].reg for b in whole]
    reg_songs = [d.index for r in ranks for b in r for d in b if d.reg]
    assert sorted(reg_songs) == sorted([0, 1, 2, 3] * (len(reg_songs) // 4))  # whole epochs of the reg songs


def save_songs(folder: Path, lengths: list[int], seed: int = 9) -> str:
    synthetic_songs(lengths, seed=seed).save_to_disk(str(folder))
    return str(folder)


class Recorder:
    """Wraps the training step: (micro-batch, regularization?, frames, loss) of every micro-batch it trains."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[int, bool, int, float]] = []
        original = LoraTrainingModule.training_step

        def step(module: LoraTrainingModule, batch: dict, batch_idx: int) -> torch.Tensor:
            reg, frames, micro_batch = batch.get("reg", False), batch["target_latents"].shape[-1], batch["micro_batch"]
            loss = original(module, batch, batch_idx)
            self.seen.append((micro_batch, reg, frames, float(loss.detach())))
            return loss

        monkeypatch.setattr(LoraTrainingModule, "training_step", step)


def test_the_reg_loss_is_computed_on_reg_songs_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    config = make_config(tmp_path, max_steps=8, accumulate_grad_batches=2, reg_weight=0.25, logger="csv",
                         reg_dataset=save_songs(tmp_path / "reg", REG_LENGTHS))
    result = run_training(config, transformer=tiny_transformer(), dataset=synthetic_songs(TRAIN_LENGTHS))
    assert [m for m, *_ in recorder.seen] == list(range(16))
    assert [m for m, reg, *_ in recorder.seen if reg] == [3, 7, 11, 15]  # 16 x 0.25, every 4th
    assert all((frames in REG_LENGTHS) == reg for _, reg, frames, _ in recorder.seen)
    rows = read_metrics(result.metrics_file)
    for row in rows:
        mine = [s for s in recorder.seen if s[0] // 2 == row["step"] - 1]
        user, reg = [s[3] for s in mine if not s[1]], [s[3] for s in mine if s[1]]
        assert row["loss"] == pytest.approx(sum(user) / len(user), rel=1e-6)
        assert row.get("reg_loss") == (pytest.approx(sum(reg) / len(reg), rel=1e-6) if reg else None)
    assert [r["step"] for r in rows if "reg_loss" in r] == [2, 4, 6, 8]
    with next((result.run_dir / "logs").rglob("metrics.csv")).open() as handle:
        logged = [row for row in csv.DictReader(handle) if row.get("train/reg_loss")]
    assert [int(row["step"]) for row in logged] == [2, 4, 6, 8]
    assert "Regularization: 4 of 16 micro-batches (25%) came from" in summary_text(result)


def test_steps_of_reg_songs_only_log_no_training_loss(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_steps=6, reg_weight=0.5, val_songs=1, val_every=3,
                         reg_dataset=save_songs(tmp_path / "reg", REG_LENGTHS))
    result = run_training(config, transformer=tiny_transformer(), dataset=synthetic_songs(TRAIN_LENGTHS))
    rows = read_metrics(result.metrics_file)
    assert [("loss" in r, "reg_loss" in r) for r in rows] == [(True, False), (False, True)] * 3
    assert result.val_curve is not None and result.val_curve.is_file()  # drawn from the steps that have a loss


@pytest.mark.slow
def test_a_resumed_run_repeats_the_mix_and_the_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = synthetic_songs(TRAIN_LENGTHS)
    common = dict(max_steps=6, every_n_train_steps=2, reg_weight=0.4, accumulate_grad_batches=2,
                  reg_dataset=save_songs(tmp_path / "reg", REG_LENGTHS))
    whole = run_training(make_config(tmp_path, exp_name="whole", **common), tiny_transformer(), dataset)
    parts = make_config(tmp_path, exp_name="parts", **common)
    crash_at_step(monkeypatch, 4, lambda: run_training(parts, tiny_transformer(), dataset))
    resumed = run_training(make_config(tmp_path, exp_name="parts", resume=True, **common), tiny_transformer(), dataset)
    whole_rows, resumed_rows = read_metrics(whole.metrics_file), read_metrics(resumed.metrics_file)
    assert [r["step"] for r in resumed_rows] == [1, 2, 3, 4, 5, 6]
    assert [sorted(r) for r in resumed_rows] == [sorted(r) for r in whole_rows]
    for key in ("loss", "reg_loss"):
        values = [[r[key] for r in rows if key in r] for rows in (resumed_rows, whole_rows)]
        assert values[0] == pytest.approx(values[1], rel=1e-5), key
    assert [r["step"] for r in whole_rows if "reg_loss" in r] == [2, 3, 4, 5]  # 12 x 0.4: micro-batches 2, 4, 7, 9
    with pytest.raises(AcestepError, match="different data order.*reg_weight 2/5 -> 1/2"):
        run_training(make_config(tmp_path, exp_name="parts", resume=True, **{**common, "reg_weight": 0.5,
                                                                             "max_steps": 8}),
                     tiny_transformer(), dataset)


def _manifest(folder: Path, family: str, trigger: str | None = None) -> str:
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"family": family, "settings": {"trigger": trigger}}))
    return str(folder)


def test_a_bad_reg_dataset_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(AcestepError, match="folder not found"):
        load_reg_rows(str(tmp_path / "missing"), "ace-step-v1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AcestepError, match="not a preprocessed dataset"):
        load_reg_rows(str(tmp_path / "empty"), "ace-step-v1")
    with pytest.raises(AcestepError, match="is ace-step-1.5, but the run trains ace-step-v1"):
        load_reg_rows(_manifest(tmp_path / "v15", "ace-step-1.5"), "ace-step-v1")
    with pytest.raises(AcestepError, match="with the trigger 'mystyle'.*without --trigger"):
        load_reg_rows(_manifest(tmp_path / "trig", "ace-step-v1", "mystyle"), "ace-step-v1")
    assert len(load_reg_rows(save_songs(tmp_path / "ok", REG_LENGTHS), "ace-step-v1")) == 2


def test_the_cli_refuses_a_missing_reg_dataset_before_loading_a_model(tmp_path: Path) -> None:
    prep = save_songs(tmp_path / "prep", TRAIN_LENGTHS)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--dataset_path", prep, "--output_dir", str(tmp_path), "--reg_dataset", str(tmp_path / "nope"),
                  "--checkpoint_dir", str(tmp_path / "no-checkpoint-needed")])
    message = str(exit_info.value.code)
    assert message.startswith("error: --reg_dataset") and "folder not found" in message and "\n" not in message
    with pytest.raises(SystemExit, match="--reg_weight must be between 0 and 1"):
        cli_main(["--dataset_path", prep, "--reg_dataset", prep, "--reg_weight", "1"])


def test_overfit_one_leaves_the_reg_songs_out(tmp_path: Path) -> None:
    config = make_config(tmp_path, overfit_one=True, reg_dataset="reg").for_overfit_one()
    assert config.reg_dataset is None


def test_ace_step_1_5_mixes_reg_songs_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bool, int]] = []
    from acestep.families.v15.objective import V15Step

    original = V15Step.__call__

    def step(self: V15Step, transformer: torch.nn.Module, batch: dict, generator: torch.Generator) -> Any:
        seen.append((batch["micro_batch"], batch["target_latents"].shape[1]))
        return original(self, transformer, batch, generator)

    monkeypatch.setattr(V15Step, "__call__", step)
    config = make_config(tmp_path, max_steps=6, reg_weight=0.5, accumulate_grad_batches=2, reg_dataset="in-memory")
    parts = training_parts(config, tiny_dit(), tiny_null(), v15_songs(TRAIN_LENGTHS), "tiny",
                           reg_rows=v15_songs(REG_LENGTHS, seed=4))
    result = run_training(config, parts=parts)
    assert sorted(m for m, frames in seen if frames in REG_LENGTHS) == [1, 3, 5, 7, 9, 11]
    rows = read_metrics(result.metrics_file)
    assert all(r["reg_loss"] > 0 and r["loss"] > 0 for r in rows)
    assert "Regularization: 6 of 12 micro-batches (50%)" in summary_text(result)
