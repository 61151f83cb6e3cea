"""The two attention types of an ACE-Step block: ReLU-kernel linear self-attention and softmax cross-attention.

Parameter names follow the diffusers `Attention` modules of the checkpoint (`to_q`, `to_k`, `to_v`,
`to_out.0`, and in the cross-attention the never-used `add_*_proj` / `to_add_out` that the checkpoint holds).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rope

LINEAR_ATTENTION_EPS = 1e-15
FP16_MAX = 65504.0


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, channels = x.shape
    return x.view(batch, length, heads, channels // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


class LinearSelfAttention(nn.Module):
    """LiteLA: softmax-free attention with a ReLU kernel, linear in sequence length, computed in fp32."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        dtype = x.dtype
        q = apply_rope(_split_heads(self.to_q(x), self.heads), *rope)
        k = apply_rope(_split_heads(self.to_k(x), self.heads), *rope)
        v = _split_heads(self.to_v(x), self.heads)
        keep = mask[:, None, :, None].to(dtype)
        q, k, v = F.relu(q * keep).float(), F.relu(k * keep).float(), (v * keep).float()
        # A row of ones appended to V makes one product carry both the numerator and the normaliser
        # (the reference's order of operations, kept so fp32 rounding matches it).
        v_ones = F.pad(v, (0, 1), value=1.0).transpose(-1, -2)  # [B, H, d+1, T]
        out = torch.matmul(torch.matmul(v_ones, k), q.transpose(-1, -2))  # [B, H, d+1, T]
        out = out[:, :, :-1] / (out[:, :, -1:] + LINEAR_ATTENTION_EPS)
        out = out.flatten(1, 2).transpose(1, 2).to(dtype)
        out = self.to_out[1](self.to_out[0](out))
        # The reference clips whenever the CUDA autocast dtype is fp16, which is PyTorch's default even outside
        # autocast; only a bf16 autocast region turns it off. It matters only on overflow.
        if torch.get_autocast_dtype("cuda") == torch.float16:
            out = out.clamp(-FP16_MAX, FP16_MAX)
        return out


class CrossAttention(nn.Module):
    """Softmax attention from latent tokens to [speaker | text | lyrics] states, through SDPA."""

    # Present in the published checkpoint but never used by the reference forward pass.
    UNUSED_LAYERS = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.add_q_proj = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor,
        context_mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        context_rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        q = apply_rope(_split_heads(self.to_q(x), self.heads), *rope)
        k = apply_rope(_split_heads(self.to_k(context), self.heads), *context_rope)
        v = _split_heads(self.to_v(context), self.heads)
        # Additive 0 / -inf mask over the keys, in the query dtype, as the reference builds it (SDPA then takes the
        # same kernel path). The reference also masks every key of a padded latent row, which gives NaN or
        # backend-dependent values; those rows get zeros here instead, so padding can never poison a batch.
        blocked = torch.zeros_like(context_mask, dtype=q.dtype).masked_fill(context_mask != 1, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=blocked[:, None, None, :])
        out = _merge_heads(out).masked_fill(mask[:, :, None] != 1, 0.0)
        return self.to_out[1](self.to_out[0](out))
