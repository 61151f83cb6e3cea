"""Transformer parts against direct formulas from the spec (shared/reference/transformer.md sections 3.1, 3.4, 3.6)."""

from __future__ import annotations

import math

import torch

from acestep.families.v1.models import ACEStepTransformer2DModel
from acestep.families.v1.models.attention import CrossAttention, LinearSelfAttention
from acestep.families.v1.models.configs import tiny_transformer_config
from acestep.families.v1.models.lyric_encoder import (
    LyricEncoder,
    RelPositionSelfAttention,
    rel_shift,
    relative_position_table,
)
from acestep.families.v1.models.rope import RotaryEmbedding, apply_rope
from acestep.families.v1.models.transformer import GLUMBConv, LinearTransformerBlock


def spec_angles(length: int, dim: int, theta: float) -> torch.Tensor:
    """phi_p[c] = p * theta^(-2 (c mod dim/2) / dim), float64, [length, dim]."""
    half = dim // 2
    freqs = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / dim)
    return torch.arange(length, dtype=torch.float64)[:, None] * torch.cat([freqs, freqs])[None]


def spec_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """The reference's pairing: out[2i] uses angle 2i, out[2i+1] uses angle 2i+1 of the half-split table."""
    out = torch.empty_like(x, dtype=torch.float64)
    x = x.double()
    for i in range(x.shape[-1] // 2):
        a, b = 2 * i, 2 * i + 1
        out[..., a] = x[..., a] * angles[:, a].cos() - x[..., b] * angles[:, a].sin()
        out[..., b] = x[..., b] * angles[:, b].cos() + x[..., a] * angles[:, b].sin()
    return out


def split(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2).double()


def test_rope_matches_the_spec_formula() -> None:
    cos, sin = RotaryEmbedding(8, 16, 1e6)(5)
    x = torch.randn(2, 3, 5, 8)
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out.double(), spec_rope(x, spec_angles(5, 8, 1e6)), atol=1e-6, rtol=1e-6)


def test_rope_quirk_is_not_a_rotation() -> None:
    """The two members of a pair read different frequencies, so norms change (a standard RoPE keeps them)."""
    cos, sin = RotaryEmbedding(8, 16, 1e6)(6)
    x = torch.randn(1, 1, 6, 8)
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out[..., 0, :], x[..., 0, :])  # position 0: identity
    assert not torch.allclose(out[..., 5, :].norm(), x[..., 5, :].norm(), rtol=1e-3)


def test_linear_self_attention_matches_the_spec_formula() -> None:
    torch.manual_seed(0)
    heads, dim, length = 2, 16, 6
    attn = LinearSelfAttention(dim, heads)
    x = torch.randn(2, length, dim)
    mask = torch.tensor([[1.0] * length, [1.0] * 4 + [0.0] * 2])
    rope = RotaryEmbedding(dim // heads, 32, 1e6)(length)
    angles = spec_angles(length, dim // heads, 1e6)
    keep = mask[:, None, :, None].double()
    with torch.no_grad():
        q = torch.relu(spec_rope(split(attn.to_q(x), heads), angles) * keep)
        k = torch.relu(spec_rope(split(attn.to_k(x), heads), angles) * keep)
        v = split(attn.to_v(x), heads) * keep
        weights = torch.einsum("bhid,bhjd->bhij", q, k)  # no softmax, no 1/sqrt(d)
        out = torch.einsum("bhij,bhjd->bhid", weights, v) / (weights.sum(-1, keepdim=True) + 1e-15)
        want = attn.to_out[0](out.transpose(1, 2).reshape(2, length, dim).float())
        got = attn(x, mask, rope)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Padded query rows have phi(q) = 0: numerator and normaliser vanish, the output is the projection bias.
    torch.testing.assert_close(got[1, 4:], attn.to_out[0].bias.detach().expand(2, dim))


def test_linear_self_attention_ignores_the_scale_of_q() -> None:
    """A ratio of kernels: scaling q (what ERG does) changes nothing beyond the 1e-15 epsilon."""
    torch.manual_seed(1)
    attn = LinearSelfAttention(16, 2)
    x, mask = torch.randn(1, 5, 16), torch.ones(1, 5)
    rope = RotaryEmbedding(8, 8, 1e6)(5)
    with torch.no_grad():
        base = attn(x, mask, rope)
        attn.to_q.weight.mul_(0.01)
        attn.to_q.bias.mul_(0.01)
        torch.testing.assert_close(attn(x, mask, rope), base, atol=1e-5, rtol=1e-4)


def test_cross_attention_matches_softmax_with_the_mask_rule() -> None:
    torch.manual_seed(2)
    heads, dim, length, context_length = 2, 16, 4, 5
    attn = CrossAttention(dim, heads)
    x, context = torch.randn(1, length, dim), torch.randn(1, context_length, dim)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    context_mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]])
    rotary = RotaryEmbedding(dim // heads, 32, 1e6)
    with torch.no_grad():
        got = attn(x, context, mask, context_mask, rotary(length), rotary(context_length))
        q = spec_rope(split(attn.to_q(x), heads), spec_angles(length, dim // heads, 1e6))
        k = spec_rope(split(attn.to_k(context), heads), spec_angles(context_length, dim // heads, 1e6))
        v = split(attn.to_v(context), heads)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(dim // heads)).masked_fill(
            context_mask[:, None, None] == 0, -math.inf
        )
        out = torch.softmax(scores, -1) @ v
        want = attn.to_out[0](out.transpose(1, 2).reshape(1, length, dim).float())
    torch.testing.assert_close(got[:, :3], want[:, :3], atol=1e-5, rtol=1e-5)
    # A padded latent row (all keys masked in the reference) is defined here: zeros before the projection.
    torch.testing.assert_close(got[0, 3], attn.to_out[0].bias.detach())
    # The add_* projections are held for the checkpoint only.
    with torch.no_grad():
        for layer in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj, attn.to_add_out):
            layer.weight.add_(1.0)
        torch.testing.assert_close(
            attn(x, context, mask, context_mask, rotary(length), rotary(context_length)), got
        )


def test_relative_position_table_layout() -> None:
    table = relative_position_table(4, 6, torch.device("cpu"), torch.float32)[0]
    assert table.shape == (7, 6)
    for row in range(7):
        r = 3 - row  # rows run from relative position +(L-1) down to -(L-1)
        for m in range(3):
            omega = 10000.0 ** (-2 * m / 6)
            torch.testing.assert_close(table[row, 2 * m], torch.tensor(math.sin(r * omega)))
            torch.testing.assert_close(table[row, 2 * m + 1], torch.tensor(math.cos(r * omega)))


def test_rel_shift_reads_relative_position_i_minus_j() -> None:
    length = 5
    scores = torch.randn(2, 3, length, 2 * length - 1)
    shifted = rel_shift(scores)
    assert shifted.shape == (2, 3, length, length)
    for i in range(length):
        for j in range(length):
            torch.testing.assert_close(shifted[..., i, j], scores[..., i, (length - 1) - (i - j)])


def test_rel_position_attention_matches_the_spec_formula() -> None:
    torch.manual_seed(3)
    heads, dim, length = 2, 8, 4
    attn = RelPositionSelfAttention(dim, heads)
    x = torch.randn(1, length, dim)
    key_mask = torch.tensor([[True, True, True, False]])
    pos = relative_position_table(length, dim, x.device, x.dtype)
    d = dim // heads
    with torch.no_grad():
        got = attn(x, pos, key_mask)
        q, k, v = (layer(x).view(length, heads, d) for layer in (attn.linear_q, attn.linear_k, attn.linear_v))
        p = attn.linear_pos(pos[0]).view(2 * length - 1, heads, d)
        scores = torch.empty(heads, length, length)
        for h in range(heads):
            for i in range(length):
                for j in range(length):
                    rel = p[(length - 1) - (i - j), h]
                    content = (q[i, h] + attn.pos_bias_u[h]) @ k[j, h]
                    position = (q[i, h] + attn.pos_bias_v[h]) @ rel
                    scores[h, i, j] = (content + position) / math.sqrt(d)
        probs = torch.softmax(scores.masked_fill(~key_mask, -math.inf), -1)
        out = torch.einsum("hij,jhd->ihd", probs, v).reshape(1, length, dim)
        want = attn.linear_out(out)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_lyric_encoder_padding_and_fully_masked_rows() -> None:
    torch.manual_seed(4)
    encoder = LyricEncoder(dim=16, heads=2, hidden=32, num_blocks=2).eval()
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        base = encoder(x, torch.ones(1, 5))
        padded = encoder(torch.cat([x, torch.randn(1, 3, 16)], 1), torch.tensor([[1.0] * 5 + [0.0] * 3]))
    torch.testing.assert_close(padded[:, :5], base, atol=1e-5, rtol=1e-5)
    # No valid key at all (empty lyrics, lyric dropout): zeros instead of NaN, gradients finite.
    encoder.train()
    x.requires_grad_(True)
    out = encoder(x, torch.zeros(1, 5))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_block_composition_follows_the_spec() -> None:
    """adaLN-single order (shift, scale, gate for MSA then MLP), cross-attention on the raw residual stream."""
    torch.manual_seed(5)
    dim, heads, length = 16, 2, 5
    block = LinearTransformerBlock(dim, heads, mlp_ratio=2.5)
    h, context = torch.randn(2, length, dim), torch.randn(2, 3, dim)
    mask, context_mask = torch.ones(2, length), torch.ones(2, 3)
    rotary = RotaryEmbedding(dim // heads, 32, 1e6)
    rope, context_rope = rotary(length), rotary(3)
    temb = torch.randn(2, 6 * dim)

    def rms(x: torch.Tensor) -> torch.Tensor:
        return x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()

    with torch.no_grad():
        got = block(h, context, mask, context_mask, rope, context_rope, temb)
        rows = [block.scale_shift_table[j] + temb[:, j * dim : (j + 1) * dim] for j in range(6)]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (row[:, None] for row in rows)
        want = h + gate_msa * block.attn(rms(h) * (1 + scale_msa) + shift_msa, mask, rope)
        want = want + block.cross_attn(want, context, mask, context_mask, rope, context_rope)
        want = want + gate_mlp * block.ff(rms(want) * (1 + scale_mlp) + shift_mlp)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_glumbconv_matches_the_spec_formula() -> None:
    """Pointwise expand + SiLU, depthwise k=3 with zero padding, value (first half) x SiLU(gate), pointwise."""
    torch.manual_seed(6)
    ff = GLUMBConv(4, 3)
    x = torch.randn(1, 5, 4)
    with torch.no_grad():
        got = ff(x)
        inverted, depth, point = ff.inverted_conv.conv, ff.depth_conv.conv, ff.point_conv.conv
        u = torch.nn.functional.silu(x[0] @ inverted.weight[:, :, 0].T + inverted.bias)  # [T, 6]
        padded = torch.cat([torch.zeros(1, 6), u, torch.zeros(1, 6)])
        w = depth.weight[:, 0]  # [6, 3]
        mixed = torch.stack(
            [padded[t] * w[:, 0] + padded[t + 1] * w[:, 1] + padded[t + 2] * w[:, 2] for t in range(5)]
        )
        mixed = mixed + depth.bias
        gated = mixed[:, :3] * torch.nn.functional.silu(mixed[:, 3:])
        want = gated @ point.weight[:, :, 0].T
    assert point.bias is None
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=1e-5)


def test_final_layer_and_unpatchify_follow_the_spec() -> None:
    """(shift, scale) from the un-projected timestep embedding; feature p*8+c lands at [c, p, t]."""
    torch.manual_seed(7)
    model = ACEStepTransformer2DModel(**tiny_transformer_config())
    h, embedded = torch.randn(2, 4, 64), torch.randn(2, 64)
    with torch.no_grad():
        features = model.final_layer(h, embedded)
        shift = model.final_layer.scale_shift_table[0] + embedded
        scale = model.final_layer.scale_shift_table[1] + embedded
        normed = h / (h.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
        want = model.final_layer.linear(normed * (1 + scale[:, None]) + shift[:, None])
        sample = model._unpatchify(features, 4)
    torch.testing.assert_close(features, want, atol=1e-5, rtol=1e-5)
    for c, p, t in ((0, 0, 0), (7, 15, 3), (3, 9, 1)):
        torch.testing.assert_close(sample[1, c, p, t], features[1, t, p * 8 + c])
    assert model._unpatchify(features, 6)[..., 4:].eq(0).all()
