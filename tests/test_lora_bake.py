"""Alpha baking: the baked factors hold exactly the trained delta, and loaders apply it once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from acestep.errors import AcestepError
from acestep.lora import LoraSettings, bake_file, load_adapter, module_pairs, save_adapter
from acestep.models import ACEStepTransformer2DModel
from acestep.models.configs import tiny_transformer_config

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def random_lora(rank: int, modules: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(modules):
        tensors[f"transformer_blocks.{i}.attn.to_q.lora_A.weight"] = torch.randn(rank, 40, generator=g)
        tensors[f"transformer_blocks.{i}.attn.to_q.lora_B.weight"] = torch.randn(24, rank, generator=g)
    return tensors


@pytest.mark.parametrize(("rank", "alpha", "rslora"), [(4, 1.0, True), (16, 8.0, False), (64, 1.0, True), (8, 32.0, False)])
def test_baked_product_equals_scaled_delta(tmp_path: Path, rank: int, alpha: float, rslora: bool) -> None:
    settings = LoraSettings(r=rank, lora_alpha=alpha, use_rslora=rslora, target_modules=("to_q",))
    tensors = random_lora(rank)
    save_adapter(tensors, tmp_path / "run", settings, step=10)
    out = bake_file(tmp_path / "run", tmp_path / "baked.safetensors")
    baked, metadata = load_adapter(out)
    assert set(baked) == set(tensors)
    assert "lora_adapter_metadata" not in metadata
    scale = alpha / (rank**0.5 if rslora else rank)
    for module, (a, b) in module_pairs(tensors).items():
        a2, b2 = baked[f"{module}.lora_A.weight"], baked[f"{module}.lora_B.weight"]
        torch.testing.assert_close(b2 @ a2, scale * (b @ a), rtol=1e-5, atol=1e-5)


def test_second_bake_is_refused(tmp_path: Path) -> None:
    settings = LoraSettings(r=4, target_modules=("to_q",))
    save_adapter(random_lora(4), tmp_path / "run", settings)
    baked = bake_file(tmp_path / "run", tmp_path / "baked.safetensors")
    with pytest.raises(AcestepError, match="already baked"):
        bake_file(baked, tmp_path / "twice.safetensors")
    assert not (tmp_path / "twice.safetensors").exists()


def test_file_without_settings_needs_a_config(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    raw = tmp_path / "fork.safetensors"
    save_file(random_lora(64), raw)
    with pytest.raises(AcestepError, match="--lora_config_path"):
        bake_file(raw, tmp_path / "out.safetensors")
    settings = LoraSettings.from_json(REPO / "config" / "lora_config_transformer_only.json")
    baked, _ = load_adapter(bake_file(raw, tmp_path / "out.safetensors", settings))
    a = random_lora(64)["transformer_blocks.0.attn.to_q.lora_A.weight"]
    torch.testing.assert_close(baked["transformer_blocks.0.attn.to_q.lora_A.weight"], a * (0.125**0.5))


def test_kohya_and_prefixed_styles_carry_alpha_equal_to_rank(tmp_path: Path) -> None:
    settings = LoraSettings(r=8, lora_alpha=4.0, use_rslora=False, target_modules=("to_q",))
    save_adapter(random_lora(8, modules=1), tmp_path / "run", settings)
    kohya, _ = load_adapter(bake_file(tmp_path / "run", tmp_path / "k.safetensors", style="kohya"))
    assert set(kohya) == {
        "lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight",
        "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight",
        "lora_unet_transformer_blocks_0_attn_to_q.alpha",
    }
    assert kohya["lora_unet_transformer_blocks_0_attn_to_q.alpha"].item() == 8.0
    prefixed, _ = load_adapter(bake_file(tmp_path / "run", tmp_path / "d.safetensors", style="diffusion_model"))
    assert "diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight" in prefixed


def tiny_inputs(model: ACEStepTransformer2DModel) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    config = model.config
    return {
        "hidden_states": torch.randn(1, 8, 16, 10, generator=g),
        "attention_mask": torch.ones(1, 10),
        "encoder_text_hidden_states": torch.randn(1, 4, config.text_embedding_dim, generator=g),
        "text_attention_mask": torch.ones(1, 4),
        "speaker_embeds": torch.zeros(1, config.speaker_embedding_dim),
        "lyric_token_idx": torch.randint(0, config.lyric_encoder_vocab_size, (1, 6), generator=g),
        "lyric_mask": torch.ones(1, 6),
        "timestep": torch.tensor([400.0]),
    }


@pytest.mark.parametrize("rslora", [True, False])
def test_baked_file_at_weight_one_matches_trained_adapter(tmp_path: Path, rslora: bool) -> None:
    torch.manual_seed(0)
    settings = LoraSettings(r=8, lora_alpha=2.0, use_rslora=rslora, target_modules=TARGETS)
    trained = ACEStepTransformer2DModel(**tiny_transformer_config()).eval()
    base_state = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.add_adapter(LoraConfig(**settings.to_peft_kwargs()))
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    inputs = tiny_inputs(trained)
    expected = trained(**inputs).sample
    save_adapter(get_peft_model_state_dict(trained), tmp_path / "run", settings)
    baked = bake_file(tmp_path / "run", tmp_path / "baked.safetensors")

    fresh = ACEStepTransformer2DModel(**tiny_transformer_config()).eval()
    fresh.load_state_dict(base_state)
    base_out = fresh(**inputs).sample
    fresh.load_lora_adapter(str(baked), prefix=None, adapter_name="baked")
    fresh.set_adapters(["baked"], [1.0])
    got = fresh(**inputs).sample
    assert not torch.allclose(expected, base_out, atol=1e-4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_cli_bakes_and_reports_errors(tmp_path: Path) -> None:
    settings = LoraSettings(r=4, target_modules=("to_q",))
    save_adapter(random_lora(4), tmp_path / "run", settings)
    script = str(REPO / "add_alpha_in_lora.py")
    ok = subprocess.run([sys.executable, script, "--input_name", str(tmp_path / "run"), "--output_name",
                         str(tmp_path / "out.safetensors")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out.safetensors").is_file()
    missing = subprocess.run([sys.executable, script, "--input_name", str(tmp_path / "nope"), "--output_name",
                              str(tmp_path / "x.safetensors")], capture_output=True, text=True)
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1].startswith("error:") and "not found" in missing.stderr
