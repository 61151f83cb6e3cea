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
        kv = torch.matmul(k.transpose(-1, -2), v)  # [B, H, d, d]: sum_j k_j v_j^T
        numerator = torch.matmul(q, kv)
        denominator = torch.matmul(q, k.sum(dim=2, keepdim=True).transpose(-1, -2))
        out = _merge_heads((numerator / (denominator + LINEAR_ATTENTION_EPS)).to(dtype))
        out = self.to_out[1](self.to_out[0](out))
        if out.dtype == torch.float16:
            out = out.clamp(-FP16_MAX, FP16_MAX)
        return out


class CrossAttention(nn.Module):
    """Softmax attention from latent tokens to [speaker | text | lyrics] states, through SDPA."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        # Present in the published checkpoint but never used by the reference forward pass.
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
        # Keys are masked by the context mask; padded latent rows (all keys masked in the reference, which
        # gives NaN) are zeroed instead, so padding can never poison a batch.
        allowed = context_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = _merge_heads(out) * mask[:, :, None].to(out.dtype)
        return self.to_out[1](self.to_out[0](out))
