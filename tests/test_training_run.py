"""Whole training runs on the tiny transformer with in-memory songs: learning, resume, saving, stopping."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from training_helpers import (
    crash_at_step,
    short_run_config,
    synthetic_songs,
    tiny_transformer,
    v1_module,
    write_lora_config,
)

from acestep.core.errors import AcestepError
from acestep.families.training import main as cli_main
from acestep.families.training import run_training
from acestep.families.v1.objective import FlowMatchingObjective
from acestep.families.v1.songs import SongLatents, collate_songs
from acestep.lora import LoraSettings, load_adapter
from acestep.training import TrainConfig, load_trained_adapter, summary_text
from acestep.training.callbacks import read_metrics
from acestep.training.data import Draw

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def lora_config(folder: Path, r: int = 4, alpha: float = 1.0, rslora: bool = True, targets: list[str] = TARGETS) -> str:
    return write_lora_config(folder, r, lora_alpha=alpha, use_rslora=rslora, target_modules=targets)


def make_config(tmp_path: Path, **overrides: Any) -> TrainConfig:
    return short_run_config(tmp_path, **{"lora_config_path": lora_config(tmp_path), **overrides})


def conditions(batch: dict[str, Any], size: int) -> dict[str, torch.Tensor]:
    return dict(
        attention_mask=batch["attention_mask"], encoder_text_hidden_states=batch["encoder_text_hidden_states"],
        text_attention_mask=batch["text_attention_mask"], speaker_embeds=torch.zeros(size, 16),
        lyric_token_idx=batch["lyric_token_ids"], lyric_mask=batch["lyric_mask"],
    )


def fixed_draw_loss(model: torch.nn.Module, dataset: Any, draws: int = 16) -> float:
    """The training loss of song 0 averaged over the same timesteps and noise every time."""
    batch = collate_songs([SongLatents(dataset)[Draw(0, 0, 0)]])
    objective, generator = FlowMatchingObjective(), torch.Generator().manual_seed(123)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            noised = objective.add_noise(batch["target_latents"], generator)
            out = model(hidden_states=noised.noisy, timestep=noised.timesteps, **conditions(batch, 1))
            total += float(objective.loss(out.sample, noised, batch["target_latents"], batch["attention_mask"]))
    return total / draws


def test_single_song_overfit_halves_the_loss(tmp_path: Path) -> None:
    dataset = synthetic_songs([24])
    # The tiny model's 64-wide stream cannot carry the 128 latent values of a frame to the output through
    # attention alone, so its final projection is a target too (the published model is 2560 wide).
    config = make_config(
        tmp_path, lora_config_path=lora_config(tmp_path, 16, 16.0, False, TARGETS + ["final_layer.linear"]),
        max_steps=40, warmup_steps=0, learning_rate=1e-2, final_lr_fraction=1.0, every_n_train_steps=100,
    )
    before = fixed_draw_loss(tiny_transformer(), dataset)
    model = tiny_transformer()
    result = run_training(config, transformer=model, dataset=dataset)
    after = fixed_draw_loss(model, dataset)
    assert result.steps == 40 and result.stopped is None
    assert after < 0.5 * before, (before, after)
    rows = read_metrics(result.metrics_file)
    assert [r["step"] for r in rows] == list(range(1, 41))


def test_resume_repeats_the_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = synthetic_songs([9, 12, 7], ssl=True)
    common = dict(batch_size=2, max_steps=6, every_n_train_steps=2, max_duration=0.9, gradient_checkpointing=True)
    whole = run_training(make_config(tmp_path, exp_name="whole", **common), tiny_transformer(), dataset)

    parts = make_config(tmp_path, exp_name="parts", **common)
    crash_at_step(monkeypatch, 5, lambda: run_training(parts, tiny_transformer(), dataset))
    parts_dir = tmp_path / "runs" / "parts"
    assert sorted(p.name for p in parts_dir.glob("step-*")) == ["step-000002", "step-000004"]
    with pytest.raises(AcestepError, match="add --resume"):
        run_training(make_config(tmp_path, exp_name="parts", **common), tiny_transformer(), dataset)

    resumed = run_training(make_config(tmp_path, exp_name="parts", resume=True, **common), tiny_transformer(), dataset)
    assert resumed.steps == 6
    whole_rows, resumed_rows = read_metrics(whole.metrics_file), read_metrics(resumed.metrics_file)
    assert [r["step"] for r in resumed_rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "denoising_loss", "mert_loss", "learning_rate", "grad_norm"):
        assert [r[key] for r in resumed_rows] == pytest.approx([r[key] for r in whole_rows], rel=1e-5), key
    final_whole, _ = load_adapter(whole.adapter_dir)
    final_resumed, _ = load_adapter(resumed.adapter_dir)
    assert final_whole.keys() == final_resumed.keys()
    for key, value in final_whole.items():
        torch.testing.assert_close(final_resumed[key], value, rtol=1e-5, atol=1e-7)
    state = torch.load(parts_dir / "state" / "last.ckpt", weights_only=True, map_location="cpu")
    assert all(".lora_" in k for k in state["state_dict"])  # the frozen base is not in the training state


def test_saved_adapter_reproduces_the_trained_model(tmp_path: Path) -> None:
    dataset = synthetic_songs([10, 14])
    model = tiny_transformer()
    result = run_training(make_config(tmp_path, max_steps=4, every_n_train_steps=4, warmup_steps=0,
                                      learning_rate=5e-2, save_last=5), model, dataset)
    assert result.adapter_dir == tmp_path / "runs" / "test" / "step-000004"
    step = result.adapter_dir
    assert sorted(p.name for p in step.iterdir()) == ["adapter", "test-step4-comfyui.safetensors"]
    assert sorted(p.name for p in (step / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    tensors, metadata = load_adapter(result.adapter_dir)
    assert metadata["acestep_step"] == "4" and "base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight" in tensors
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert all(t.abs().max() > 0 for k, t in tensors.items() if "lora_B" in k)  # it trained

    batch = collate_songs([SongLatents(dataset)[Draw(1, 0, 0)]])
    inputs = dict(hidden_states=torch.randn(1, 8, 16, 14, generator=torch.Generator().manual_seed(0)),
                  timestep=torch.tensor([400.0]), **conditions(batch, 1))
    model.eval()
    with torch.no_grad():
        trained = model(**inputs).sample
        fresh = tiny_transformer()
        load_trained_adapter(fresh, result.adapter_dir)
        fresh.eval()
        assert torch.allclose(fresh(**inputs).sample, trained, atol=1e-5)
        base = tiny_transformer().eval()
        assert not torch.allclose(base(**inputs).sample, trained, atol=1e-3)
        # The baked file through diffusers' own loader (scale 1, as the upstream pipeline and ComfyUI apply it).
        baked_model = tiny_transformer()
        baked_model.load_lora_adapter(str(result.baked_file), prefix=None, adapter_name="baked")
        baked_model.eval()
        assert torch.allclose(baked_model(**inputs).sample, trained, atol=1e-5)
        # The adapter folder at its true scale, through PEFT's and diffusers' own loaders.
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(tiny_transformer(), str(step / "adapter")).eval()
        assert torch.allclose(peft_model(**inputs).sample, trained, atol=1e-5)
        diffusers_model = tiny_transformer()
        diffusers_model.load_lora_adapter(str(step / "adapter"), weight_name="adapter_model.safetensors",
                                          prefix="base_model.model", adapter_name="adapter")
        assert torch.allclose(diffusers_model.eval()(**inputs).sample, trained, atol=1e-5)
    with safe_open(str(result.baked_file), "pt") as handle:
        assert "lora_adapter_metadata" not in (handle.metadata() or {})
    assert "strength 1.0" in summary_text(result) and str(result.baked_file) in summary_text(result)


def test_old_steps_are_pruned_and_foreign_files_kept(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "test"
    (run_dir / "notes").mkdir(parents=True)
    result = run_training(make_config(tmp_path, max_steps=5, every_n_train_steps=1, save_last=2), tiny_transformer(),
                          synthetic_songs([6]))
    assert sorted(p.name for p in run_dir.glob("step-*")) == ["step-000004", "step-000005"]
    assert (run_dir / "notes").is_dir() and result.adapter_dir == run_dir / "step-000005"
    assert not list(run_dir.rglob("*.tmp-*"))


@pytest.mark.parametrize("optimizer", ["adamw", "prodigy"])
def test_both_optimizers_update_the_adapter(tmp_path: Path, optimizer: str) -> None:
    model = tiny_transformer()
    config = make_config(tmp_path, optimizer=optimizer, max_steps=2, warmup_steps=0, learning_rate=None,
                         every_n_train_steps=1)
    result = run_training(config, model, synthetic_songs([8]))
    first, _ = load_adapter(result.run_dir / "step-000001")
    second, _ = load_adapter(result.run_dir / "step-000002")
    assert all(t.abs().max() > 0 for k, t in first.items() if "lora_B" in k)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    rows = read_metrics(result.metrics_file)
    assert len(rows) == 2 and all(r["learning_rate"] > 0 for r in rows)


def test_non_finite_loss_stops_and_keeps_the_last_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = FlowMatchingObjective.loss
    calls = {"n": 0}

    def nan_on_fourth_step(self: FlowMatchingObjective, *args: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = original(self, *args)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(FlowMatchingObjective, "loss", nan_on_fourth_step)
    result = run_training(make_config(tmp_path, max_steps=8, every_n_train_steps=2), tiny_transformer(),
                          synthetic_songs([6, 7]))
    assert result.stopped is not None and "non-finite at step 4" in result.stopped
    assert result.steps == 3
    assert result.adapter_dir == tmp_path / "runs" / "test" / "step-000002"
    assert [r["step"] for r in read_metrics(result.metrics_file)] == [1, 2, 3]
    text = summary_text(result)
    assert "stopped early" in text and "step-000002" in text


def test_cli_reports_a_bad_dataset_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--dataset_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path),
                  "--lora_config_path", lora_config(tmp_path)])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "missing" in message and "\n" not in message
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--dataset_path", "x", "--output_dir", str(tmp_path), "--resume"])
    assert "nothing to resume" in str(exit_info.value.code)


def test_cli_trains_on_the_tiny_checkpoint_in_bf16(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """The real loading path: checkpoint folder -> 16-bit frozen base, fp32 LoRA, dataset read from disk."""
    prep = tmp_path / "prep"
    synthetic_songs([8, 11]).save_to_disk(str(prep))
    cli_main(["--dataset_path", str(prep), "--checkpoint_dir", str(tiny_checkpoint), "--output_dir", str(tmp_path),
              "--exp_name", "cli", "--max_steps", "2", "--every_n_train_steps", "1", "--base_dtype", "bf16",
              "--batch_size", "2", "--logger", "csv", "--no-progress_bar"])
    tensors, metadata = load_adapter(tmp_path / "cli" / "step-000002")
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert metadata["acestep_base_model"] == str(tiny_checkpoint.resolve())
    assert json.loads(metadata["acestep_lora_settings"])["r"] == 64  # the repo's transformer-only config
    assert (tmp_path / "cli" / "logs").is_dir()


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_condition_dropout_follows_upstream(tmp_path: Path, probability: float) -> None:
    config = make_config(tmp_path, prompt_dropout=probability, lyrics_dropout=probability, speaker_dropout=probability)
    module = v1_module(tiny_transformer(), LoraSettings.from_json(config.lora_config_path), config,
                       SongLatents(synthetic_songs([4])))
    batch = collate_songs([module.dataset[Draw(0, 0, 0)]])
    dropped = module.step_objective.drop_conditions(module.transformer, batch, [torch.Generator().manual_seed(0)])
    assert torch.equal(dropped["text_attention_mask"], batch["text_attention_mask"])  # kept, as upstream
    assert dropped["speaker_embeds"].shape == (1, 16) and dropped["speaker_embeds"].abs().max() == 0
    if probability == 0.0:
        assert torch.equal(dropped["encoder_text_hidden_states"], batch["encoder_text_hidden_states"])
        assert torch.equal(dropped["lyric_token_idx"], batch["lyric_token_ids"])
    else:
        assert dropped["encoder_text_hidden_states"].abs().max() == 0
        assert dropped["lyric_token_idx"].abs().max() == 0 and dropped["lyric_mask"].abs().max() == 0


def adapter_bytes(result: Any) -> dict[str, bytes]:
    """Every LoRA file of the last step folder, named without the run name."""
    return {str(p.relative_to(result.adapter_dir)).replace(f"{result.run_dir.name}-", "EXP-"): p.read_bytes()
            for p in sorted(result.adapter_dir.rglob("*.safetensors"))}


def test_the_same_seed_gives_byte_identical_adapters(tmp_path: Path) -> None:
    dataset = synthetic_songs([6, 8])
    runs = {}
    for name, seed in (("first", 42), ("second", 42), ("other", 43)):
        torch.rand(7 + len(runs))  # whatever ran before in the process must not matter
        config = make_config(tmp_path, exp_name=name, seed=seed, max_steps=2, every_n_train_steps=2)
        runs[name] = adapter_bytes(run_training(config, tiny_transformer(), dataset))
    assert sorted(runs["first"]) == ["EXP-step2-comfyui.safetensors", "adapter/adapter_model.safetensors"]
    assert runs["first"] == runs["second"]
    assert all(runs["first"][name] != runs["other"][name] for name in runs["first"])


def test_untrained_start_weights_follow_the_seed(tmp_path: Path) -> None:
    starts = []
    for seed in (1, 1, 2):
        torch.rand(len(starts) + 1)
        module = v1_module(tiny_transformer(), LoraSettings(r=4, target_modules=("to_q",)),
                           make_config(tmp_path, seed=seed), SongLatents(synthetic_songs([6])))
        starts.append(torch.cat([p.detach().flatten() for p in module.transformer.parameters() if p.requires_grad]))
    assert torch.equal(starts[0], starts[1]) and not torch.equal(starts[0], starts[2])


@pytest.mark.parametrize(("options", "missing", "message"), [
    ({"val_songs": 1}, "fixed_loss", "--val_songs / --val_dataset: the ace-step-v1 family has no validation loss"),
    ({"gradient_checkpointing": "auto", "vram_gb": 8.0}, "plan_request",
     "--gradient_checkpointing auto: the ace-step-v1 family has no planner; use all / none / N"),
])
def test_a_part_the_family_does_not_hand_in_is_refused_in_one_line(tmp_path: Path, options: dict, missing: str,
                                                                   message: str) -> None:
    """The trainer has no v1 default of its own: a family without a validation loss or planner is refused."""
    import dataclasses

    from acestep.families.v1.training import training_parts

    config = make_config(tmp_path, **options)
    parts = dataclasses.replace(training_parts(config, tiny_transformer(), synthetic_songs([5, 6, 7])),
                                **{missing: None})
    with pytest.raises(AcestepError, match=re.escape(message)):
        run_training(config, parts=parts)
    assert not (tmp_path / "runs" / "test" / "step-000001").exists()


def test_a_refused_resume_leaves_the_run_config_alone(tmp_path: Path) -> None:
    dataset = synthetic_songs([6, 8, 7])
    run_training(make_config(tmp_path, batch_size=2, max_steps=2), tiny_transformer(), dataset)
    config_file = tmp_path / "runs" / "test" / "train_config.json"
    before = config_file.read_bytes()
    assert json.loads(before)["batch_size"] == 2
    with pytest.raises(AcestepError, match="different data order"):
        run_training(make_config(tmp_path, batch_size=1, max_steps=4, resume=True), tiny_transformer(), dataset)
    assert config_file.read_bytes() == before


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_step_folder_files_are_readable_by_other_users(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        result = run_training(make_config(tmp_path, max_steps=1, every_n_train_steps=1), tiny_transformer(),
                              synthetic_songs([6]))
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(result.run_dir)): p.stat().st_mode & 0o777
             for p in result.run_dir.rglob("*") if p.is_file()}
    assert any(name.endswith("-comfyui.safetensors") for name in modes) and len(modes) >= 4
    assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}


def test_a_resumed_run_shows_its_total_and_counts_its_own_steps(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    dataset = synthetic_songs([6, 8])
    first = run_training(make_config(tmp_path, max_steps=4, every_n_train_steps=2), tiny_transformer(), dataset)
    assert summary_text(first).startswith("Training finished: trained 4 steps in ")
    capfd.readouterr()
    resumed = run_training(make_config(tmp_path, max_steps=6, every_n_train_steps=2, resume=True, progress_bar=True),
                           tiny_transformer(), dataset)
    captured = capfd.readouterr()
    bar = captured.out + captured.err
    assert "4/6" in bar and "6/6" in bar and not re.search(r"[1-9]\d*/\?", bar)  # never a count without total
    assert summary_text(resumed).startswith("Training finished: trained 2 steps (resumed at 4, now at 6) in ")
