"""`ACEStepTransformer2DModel`: the ACE-Step v1 diffusion transformer, loading the published checkpoint as is.

Facts: shared/reference/transformer.md. The state-dict names and shapes equal the published ones (874 tensors,
3,305,659,264 parameters at the published config), including weights the forward pass never uses.

Against the reference class with the same weights (CPU), outputs are bit-identical in fp32, bf16 and fp16 and
fp32 gradients too. Deliberate differences, none on the path the reference pipelines and trainers use:
padded latent rows get zeros from the cross-attention (the reference masks every key there: NaN or
backend-dependent); SSL losses are computed in fp32; `decode` without `output_length` returns all frames;
a scalar timestep is broadcast; inputs are cast to the model dtype.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn
from torch.utils.checkpoint import checkpoint

from acestep.core.errors import AcestepError, CheckpointError

from .attention import CrossAttention, LinearSelfAttention
from .lyric_encoder import LyricEncoder
from .rope import RotaryEmbedding

NORM_EPS = 1e-6
TIMESTEP_CHANNELS = 256


class RMSNorm(nn.Module):
    """Weightless RMSNorm with the variance in fp32 (the product promotes to fp32 too), as the blocks use it."""

    def __init__(self, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(variance + self.eps)).to(x.dtype)


class _Conv1d(nn.Module):
    """Holds a Conv1d under `.conv`, the name the checkpoint uses inside GLUMBConv."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv1d(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class GLUMBConv(nn.Module):
    """Feed-forward over time: pointwise expand, depthwise k=3 conv, SiLU-gated GLU, pointwise project."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.inverted_conv = _Conv1d(dim, hidden * 2, 1)
        self.depth_conv = _Conv1d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.point_conv = _Conv1d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depth_conv(F.silu(self.inverted_conv(x.transpose(1, 2))))
        value, gate = x.chunk(2, dim=1)
        return self.point_conv(value * F.silu(gate)).transpose(1, 2)


class LinearTransformerBlock(nn.Module):
    """adaLN-single block: modulated linear self-attention, unmodulated cross-attention, modulated GLUMBConv."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        self.norm1 = RMSNorm()
        self.attn = LinearSelfAttention(dim, heads)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm2 = RMSNorm()
        self.ff = GLUMBConv(dim, int(dim * mlp_ratio))

    def forward(
        self,
        h: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor,
        context_mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        context_rope: tuple[torch.Tensor, torch.Tensor],
        temb: torch.Tensor,
    ) -> torch.Tensor:
        modulation = self.scale_shift_table[None] + temb.reshape(h.shape[0], 6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=1)
        # Operand order as in the reference: it decides the memory layout of the sums (h arrives transposed from
        # the patch embedding), and with it which bf16 matmul kernel the next layer takes.
        h = gate_msa * self.attn(self.norm1(h) * (1 + scale_msa) + shift_msa, mask, rope) + h
        h = self.cross_attn(h, context, mask, context_mask, rope, context_rope) + h
        return h + gate_mlp * self.ff(self.norm2(h) * (1 + scale_mlp) + shift_mlp)


class PatchEmbed(nn.Module):
    """[B, C, 16, T] latents -> one token per latent frame; GroupNorm pools over all frames of a sample."""

    def __init__(self, in_channels: int, dim: int, patch_size: tuple[int, int]) -> None:
        super().__init__()
        mid = in_channels * 256
        self.early_conv_layers = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=patch_size, stride=patch_size),
            nn.GroupNorm(32, mid, eps=NORM_EPS),
            nn.Conv2d(mid, dim, kernel_size=1),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.early_conv_layers(latents).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    """Modulated by the un-projected timestep embedding, in (shift, scale) order."""

    def __init__(self, dim: int, out_features: int) -> None:
        super().__init__()
        self.norm_final = nn.RMSNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.linear = nn.Linear(dim, out_features)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)

    def forward(self, h: torch.Tensor, embedded_timestep: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        return self.linear(self.norm_final(h) * (1 + scale) + shift)


def match_statistics(control: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """ControlNet input [B, T, C] renormalised to the tokens' mean and std over (T, C), as the reference does."""
    control_mean, control_std = control.mean(dim=(1, 2), keepdim=True), control.std(dim=(1, 2), keepdim=True)
    mean, std = tokens.mean(dim=(1, 2), keepdim=True), tokens.std(dim=(1, 2), keepdim=True)
    return (control - control_mean) * (std / (control_std + 1e-12)) + mean


@dataclass
class Transformer2DModelOutput(BaseOutput):
    """`sample`: the flow velocity [B, 8, 16, T]; `proj_losses`: [(ssl name, cosine loss)] in training."""

    sample: torch.Tensor
    proj_losses: list[tuple[str, torch.Tensor]] | None = None


class ACEStepTransformer2DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """The ACE-Step v1 denoiser. `forward` = `encode` (conditions) + `decode` (one denoising call)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        num_layers: int = 24,
        inner_dim: int = 2560,
        attention_head_dim: int = 128,
        num_attention_heads: int = 20,
        mlp_ratio: float = 2.5,
        out_channels: int = 8,
        max_position: int = 32768,
        rope_theta: float = 1000000.0,
        speaker_embedding_dim: int = 512,
        text_embedding_dim: int = 768,
        ssl_encoder_depths: list[int] = (8, 8),
        ssl_names: list[str] = ("mert", "m-hubert"),
        ssl_latent_dims: list[int] = (1024, 768),
        lyric_encoder_vocab_size: int = 6693,
        lyric_hidden_size: int = 1024,
        patch_size: list[int] = (16, 1),
        max_height: int = 16,
        max_width: int = 32768,
        lyric_encoder_heads: int = 16,
        lyric_encoder_linear_units: int = 4096,
        lyric_encoder_num_blocks: int = 6,
    ) -> None:
        super().__init__()
        # `inner_dim` in the config is ignored by the reference too: the width is heads x head_dim.
        dim = num_attention_heads * attention_head_dim
        self.inner_dim = dim
        self.out_channels = out_channels
        self.patch_size = tuple(patch_size)
        self.ssl_encoder_depths = list(ssl_encoder_depths)
        self.ssl_names = list(ssl_names)
        self.rotary_emb = RotaryEmbedding(attention_head_dim, max_position, rope_theta)
        self.transformer_blocks = nn.ModuleList(
            LinearTransformerBlock(dim, num_attention_heads, mlp_ratio) for _ in range(num_layers)
        )
        self.time_proj = Timesteps(TIMESTEP_CHANNELS, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_CHANNELS, dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.speaker_embedder = nn.Linear(speaker_embedding_dim, dim)
        self.genre_embedder = nn.Linear(text_embedding_dim, dim)
        self.lyric_embs = nn.Embedding(lyric_encoder_vocab_size, lyric_hidden_size)
        self.lyric_encoder = LyricEncoder(
            lyric_hidden_size, lyric_encoder_heads, lyric_encoder_linear_units, lyric_encoder_num_blocks
        )
        self.lyric_proj = nn.Linear(lyric_hidden_size, dim)
        self.projectors = nn.ModuleList(
            nn.Sequential(
                nn.Linear(dim, 2 * dim),
                nn.SiLU(),
                nn.Linear(2 * dim, 2 * dim),
                nn.SiLU(),
                nn.Linear(2 * dim, ssl_dim),
            )
            for ssl_dim in ssl_latent_dims
        )
        self.proj_in = PatchEmbed(in_channels, dim, self.patch_size)
        self.final_layer = FinalLayer(dim, self.patch_size[0] * self.patch_size[1] * out_channels)
        self.gradient_checkpointing = False
        # With checkpointing on: how many blocks, counted from the first, recompute in backward (None: all).
        self.checkpointed_blocks: int | None = None

    def set_checkpointed_blocks(self, count: int | None) -> None:
        """Checkpoint only the first `count` blocks (None: all). The first ones, because the backward pass
        reaches them last: by then the saved activations of the later, uncheckpointed blocks are freed, so one
        block's recomputation never coincides with them."""
        if count is not None and not 0 <= count <= len(self.transformer_blocks):
            raise AcestepError(f"the model has {len(self.transformer_blocks)} blocks: cannot checkpoint {count}")
        self.checkpointed_blocks = count

    def encode(
        self,
        encoder_text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        speaker_embeds: torch.Tensor,
        lyric_token_idx: torch.Tensor,
        lyric_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[speaker | text | lyrics] cross-attention states [B, 1+Lt+Ll, C] and their mask."""
        dtype = self.speaker_embedder.weight.dtype
        speaker = self.speaker_embedder(speaker_embeds.to(dtype))[:, None]
        text = self.genre_embedder(encoder_text_hidden_states.to(dtype))
        lyrics = self.lyric_proj(self.lyric_encoder(self.lyric_embs(lyric_token_idx), lyric_mask))
        states = torch.cat([speaker, text, lyrics], dim=1)
        ones = torch.ones(speaker.shape[0], 1, device=states.device, dtype=states.dtype)
        mask = torch.cat([ones, text_attention_mask.to(states.dtype), lyric_mask.to(states.dtype)], dim=1)
        return states, mask

    def decode(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_mask: torch.Tensor,
        timestep: torch.Tensor,
        ssl_hidden_states: list[list[torch.Tensor] | None] | None = None,
        output_length: int | None = None,
        block_controlnet_hidden_states: torch.Tensor | None = None,
        controlnet_scale: float | torch.Tensor = 1.0,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
        """One denoiser call on latents [B, 8, 16, T] given encoded conditions; `timestep` is sigma x 1000."""
        dtype = self.proj_in.early_conv_layers[0].weight.dtype
        batch, _, _, length = hidden_states.shape
        timestep = timestep.reshape(-1).expand(batch) if timestep.numel() == 1 else timestep
        embedded_timestep = self.timestep_embedder(self.time_proj(timestep).to(dtype))
        temb = self.t_block(embedded_timestep)
        h = self.proj_in(hidden_states.to(dtype))
        if block_controlnet_hidden_states is not None:
            h = h + match_statistics(block_controlnet_hidden_states, h) * controlnet_scale
        context = encoder_hidden_states.to(h.dtype)
        # The tables follow the dtype of the states they rotate (bf16 under autocast), as in the reference.
        rope = tuple(table.to(h.dtype) for table in self.rotary_emb(length))
        context_rope = tuple(table.to(context.dtype) for table in self.rotary_emb(context.shape[1]))
        captured: list[torch.Tensor] = []
        checkpointed = len(self.transformer_blocks) if self.checkpointed_blocks is None else self.checkpointed_blocks
        for index, block in enumerate(self.transformer_blocks):
            args = (h, context, attention_mask, encoder_hidden_mask, rope, context_rope, temb)
            if self.gradient_checkpointing and index < checkpointed and self.training and torch.is_grad_enabled():
                h = checkpoint(block, *args, use_reentrant=False)
            else:
                h = block(*args)
            captured.extend(h for depth in self.ssl_encoder_depths if depth == index)
        proj_losses = self._projection_losses(captured, ssl_hidden_states, attention_mask)
        out = self.final_layer(h, embedded_timestep)
        sample = self._unpatchify(out, output_length or length)
        if not return_dict:
            return sample, proj_losses
        return Transformer2DModelOutput(sample=sample, proj_losses=proj_losses)

    def _projection_losses(
        self, captured: list[torch.Tensor], ssl_hidden_states: list[list[torch.Tensor] | None] | None,
        attention_mask: torch.Tensor | None = None,
    ) -> list[tuple[str, torch.Tensor]]:
        """Cosine losses between projected tapped states and SSL features, each resampled to the feature length.

        Computed in fp32 (the reference uses the model dtype): a bf16 loss is rounded to about 3 digits. Only a
        song's real frames are resampled (the reference also stretches the batch's padding over the features), so
        a song's loss does not depend on the songs it is batched with: 2 GPUs x 1 song = 1 GPU x 2 songs.
        """
        losses: list[tuple[str, torch.Tensor]] = []
        if not ssl_hidden_states:
            return losses
        for hidden, projector, targets, name in zip(
            captured, self.projectors, ssl_hidden_states, self.ssl_names
        ):
            if targets is None:
                continue
            predicted = projector(hidden)
            total = hidden.new_zeros((), dtype=torch.float32)
            for index, (sample_pred, target) in enumerate(zip(predicted, targets)):
                if attention_mask is not None:
                    sample_pred = sample_pred[: max(int(attention_mask[index].sum()), 1)]
                resized = F.interpolate(
                    sample_pred.T[None], size=target.shape[0], mode="linear", align_corners=False
                )[0].T
                target = F.normalize(target.to(resized.device).float(), dim=-1)
                resized = F.normalize(resized.float(), dim=-1)
                ones = torch.ones(target.shape[0], device=target.device)
                total = total + F.cosine_embedding_loss(target, resized, ones, margin=0.0)
            losses.append((name, total / predicted.shape[0]))
        return losses

    def _unpatchify(self, out: torch.Tensor, output_length: int) -> torch.Tensor:
        """Token features ordered (patch row p, channel c) -> [B, c, 16, T], padded/cropped to output_length."""
        batch, length, _ = out.shape
        height = self.patch_size[0]
        sample = out.reshape(batch, length, height, self.out_channels).permute(0, 3, 2, 1)
        if length < output_length:
            sample = F.pad(sample, (0, output_length - length))
        return sample[..., :output_length]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        encoder_text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        speaker_embeds: torch.Tensor,
        lyric_token_idx: torch.Tensor,
        lyric_mask: torch.Tensor,
        timestep: torch.Tensor,
        ssl_hidden_states: list[list[torch.Tensor] | None] | None = None,
        block_controlnet_hidden_states: torch.Tensor | None = None,
        controlnet_scale: float | torch.Tensor = 1.0,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
        """`encode` then `decode`: the training call. Masks are 1 for real frames/tokens, 0 for padding."""
        states, mask = self.encode(
            encoder_text_hidden_states, text_attention_mask, speaker_embeds, lyric_token_idx, lyric_mask
        )
        return self.decode(
            hidden_states,
            attention_mask,
            states,
            mask,
            timestep,
            ssl_hidden_states,
            output_length=hidden_states.shape[-1],
            block_controlnet_hidden_states=block_controlnet_hidden_states,
            controlnet_scale=controlnet_scale,
            return_dict=return_dict,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """diffusers loading, made strict: a file that does not match the model is an error, not a warning."""
        want_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, output_loading_info=True, **kwargs
            )
        except (ValueError, RuntimeError) as error:
            if "shape" not in str(error) and "size mismatch" not in str(error):
                raise
            raise CheckpointError(
                f"{pretrained_model_name_or_path}: weights do not match the model: {error}"
            ) from error
        problems = [
            f"{kind}: {', '.join(sorted(info[key])[:10])}{' ...' if len(info[key]) > 10 else ''}"
            for key, kind in (
                ("missing_keys", "missing keys"),
                ("unexpected_keys", "unexpected keys"),
                ("mismatched_keys", "mismatched shapes"),
            )
            if info.get(key)
        ]
        if problems:
            raise CheckpointError(
                f"{pretrained_model_name_or_path}: weights do not match the model: {'; '.join(problems)}"
            )
        return (model, info) if want_info else model
