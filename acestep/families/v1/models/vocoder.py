"""`ADaMoSHiFiGANV1`: the ACE-Step mel vocoder (ConvNeXt-1D backbone + HiFi-GAN head), 44.1 kHz mono.

Names follow the published `music_vocoder/` checkpoint: `backbone.channel_layers`, `backbone.stages`,
`head.conv_pre`, `head.ups`, `head.resblocks`, `head.conv_post`, with old-style weight norm
(`weight_g` / `weight_v`). Facts: shared/reference/data-side.md section 3.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn.utils import weight_norm as _torch_weight_norm

from acestep.core.quiet import old_weight_norm

from .mel import LogMelSpectrogram

LN_EPS = 1e-6


def weight_norm(module: nn.Module) -> nn.Module:
    """Old-style weight norm, whose `weight_g` / `weight_v` names the published checkpoint stores (torch's
    parametrized replacement names them `parametrizations.weight.original0/1`)."""
    with old_weight_norm():
        return _torch_weight_norm(module)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of [N, C, T], with the mean and variance computed by hand in the model's
    dtype as the reference does: in bf16 that differs from `F.layer_norm` (which accumulates in float32) by up
    to 9e-3, and the published vocoder was run the reference's way."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(dim=1, keepdim=True)
        variance = centered.pow(2).mean(dim=1, keepdim=True)
        return self.weight[:, None] * (centered / torch.sqrt(variance + LN_EPS)) + self.bias[:, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).transpose(1, 2))
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.transpose(1, 2)


class ConvNeXtBackbone(nn.Module):
    def __init__(self, in_channels: int, depths: list[int], dims: list[int], kernel_size: int) -> None:
        super().__init__()
        stem = nn.Sequential(
            nn.Conv1d(in_channels, dims[0], 7, padding=3, padding_mode="replicate"), ChannelsFirstLayerNorm(dims[0])
        )
        transitions = [
            nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv1d(dims[i], dims[i + 1], 1))
            for i in range(len(dims) - 1)
        ]
        self.channel_layers = nn.ModuleList([stem, *transitions])
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dim, kernel_size) for _ in range(depth))) for depth, dim in zip(depths, dims)
        )
        self.norm = ChannelsFirstLayerNorm(dims[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for channel_layer, stage in zip(self.channel_layers, self.stages):
            x = stage(channel_layer(x))
        return self.norm(x)


def _padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock(nn.Module):
    """Three (SiLU, dilated conv, SiLU, conv) residual steps, every conv weight-normed."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_padding(kernel_size, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=_padding(kernel_size)))
            for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            x = x + conv2(F.silu(conv1(F.silu(x))))
        return x


class HiFiGANHead(nn.Module):
    def __init__(
        self, num_mels: int, initial_channels: int, rates: list[int], kernels: list[int],
        resblock_kernels: list[int], resblock_dilations: list[list[int]], pre_kernel: int, post_kernel: int,
    ) -> None:
        super().__init__()
        self.conv_pre = weight_norm(nn.Conv1d(num_mels, initial_channels, pre_kernel, padding=_padding(pre_kernel)))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = initial_channels
        for rate, kernel in zip(rates, kernels):
            self.ups.append(weight_norm(nn.ConvTranspose1d(channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2)))
            channels //= 2
            self.resblocks.extend(ResBlock(channels, k, d) for k, d in zip(resblock_kernels, resblock_dilations))
        self.num_kernels = len(resblock_kernels)
        self.conv_post = weight_norm(nn.Conv1d(channels, 1, post_kernel, padding=_padding(post_kernel)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.silu(x))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        return torch.tanh(self.conv_post(F.silu(x)))


class ADaMoSHiFiGANV1(ModelMixin, ConfigMixin):
    """Log-mel [N, 128, F] (natural log, not normalised) -> waveform [N, 1, 512 F] at 44.1 kHz."""

    # The mel buffers may or may not be in a published file; they are rebuilt here, never loaded.
    _keys_to_ignore_on_load_unexpected = [r"mel_transform\..*"]

    @register_to_config
    def __init__(
        self,
        input_channels: int = 128,
        depths: list[int] = (3, 3, 9, 3),
        dims: list[int] = (128, 256, 384, 512),
        drop_path_rate: float = 0.0,
        kernel_sizes: list[int] = (7,),
        upsample_rates: list[int] = (4, 4, 2, 2, 2, 2, 2),
        upsample_kernel_sizes: list[int] = (8, 8, 4, 4, 4, 4, 4),
        resblock_kernel_sizes: list[int] = (3, 7, 11, 13),
        resblock_dilation_sizes: list[list[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5), (1, 3, 5)),
        num_mels: int = 512,
        upsample_initial_channel: int = 1024,
        use_template: bool = False,
        pre_conv_kernel_size: int = 13,
        post_conv_kernel_size: int = 13,
        sampling_rate: int = 44100,
        n_fft: int = 2048,
        win_length: int = 2048,
        hop_length: int = 512,
        f_min: int = 40,
        f_max: int = 16000,
        n_mels: int = 128,
    ) -> None:
        super().__init__()
        self.backbone = ConvNeXtBackbone(input_channels, list(depths), list(dims), kernel_sizes[0])
        self.head = HiFiGANHead(
            num_mels, upsample_initial_channel, list(upsample_rates), list(upsample_kernel_sizes),
            list(resblock_kernel_sizes), [list(d) for d in resblock_dilation_sizes],
            pre_conv_kernel_size, post_conv_kernel_size,
        )
        self.mel_transform = LogMelSpectrogram()

    @torch.no_grad()
    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        dtype = self.head.conv_pre.bias.dtype
        return self.head(self.backbone(mel.to(dtype)))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(mel))


def tiny_vocoder_config() -> dict[str, Any]:
    """Same structure (upsampling product 512 = hop), tiny widths."""
    return {
        "depths": [1, 1, 1, 1],
        "dims": [16, 16, 24, 32],
        "num_mels": 32,
        "upsample_initial_channel": 128,
        "resblock_kernel_sizes": [3, 5],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    }
