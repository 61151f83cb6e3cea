"""Step folder layout: one baked LoRA at the top, a PEFT-standard adapter/ below; older run folders still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lora_helpers import product, random_lora
from safetensors.torch import save_file

from acestep.lora import LoraSettings, bake_file, format_report, inspect_lora, load_adapter, save_adapter
from acestep.lora.bake import main as bake_main
from acestep.lora.loading import lora_state_dict
from acestep.training.callbacks import list_step_folders

SETTINGS = LoraSettings(r=4, lora_alpha=1.0, use_rslora=True, target_modules=("to_q",))
MODULE = "transformer_blocks.0.attn.to_q"
SCALE = 1.0 / 4**0.5


def old_layout_step(run: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A step folder as versions before the adapter/ subfolder wrote it (bare keys, our header, top level)."""
    step = run / "step-000010"
    step.mkdir(parents=True)
    save_file(tensors, str(step / "pytorch_lora_weights.safetensors"), metadata={
        "format": "pt", "acestep_lora_settings": json.dumps(SETTINGS.to_peft_kwargs()),
        "acestep_base_model": "ACE-Step/ACE-Step-v1-3.5B", "acestep_step": "10"})
    return step


def new_layout_step(run: Path, tensors: dict[str, torch.Tensor]) -> Path:
    step = run / "step-000010"
    adapter = save_adapter(tensors, step / "adapter", SETTINGS, step=10)
    bake_file(adapter, step / "x-step10-comfyui.safetensors")
    return step


@pytest.mark.parametrize("layout", [old_layout_step, new_layout_step])
def test_every_reader_takes_both_layouts_at_the_trained_scale(tmp_path: Path, layout, capsys) -> None:
    tensors = random_lora(4)
    step = layout(tmp_path / "run", tensors)
    assert list_step_folders(tmp_path / "run") == [(10, step)]
    expected = SCALE * product(tensors, MODULE)
    # generate.py --lora
    loaded = lora_state_dict(step)
    torch.testing.assert_close(product(loaded, MODULE), expected, rtol=1e-6, atol=1e-6)
    # python -m acestep.lora inspect
    report = inspect_lora(step)
    assert not report.baked and [row.scale for row in report.modules] == pytest.approx([SCALE] * 3)
    assert f"scale:    {SCALE:.6g}" in format_report(report)
    # add_alpha_in_lora.py
    out = tmp_path / "baked.safetensors"
    bake_main(["--input_name", str(step), "--output_name", str(out)])
    baked, _ = load_adapter(out)
    torch.testing.assert_close(product(baked, MODULE), expected, rtol=1e-6, atol=1e-6)


def test_a_peft_adapter_folder_without_our_header_reads_its_config(tmp_path: Path, caplog) -> None:
    tensors = {f"base_model.model.{k}": v for k, v in random_lora(4).items()}
    folder = tmp_path / "peft"
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **SETTINGS.to_peft_kwargs()}))
    assert [row.scale for row in inspect_lora(folder).modules] == pytest.approx([SCALE] * 3)
    loaded = lora_state_dict(folder)
    expected = SCALE * product({k.removeprefix("base_model.model."): v for k, v in tensors.items()}, MODULE)
    torch.testing.assert_close(product(loaded, MODULE), expected, rtol=1e-6, atol=1e-6)
    assert "assuming it is baked" not in caplog.text
