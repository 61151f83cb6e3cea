"""Loading the original 1.5 layout keeps one copy of the weights in RAM: the modules hold the file's tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acestep.families.v15.checkpoint import load_components, original_to_diffusers, resolve


@pytest.mark.parametrize("dtype", [torch.bfloat16, None])
def test_original_layout_builds_no_second_model_and_loads_the_files_values(
    tiny_v15_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype | None
) -> None:
    built_on: list[str] = []
    initialise = torch.nn.Linear.reset_parameters

    def spy(self: torch.nn.Linear) -> None:
        built_on.append(self.weight.device.type)
        initialise(self)

    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", spy)
    checkpoint = resolve(tiny_v15_checkpoint / "original")
    modules = load_components(checkpoint, ("transformer", "condition_encoder"), dtype)
    assert built_on and set(built_on) == {"meta"}  # no random float32 model beside the file's tensors
    stored, _ = original_to_diffusers(load_file(checkpoint.dit / "model.safetensors"))
    for name, module in modules.items():
        state = module.state_dict()
        assert set(state) == set(stored[name]) | ({"silence_latent"} if name == "condition_encoder" else set())
        for key, value in stored[name].items():
            assert state[key].dtype == (dtype or torch.float32) and state[key].device.type == "cpu"
            torch.testing.assert_close(state[key], value.to(dtype or torch.float32), rtol=0, atol=0)
