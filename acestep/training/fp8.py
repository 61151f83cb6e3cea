"""fp8 storage of the frozen base's linear weights: 1 byte a weight instead of 2, dequantized layer by layer.

Weights are stored as float8_e4m3fn with one fp32 scale per output channel, so each channel uses the whole
fp8 range. The forward pass dequantizes one layer's weight to the compute dtype, runs the ordinary matmul and
drops the copy again, so only one layer's 16-bit weight exists at a time. Plain torch ops: CPU and CUDA alike.
The quantized layers stay `nn.Linear` / `nn.Conv1d` subclasses (PEFT wraps them like any other) and expose
`compute_dtype`, the dtype PEFT reads to create LoRA factors, so the factors start as on a 16-bit base.
Quantized: the Linears and pointwise (kernel 1) Conv1d under the module-name prefixes the model family names
(`ModelBlocks.fp8_prefixes`); every other layer (norms, embeddings, ...) stays 16-bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max
SCALE_BYTES = 4  # one fp32 scale per output channel


def quantize_channels(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, fp32 scale [out, 1, ...]) with weight ~= fp8 * scale, each output channel scaled to the range."""
    values = weight.detach().float()
    reduce = tuple(range(1, values.ndim))
    scale = values.abs().amax(dim=reduce, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (values / scale).to(FP8_DTYPE), scale


def is_quantizable(name: str, module: nn.Module, prefixes: tuple[str, ...]) -> bool:
    """A layer `--base_dtype fp8` stores in fp8: a Linear or a pointwise Conv1d under one of `prefixes`."""
    if not name.startswith(prefixes):
        return False
    if type(module) is nn.Linear:
        return True
    return (type(module) is nn.Conv1d and module.kernel_size == (1,) and module.groups == 1
            and module.stride == (1,) and module.padding == (0,))


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 16-bit weight: one new tensor of the layer's size (scaled in place)."""
    return weight.to(dtype).mul_(scale.to(dtype))


class Fp8Matmul(torch.autograd.Function):
    """A frozen linear map whose backward keeps the fp8 weight, not its 16-bit copy.

    Through plain autograd the dequantized weight would be saved for the input's gradient, so every layer's
    16-bit copy would live until backward and the memory saved would be lost again. Here backward dequantizes
    once more. `pointwise`: the weight is a kernel-1 Conv1d's ([out, in, 1], input [batch, in, time]).
    """

    @staticmethod
    def forward(ctx, x, weight, scale, bias, pointwise):  # noqa: ANN001, ANN205
        ctx.save_for_backward(weight, scale)
        ctx.pointwise = pointwise
        w = dequantize(weight, scale, x.dtype)
        return F.conv1d(x, w, bias) if pointwise else F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        weight, scale = ctx.saved_tensors
        w = dequantize(weight, scale, grad.dtype)
        grad_x = torch.matmul(w.squeeze(-1).t(), grad) if ctx.pointwise else torch.matmul(grad, w)
        return grad_x, None, None, None, None


class Fp8Weight:
    """The fp8 weight of a frozen layer, applied in the compute dtype through `Fp8Matmul`."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_scale: torch.Tensor
    compute_dtype: torch.dtype
    pointwise = False

    def _take_weights(self, layer: nn.Module, compute_dtype: torch.dtype) -> None:
        weight, scale = quantize_channels(layer.weight)
        self.weight = nn.Parameter(weight, requires_grad=False)
        bias = layer.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(compute_dtype), requires_grad=False)
        self.register_buffer("weight_scale", scale)  # type: ignore[attr-defined]
        self.compute_dtype = compute_dtype
        self.train(layer.training)  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """In autocast's dtype where autocast is on, else in the input's."""
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return Fp8Matmul.apply(x.to(dtype), self.weight, self.weight_scale, bias, self.pointwise)


class Fp8Linear(Fp8Weight, nn.Linear):
    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype) -> Fp8Linear:
        with torch.device("meta"):
            layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer._take_weights(linear, compute_dtype)
        return layer


class Fp8Conv1d(Fp8Weight, nn.Conv1d):
    """A pointwise (kernel 1, stride 1, no padding, ungrouped) Conv1d: the blocks' feed-forward projections."""

    pointwise = True

    @classmethod
    def from_conv(cls, conv: nn.Conv1d, compute_dtype: torch.dtype) -> Fp8Conv1d:
        with torch.device("meta"):
            layer = cls(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
        layer._take_weights(conv, compute_dtype)
        return layer


def quantize_base(model: nn.Module, compute_dtype: torch.dtype, prefixes: tuple[str, ...]) -> int:
    """Swap the quantizable layers under `prefixes` for their fp8 versions (before LoRA is attached); returns the
    bytes saved. Layers already released (empty weights) are left alone; module names do not change.
    """
    targets = [(name, module) for name, module in model.named_modules()
               if is_quantizable(name, module, prefixes) and module.weight.numel() > 0]
    saved = 0
    for name, module in targets:
        parent, _, child = name.rpartition(".")
        layer = Fp8Linear.from_linear(module, compute_dtype) if isinstance(module, nn.Linear) \
            else Fp8Conv1d.from_conv(module, compute_dtype)
        saved += module.weight.numel() * module.weight.element_size()
        saved -= layer.weight.numel() + layer.weight_scale.numel() * SCALE_BYTES
        setattr(model.get_submodule(parent), child, layer)
    return saved
