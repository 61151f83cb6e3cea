"""The Conformer lyric encoder of ACE-Step: ESPnet-style relative-position self-attention, no conv module.

Module names (`embed.out`, `encoders.N.self_attn.linear_q`, `pos_bias_u`, `feed_forward.w_1`, `norm_mha`,
`after_norm`) are those of the published checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LAYER_NORM_EPS = 1e-5


def relative_position_table(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[1, 2L-1, dim] sinusoids for relative positions L-1 down to -(L-1) (ESPnet "rel_pos" layout)."""
    positions = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / dim)
    )
    table = torch.zeros(2 * length - 1, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(positions * freqs)
    table[:, 1::2] = torch.cos(positions * freqs)
    return table[None].to(dtype)


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """Align [B, H, L, 2L-1] scores so that entry (i, j) reads relative position i - j."""
    batch, heads, length, width = scores.shape
    padded = torch.cat([scores.new_zeros(batch, heads, length, 1), scores], dim=-1)
    padded = padded.view(batch, heads, width + 1, length)
    return padded[:, :, 1:].reshape(batch, heads, length, width)[..., : width // 2 + 1]


class RelPositionSelfAttention(nn.Module):
    """Transformer-XL style attention with learned content (u) and position (v) biases per head."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.head_dim))
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.linear_q(x).view(batch, length, self.heads, self.head_dim)
        k = self.linear_k(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        v = self.linear_v(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        p = self.linear_pos(pos).view(1, -1, self.heads, self.head_dim).transpose(1, 2)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-1, -2))
        position = rel_shift(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-1, -2)))
        scores = (content + position) / math.sqrt(self.head_dim)
        masked = ~key_mask[:, None, None, :]
        # A row whose keys are all padding gets zeros, not NaN.
        probs = torch.softmax(scores.masked_fill(masked, float("-inf")), dim=-1).masked_fill(masked, 0.0)
        out = torch.matmul(self.dropout(probs), v).transpose(1, 2).reshape(batch, length, -1)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(F.silu(self.w_1(x))))


class ConformerLayer(nn.Module):
    """Pre-norm layer: relative self-attention then feed-forward (no macaron, no convolution)."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = RelPositionSelfAttention(dim, heads)
        self.feed_forward = FeedForward(dim, hidden, dropout)
        self.norm_ff = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm_mha = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.norm_mha(x), pos, key_mask))
        return x + self.dropout(self.feed_forward(self.norm_ff(x)))


class LinearEmbed(nn.Module):
    """Input layer: Linear + LayerNorm + dropout, then x * sqrt(dim) and the relative position table."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.out = nn.Sequential(
            nn.Linear(dim, dim), nn.LayerNorm(dim, eps=LAYER_NORM_EPS), nn.Dropout(dropout)
        )
        self.dim = dim
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.dropout(self.out(x) * math.sqrt(self.dim))
        pos = relative_position_table(x.shape[1], self.dim, x.device, x.dtype)
        return x, self.dropout(pos)


class LyricEncoder(nn.Module):
    """Full-context Conformer over lyric-token embeddings (the reference's static_chunk_size=0 setting)."""

    def __init__(
        self, dim: int = 1024, heads: int = 16, hidden: int = 4096, num_blocks: int = 6, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.embed = LinearEmbed(dim, dropout)
        self.encoders = nn.ModuleList(ConformerLayer(dim, heads, hidden, dropout) for _ in range(num_blocks))
        self.after_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        key_mask = mask.bool()
        x, pos = self.embed(x)
        for layer in self.encoders:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, pos, key_mask, use_reentrant=False)
            else:
                x = layer(x, pos, key_mask)
        return self.after_norm(x)
