"""ACE-Step 1.5 training on a tiny diffusers DiT: the official objective, learning, exact resume, the step folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from training_helpers import crash_at_step, short_run_config, write_lora_config
from v15_helpers import pretrained_tiny_dit, tiny_dit, tiny_null, v15_songs

from acestep.core.errors import AcestepError
from acestep.families.training import run_training
from acestep.families.v15.objective import (
    TimestepSampler,
    V15Step,
    drop_conditions,
    masked_mse,
    resolve_schedule,
    shifted_timesteps,
)
from acestep.families.v15.training import V15Songs, collate_v15, training_parts
from acestep.lora import load_adapter
from acestep.training import TrainConfig, summary_text
from acestep.training.callbacks import read_metrics
from acestep.training.data import Draw

OFFICIAL_TURBO = [1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def lora_config(folder: Path, r: int = 4, alpha: float = 8.0, dropout: float = 0.0) -> str:
    return write_lora_config(folder, r, lora_alpha=alpha, lora_dropout=dropout, target_modules=TARGETS)


def make_config(tmp_path: Path, **overrides: Any) -> TrainConfig:
    return short_run_config(tmp_path, **{"lora_config_path": lora_config(tmp_path), **overrides})


def test_turbo_timesteps_are_the_official_table_and_the_pipeline_schedule() -> None:
    from diffusers import AceStepPipeline

    assert shifted_timesteps().tolist() == pytest.approx(OFFICIAL_TURBO, abs=1e-7)
    pipeline_schedule = AceStepPipeline._get_timestep_schedule(None, 8, 3.0, "cpu", torch.float64)
    assert shifted_timesteps().tolist() == pytest.approx(pipeline_schedule[:8].tolist(), abs=1e-7)
    drawn = TimestepSampler("turbo").sample(400, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == set(shifted_timesteps().tolist())


def test_schedule_follows_the_variant_and_continuous_density_has_the_base_models_mean() -> None:
    assert resolve_schedule("auto", True) == "turbo" and resolve_schedule("auto", False) == "logit_normal"
    assert resolve_schedule("turbo", False) == "turbo"
    with pytest.raises(AcestepError, match="unknown timestep schedule"):
        resolve_schedule("cosine", True)
    t = TimestepSampler("logit_normal", -0.4, 1.0).sample(20000, torch.Generator().manual_seed(0))
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert float(torch.logit(t.double()).mean()) == pytest.approx(-0.4, abs=0.03)


def test_loss_is_mse_over_valid_frames_and_dropout_uses_the_null_condition() -> None:
    g = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(2, 5, 64, generator=g), torch.randn(2, 5, 64, generator=g)
    assert float(masked_mse(prediction, target, torch.ones(2, 5))) == pytest.approx(float(F.mse_loss(prediction, target)))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).float()
    changed = target.clone()
    changed[1, 2:] += 100.0  # padding frames: ignored
    valid = torch.cat([(prediction[0] - target[0]).flatten(), (prediction[1, :2] - target[1, :2]).flatten()])
    assert float(masked_mse(prediction, changed, mask)) == pytest.approx(float(valid.pow(2).mean()), rel=1e-6)
    states, null = torch.randn(3, 4, 32), tiny_null()
    assert torch.equal(drop_conditions(states, null, 0.0, g), states)
    assert torch.equal(drop_conditions(states, null, 1.0, g), null.expand(3, 4, 32))


def test_step_feeds_the_dit_x_t_and_t_as_timestep_r() -> None:
    """x_t = t * noise + (1 - t) * x0 and target noise - x0: the loss equals a hand-made one from the same draws."""
    model = tiny_dit()
    batch = collate_v15([V15Songs(v15_songs([12]))[Draw(0, 0, 0)]])
    loss, _ = V15Step(TimestepSampler("turbo"), None, 0.0)(model, batch, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = shifted_timesteps()[torch.randint(0, 8, (1,), generator=g)]
    noise = torch.randn(batch["target_latents"].shape, generator=g)
    x0 = batch["target_latents"]
    xt = t.view(-1, 1, 1) * noise + (1 - t.view(-1, 1, 1)) * x0
    out = model(hidden_states=xt, timestep=t, timestep_r=t, encoder_hidden_states=batch["encoder_hidden_states"],
                context_latents=batch["context_latents"]).sample
    assert float(loss.detach()) == pytest.approx(float(F.mse_loss(out, noise - x0)), rel=1e-5)


def fixed_draw_loss(model: torch.nn.Module, dataset: Any, draws: int = 16) -> float:
    batch = collate_v15([V15Songs(dataset)[Draw(0, 0, 0)]])
    step, generator = V15Step(TimestepSampler("turbo"), None, 0.0), torch.Generator().manual_seed(123)
    model.eval()
    with torch.no_grad():
        return sum(float(step(model, batch, generator)[0]) for _ in range(draws)) / draws


@pytest.mark.slow
def test_single_song_overfit_halves_the_loss(tmp_path: Path) -> None:
    dataset = v15_songs([30])
    config = make_config(tmp_path, lora_config_path=lora_config(tmp_path, 16, 16.0), max_steps=30, warmup_steps=0,
                         learning_rate=1e-2, final_lr_fraction=1.0, every_n_train_steps=100)
    before = fixed_draw_loss(pretrained_tiny_dit(), dataset)
    model = pretrained_tiny_dit()
    result = run_training(config, parts=training_parts(config, model, tiny_null(), dataset, "tiny"))
    after = fixed_draw_loss(model, dataset)
    assert result.steps == 30 and result.stopped is None
    assert after < 0.5 * before, (before, after)
    assert [r["step"] for r in read_metrics(result.metrics_file)] == list(range(1, 31))


def test_resume_repeats_the_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crops, condition dropout, LoRA dropout and continuous timesteps all repeat exactly after a crash."""
    dataset = v15_songs([9, 12, 7])
    common = dict(batch_size=2, max_steps=6, every_n_train_steps=2, max_duration=0.3, gradient_checkpointing=True,
                  condition_dropout=0.5, timestep_schedule="logit_normal",
                  lora_config_path=lora_config(tmp_path, dropout=0.1))

    def run(name: str, **extra: Any) -> Any:
        config = make_config(tmp_path, exp_name=name, **common, **extra)
        return run_training(config, parts=training_parts(config, tiny_dit(), tiny_null(), dataset, "tiny"))

    whole = run("whole")
    crash_at_step(monkeypatch, 5, lambda: run("parts"))
    with pytest.raises(AcestepError, match="add --resume"):
        run("parts")
    resumed = run("parts", resume=True)
    assert resumed.steps == 6
    whole_rows, resumed_rows = read_metrics(whole.metrics_file), read_metrics(resumed.metrics_file)
    assert [r["step"] for r in resumed_rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "learning_rate", "grad_norm"):
        assert [r[key] for r in resumed_rows] == pytest.approx([r[key] for r in whole_rows], rel=1e-5), key
    final_whole, _ = load_adapter(whole.adapter_dir / "adapter" / "adapter_model.safetensors")
    final_resumed, header = load_adapter(resumed.adapter_dir / "adapter" / "adapter_model.safetensors")
    assert final_whole.keys() == final_resumed.keys() and header["acestep_family"] == "ace-step-1.5"
    for key, value in final_whole.items():
        torch.testing.assert_close(final_resumed[key], value, rtol=1e-5, atol=1e-7)
    text = summary_text(resumed)
    assert "comfyui.safetensors" in text and "load_lora_weights" in text
