"""LoRA layers under autocast take their 16-bit input as it is (no fp32 copy cast back to 16 bits per layer): the
default bf16 step stays bit-identical to PEFT's own path, and the step keeps fewer tensors for backward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from acestep.families.v1.models.configs import tiny_transformer_config
from acestep.families.v1.probe import TrainingStepProbe, random_transformer, synthetic_batch
from acestep.lora import LoraSettings
from acestep.training.model import attach_lora

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMER_ONLY = ROOT / "config" / "lora_config_transformer_only.json"
TINY = tiny_transformer_config()


def _peft_cast_restored(model: torch.nn.Module) -> int:
    """PEFT's own input cast back on every LoRA layer (the straightforward path); returns the layers changed."""
    layers = [m for m in model.modules() if "_cast_input_dtype" in m.__dict__]
    for layer in layers:
        del layer.__dict__["_cast_input_dtype"]
    return len(layers)


def _step(peft_cast: bool, fp8: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Loss, LoRA gradients and the bytes autograd saved, of the trainer's default step (bf16 autocast,
    checkpointing) on the tiny model."""
    model = random_transformer(TINY, torch.bfloat16, "cpu")
    batch = synthetic_batch(TINY, 150, 1, 32, 16, True, "cpu")
    probe = TrainingStepProbe(model, LoraSettings.from_json(TRANSFORMER_ONLY), batch, fp8_base=fp8,
                              checkpointing=False)
    if peft_cast:
        assert _peft_cast_restored(model) > 0
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero B factors, so the A factors get gradients too
        for param in probe.params:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage()._cdata] = tensor.untyped_storage().nbytes()
        return tensor

    torch.manual_seed(0)  # the lyric encoder's dropout
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = probe.loss(seed=3)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in probe.params]), sum(saved.values())


@pytest.mark.parametrize("fp8", [False, True])
def test_default_step_is_bit_identical_to_peft_cast_and_saves_less(fp8):
    loss, grads, saved = _step(peft_cast=False, fp8=fp8)
    want_loss, want_grads, want_saved = _step(peft_cast=True, fp8=fp8)
    assert torch.equal(loss, want_loss) and torch.equal(grads, want_grads)
    assert grads.abs().sum() > 0
    width, frames = TINY["num_attention_heads"] * TINY["attention_head_dim"], 150
    # per block at least the 2 copies of the hidden states q, k and v no longer make of their shared input
    assert want_saved - saved >= TINY["num_layers"] * 2 * frames * width * 2


def test_without_autocast_the_input_is_still_cast_to_the_factors_dtype():
    model = random_transformer(TINY, torch.bfloat16, "cpu")
    attach_lora(model, LoraSettings.from_json(TRANSFORMER_ONLY), "default")
    layer = model.transformer_blocks[0].attn.to_q
    x = torch.randn(1, 4, layer.in_features, dtype=torch.bfloat16)
    assert layer._cast_input_dtype(x, torch.float32).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._cast_input_dtype(x, torch.float32) is x
