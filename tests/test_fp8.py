"""--base_dtype fp8: fp8 storage of the base's linear weights, PEFT on top, the planner's count, a trainer run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from training_helpers import synthetic_songs, tiny_transformer

from acestep.families.training import run_training
from acestep.families.v1.blocks import BLOCKS
from acestep.families.v1.models.configs import tiny_transformer_config
from acestep.families.v1.plan import PlanRequest, estimate
from acestep.families.v1.probe import TrainingStepProbe, random_transformer, synthetic_batch
from acestep.lora import LoraSettings
from acestep.training import TrainConfig
from acestep.training.fp8 import FP8_DTYPE, Fp8Conv1d, Fp8Linear, quantize_base, quantize_channels
from acestep.training.model import attach_lora

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMER_ONLY = ROOT / "config" / "lora_config_transformer_only.json"
TINY = tiny_transformer_config()


def test_channel_scales_reconstruct_each_row_within_fp8_precision():
    weight = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor([[1e-3], [1], [50], [1], [1], [1]])
    fp8, scale = quantize_channels(weight)
    assert fp8.dtype == FP8_DTYPE and scale.shape == (6, 1)
    rebuilt = fp8.float() * scale
    assert torch.all((rebuilt - weight).abs() <= 0.07 * weight.abs().amax(dim=1, keepdim=True))


def test_layers_match_their_16_bit_originals_forward_and_backward():
    g = torch.Generator().manual_seed(1)
    linear, conv = nn.Linear(32, 24), nn.Conv1d(32, 24, 1)
    for layer, fp8_layer in ((linear, Fp8Linear.from_linear(linear, torch.bfloat16)),
                             (conv, Fp8Conv1d.from_conv(conv, torch.bfloat16))):
        x = torch.randn(2, 7, 32, generator=g) if layer is linear else torch.randn(2, 32, 7, generator=g)
        x16, x8 = x.clone().requires_grad_(), x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want, got = layer(x16), fp8_layer(x8)
        assert got.dtype == torch.bfloat16 and got.shape == want.shape
        assert torch.nn.functional.cosine_similarity(got.float().flatten(), want.float().flatten(), dim=0) > 0.999
        want.float().square().sum().backward()
        got.float().square().sum().backward()
        assert torch.nn.functional.cosine_similarity(x8.grad.flatten(), x16.grad.flatten(), dim=0) > 0.99
        assert fp8_layer.weight.grad is None


def test_peft_wraps_the_fp8_layers_and_only_the_intended_parts_are_quantized():
    model = random_transformer(TINY, torch.bfloat16, "cpu")
    assert quantize_base(model, torch.bfloat16, BLOCKS.fp8_prefixes) > 0
    names = attach_lora(model, LoraSettings.from_json(TRANSFORMER_ONLY), "default")
    reference = attach_lora(random_transformer(TINY, torch.bfloat16, "cpu"), LoraSettings.from_json(TRANSFORMER_ONLY),
                            "default")
    assert names == reference  # attach_lora finds every target
    wrapped = [m.base_layer for m in model.modules() if hasattr(m, "base_layer")]
    assert wrapped and all(isinstance(layer, Fp8Linear) for layer in wrapped)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.dtype == torch.float32, name  # LoRA factors
        elif name.startswith(("lyric_encoder.", "lyric_embs.", "proj_in.")) or "norm" in name:
            assert param.dtype == torch.bfloat16, name
    assert any(isinstance(m, Fp8Conv1d) for m in model.modules())
    assert any(p.dtype == FP8_DTYPE for n, p in model.named_parameters() if n.startswith("transformer_blocks."))


def _loss_and_lora_gradient(fp8: bool, checkpointing: bool) -> tuple[float, torch.Tensor]:
    model = random_transformer(TINY, torch.bfloat16, "cpu")
    batch = synthetic_batch(TINY, 200, 1, 64, 16, True, "cpu")
    probe = TrainingStepProbe(model, LoraSettings.from_json(TRANSFORMER_ONLY), batch, fp8_base=fp8,
                              checkpointing=checkpointing)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero B factors, so the A factors get gradients too
        for param in probe.params:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    loss = probe.loss(seed=3)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in probe.params])


@pytest.mark.parametrize("checkpointing", [True, False])
def test_fp8_loss_and_lora_gradient_follow_the_bf16_model(checkpointing):
    loss16, grad16 = _loss_and_lora_gradient(False, checkpointing)
    loss8, grad8 = _loss_and_lora_gradient(True, checkpointing)
    assert abs(loss8 - loss16) <= 0.01 * abs(loss16)
    assert torch.nn.functional.cosine_similarity(grad8, grad16, dim=0) >= 0.99
    assert grad16.abs().sum() > 0


@pytest.mark.parametrize("changes", [
    {"duration": 120.0, "lyric_tokens": 16, "ssl": False},
    {"duration": 30.0, "lyric_tokens": 64},
])
def test_planner_counts_fp8_within_15_percent_of_the_measured_step(changes):
    request = replace(PlanRequest(device="cpu", transformer_config=TINY, base_dtype="fp8"), **changes)
    plan = estimate(request)
    assert plan.parts["base weights"] < estimate(replace(request, base_dtype="bf16")).parts["base weights"]
    model = random_transformer(TINY, torch.bfloat16, "cpu")
    batch = synthetic_batch(TINY, request.frames, 1, request.lyric_tokens, request.text_tokens, request.ssl, "cpu")
    probe = TrainingStepProbe(model, LoraSettings.from_json(TRANSFORMER_ONLY), batch, fp8_base=True)
    probe.run(track_memory=False)
    measured = probe.run().tensor_peak_bytes
    assert 0.85 < plan.tensor_bytes / measured < 1.15, (plan.parts, measured)


def test_published_model_plan_at_360_s_rank_64_fits_6_5_gb_with_fp8_and_6_gb_with_8_bit_adamw():
    fp8 = PlanRequest(duration=360.0, rank=64, base_dtype="fp8")
    bf16 = estimate(replace(fp8, base_dtype="bf16"))
    assert estimate(fp8).device_bytes <= 6.5e9 < bf16.device_bytes
    assert estimate(replace(fp8, optimizer="adamw8bit")).device_bytes <= 6.0e9


def test_trainer_runs_with_an_fp8_base(tmp_path):
    model = tiny_transformer(dtype=torch.bfloat16)
    config = TrainConfig(dataset_path="in-memory", output_dir=str(tmp_path / "runs"), exp_name="fp8", max_steps=2,
                         every_n_train_steps=1, logger="none", progress_bar=False, base_dtype="fp8")
    result = run_training(config, transformer=model, dataset=synthetic_songs([40, 56]))
    assert any(isinstance(m, Fp8Linear) for m in model.modules())
    assert result.steps == 2
