"""The 1.5 DiT as our loader hands it out runs its layers on a row-major residual stream (families/v15/layout.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from acestep.families.v15.checkpoint import load_components, load_pipeline, resolve
from acestep.families.v15.layout import contiguous_residual_stream


def _inputs(model: torch.nn.Module, frames: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    channels = model.config.audio_acoustic_hidden_dim
    width = model.condition_embedder.in_features
    t = torch.full((1,), 0.6)
    return dict(hidden_states=torch.randn(1, frames, channels, generator=generator), timestep=t, timestep_r=t,
                encoder_hidden_states=torch.randn(1, 5, width, generator=generator),
                context_latents=torch.randn(1, frames, 2 * channels, generator=generator))


def _first_layer_input(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.layers[0].register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["hidden_states"]),
                                                       with_kwargs=True)
    try:
        model(**inputs, return_dict=False)
    finally:
        handle.remove()
    return seen[0]


def _batched_matmuls(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """aten::bmm calls of one forward and backward with frozen weights (as under LoRA): the strided path that copies
    each weight on the CPU."""
    model.requires_grad_(False)
    inputs = {**inputs, "hidden_states": inputs["hidden_states"].clone().requires_grad_(True)}
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        model(**inputs, return_dict=False)[0].square().mean().backward()
    return sum(event.count for event in trace.key_averages() if event.key == "aten::bmm")


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_loaded_dit_feeds_its_layers_contiguous_hidden_states_with_unchanged_results(tiny_v15_checkpoint: Path,
                                                                                     layout: str) -> None:
    checkpoint = resolve(tiny_v15_checkpoint / layout)
    loaded = load_components(checkpoint, ("transformer",))["transformer"]
    plain = type(loaded).from_config(loaded.config)
    plain.load_state_dict(loaded.state_dict())
    plain.eval()
    inputs = _inputs(loaded)
    assert _first_layer_input(loaded, inputs).is_contiguous()
    assert not _first_layer_input(plain, inputs).is_contiguous()  # diffusers' own layout: a transposed view
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs, return_dict=False)[0], plain(**inputs, return_dict=False)[0],
                                   rtol=1e-5, atol=1e-5)
    assert _batched_matmuls(plain, inputs) > 0
    assert _batched_matmuls(loaded, inputs) == 0
    assert set(loaded.state_dict()) == set(plain.state_dict())


def test_pipeline_transformer_gets_the_layout_too(tiny_v15_checkpoint: Path) -> None:
    pipe = load_pipeline(resolve(tiny_v15_checkpoint / "diffusers"))
    assert _first_layer_input(pipe.transformer, _inputs(pipe.transformer)).is_contiguous()


def test_a_model_without_the_patchify_convolution_is_left_alone() -> None:
    assert contiguous_residual_stream(torch.nn.Linear(2, 2)) is None
