"""ERG ("entropy rectifying guidance"): the unconditional branch comes from the model itself with some query
projections scaled by 0.01, which flattens their attention (transformer.md 6.4).

The reference hooks UMT5 blocks 8-9 of 12, Conformer layers 4-5 of 6 and transformer blocks 15-19 of 24;
for other depths (the tiny model) the same fractions of the depth are hooked.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

ERG_SCALE = 0.01


def proportional_indices(depth: int, reference_range: range, reference_depth: int) -> list[int]:
    """Indices covering the same fraction of `depth` as `reference_range` does of `reference_depth`."""
    start = reference_range.start * depth // reference_depth
    stop = max(start + 1, reference_range.stop * depth // reference_depth)
    return list(range(min(start, depth - 1), min(stop, depth)))


@contextmanager
def scaled_outputs(modules: Sequence[nn.Module], scale: float = ERG_SCALE) -> Iterator[None]:
    """Multiply each module's output by `scale` while the context is open."""
    handles = [module.register_forward_hook(lambda _m, _i, out: out * scale) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def text_query_layers(umt5: nn.Module) -> list[nn.Module]:
    blocks = umt5.encoder.block
    return [blocks[i].layer[0].SelfAttention.q for i in proportional_indices(len(blocks), range(8, 10), 12)]


def lyric_query_layers(transformer: nn.Module) -> list[nn.Module]:
    layers = transformer.lyric_encoder.encoders
    return [layers[i].self_attn.linear_q for i in proportional_indices(len(layers), range(4, 6), 6)]


def diffusion_query_layers(transformer: nn.Module) -> list[nn.Module]:
    blocks = transformer.transformer_blocks
    picked = proportional_indices(len(blocks), range(15, 20), 24)
    return [m for i in picked for m in (blocks[i].attn.to_q, blocks[i].cross_attn.to_q)]
