"""Alpha baking: the baked factors hold exactly the trained delta, and loaders apply it once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers.utils.peft_utils import set_weights_and_activate_adapters
from lora_helpers import TARGETS, add_trained_adapter, product, random_lora, tiny_inputs, tiny_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from acestep.core.errors import AcestepError
from acestep.lora import LoraSettings, bake_file, load_adapter, save_adapter
from acestep.lora.bake import main as bake_main

REPO = Path(__file__).resolve().parents[1]
MODULES = [f"transformer_blocks.{i}.attn.to_q" for i in range(3)]


@pytest.mark.parametrize(("rank", "alpha", "rslora"), [(4, 1.0, True), (16, 8.0, False), (64, 1.0, True), (8, 32.0, False)])
def test_baked_product_equals_scaled_delta(tmp_path: Path, rank: int, alpha: float, rslora: bool) -> None:
    settings = LoraSettings(r=rank, lora_alpha=alpha, use_rslora=rslora, target_modules=("to_q",))
    tensors = random_lora(rank)
    save_adapter(tensors, tmp_path / "run", settings, step=10)
    out = bake_file(tmp_path / "run", tmp_path / "baked.safetensors")
    baked, metadata = load_adapter(out)
    assert set(baked) == set(tensors)
    assert "lora_adapter_metadata" not in metadata
    assert json.loads(metadata["acestep_lora_baked_scale"])["r"] == rank
    scale = alpha / (rank**0.5 if rslora else rank)
    for module in MODULES:
        torch.testing.assert_close(product(baked, module), scale * product(tensors, module), rtol=1e-6, atol=1e-6)


def test_bf16_factors_are_scaled_in_fp32_and_stay_bf16(tmp_path: Path) -> None:
    settings = LoraSettings(r=64, lora_alpha=1.0, use_rslora=True, target_modules=("to_q",))
    tensors = random_lora(64, dtype=torch.bfloat16)
    save_adapter(tensors, tmp_path / "run", settings)
    baked, _ = load_adapter(bake_file(tmp_path / "run", tmp_path / "baked.safetensors"))
    key = "transformer_blocks.0.attn.to_q.lora_A.weight"
    assert baked[key].dtype == torch.bfloat16
    assert torch.equal(baked[key], (tensors[key].float() * 0.125**0.5).bfloat16())


def test_second_bake_is_refused(tmp_path: Path) -> None:
    settings = LoraSettings(r=4, target_modules=("to_q",))
    save_adapter(random_lora(4), tmp_path / "run", settings)
    baked = bake_file(tmp_path / "run", tmp_path / "baked.safetensors")
    with pytest.raises(AcestepError, match="already baked"):
        bake_file(baked, tmp_path / "twice.safetensors")
    assert not (tmp_path / "twice.safetensors").exists()


def test_file_without_settings_needs_a_config(tmp_path: Path) -> None:
    raw = tmp_path / "fork.safetensors"
    save_file(random_lora(64), raw)
    with pytest.raises(AcestepError, match="--lora_config_path"):
        bake_file(raw, tmp_path / "out.safetensors")
    settings = LoraSettings.from_json(REPO / "config" / "lora_config_transformer_only.json")
    baked, _ = load_adapter(bake_file(raw, tmp_path / "out.safetensors", settings))
    a = random_lora(64)["transformer_blocks.0.attn.to_q.lora_A.weight"]
    torch.testing.assert_close(baked["transformer_blocks.0.attn.to_q.lora_A.weight"], a * (0.125**0.5))


def test_header_settings_win_over_the_given_config(tmp_path: Path) -> None:
    trained = LoraSettings(r=8, lora_alpha=4.0, use_rslora=False, target_modules=("to_q",))
    save_adapter(random_lora(8), tmp_path / "run", trained)
    other = LoraSettings(r=8, lora_alpha=1.0, use_rslora=True, target_modules=("to_q",))
    baked, _ = load_adapter(bake_file(tmp_path / "run", tmp_path / "baked.safetensors", other))
    torch.testing.assert_close(product(baked, MODULES[0]), 0.5 * product(random_lora(8), MODULES[0]), rtol=1e-6, atol=1e-6)


def test_kohya_and_prefixed_styles_carry_alpha_equal_to_rank(tmp_path: Path) -> None:
    settings = LoraSettings(r=8, lora_alpha=4.0, use_rslora=False, target_modules=("to_q",))
    save_adapter(random_lora(8, modules=1), tmp_path / "run", settings)
    kohya, metadata = load_adapter(bake_file(tmp_path / "run", tmp_path / "k.safetensors", style="kohya"))
    stem = "lora_unet_transformer_blocks_0_attn_to_q"
    assert set(kohya) == {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"}
    assert kohya[f"{stem}.alpha"].item() == 8.0
    assert metadata["ss_network_dim"] == metadata["ss_network_alpha"] == "8"
    expected = 0.5 * product(random_lora(8, modules=1), MODULES[0])
    torch.testing.assert_close(product(kohya, stem, "lora_down", "lora_up"), expected, rtol=1e-6, atol=1e-6)
    prefixed, _ = load_adapter(bake_file(tmp_path / "run", tmp_path / "d.safetensors", style="diffusion_model"))
    stem = "diffusion_model.transformer_blocks.0.attn.to_q"
    assert set(prefixed) == {f"{stem}.lora_A.weight", f"{stem}.lora_B.weight", f"{stem}.alpha"}
    assert prefixed[f"{stem}.alpha"].item() == 8.0


def load_baked_like_upstream(path: Path, weight: float = 1.0):
    """What the upstream pipeline does: load_lora_adapter(prefix=None), then set_weights_and_activate_adapters."""
    model = tiny_model()
    model.load_lora_adapter(str(path), prefix=None, adapter_name="ace_step_lora")
    set_weights_and_activate_adapters(model, ["ace_step_lora"], [weight])
    return model


@pytest.mark.parametrize(
    "settings",
    [
        LoraSettings(r=8, lora_alpha=2.0, use_rslora=True, target_modules=TARGETS),
        LoraSettings(r=8, lora_alpha=2.0, use_rslora=False, target_modules=TARGETS),
        # per-module ranks and alphas: the baked file needs the neutral config with alpha_pattern = rank_pattern
        LoraSettings(r=8, lora_alpha=2.0, use_rslora=True, target_modules=TARGETS,
                     rank_pattern={"to_k": 4, "cross_attn.to_q": 2}, alpha_pattern={"to_v": 16.0}),
    ],
    ids=["rslora", "plain", "patterns"],
)
def test_baked_file_at_weight_one_matches_trained_adapter(tmp_path: Path, settings: LoraSettings) -> None:
    trained = tiny_model()
    inputs = tiny_inputs(trained)
    with torch.no_grad():
        base_out = trained(**inputs).sample
    add_trained_adapter(trained, settings)
    with torch.no_grad():
        expected = trained(**inputs).sample
    save_adapter(get_peft_model_state_dict(trained), tmp_path / "run", settings)
    baked = bake_file(tmp_path / "run", tmp_path / "baked.safetensors")
    if settings.rank_pattern:
        _, metadata = load_adapter(baked)
        ranks = json.loads(metadata["lora_adapter_metadata"])["rank_pattern"]
        assert ranks["transformer_blocks.0.attn.to_k"] == 4 and ranks["transformer_blocks.0.cross_attn.to_q"] == 2
    with torch.no_grad():
        got = load_baked_like_upstream(baked)(**inputs).sample
    assert not torch.allclose(expected, base_out, atol=1e-3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_diffusers_metadata_gives_the_settings(tmp_path: Path) -> None:
    """A file saved by diffusers' own save_lora_adapter (PEFT config in `lora_adapter_metadata`) bakes unaided."""
    settings = LoraSettings(r=4, lora_alpha=8.0, use_rslora=True, target_modules=("to_q",))
    model = tiny_model()
    add_trained_adapter(model, settings)
    model.save_lora_adapter(str(tmp_path / "diffusers"))
    raw, metadata = load_adapter(tmp_path / "diffusers")
    assert "lora_adapter_metadata" in metadata and "acestep_lora_settings" not in metadata
    baked, baked_metadata = load_adapter(bake_file(tmp_path / "diffusers", tmp_path / "baked.safetensors"))
    assert "lora_adapter_metadata" not in baked_metadata
    module = "transformer_blocks.1.attn.to_q"
    torch.testing.assert_close(product(baked, module), 4.0 * product(raw, module), rtol=1e-6, atol=1e-6)


def test_cli_bakes_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = LoraSettings(r=4, target_modules=("to_q",))
    save_adapter(random_lora(4), tmp_path / "run", settings)
    ok = subprocess.run([sys.executable, str(REPO / "add_alpha_in_lora.py"), "--input_name", str(tmp_path / "run"),
                         "--output_name", str(tmp_path / "out.safetensors")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert load_adapter(tmp_path / "out.safetensors")[1]["acestep_lora_baked_scale"]
    with pytest.raises(SystemExit) as missing:
        bake_main(["--input_name", str(tmp_path / "nope"), "--output_name", str(tmp_path / "x.safetensors")])
    assert missing.value.code == f"error: {tmp_path / 'nope'}: LoRA file not found"
    with pytest.raises(SystemExit) as twice:
        bake_main(["--input_name", str(tmp_path / "out.safetensors"), "--output_name", str(tmp_path / "x.safetensors")])
    assert "already baked" in str(twice.value.code)
    assert not (tmp_path / "x.safetensors").exists()


def test_bake_into_a_folder_writes_the_name_the_pipeline_loads(tmp_path: Path) -> None:
    save_adapter(random_lora(4), tmp_path / "run", LoraSettings(r=4, target_modules=("to_q",)))
    (tmp_path / "publish").mkdir()
    out = bake_file(tmp_path / "run", tmp_path / "publish")
    assert out == tmp_path / "publish" / "pytorch_lora_weights.safetensors"
    assert sorted(p.name for p in (tmp_path / "publish").iterdir()) == ["pytorch_lora_weights.safetensors"]


def test_bake_never_replaces_its_input_or_an_existing_file(tmp_path: Path) -> None:
    settings = LoraSettings(r=4, target_modules=("to_q",))
    adapter = save_adapter(random_lora(4), tmp_path / "run", settings)
    before = adapter.read_bytes()
    for output in (adapter, tmp_path / "run"):  # the file itself, or the folder that holds it
        with pytest.raises(SystemExit) as same:
            bake_main(["--input_name", str(adapter), "--output_name", str(output), "--overwrite"])
        assert "is or holds the input" in str(same.value.code)
    assert adapter.read_bytes() == before
    out = tmp_path / "baked.safetensors"
    out.write_bytes(b"an older file the user keeps")
    with pytest.raises(SystemExit) as exists:
        bake_main(["--input_name", str(adapter), "--output_name", str(out)])
    assert "pass --overwrite" in str(exists.value.code)
    assert out.read_bytes() == b"an older file the user keeps"
    bake_main(["--input_name", str(adapter), "--output_name", str(out), "--overwrite"])
    assert load_adapter(out)[1]["acestep_lora_baked_scale"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_lora_files_are_readable_by_other_users(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        adapter = save_adapter(random_lora(4), tmp_path / "run", LoraSettings(r=4, target_modules=("to_q",)))
        baked = bake_file(adapter, tmp_path / "baked.safetensors")
    finally:
        os.umask(previous)
    assert adapter.stat().st_mode & 0o777 == 0o644 and baked.stat().st_mode & 0o777 == 0o644
