"""ACE-Step 1.5 training on a tiny diffusers DiT: the official objective, learning, exact resume, the step folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from training_helpers import crash_at_step, short_run_config, write_lora_config
from v15_helpers import TINY_DIT, pretrained_tiny_dit, tiny_dit, tiny_null, v15_songs

from acestep.core.errors import AcestepError
from acestep.families.training import run_training
from acestep.families.v15.checkpoint import V15Checkpoint, dit_config
from acestep.families.v15.objective import (
    TimestepSampler,
    V15Step,
    draw_per_song,
    drop_conditions,
    masked_mse,
    resolve_schedule,
    shifted_timesteps,
)
from acestep.families.v15.training import V15Songs, collate_v15, objective_values, training_parts
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


def max_of_two_closed_form(mu: float, sigma: float, points: int = 20000) -> tuple[float, float]:
    """Mean and P(t > 0.5) of t = max of two sigmoid(N(mu, sigma)) draws: its CDF is F(t)^2 with F the logit-normal
    CDF, so the mean is the integral of 1 - F(t)^2 over (0, 1) (midpoint rule)."""
    def cdf(t: float) -> float:
        return 0.5 * (1.0 + math.erf((math.log(t / (1.0 - t)) - mu) / (sigma * math.sqrt(2.0))))

    mean = sum(1.0 - cdf((i + 0.5) / points) ** 2 for i in range(points)) / points
    return mean, 1.0 - cdf(0.5) ** 2


def variant_dit(variant: str) -> torch.nn.Module:
    from diffusers import AceStepTransformer1DModel

    return AceStepTransformer1DModel(**TINY_DIT, is_turbo=variant == "turbo", model_version=variant)


@pytest.mark.parametrize("variant", ["turbo", "base", "sft"])
def test_default_timesteps_are_the_max_of_two_density_for_every_variant(tmp_path: Path, variant: str) -> None:
    """The models' own training density (and the current official trainer's, turbo included): mean 0.535 and
    P(t > 0.5) 0.57 with the published mu -0.4 / sigma 1.0 (a single draw gives 0.417 / 0.34, the 8-value turbo
    table 0.735 / 0.75)."""
    published = {"timestep_mu": -0.4, "timestep_sigma": 1.0, "is_turbo": variant == "turbo", "model_version": variant}
    parts = training_parts(make_config(tmp_path), variant_dit(variant), tiny_null(), v15_songs([8]), "tiny",
                           dit=published)
    sampler = parts.step.sampler
    assert (sampler.schedule, sampler.mu, sampler.sigma) == ("logit_normal", -0.4, 1.0)
    t = sampler.sample(200_000, torch.Generator().manual_seed(0)).double()
    mean, tail = max_of_two_closed_form(-0.4, 1.0)
    assert mean == pytest.approx(0.535, abs=0.001) and tail == pytest.approx(0.5704, abs=0.0001)
    assert float(t.mean()) == pytest.approx(mean, abs=0.003) and float((t > 0.5).double().mean()) == pytest.approx(
        tail, abs=0.005)
    assert float(t.mean()) == pytest.approx(0.535, abs=0.01) and float((t > 0.5).double().mean()) == pytest.approx(
        0.57, abs=0.02)
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert "t = max of two sigmoid(N(-0.4, 1)) draws" in parts.notes[0]
    assert "mu/sigma from the DiT's config.json" in parts.notes[0]


def test_mu_and_sigma_come_from_the_dits_config_json_and_flags_win(tmp_path: Path) -> None:
    folder = tmp_path / "acestep-v15-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"timestep_mu": 0.3, "timestep_sigma": 0.5}))
    dit = dit_config(V15Checkpoint(root=tmp_path, layout="original", variant="base", dit=folder))
    values, line = objective_values(make_config(tmp_path), dit)
    assert (values["timestep_mu"], values["timestep_sigma"], values["timestep_schedule"]) == (0.3, 0.5, "logit_normal")
    assert "sigmoid(N(0.3, 0.5))" in line and "the DiT's config.json" in line
    t = TimestepSampler("logit_normal", 0.3, 0.5).sample(200_000, torch.Generator().manual_seed(1)).double()
    assert float(t.mean()) == pytest.approx(max_of_two_closed_form(0.3, 0.5)[0], abs=0.003)
    values, line = objective_values(make_config(tmp_path, timestep_mu=-1.0, timestep_sigma=2.0), dit)
    assert (values["timestep_mu"], values["timestep_sigma"]) == (-1.0, 2.0) and "your flags" in line
    values, line = objective_values(make_config(tmp_path), None)  # a diffusers transformer/config.json has none
    assert (values["timestep_mu"], values["timestep_sigma"]) == (-0.4, 1.0) and "the published values" in line
    assert resolve_schedule("auto") == "logit_normal" and resolve_schedule("turbo") == "turbo"
    with pytest.raises(AcestepError, match="unknown timestep schedule"):
        resolve_schedule("cosine")
    values, line = objective_values(make_config(tmp_path, timestep_schedule="turbo"), dit)  # the Feb 2026 table
    assert values["timestep_schedule"] == "turbo" and "8 turbo sampling timesteps" in line


def test_condition_dropout_defaults_to_the_official_015_with_the_null_condition(tmp_path: Path) -> None:
    parts = training_parts(make_config(tmp_path), tiny_dit(), tiny_null(), v15_songs([8]), "tiny")
    assert parts.step.condition_dropout == 0.15 and parts.resolved["condition_dropout"] == 0.15
    assert "condition dropout 0.15 (null_condition_emb, the official default)" in parts.notes[0]
    sampler = TimestepSampler("logit_normal")
    draws = [draw_per_song([torch.Generator().manual_seed(i)], torch.ones(1, 2), 4, sampler, 0.15) for i in range(4000)]
    assert sum(not bool(d.keep[0]) for d in draws) / 4000 == pytest.approx(0.15, abs=0.02)
    assert training_parts(make_config(tmp_path, condition_dropout=0.0), tiny_dit(), tiny_null(), v15_songs([8]),
                          "tiny").step.condition_dropout == 0.0
    with pytest.raises(AcestepError, match="null_condition_emb"):
        training_parts(make_config(tmp_path), tiny_dit(), None, v15_songs([8]), "tiny")


def test_a_songs_draws_do_not_depend_on_its_batch() -> None:
    """Song i's dropout, t and noise come from generators[i] alone: batched with another song (padded) or alone,
    it gets the same draws; its padded frames get no noise."""
    sampler = TimestepSampler("logit_normal")
    alone = draw_per_song([torch.Generator().manual_seed(7)], torch.ones(1, 6), 4, sampler, 0.5)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]).float()
    pair = draw_per_song([torch.Generator().manual_seed(3), torch.Generator().manual_seed(7)], mask, 4, sampler, 0.5)
    assert torch.equal(pair.t[1:], alone.t) and torch.equal(pair.keep[1:], alone.keep)
    assert torch.equal(pair.noise[1], alone.noise[0]) and not pair.noise[0, 3:].any()
    same_seed = draw_per_song([torch.Generator().manual_seed(3)], torch.ones(1, 3), 4, sampler, 0.5)
    assert torch.equal(pair.noise[0, :3], same_seed.noise[0]) and torch.equal(pair.t[:1], same_seed.t)


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
    assert torch.equal(drop_conditions(states, null, torch.tensor([True, True, True])), states)
    dropped = drop_conditions(states, null, torch.tensor([True, False, True]))
    assert torch.equal(dropped[1], null[0].expand(4, 32)) and torch.equal(dropped[0::2], states[0::2])


def test_step_feeds_the_dit_x_t_and_t_as_timestep_r() -> None:
    """x_t = t * noise + (1 - t) * x0 and target noise - x0: the loss equals a hand-made one from the same draws."""
    model = tiny_dit()
    batch = collate_v15([V15Songs(v15_songs([12]))[Draw(0, 0, 0)]])
    loss, _ = V15Step(TimestepSampler("turbo"), None, 0.0)(model, batch, [torch.Generator().manual_seed(5)])
    g = torch.Generator().manual_seed(5)
    torch.rand(1, generator=g)  # the song's condition-dropout draw comes first
    t = shifted_timesteps()[torch.randint(0, 8, (1,), generator=g)]
    noise = torch.randn(batch["target_latents"].shape[1:], generator=g)[None]
    x0 = batch["target_latents"]
    xt = t.view(-1, 1, 1) * noise + (1 - t.view(-1, 1, 1)) * x0
    out = model(hidden_states=xt, timestep=t, timestep_r=t, encoder_hidden_states=batch["encoder_hidden_states"],
                context_latents=batch["context_latents"]).sample
    assert float(loss.detach()) == pytest.approx(float(F.mse_loss(out, noise - x0)), rel=1e-5)


def fixed_draw_loss(model: torch.nn.Module, dataset: Any, draws: int = 16) -> float:
    batch = collate_v15([V15Songs(dataset)[Draw(0, 0, 0)]])
    step = V15Step(TimestepSampler("turbo"), None, 0.0)
    model.eval()
    with torch.no_grad():
        return sum(float(step(model, batch, [torch.Generator().manual_seed(123 + i)])[0]) for i in range(draws)) / draws


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
    # the run says, and train_config.json records, what the objective and the optimizer used
    assert "condition dropout 0.5 (null_condition_emb, your flag)" in text
    assert ("Optimizer recipe: ACE-Step 1.5 official trainer: adamw betas (0.9, 0.999), warm-up from 0.1x over 2 steps, "
            "cosine decay to 1% of the peak lr (your flags: --warmup_steps)") in text
    saved = json.loads((tmp_path / "runs" / "parts" / "train_config.json").read_text())
    assert {k: saved[k] for k in ("beta1", "beta2", "lr_schedule", "warmup_steps", "final_lr_fraction",
                                  "condition_dropout", "timestep_schedule", "timestep_mu", "timestep_sigma")} == {
        "beta1": 0.9, "beta2": 0.999, "lr_schedule": "cosine", "warmup_steps": 2, "final_lr_fraction": 0.01,
        "condition_dropout": 0.5, "timestep_schedule": "logit_normal", "timestep_mu": -0.4, "timestep_sigma": 1.0}
    assert saved["recipe"].startswith("Optimizer recipe: ACE-Step 1.5 official trainer")
