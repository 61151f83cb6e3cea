"""What the official ACE-Step 1.5 code does, written out independently of diffusers and of our converter, for tests.

- OfficialDecoder: the official `AceStepDiTModel` module tree (names and shapes of acestep/families/v1/models/*/modeling_acestep_v15_*.py:
  layers.N.{self_attn,cross_attn}.{q,k,v,o}_proj, proj_in.1 ...), the object the official app's handler wraps with
  PeftModel.from_pretrained. Built from a DiT config.json; it holds weights, no forward.
- official_timbre: the official timbre encoder formula (embed, XL: special token first, bidirectional encoder layers
  with sliding windows and RoPE, final norm, output at position 0), in plain torch from a state dict.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Norm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))


class _Attention(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        width, head = config["hidden_size"], config["head_dim"]
        heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
        bias = config.get("attention_bias", False)
        self.q_proj = nn.Linear(width, heads * head, bias=bias)
        self.k_proj = nn.Linear(width, kv * head, bias=bias)
        self.v_proj = nn.Linear(width, kv * head, bias=bias)
        self.o_proj = nn.Linear(heads * head, width, bias=bias)
        self.q_norm = _Norm(head)
        self.k_norm = _Norm(head)


class _Mlp(nn.Module):
    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, inner, bias=False)
        self.up_proj = nn.Linear(width, inner, bias=False)
        self.down_proj = nn.Linear(inner, width, bias=False)


class _Layer(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        width = config["hidden_size"]
        self.self_attn_norm = _Norm(width)
        self.self_attn = _Attention(config)
        self.cross_attn_norm = _Norm(width)
        self.cross_attn = _Attention(config)
        self.mlp_norm = _Norm(width)
        self.mlp = _Mlp(width, config["intermediate_size"])
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 6, width))


class _TimestepEmbedding(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(256, width)
        self.linear_2 = nn.Linear(width, width)
        self.time_proj = nn.Linear(width, 6 * width)


class OfficialDecoder(nn.Module):
    """The official DiT's parameters under their own names (proj_in / proj_out are Sequential(Lambda, conv, Lambda))."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        width, patch = config["hidden_size"], config["patch_size"]
        self.layers = nn.ModuleList(_Layer(config) for _ in range(config["num_hidden_layers"]))
        self.proj_in = nn.Sequential(nn.Identity(), nn.Conv1d(config["in_channels"], width, patch, stride=patch),
                                     nn.Identity())
        self.time_embed = _TimestepEmbedding(width)
        self.time_embed_r = _TimestepEmbedding(width)
        self.condition_embedder = nn.Linear(config.get("encoder_hidden_size", width), width)
        self.norm_out = _Norm(width)
        self.proj_out = nn.Sequential(
            nn.Identity(), nn.ConvTranspose1d(width, config["audio_acoustic_hidden_dim"], patch, stride=patch),
            nn.Identity())
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 2, width))


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Qwen3 rotary embedding on [N, heads, L, D]: frequencies repeated over both halves, rotate-half."""
    length, dim = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv[None]
    angles = torch.cat([angles, angles], dim=-1)
    half = dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * angles.cos() + rotated * angles.sin()


def _encoder_layer(x: torch.Tensor, p: dict, config: dict, sliding: bool) -> torch.Tensor:
    eps, head = config["rms_norm_eps"], config["head_dim"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    n, length, _ = x.shape
    h = _rms(x, p["input_layernorm.weight"], eps)

    def project(name: str, count: int) -> torch.Tensor:
        return (h @ p[f"self_attn.{name}.weight"].T).view(n, length, count, head).transpose(1, 2)

    q = _rope(_rms(project("q_proj", heads), p["self_attn.q_norm.weight"], eps), config["rope_theta"])
    k = _rope(_rms(project("k_proj", kv), p["self_attn.k_norm.weight"], eps), config["rope_theta"])
    v = project("v_proj", kv)
    k, v = k.repeat_interleave(heads // kv, dim=1), v.repeat_interleave(heads // kv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head)
    if sliding:  # bidirectional sliding window: |i - j| <= window
        index = torch.arange(length)
        scores = scores.masked_fill((index[:, None] - index[None]).abs() > config["sliding_window"], float("-inf"))
    attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, heads * head)
    x = x + attended @ p["self_attn.o_proj.weight"].T
    h = _rms(x, p["post_attention_layernorm.weight"], eps)
    gate, up = h @ p["mlp.gate_proj.weight"].T, h @ p["mlp.up_proj.weight"].T
    return x + (torch.nn.functional.silu(gate) * up) @ p["mlp.down_proj.weight"].T


def official_timbre(state: dict[str, torch.Tensor], config: dict, packed: torch.Tensor, order: torch.Tensor,
                    special_token: bool) -> torch.Tensor:
    """[B, max refs, D]: the timbre embeddings of the packed references [N, T, C] (`order`: batch of each).

    `state`: the timbre encoder's weights under their own names (embed_tokens, special_token, layers.i.*, norm);
    `config`: its width, heads, head_dim, layer_types, sliding_window, rope_theta, rms_norm_eps.
    `special_token`: the XL formula (the token first, output at it); without it the 2B one (output at frame 0)."""
    x = packed.float() @ state["embed_tokens.weight"].T + state["embed_tokens.bias"]
    if special_token:
        x = torch.cat([state["special_token"].expand(x.shape[0], 1, -1), x], dim=1)
    for index in range(config["num_timbre_encoder_hidden_layers"]):
        params = {key.removeprefix(f"layers.{index}."): value for key, value in state.items()
                  if key.startswith(f"layers.{index}.")}
        x = _encoder_layer(x, params, config, config["layer_types"][index] == "sliding_attention")
    pooled = _rms(x, state["norm.weight"], config["rms_norm_eps"])[:, 0]
    batch = int(order.max()) + 1
    rows = [pooled[order == b] for b in range(batch)]
    most = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r.new_zeros(most - len(r), r.shape[1])]) for r in rows])
