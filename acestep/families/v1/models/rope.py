"""Rotary position tables and the reference's (non-standard) way of applying them."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """cos/sin tables in the "cat(freqs, freqs)" layout, cached for `max_position` positions.

    The buffers are non-persistent, as in the checkpoint (they are not in its state dict).
    """

    def __init__(self, dim: int, max_position: int, theta: float) -> None:
        super().__init__()
        self.dim = dim
        self.theta = theta
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._build_cache(max_position)

    def _build_cache(self, length: int) -> None:
        self.cached_length = length
        positions = torch.arange(length, dtype=torch.int64, device=self.inv_freq.device).type_as(
            self.inv_freq
        )
        freqs = torch.outer(positions, self.inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", angles.cos(), persistent=False)
        self.register_buffer("sin_cached", angles.sin(), persistent=False)

    def forward(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for positions 0..length-1, shape [length, dim], in the buffers' dtype."""
        if length > self.cached_length:
            self._build_cache(length)
        return self.cos_cached[:length], self.sin_cached[:length]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2i, 2i+1) with the half-split tables, as the reference does.

    out[2i] = x[2i] cos[2i] - x[2i+1] sin[2i]; out[2i+1] = x[2i+1] cos[2i+1] + x[2i] sin[2i+1].
    The two members of a pair read different frequencies, so this is not a norm-preserving rotation;
    it must be reproduced exactly to match the checkpoint. x: [B, H, T, d]; tables: [T, d]. fp32 math.
    """
    x32 = x.float()
    even, odd = x32[..., 0::2], x32[..., 1::2]
    rotated = torch.stack((-odd, even), dim=-1).flatten(-2)
    out = x32 * cos.float() + rotated * sin.float()
    return out.to(x.dtype)
