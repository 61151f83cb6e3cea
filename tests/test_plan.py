"""The memory planner: counts from the model, scaling, fit decisions, and agreement with a measured step."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from acestep.core.errors import AcestepError
from acestep.families.v1.models import ACEStepTransformer2DModel
from acestep.families.v1.models.configs import PUBLISHED_TRANSFORMER_CONFIG, tiny_transformer_config
from acestep.families.v1.plan import PlanRequest, count_lora_parameters, count_parameters, estimate
from acestep.families.v1.probe import TrainingStepProbe, random_transformer, synthetic_batch
from acestep.lora import LoraSettings
from acestep.plan.cli import main
from acestep.training.planner import CUDA_CONTEXT_GB, longest_duration_that_fits, suggestions

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMER_ONLY = ROOT / "config" / "lora_config_transformer_only.json"
WITH_LYRIC_ENCODER = ROOT / "config" / "lora_config.json"
TINY = tiny_transformer_config()


def tiny_request(**changes) -> PlanRequest:
    return replace(PlanRequest(device="cpu", transformer_config=TINY, lyric_tokens=128, duration=30.0), **changes)


def test_published_counts_equal_the_meta_built_model():
    counts = count_parameters(PUBLISHED_TRANSFORMER_CONFIG)
    with torch.device("meta"):
        model = ACEStepTransformer2DModel(**PUBLISHED_TRANSFORMER_CONFIG)
    assert counts.total == sum(p.numel() for p in model.parameters()) == 3_305_659_264
    assert counts.unused == 629_391_360  # 24 blocks x (3 add_*_proj + to_add_out) x (2560^2 + 2560)
    assert counts.ssl_projectors == 87_840_512
    assert counts.buffer_bytes_fp32 == sum(b.numel() * 4 for b in model.buffers())


def test_lora_counts_match_peft_on_the_published_model():
    transformer_only = count_lora_parameters(PUBLISHED_TRANSFORMER_CONFIG, LoraSettings.from_json(TRANSFORMER_ONLY))
    with_lyrics = count_lora_parameters(PUBLISHED_TRANSFORMER_CONFIG, LoraSettings.from_json(WITH_LYRIC_ENCODER))
    assert transformer_only.at_rank(64) == 62_914_560 and not transformer_only.in_lyric_encoder
    assert with_lyrics.at_rank(64) == 65_273_856 and with_lyrics.in_lyric_encoder
    assert transformer_only.at_rank(32) * 2 == transformer_only.at_rank(64)


def test_published_weights_at_bf16_and_release_of_unused_layers():
    kept = estimate(PlanRequest(release_unused_weights=False, duration=30))
    released = estimate(PlanRequest(duration=30))
    no_ssl = estimate(PlanRequest(duration=30, ssl=False))
    rotary = (2 * 32768 * 128 + 64) * 2  # cos/sin tables and inverse frequencies
    assert kept.parts["base weights"] == 3_305_659_264 * 2 + rotary
    assert kept.parts["base weights"] - released.parts["base weights"] == 629_391_360 * 2
    assert released.parts["base weights"] - no_ssl.parts["base weights"] == 87_840_512 * 2
    assert released.parts["optimizer state"] == 62_914_560 * 8
    assert estimate(PlanRequest(duration=30, optimizer="adamw8bit")).parts["optimizer state"] == 62_914_560 * 2


def test_estimates_grow_with_duration_rank_and_batch():
    base = estimate(PlanRequest(duration=120))
    assert base.tokens_per_step == math.floor(120 * 44100 / 4096) == 1291

    def activations(duration: float) -> int:
        plan = estimate(PlanRequest(duration=duration))
        assert plan.peak_phase == "backward"
        return sum(v for k, v in plan.parts.items() if k.startswith("activations"))

    # Linear in tokens (no attention matrix grows with the square): equal steps add equal bytes.
    step1, step2 = activations(240) - activations(120), activations(360) - activations(240)
    assert step1 > 0 and abs(step2 - step1) / step1 < 0.01
    halved_rank = estimate(PlanRequest(duration=120, rank=32))
    assert halved_rank.lora_parameters * 2 == base.lora_parameters
    assert halved_rank.parts["LoRA weights (fp32)"] * 2 == base.parts["LoRA weights (fp32)"]
    batch2 = estimate(PlanRequest(duration=120, batch_size=2))
    assert batch2.tokens_per_step == 2 * base.tokens_per_step
    assert batch2.tensor_bytes > base.tensor_bytes
    assert batch2.parts["base weights"] == base.parts["base weights"]


def test_fit_decisions_and_suggestions():
    plan = estimate(PlanRequest(duration=360, gpu_gb=10))
    assert plan.device_bytes == int(plan.tensor_bytes * 1.05 + CUDA_CONTEXT_GB * 1e9)
    assert estimate(PlanRequest(duration=360, gpu_gb=24)).fits
    tight = PlanRequest(duration=360, gpu_gb=plan.device_bytes / 1e9 - 0.3)
    assert not estimate(tight).fits
    found = suggestions(tight)
    assert any("adamw8bit" in s for s in found) and any(s.startswith("--base_dtype fp8") for s in found)
    crop = longest_duration_that_fits(tight)
    assert crop is not None and 10 <= crop < 360
    assert estimate(replace(tight, duration=crop)).fits and not estimate(replace(tight, duration=crop + 1)).fits
    four = suggestions(PlanRequest(duration=360, gpu_gb=4))  # only fp8 and every other option together fit 4 GB
    assert len(four) == 1 and four[0].startswith("all together: --base_dtype fp8") and "--max_duration" in four[0]
    hopeless = PlanRequest(duration=360, gpu_gb=2.5)
    assert suggestions(hopeless) == [] and longest_duration_that_fits(hopeless) is None


def test_combined_suggestion_when_no_single_option_is_enough():
    # Just above what every option together needs at a 10 s crop, below what any single option needs.
    together = estimate(PlanRequest(duration=10, optimizer="adamw8bit", rank=8, ssl=False, base_dtype="fp8"))
    request = PlanRequest(duration=360, gpu_gb=together.device_bytes / 1e9 + 0.05)
    found = suggestions(request)
    assert len(found) == 1 and found[0].startswith("all together:") and "--max_duration" in found[0]


@pytest.mark.parametrize(
    ("changes", "config"),
    [
        ({"duration": 10.0, "lyric_tokens": 512}, TRANSFORMER_ONLY),  # lyric encoder peak dominates
        ({"duration": 240.0, "lyric_tokens": 8, "ssl": False}, TRANSFORMER_ONLY),  # backward of the blocks
        ({"duration": 120.0, "lyric_tokens": 16, "batch_size": 2}, TRANSFORMER_ONLY),  # SSL states, batch 2
        ({"duration": 30.0, "lyric_tokens": 768}, WITH_LYRIC_ENCODER),  # backward through the lyric encoder
        ({"duration": 120.0, "lyric_tokens": 64, "release_unused_weights": False}, TRANSFORMER_ONLY),
    ],
)
def test_estimate_within_15_percent_of_the_measured_step(changes, config):
    request = tiny_request(lora_config=config, **changes)
    plan = estimate(request)
    model = random_transformer(TINY, torch.bfloat16, "cpu")
    batch = synthetic_batch(TINY, request.frames, request.batch_size, request.lyric_tokens, request.text_tokens,
                            request.ssl, "cpu")
    probe = TrainingStepProbe(model, LoraSettings.from_json(config), batch,
                              release_unused=request.release_unused_weights)
    probe.run(track_memory=False)
    measured = probe.run().tensor_peak_bytes
    assert 0.85 < plan.tensor_bytes / measured < 1.15, (plan.parts, measured)


def test_cli_prints_the_verdict_and_rejects_bad_input(capsys):
    main(["--duration", "30", "--gpu_gb", "24", "--rank", "16"])
    out = capsys.readouterr().out
    assert "fits in 24 GB" in out and "LoRA rank 16" in out and "Tokens per step: 322 " in out
    with pytest.raises(SystemExit, match="--duration must be more than 0 and at most 3600 seconds, not -1.0"):
        main(["--duration", "-1"])
    with pytest.raises(AcestepError):
        estimate(PlanRequest(base_dtype="int8"))
    with pytest.raises(SystemExit, match="--rank must be at least 1 and at most 4096, not 0"):
        main(["--rank", "0"])
    with pytest.raises(AcestepError, match="--lyric_tokens must be at least 1 and at most 4096"):
        estimate(PlanRequest(lyric_tokens=5000))


@pytest.mark.parametrize(("flag", "value"), [
    ("--duration", "1e9"), ("--duration", "nan"), ("--duration", "inf"), ("--duration", "0"),
    ("--gpu_gb", "-1"), ("--gpu_gb", "nan"), ("--gpu_gb", "inf"), ("--gpu_gb", "0"),
    ("--batch_size", "0"), ("--batch_size", "100000"), ("--rank", "100000"), ("--text_tokens", "0"),
])
def test_every_input_is_bounded_and_answered_at_once(flag, value):
    """Rejected before any estimate runs: --duration 1e9 used to run a binary search for more than 10 minutes."""
    with pytest.raises(SystemExit) as exit_info:
        main([flag, value])
    message = str(exit_info.value.code)
    shown = float(value) if flag in ("--duration", "--gpu_gb") else value
    assert message.startswith(f"error: {flag} must be") and message.endswith(f"not {shown}"), message


@pytest.mark.parametrize("model", ["2b", "xl"])
@pytest.mark.parametrize(("flag", "value"), [
    ("--duration", "1e9"), ("--duration", "nan"), ("--gpu_gb", "-1"), ("--batch_size", "0"),
    ("--rank", "0"), ("--condition_tokens", "0"),
])
def test_ace_step_1_5_inputs_are_bounded_too(model, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", model, flag, value])
    assert str(exit_info.value.code).startswith(f"error: {flag} must be"), exit_info.value.code


@pytest.mark.parametrize("model", ["v1", "2b"])
def test_several_gpus_plan_per_gpu_with_ddp_buckets(model, capsys):
    from acestep.families.v15 import plan as v15_plan

    one = PlanRequest(duration=60) if model == "v1" else v15_plan.V15PlanRequest(duration=60)
    estimate_of = estimate if model == "v1" else v15_plan.estimate
    single, double = estimate_of(one), estimate_of(replace(one, devices=2))
    # Every GPU holds the whole run (base, LoRA, optimizer state, its micro-batch); DDP adds fp32 gradient buckets.
    assert double.parts.pop("DDP gradient buckets (fp32)") == single.lora_parameters * 4
    assert double.parts == single.parts
    main(["--model", model, "--duration", "60", "--batch_size", "3", "--devices", "2"])
    out = capsys.readouterr().out
    assert "Per GPU, each of the 2 GPUs" in out and "songs per optimizer step: 3 x 2 = 6" in out
    with pytest.raises(SystemExit, match="--devices must be at least 1"):
        main(["--devices", "0"])
