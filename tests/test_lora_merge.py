"""merge: the merged checkpoint behaves exactly like the adapter applied at the same strength."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from diffusers.utils.peft_utils import set_weights_and_activate_adapters
from lora_helpers import TARGETS, add_trained_adapter, tiny_inputs, tiny_model
from peft.utils import get_peft_model_state_dict

from acestep.core.errors import AcestepError, CheckpointError
from acestep.families.v1.models import ACEStepTransformer2DModel
from acestep.lora import LoraSettings, bake_file, merge_file, save_adapter

SETTINGS = LoraSettings(r=4, lora_alpha=2.0, use_rslora=True, target_modules=(*TARGETS, "linear_q"))
STRENGTH = 0.7


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.Tensor, torch.Tensor]:
    """(checkpoint root, un-baked adapter folder, base output, output with the adapter at STRENGTH)."""
    root = tmp_path_factory.mktemp("merge")
    model = tiny_model()
    model.save_pretrained(root / "ckpt" / "ace_step_transformer")
    inputs = tiny_inputs(model)
    with torch.no_grad():
        base = model(**inputs).sample
    add_trained_adapter(model, SETTINGS)
    save_adapter(get_peft_model_state_dict(model), root / "run", SETTINGS)
    set_weights_and_activate_adapters(model, ["default"], [STRENGTH])
    with torch.no_grad():
        expected = model(**inputs).sample
    return root, root / "run", base, expected


def merged_output(folder: Path) -> torch.Tensor:
    model = ACEStepTransformer2DModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**tiny_inputs(model)).sample


def test_merge_equals_adapter_at_the_same_strength(trained, tmp_path: Path) -> None:
    root, run, base, expected = trained
    out = merge_file(root / "ckpt", run, tmp_path / "merged", strength=STRENGTH)
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["num_layers"] == 3
    got = merged_output(out)
    assert not torch.allclose(base, expected, atol=1e-3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_merge_of_a_baked_kohya_file_into_a_single_safetensors(trained, tmp_path: Path) -> None:
    root, run, _, expected = trained
    kohya = bake_file(run, tmp_path / "kohya.safetensors", style="kohya")
    source = root / "ckpt" / "ace_step_transformer"
    out = merge_file(source / "diffusion_pytorch_model.safetensors", kohya, tmp_path / "merged", STRENGTH,
                     config_path=source / "config.json", dtype="fp32")
    torch.testing.assert_close(merged_output(out), expected, rtol=1e-4, atol=1e-5)


def test_merge_refuses_bad_targets(trained, tmp_path: Path) -> None:
    root, run, _, _ = trained
    source = root / "ckpt" / "ace_step_transformer"
    with pytest.raises(CheckpointError, match="do not match the transformer config"):
        merge_file(source / "diffusion_pytorch_model.safetensors", run, tmp_path / "m")  # published config
    with pytest.raises(AcestepError, match="not over its source"):
        merge_file(source, run, source)
    out = merge_file(source, run, tmp_path / "m")
    with pytest.raises(AcestepError, match="already exists"):
        merge_file(source, run, out)
    merge_file(source, run, out, strength=STRENGTH, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    torch.testing.assert_close(merged_output(out), trained[3], rtol=1e-4, atol=1e-5)


def test_overwrite_never_replaces_a_folder_that_is_not_a_merged_transformer(trained, tmp_path: Path) -> None:
    root, run, _, _ = trained
    folder = tmp_path / "my_music"
    folder.mkdir()
    (folder / "song.wav").write_bytes(b"RIFF")
    (folder / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(AcestepError, match="not a transformer folder"):
        merge_file(root / "ckpt", run, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "song.wav"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_merged_files_are_readable_by_other_users(trained, tmp_path: Path) -> None:
    root, run, _, _ = trained
    previous = os.umask(0o022)
    try:
        out = merge_file(root / "ckpt", run, tmp_path / "merged")
    finally:
        os.umask(previous)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "config.json": 0o644, "diffusion_pytorch_model.safetensors": 0o644}
