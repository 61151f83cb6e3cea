"""The ACE-Step 1.5 planner: counts from diffusers' models, and agreement with measured steps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from acestep.core.errors import AcestepError
from acestep.families.v15.plan import MODELS, V15PlanRequest, estimate, measure_step, parameter_counts
from acestep.lora import LoraSettings
from acestep.plan.cli import main


def test_counts_of_the_published_models_equal_the_meta_built_ones() -> None:
    from diffusers import AceStepTransformer1DModel

    settings = LoraSettings.from_json(V15PlanRequest().lora_config)
    for name, expected_layers in (("2b", 24), ("xl", 32)):
        with torch.device("meta"):
            model = AceStepTransformer1DModel(**MODELS[name])
        assert model.config.num_hidden_layers == expected_layers
        base, lora = parameter_counts(MODELS[name], settings, None)
        assert base == sum(p.numel() for p in model.parameters())
        width, kv = model.config.hidden_size, model.config.num_key_value_heads * model.config.head_dim
        per_layer = 2 * settings.r * ((width + model.config.num_attention_heads * model.config.head_dim) * 2
                                      + 2 * (width + kv))
        assert lora == expected_layers * per_layer  # q, o: width <-> heads*128; k, v: width -> kv; self + cross
    assert parameter_counts(MODELS["2b"], settings, None)[0] == pytest.approx(1.58e9, rel=0.01)
    assert parameter_counts(MODELS["xl"], settings, None)[0] == pytest.approx(4.17e9, rel=0.01)


def test_estimate_grows_with_duration_and_the_xl_needs_more() -> None:
    short, long = estimate(V15PlanRequest(duration=60)), estimate(V15PlanRequest(duration=240))
    assert long.tensor_bytes > short.tensor_bytes
    assert estimate(V15PlanRequest(model="xl", duration=60)).tensor_bytes > long.tensor_bytes
    assert estimate(V15PlanRequest(duration=60, rank=8)).lora_parameters * 8 == short.lora_parameters
    assert short.fits and not estimate(V15PlanRequest(model="xl", gpu_gb=8)).fits


@pytest.mark.parametrize(
    ("width", "mlp", "layers", "heads", "duration", "changes"),
    [(128, 384, 2, 4, 120.0, {}),  # long sequence: attention scores and the sliding mask dominate
     (512, 1536, 2, 8, 30.0, {}),  # the recomputed layer
     (256, 1024, 4, 4, 30.0, {}),  # more layers: their checkpointed inputs
     (256, 1024, 4, 4, 30.0, {"checkpointed_blocks": 0}),  # the saved tensors of uncheckpointed layers
     (512, 1536, 2, 8, 30.0, {"base_dtype": "fp8", "checkpointed_blocks": 1})],  # fp8 weights, 1 of 2 layers
)
def test_estimate_within_15_percent_of_the_measured_step(width, mlp, layers, heads, duration, changes) -> None:
    config = dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=heads // 2, head_dim=width // heads, encoder_hidden_size=64)
    request = V15PlanRequest(device="cpu", transformer_config=config, duration=duration, condition_tokens=64, rank=8,
                             **changes)
    plan = estimate(request)
    measured = measure_step(request).tensor_peak_bytes
    assert 0.85 < plan.tensor_bytes / measured < 1.15, (plan.parts, measured)
    assert estimate(replace(request, device="cuda")).parts["activations: attention scores (CPU only)"] == 0


def test_cli_plans_the_1_5_models(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--model", "xl", "--duration", "120", "--gpu_gb", "24"])
    out = capsys.readouterr().out
    assert "ACE-Step 1.5 XL training plan: 120 s crops (3000 latent frames)" in out and "fits in 24 GB" in out
    assert "LoRA rank 64" in out  # config/lora_config_v15.json


def test_fp8_brings_the_xl_under_8_gb_and_the_2b_under_4_5_gb_and_the_fix_list_says_so(capsys) -> None:
    """Issue goals at LoRA r 64, 240 s crops, every layer checkpointed, on CUDA (context and slack included)."""
    for model, bf16_gb, fp8_gb in (("xl", 12.02, 8.0), ("2b", 5.42, 4.5)):
        request = V15PlanRequest(model=model, duration=240, rank=64)
        assert round(estimate(request).device_bytes / 1e9, 2) == bf16_gb
        fp8 = estimate(replace(request, base_dtype="fp8"))
        assert fp8.device_bytes < fp8_gb * 1e9, fp8.parts
    main(["--model", "xl", "--duration", "240", "--rank", "64", "--gpu_gb", "8"])
    out = capsys.readouterr().out
    assert "does NOT fit in 8 GB" in out and "Each of these makes it fit: --base_dtype fp8" in out
    assert "8 GB, 240 s crops: --base_dtype fp8" in out  # the fastest settings that fit


def test_fewer_checkpointed_layers_cost_memory_and_are_bounded() -> None:
    request = V15PlanRequest(duration=120)
    sizes = [estimate(replace(request, checkpointed_blocks=k)).tensor_bytes for k in range(25)]
    # each layer taken out of checkpointing costs memory; the last one only trades one recomputation for its backward
    assert all(a > b for a, b in zip(sizes[:23], sizes[1:24])) and sizes[-1] == estimate(request).tensor_bytes
    with pytest.raises(AcestepError, match="the model has 24 blocks: cannot checkpoint 25"):
        estimate(replace(request, checkpointed_blocks=25))
