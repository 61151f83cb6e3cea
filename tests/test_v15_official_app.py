"""A 1.5 step folder's official/ adapter loads the way the official ACE-Step 1.5 app loads a LoRA and changes its
decoder by exactly the trained delta W.

The official handler (acestep/core/generation/handler/lora/lifecycle.py, add_lora) needs a folder with
adapter_config.json and calls PeftModel.from_pretrained(model.decoder, folder, adapter_name=..., is_trainable=False),
then load_adapter for a further LoRA; its decoder is the official AceStepDiTModel, whose modules carry the original
names. Here that decoder is OfficialDecoder (tests/v15_official_reference.py) with the tiny checkpoint's own
`decoder.*` weights loaded strictly, for a 2B-shaped and an XL-shaped checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from v15_official_reference import OfficialDecoder

from acestep.families.v15.checkpoint import load_components, resolve
from acestep.families.v15.export import write_step_files
from acestep.lora import LoraSettings
from acestep.training.model import adapter_state_dict, attach_lora

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
OFFICIAL_NAMES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out.0": "o_proj"}  # diffusers' converter
SETTINGS = {
    "lora": LoraSettings(r=4, lora_alpha=8.0, use_rslora=False, target_modules=TARGETS),
    "rslora": LoraSettings(r=4, lora_alpha=1.0, use_rslora=True, target_modules=TARGETS),
    # a rank and an alpha per module: the official config must name them on its own module names
    "patterns": LoraSettings(r=4, lora_alpha=8.0, use_rslora=False, target_modules=TARGETS,
                             rank_pattern={"cross_attn.to_v": 2}, alpha_pattern={"layers.1.self_attn.to_q": 2.0}),
    "dora": LoraSettings(r=4, lora_alpha=8.0, use_rslora=False, target_modules=TARGETS, adapter_type="dora"),
    "loha": LoraSettings(r=4, lora_alpha=8.0, use_rslora=False, target_modules=TARGETS, adapter_type="loha"),
    "lokr": LoraSettings(r=4, lora_alpha=8.0, use_rslora=False, target_modules=TARGETS, adapter_type="lokr"),
}
CASES = [("2b", kind) for kind in SETTINGS] + [("xl", "lora"), ("xl", "rslora")]


def official_name(name: str) -> str:
    suffix = next(s for s in OFFICIAL_NAMES if name.endswith("." + s))
    return name[: -len(suffix)] + OFFICIAL_NAMES[suffix]


def dit_folder(root: Path) -> Path:
    return resolve(root / "original").dit


def official_decoder(root: Path) -> torch.nn.Module:
    """The official decoder tree at the checkpoint's config, holding the checkpoint's decoder weights (strict)."""
    dit = dit_folder(root)
    decoder = OfficialDecoder(json.loads((dit / "config.json").read_text()))
    weights = {k.removeprefix("decoder."): v for k, v in load_file(str(dit / "model.safetensors")).items()
               if k.startswith("decoder.")}
    decoder.load_state_dict(weights, strict=True)
    return decoder.eval()


def trained_transformer(root: Path, settings: LoraSettings) -> torch.nn.Module:
    """The checkpoint's DiT (diffusers names) with an adapter whose every tensor is non-zero, as after training."""
    model = load_components(resolve(root / "original"), ("transformer",))["transformer"]
    attach_lora(model, settings, "trained")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(param * (1 + 0.3 * noise) if "magnitude" in name else 0.3 * noise)
    return model.eval()


def adapted(model: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules()
            if hasattr(m, "merge") and adapter in getattr(m, "active_adapters", [])}


def delta_w(layer: torch.nn.Module, adapter: str) -> torch.Tensor:
    """W after merging the adapter minus W before: what the adapter does to the layer, for every adapter type."""
    before = layer.get_base_layer().weight.detach().clone()
    layer.merge(adapter_names=[adapter])
    change = layer.get_base_layer().weight.detach() - before
    layer.unmerge()
    return change


@pytest.fixture(scope="module")
def roots(tiny_v15_checkpoint: Path, tiny_v15_xl_checkpoint: Path) -> dict[str, Path]:
    return {"2b": tiny_v15_checkpoint, "xl": tiny_v15_xl_checkpoint}


@pytest.mark.parametrize(("size", "kind"), CASES, ids=[f"{s}-{k}" for s, k in CASES])
def test_official_app_loads_the_official_folder_at_the_trained_delta(
    roots: dict[str, Path], tmp_path: Path, size: str, kind: str
) -> None:
    from peft import PeftModel

    root, settings = roots[size], SETTINGS[kind]
    model = trained_transformer(root, settings)
    layers = adapted(model, "trained")
    write_step_files(adapter_state_dict(model, "trained"), tmp_path, 5, settings, "tiny", "exp",
                     base_weight=lambda name: layers[name].get_base_layer().weight)
    folder = tmp_path / "official"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    config = json.loads((folder / "adapter_config.json").read_text())
    names = sorted(official_name(name) for name in layers)
    assert len(names) == 4 * 2 * 2  # q/k/v/o of self and cross attention in both layers
    assert sorted(config["target_modules"]) == names and config["peft_type"] == settings.peft_config().peft_type
    renamed = set()
    for key in adapter_state_dict(model, "trained"):
        name = next(n for n in layers if key.startswith(n + "."))
        renamed.add("base_model.model." + official_name(name) + key[len(name):])
    assert keys == renamed  # every tensor, on the official name of its module
    assert not any(".to_q." in key or ".to_out." in key for key in keys)

    decoder = PeftModel.from_pretrained(official_decoder(root), str(folder), adapter_name="mine", is_trainable=False)
    official = decoder.base_model.model
    for name, layer in layers.items():
        expected = delta_w(layer, "trained")
        got = delta_w(official.get_submodule(official_name(name)), "mine")
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_adapter_folder_with_our_names_does_not_load_in_the_official_app(tiny_v15_checkpoint: Path,
                                                                         tmp_path: Path) -> None:
    """Why official/ exists: adapter/ (diffusers names) matches no module of the official decoder."""
    from peft import PeftModel

    settings = SETTINGS["lora"]
    model = trained_transformer(tiny_v15_checkpoint, settings)
    write_step_files(adapter_state_dict(model, "trained"), tmp_path, 1, settings, "tiny", "exp")
    with pytest.raises(ValueError, match="not found in the base model|No modules were targeted"):
        PeftModel.from_pretrained(official_decoder(tiny_v15_checkpoint), str(tmp_path / "adapter"))


def test_a_second_lora_loads_beside_the_first_and_our_tools_read_the_folder(tiny_v15_checkpoint: Path,
                                                                             tmp_path: Path) -> None:
    """The handler's load_adapter path for a further LoRA; generate.py and our tools read official/ at the trained
    scale too (its header keeps our settings)."""
    from peft import PeftModel

    from acestep.lora import read_lora
    from acestep.lora.loading import lora_state_dict

    folders = []
    for index, kind in enumerate(("lora", "rslora")):
        model = trained_transformer(tiny_v15_checkpoint, SETTINGS[kind])
        write_step_files(adapter_state_dict(model, "trained"), tmp_path / str(index), 2, SETTINGS[kind], "t", "exp")
        folders.append(tmp_path / str(index))
    decoder = PeftModel.from_pretrained(official_decoder(tiny_v15_checkpoint), str(folders[0] / "official"),
                                        adapter_name="first", is_trainable=False)
    decoder.load_adapter(str(folders[1] / "official"), adapter_name="second")
    layer = decoder.base_model.model.layers[1].cross_attn.o_proj
    assert layer.scaling == {"first": 2.0, "second": 0.5}  # alpha / r and rsLoRA's alpha / sqrt(r), from the configs
    for folder in folders:
        official, comfy = read_lora(folder / "official"), read_lora(next(folder.glob("*-comfyui.safetensors")))
        assert official.family == "ace-step-1.5" and not official.baked and official.modules.keys() == comfy.modules.keys()
        ours, baked = lora_state_dict(folder / "official"), lora_state_dict(comfy.path)
        for key in ours:
            if key.endswith("lora_A.weight"):
                up = key.replace("lora_A", "lora_B")
                torch.testing.assert_close(ours[up] @ ours[key], baked[up] @ baked[key], rtol=1e-5, atol=1e-7)


def test_the_trainer_prunes_old_step_folders_with_their_official_files(tiny_v15_checkpoint: Path,
                                                                       tmp_path: Path) -> None:
    import warnings

    from acestep.training.callbacks import AdapterSaver

    settings = SETTINGS["lora"]
    tensors = adapter_state_dict(trained_transformer(tiny_v15_checkpoint, settings), "trained")
    for step in (1, 2):
        write_step_files(tensors, tmp_path / f"step-{step:06d}", step, settings, "tiny", "exp")
    saver = AdapterSaver(tmp_path, 1, 1, write_files=write_step_files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "kept, it holds files the trainer did not write" would fail here
        saver._prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002"]
