"""Shared pieces of the LoRA tests: random factor files, the tiny transformer, a PEFT-trained adapter."""

from __future__ import annotations

import torch
from peft import LoraConfig

from acestep.families.v1.models import ACEStepTransformer2DModel
from acestep.families.v1.models.configs import tiny_transformer_config
from acestep.lora import LoraSettings

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def random_lora(rank: int, modules: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """PEFT-keyed factors on paths that exist in the published model (so kohya names resolve)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(modules):
        tensors[f"transformer_blocks.{i}.attn.to_q.lora_A.weight"] = torch.randn(rank, 40, generator=g).to(dtype)
        tensors[f"transformer_blocks.{i}.attn.to_q.lora_B.weight"] = torch.randn(24, rank, generator=g).to(dtype)
    return tensors


def product(tensors: dict[str, torch.Tensor], module: str, down: str = "lora_A", up: str = "lora_B") -> torch.Tensor:
    return tensors[f"{module}.{up}.weight"].double() @ tensors[f"{module}.{down}.weight"].double()


def tiny_model(seed: int = 0) -> ACEStepTransformer2DModel:
    torch.manual_seed(seed)
    return ACEStepTransformer2DModel(**tiny_transformer_config()).eval()


def tiny_inputs(model: ACEStepTransformer2DModel) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    config = model.config
    return {
        "hidden_states": torch.randn(1, 8, 16, 10, generator=g),
        "attention_mask": torch.ones(1, 10),
        "encoder_text_hidden_states": torch.randn(1, 4, config.text_embedding_dim, generator=g),
        "text_attention_mask": torch.ones(1, 4),
        "speaker_embeds": torch.zeros(1, config.speaker_embedding_dim),
        "lyric_token_idx": torch.randint(0, config.lyric_encoder_vocab_size, (1, 6), generator=g),
        "lyric_mask": torch.ones(1, 6),
        "timestep": torch.tensor([400.0]),
    }


def add_trained_adapter(model: ACEStepTransformer2DModel, settings: LoraSettings, seed: int = 1) -> None:
    """PEFT's own adapter with a nonzero lora_B, as if trained (PEFT starts B at zero)."""
    model.add_adapter(LoraConfig(**settings.to_peft_kwargs()))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)
