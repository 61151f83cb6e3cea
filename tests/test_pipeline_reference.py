"""The sampler's reference rules on the tiny checkpoint: which inputs each guidance branch gets for every
combination of the three ERG flags, double-condition guidance and CFG-Zero*'s zero init."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from acestep.families.v1.pipeline.erg import diffusion_query_layers, lyric_query_layers, text_query_layers
from acestep.families.v1.pipeline.pipeline import ACEStepPipeline, GenerationParams

FAST = {"prompt": "pop, piano", "lyrics": "[verse]\nhello world", "duration": 1.5, "steps": 3,
        "guidance_interval": 1.0}


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint: Path) -> ACEStepPipeline:
    return ACEStepPipeline.from_checkpoint(tiny_checkpoint)


@contextmanager
def times_001(modules: list[torch.nn.Module]) -> Iterator[None]:
    """The reference's ERG hook, written out here: multiply the query projection's output by 0.01."""
    handles = [m.register_forward_hook(lambda _m, _i, out: out * 0.01) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def expected_states(pipeline: ACEStepPipeline, params: GenerationParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(unconditional, tags-only) encoder states as the reference's text2music_diffusion_process builds them."""
    transformer = pipeline.transformer
    text, text_mask = pipeline.text_encoder.encode([params.prompt])
    with times_001(text_query_layers(pipeline.text_encoder.model)):
        erg_text, _ = pipeline.text_encoder.encode([params.prompt])
    ids, lyric_mask = pipeline._lyric_ids(params.lyrics, 1)
    speaker = torch.zeros(1, transformer.config.speaker_embedding_dim)
    if params.use_erg_lyric:
        null_text = erg_text if params.use_erg_tag else torch.zeros_like(text)
        with times_001(lyric_query_layers(transformer)):
            uncond, _ = transformer.encode(null_text, text_mask, speaker, ids, lyric_mask)
            text_only, _ = transformer.encode(text, text_mask, speaker, ids, lyric_mask)
    else:  # P(null speaker, null text, null lyric): zeros, whatever the tag ERG flag says
        uncond, _ = transformer.encode(torch.zeros_like(text), text_mask, speaker, torch.zeros_like(ids), lyric_mask)
        text_only, _ = transformer.encode(text, text_mask, speaker, torch.zeros_like(ids), lyric_mask)
    return uncond, text_only


@pytest.mark.parametrize(("tag", "lyric", "diffusion"), list(itertools.product([True, False], repeat=3)))
def test_erg_flags_give_the_reference_branches(
    pipeline: ACEStepPipeline, tag: bool, lyric: bool, diffusion: bool
) -> None:
    params = GenerationParams(**FAST, use_erg_tag=tag, use_erg_lyric=lyric, use_erg_diffusion=diffusion,
                              guidance_scale_text=3.0, guidance_scale_lyric=2.0)
    uncond, text_only = expected_states(pipeline, params)
    states = pipeline.encoder_states(params, batch=1)
    torch.testing.assert_close(states.uncond, uncond, rtol=0, atol=0)
    torch.testing.assert_close(states.text_only, text_only, rtol=0, atol=0)

    # Every guided step: conditional and tags-only passes without ERG, the unconditional one with ERG
    # exactly when use_erg_diffusion is on.
    calls: list[tuple[torch.Tensor, bool]] = []
    transformer, decode = pipeline.transformer, pipeline.transformer.decode
    erg_layers = diffusion_query_layers(transformer)

    def spy(latents, attention, context, *args, **kwargs):
        calls.append((context, all(len(m._forward_hooks) for m in erg_layers)))
        return decode(latents, attention, context, *args, **kwargs)

    transformer.decode = spy
    try:
        pipeline.sample_latents(params, [0])
    finally:
        del transformer.decode
    assert len(calls) == 3 * params.steps
    for cond_call, text_call, uncond_call in zip(calls[0::3], calls[1::3], calls[2::3]):
        assert torch.equal(cond_call[0], states.cond) and not cond_call[1]
        assert torch.equal(text_call[0], text_only) and not text_call[1]
        assert torch.equal(uncond_call[0], uncond) and uncond_call[1] == diffusion


def test_double_condition_with_equal_scales_is_cfg(pipeline: ACEStepPipeline) -> None:
    """Both scales above 1 switch to double-condition guidance, which replaces cfg_type and guidance_scale;
    with equal scales its formula is plain CFG at that scale."""
    double = pipeline.sample_latents(GenerationParams(**FAST, guidance_scale_text=4.0, guidance_scale_lyric=4.0), [1])
    plain = pipeline.sample_latents(GenerationParams(**FAST, cfg_type="cfg", guidance_scale=4.0), [1])
    torch.testing.assert_close(double, plain, rtol=1e-5, atol=1e-5)
    apg = pipeline.sample_latents(GenerationParams(**FAST), [1])
    assert (apg - plain).abs().max() > 1e-3
    # One scale at 1 or below keeps the single-scale guidance.
    single = pipeline.sample_latents(GenerationParams(**FAST, guidance_scale_text=4.0, guidance_scale_lyric=1.0), [1])
    assert torch.equal(single, apg)


def test_cfg_star_zero_init_keeps_the_first_two_steps_still(pipeline: ACEStepPipeline) -> None:
    params = GenerationParams(**{**FAST, "steps": 2}, cfg_type="cfg_star")
    latents = pipeline.sample_latents(params, [4])
    # Steps 0 and 1 (<= zero_steps) predict zero velocity, so the Euler steps leave the noise unchanged.
    assert torch.equal(latents, pipeline._initial_noise([4], latents.shape[-1]))
    moved = pipeline.sample_latents(GenerationParams(**{**FAST, "steps": 2}, cfg_type="cfg_star", use_zero_init=False), [4])
    assert (moved - latents).abs().max() > 1e-3


def test_unknown_cfg_type_is_refused(pipeline: ACEStepPipeline) -> None:
    with pytest.raises(ValueError, match="cfg_star"):
        pipeline.sample_latents(GenerationParams(**FAST, cfg_type="pag"), [0])
