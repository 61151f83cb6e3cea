"""Gradient checkpointing of the first N blocks: the model, the planner's count, auto, presets and the CLI flags."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from acestep.core.errors import AcestepError
from acestep.families.training import parse_config, run_training
from acestep.families.v1.blocks import BLOCKS
from acestep.families.v1.models.configs import tiny_transformer_config
from acestep.families.v1.plan import PlanRequest, estimate, request_for_run
from acestep.families.v1.probe import TrainingStepProbe, random_transformer, synthetic_batch
from acestep.families.v15.plan import V15PlanRequest
from acestep.lora import LoraSettings
from acestep.plan.cli import main
from acestep.presets import (
    PRESET_GB,
    fastest_settings,
    preset_request,
    relative_step_time,
    settings_to_try,
    table_rows,
)
from acestep.training import summary_text
from acestep.training.checkpointing import resolve_auto
from acestep.training.config import TrainConfig, build_parser
from acestep.training.module import enable_checkpointing
from acestep.training.planner import fewest_checkpointed_blocks
from tests.test_plan import ROOT, TRANSFORMER_ONLY
from tests.test_training_run import make_config
from tests.test_transformer import count_checkpoint_calls, tiny_inputs, tiny_model
from tests.training_helpers import synthetic_songs, tiny_transformer


def _gradients(count: int | None, monkeypatch: pytest.MonkeyPatch, set_count: bool = True):
    model = tiny_model(seed=3).train()
    model.enable_gradient_checkpointing()
    if set_count:
        model.set_checkpointed_blocks(count)
    calls = count_checkpoint_calls(monkeypatch)
    torch.manual_seed(7)  # same dropout masks in the lyric encoder
    loss = model(**tiny_inputs()).sample.square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, calls.get("transformer", 0)


def test_the_default_is_bit_identical_to_checkpointing_every_block(monkeypatch):
    today_loss, today, calls = _gradients(None, monkeypatch, set_count=False)  # enable_gradient_checkpointing() alone
    assert calls == 3
    for count in (None, 3):
        loss, grads, calls = _gradients(count, monkeypatch)
        assert calls == 3 and torch.equal(loss, today_loss)
        assert grads.keys() == today.keys() and all(torch.equal(grads[n], today[n]) for n in today)


@pytest.mark.parametrize("count", [0, 1, 2])
def test_the_first_n_blocks_are_checkpointed_with_the_same_gradients(count, monkeypatch):
    _, reference, _ = _gradients(None, monkeypatch)
    _, grads, calls = _gradients(count, monkeypatch)
    assert calls == count
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], msg=name)
    with pytest.raises(AcestepError, match="the model has 3 blocks: cannot checkpoint 4"):
        tiny_model().set_checkpointed_blocks(4)


def test_default_config_takes_the_unchanged_path():
    config = TrainConfig(dataset_path="x")
    assert config.gradient_checkpointing == "all" and config.checkpointed_blocks is None
    model = tiny_transformer()
    enable_checkpointing(model, config, BLOCKS)
    assert model.gradient_checkpointing and model.checkpointed_blocks is None
    model = tiny_transformer()
    enable_checkpointing(model, replace(config, gradient_checkpointing="2"), BLOCKS)
    assert model.gradient_checkpointing and model.checkpointed_blocks == 2
    model = tiny_transformer()
    enable_checkpointing(model, replace(config, gradient_checkpointing="none"), BLOCKS)
    assert not model.gradient_checkpointing
    with pytest.raises(AcestepError, match="auto must be resolved to a number of blocks first"):
        enable_checkpointing(tiny_transformer(), replace(config, gradient_checkpointing="auto"), BLOCKS)


def test_flags_old_and_new():
    def mode(*args: str) -> str:
        return parse_config(["--dataset_path", "x", *args]).gradient_checkpointing

    assert mode() == "all" and mode("--gradient_checkpointing") == "all"
    assert mode("--no-gradient_checkpointing") == "none" and mode("--gradient_checkpointing", "none") == "none"
    assert mode("--gradient_checkpointing", "auto") == "auto" and mode("--gradient_checkpointing", "7") == "7"
    assert TrainConfig(dataset_path="x", gradient_checkpointing=False).gradient_checkpointing == "none"
    assert TrainConfig(dataset_path="x", gradient_checkpointing=True).gradient_checkpointing == "all"
    with pytest.raises(AcestepError, match="must be all, none, auto or a number of blocks, not 'half'"):
        parse_config(["--dataset_path", "x", "--gradient_checkpointing", "half"])
    assert "--preset_applied" not in build_parser().format_help()


def test_planner_counts_uncheckpointed_blocks():
    full = PlanRequest(duration=120)
    assert estimate(replace(full, checkpointed_blocks=24)).parts == estimate(full).parts
    sizes = [estimate(replace(full, checkpointed_blocks=k)).tensor_bytes for k in range(25)]
    assert all(a > b for a, b in zip(sizes, sizes[1:]))  # each checkpointed block saves memory
    for gb in (9.5, 12, 16, 40):
        count = fewest_checkpointed_blocks(replace(full, gpu_gb=gb))
        assert estimate(replace(full, gpu_gb=gb, checkpointed_blocks=count)).fits
        assert count == 0 or not estimate(replace(full, gpu_gb=gb, checkpointed_blocks=count - 1)).fits
    assert fewest_checkpointed_blocks(replace(full, gpu_gb=40)) == 0
    assert fewest_checkpointed_blocks(replace(full, gpu_gb=4)) is None
    with pytest.raises(AcestepError, match="cannot checkpoint 25"):
        estimate(replace(full, checkpointed_blocks=25))


@pytest.mark.slow
@pytest.mark.parametrize("count", [0, 2])
def test_measured_peak_stays_within_the_planners_figure(count):
    """Width 128 (the tiny model's 64 is narrower than any per-channel count holds for): the planner's figure is
    at or above the measured tensor peak, and not by more than 15 %."""
    config = tiny_transformer_config(num_attention_heads=2, attention_head_dim=64)
    request = PlanRequest(device="cpu", transformer_config=config, lyric_tokens=16, duration=60.0,
                          checkpointed_blocks=count)
    plan = estimate(request)
    batch = synthetic_batch(config, request.frames, 1, 16, request.text_tokens, True, "cpu")
    probe = TrainingStepProbe(random_transformer(config, torch.bfloat16, "cpu"),
                              LoraSettings.from_json(TRANSFORMER_ONLY), batch, checkpointed_blocks=count)
    probe.run(track_memory=False)
    measured = probe.run().tensor_peak_bytes
    assert 1.0 <= plan.tensor_bytes / measured < 1.15, (plan.parts, measured)


@pytest.mark.parametrize("duration", [360.0, 180.0])
def test_presets_are_the_fastest_settings_that_fit(duration):
    for name in PRESET_GB:
        request = preset_request(name, duration)
        found = fastest_settings(request)
        assert found is not None and estimate(found.request).fits, name
        crop = found.request.duration
        assert crop <= duration
        if crop < duration:  # not even the leanest settings fit one second more
            leanest = replace(request, duration=crop + 1, base_dtype="fp8", optimizer="adamw8bit",
                              checkpointed_blocks=None)
            assert not estimate(leanest).fits
        faster = [r for r in settings_to_try(replace(request, duration=crop))
                  if relative_step_time(r.base_dtype, r.checkpointed_blocks, 24) < found.relative_time]
        assert not any(estimate(r).fits for r in faster), name
    eight = fastest_settings(preset_request("8gb", 360.0))
    assert eight.request.duration == 360 and eight.request.base_dtype == "fp8"


def test_planner_cli_prints_checkpointing_and_presets(capsys):
    main(["--duration", "30", "--gpu_gb", "10", "--gradient_checkpointing", "auto"])
    out = capsys.readouterr().out
    assert "Gradient checkpointing: 0 of 24 blocks" in out and "fits in 10 GB" in out
    assert "Fastest settings that fit, at 30 s" in out and "--gradient_checkpointing 0" in out
    main(["--duration", "180", "--presets"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines[1:]] == [f"--preset {n}" for n in PRESET_GB]
    main(["--model", "2b", "--gradient_checkpointing", "auto", "--duration", "360", "--gpu_gb", "10"])  # 1.5 too
    out = capsys.readouterr().out
    count = fewest_checkpointed_blocks(V15PlanRequest(duration=360, gpu_gb=10))
    assert 0 < count < 24 and f"Gradient checkpointing: {count} of 24 blocks" in out and "fits in 10 GB" in out
    assert "10 GB, 360 s crops: --base_dtype" in out


def test_trainer_preset_keeps_the_users_flags():
    config = parse_config(["--dataset_path", "x", "--preset", "8gb"])
    if config.optimizer == "adamw":  # no bitsandbytes + CUDA here: the preset is chosen among AdamW settings
        expected = fastest_settings(preset_request("8gb", 360.0), ("adamw",)).flags()
        assert {k: str(getattr(config, k)) for k in expected} == {**expected, "max_duration": "360.0",
                                                                   "gradient_checkpointing": "auto"}
        assert config.vram_gb == 8.0  # auto at the card's size: the run refits the blocks to its own model
    assert config.preset_applied.startswith("--preset 8gb set --base_dtype")
    mine = parse_config(["--dataset_path", "x", "--preset", "8gb", "--optimizer", "prodigy", "--max_duration", "30",
                         "--no-gradient_checkpointing"])
    assert mine.optimizer == "prodigy" and mine.max_duration == 30 and mine.gradient_checkpointing == "none"
    assert "kept your --gradient_checkpointing, --max_duration, --optimizer" in mine.preset_applied


@pytest.mark.parametrize(("flags", "kept"), [
    (["--base_dtype", "bf16"], {"base_dtype": "bf16"}),
    (["--optimizer", "prodigy"], {"optimizer": "prodigy"}),
    (["--gradient_checkpointing", "20"], {"gradient_checkpointing": "20"}),
    (["--max_duration", "300"], {"max_duration": 300.0}),
    (["--lora_config_path", "config/dora_config.json"], {"base_dtype": "bf16"}),  # DoRA needs the 16-bit base
])
def test_what_a_preset_picks_fits_together_with_the_users_flags(flags, kept):
    config = parse_config(["--dataset_path", "x", "--preset", "8gb", *flags])
    assert {k: getattr(config, k) for k in kept} == kept
    lora = {"lora_config": config.lora_config_path} if config.lora_config_path else {}
    plan = estimate(preset_request("8gb", config.max_duration, base_dtype=config.base_dtype,
                                   optimizer=config.optimizer, checkpointed_blocks=config.checkpointed_blocks, **lora))
    assert plan.fits


def test_a_preset_that_cannot_fit_the_users_flags_says_so_in_one_line():
    with pytest.raises(AcestepError) as error:
        parse_config(["--dataset_path", "x", "--preset", "6gb", "--base_dtype", "bf16", "--max_duration", "360",
                      "--no-gradient_checkpointing"])
    assert str(error.value) == ("--preset 6gb: nothing fits 6 GB by the planner with your --base_dtype, "
                                "--gradient_checkpointing, --max_duration (python -m acestep.plan --presets)")


@pytest.mark.slow
def test_auto_in_a_run_says_what_it_chose(tmp_path):
    config = make_config(tmp_path, max_steps=1, every_n_train_steps=1, gradient_checkpointing="auto",
                         max_duration=0.9)
    with pytest.raises(AcestepError, match="needs --vram_gb N here"):
        run_training(config, tiny_transformer(), synthetic_songs([8]))
    model = tiny_transformer()
    result = run_training(replace(config, vram_gb=0.03, exp_name="auto"), model, synthetic_songs([8]))
    assert "Gradient checkpointing auto: 3 of 3 blocks; even so the planner's 0.11 GB for 0.9 s crops does not " \
        "fit 0.03 GB" in summary_text(result)
    assert model.checkpointed_blocks == 3
    request = request_for_run(dict(model.config), False, config, 1.0, "cpu", "fp32")
    roomy, line = resolve_auto(config, request)
    assert roomy.gradient_checkpointing == "0"
    assert line == "Gradient checkpointing auto: 0 of 3 blocks (the first ones), the fewest that fit 1 GB at 0.9 s " \
        "crops: planner 0.11 GB"


def test_readme_table_of_presets_is_the_planners():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = table_rows()
    assert len(rows) == len(PRESET_GB)
    for row in rows:
        assert row in readme, f"README lacks the planner's row: {row}"


@pytest.mark.parametrize("family", ["v1", "1.5"])
def test_a_preset_fits_a_model_with_fewer_blocks_than_the_published_one(tmp_path, family):
    """The tiny models have 3 (v1) and 2 (1.5) blocks; the 8 GB preset of the published models checkpoints more."""
    from acestep.families.v15.training import training_parts
    from tests.v15_helpers import TINY_DIT, tiny_dit, tiny_null, v15_songs

    published = fastest_settings(preset_request("8gb", 360.0), ("adamw",))
    assert published.request.checkpointed_blocks > 3
    model = V15PlanRequest(transformer_config=TINY_DIT) if family == "1.5" else None
    config = parse_config(["--dataset_path", "in-memory", "--preset", "8gb", "--output_dir", str(tmp_path),
                           "--max_steps", "1", "--every_n_train_steps", "1", "--logger", "none", "--no-progress_bar",
                           "--max_duration", "0.9"], plan_model=lambda _: model)
    assert config.gradient_checkpointing == "auto" and "--gradient_checkpointing auto --vram_gb 8" in \
        config.preset_applied
    if family == "1.5":
        config = replace(config, base_dtype="bf16")  # the CPU runs the tiny DiT in 16 bits either way
        result = run_training(config, parts=training_parts(config, tiny_dit(dtype=torch.bfloat16), tiny_null(),
                                                           v15_songs([30]), "tiny"))
        blocks = TINY_DIT["num_hidden_layers"]
    else:
        result = run_training(config, tiny_transformer(dtype=torch.bfloat16), synthetic_songs([12]))
        blocks = 3
    assert result.steps == 1
    assert f"Gradient checkpointing auto: 0 of {blocks} blocks (the first ones), the fewest that fit 8 GB" \
        in summary_text(result)
