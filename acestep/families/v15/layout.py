"""The DiT's residual stream in row-major layout: the same values, without a copy of every weight per matmul.

diffusers' AceStepTransformer1DModel patchifies with `proj_in_conv(x.transpose(1, 2)).transpose(1, 2)`, so the
[B, T, C] hidden states every layer reads are a transposed view, and the norms keep that layout. For a strided
input without a bias, torch's `linear` takes the batched-matmul path, and on the CPU that path copies the
transposed weight into a new tensor on every call, forward, recomputation and backward: measured on the published
2B's width, these copies were about 40 % of a training step (bench/vs_official_v15.py). A hook on proj_in_conv
hands on the same values laid out so that the model's transpose gives a contiguous tensor; nothing else changes
(module names, state dict, results up to the matmul's summation order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: checkpoint.py, which imports this, resolves folders without torch
    import torch
    from torch import nn
    from torch.utils.hooks import RemovableHandle


def _row_major_after_transpose(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.transpose(1, 2).contiguous().transpose(1, 2)


def contiguous_residual_stream(transformer: nn.Module) -> RemovableHandle | None:
    """Lay the patchified hidden states out row-major (a forward hook on proj_in_conv); None for a model without
    that convolution."""
    from torch import nn

    conv = getattr(transformer, "proj_in_conv", None)
    if not isinstance(conv, nn.Module):
        return None
    return conv.register_forward_hook(_row_major_after_transpose)
