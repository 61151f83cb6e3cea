"""DoRA, LoHa and LoKr: the ComfyUI file rebuilds PEFT's merged change exactly, and every tool takes each type.

`comfy_weight` below is written from ComfyUI's formulas (comfy/weight_adapter/lora.py, loha.py, lokr.py and
base.py's weight_decompose), apart from our own reader, so the export is checked against ComfyUI's rule itself.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from lora_helpers import tiny_model
from safetensors.torch import load_file

from acestep.core.errors import AcestepError
from acestep.lora import LoraSettings
from acestep.lora.adapters import apply_adapter, read_adapter, save_comfyui_file
from acestep.training.model import adapter_state_dict, attach_lora

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
SETTINGS = {
    "dora": LoraSettings(r=4, lora_alpha=2.0, use_rslora=True, target_modules=TARGETS, adapter_type="dora",
                         rank_pattern={"to_k": 2}),
    "loha": LoraSettings(r=4, lora_alpha=3.0, use_rslora=False, target_modules=TARGETS, adapter_type="loha",
                         rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 5.0}),
    # 64 = 8 x 8 and r 4 >= 8 / 2: both Kronecker factors are full matrices (ComfyUI ignores alpha there)
    "lokr": LoraSettings(r=4, lora_alpha=3.0, use_rslora=False, target_modules=TARGETS, adapter_type="lokr"),
    # 64 = 4 x 16 and r 2 < 16 / 2: w2 is factored, alpha / r applies
    "lokr_factored": LoraSettings(r=2, lora_alpha=3.0, use_rslora=False, target_modules=TARGETS,
                                  adapter_type="lokr", decompose_both=True, decompose_factor=4),
}


def comfy_weight(file: dict[str, torch.Tensor], stem: str, weight: torch.Tensor, strength: float) -> torch.Tensor:
    """ComfyUI's patched weight (float32) for the tensors under `stem`."""
    def get(name: str) -> torch.Tensor | None:
        value = file.get(f"{stem}.{name}")
        return None if value is None else value.float()

    alpha = get("alpha")
    dim = None
    if get("hada_w1_a") is not None:
        diff = (get("hada_w1_a") @ get("hada_w1_b")) * (get("hada_w2_a") @ get("hada_w2_b"))
        dim = file[f"{stem}.hada_w1_b"].shape[0]
    elif get("lokr_w1") is not None or get("lokr_w1_a") is not None:
        w1, w2 = get("lokr_w1"), get("lokr_w2")
        if w1 is None:
            dim = file[f"{stem}.lokr_w1_b"].shape[0]
            w1 = get("lokr_w1_a") @ get("lokr_w1_b")
        if w2 is None:
            dim = file[f"{stem}.lokr_w2_b"].shape[0]
            w2 = get("lokr_w2_a") @ get("lokr_w2_b")
        diff = torch.kron(w1, w2)
    else:
        diff = get("lora_B.weight") @ get("lora_A.weight")
        dim = file[f"{stem}.lora_A.weight"].shape[0]
    coefficient = alpha.item() / dim if alpha is not None and dim is not None else 1.0
    weight = weight.float().clone()
    dora_scale = get("dora_scale")
    if dora_scale is None:
        return weight + strength * coefficient * diff
    calc = weight + coefficient * diff
    assert dora_scale.shape[0] == weight.shape[0]  # the output axis
    norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps
    calc = calc * (dora_scale / norm)
    return calc if strength == 1.0 else weight + strength * (calc - weight)


def trained_model(settings: LoraSettings, seed: int = 5) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The tiny model with the adapter attached and every adapter tensor set to non-trivial random values."""
    model = tiny_model()
    bases = {name: module.weight.detach().clone() for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS)}
    attach_lora(model, settings, "default")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            noise = torch.randn(param.shape, generator=g)
            param.copy_(param * (1 + 0.3 * noise) if "magnitude" in name else 0.3 * noise)
    return model, bases


def adapted_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules() if hasattr(module, "get_base_layer")
            and hasattr(module, "merge") and name.endswith(TARGETS)}


def export(model: torch.nn.Module, settings: LoraSettings, path: Path) -> Path:
    layers = adapted_layers(model)
    return save_comfyui_file(adapter_state_dict(model, "default"), path, settings, "peft", {"action": "test"},
                             None, None, lambda name: layers[name].get_base_layer().weight)


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_the_comfyui_file_rebuilds_peft_merged_change(tmp_path: Path, kind: str) -> None:
    settings = SETTINGS[kind]
    model, bases = trained_model(settings)
    file = load_file(str(export(model, settings, tmp_path / "a.safetensors")))
    layers = adapted_layers(model)
    assert len(layers) == len(bases) > 0
    for name, layer in layers.items():
        layer.merge()  # PEFT's own merge: base + its delta (DoRA: the magnitude-rescaled weight)
        merged = layer.get_base_layer().weight.detach()
        rebuilt = comfy_weight(file, name, bases[name], 1.0)
        if kind == "dora":
            torch.testing.assert_close(rebuilt, merged, rtol=0, atol=2e-6)
        else:
            delta = merged - bases[name]
            assert delta.abs().max() > 1e-2  # a real change, not zeros
            torch.testing.assert_close(rebuilt - bases[name], delta, rtol=0, atol=1e-6)


def test_file_keys_are_the_ones_comfyui_reads(tmp_path: Path) -> None:
    expected = {
        "dora": {"lora_A.weight", "lora_B.weight", "dora_scale"},
        "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
        "lokr": {"lokr_w1", "lokr_w2", "alpha"},
        "lokr_factored": {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
    }
    for kind, settings in SETTINGS.items():
        model, _ = trained_model(settings)
        file = load_file(str(export(model, settings, tmp_path / f"{kind}.safetensors")))
        stem = "transformer_blocks.0.attn.to_q"
        assert {key.removeprefix(stem + ".") for key in file if key.startswith(stem + ".")} == expected[kind], kind


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_our_reader_applies_any_strength_as_comfyui(tmp_path: Path, kind: str) -> None:
    settings = SETTINGS[kind]
    model, bases = trained_model(settings)
    path = export(model, settings, tmp_path / "a.safetensors")
    file = load_file(str(path))
    adapter = read_adapter(path)
    assert adapter.kind == kind.removesuffix("_factored")
    for strength in (0.0, 0.5, 1.0, -0.7):
        changed = apply_adapter(bases, adapter, strength)
        for name, weight in changed.items():
            torch.testing.assert_close(weight, comfy_weight(file, name, bases[name], strength), rtol=0, atol=1e-6)
    assert torch.equal(apply_adapter(bases, adapter, 0.0)["transformer_blocks.0.attn.to_q"],
                       bases["transformer_blocks.0.attn.to_q"])


@pytest.mark.parametrize("kind", ["loha", "lokr", "dora"])
def test_the_peft_adapter_folder_reads_as_its_comfyui_file(tmp_path: Path, kind: str) -> None:
    from acestep.lora import save_adapter

    settings = SETTINGS[kind]
    model, bases = trained_model(settings)
    layers = adapted_layers(model)
    save_adapter(adapter_state_dict(model, "default"), tmp_path / "adapter", settings)
    comfy = read_adapter(export(model, settings, tmp_path / "a.safetensors"))
    base = (lambda name: layers[name].get_base_layer().weight) if kind == "dora" else None
    folder = read_adapter(tmp_path / "adapter", base_weight=base)
    for name in comfy.modules:
        torch.testing.assert_close(folder.modules[name].apply(bases[name], 0.8),
                                   comfy.modules[name].apply(bases[name], 0.8), rtol=0, atol=1e-6)
    if kind == "dora":
        with pytest.raises(AcestepError, match="needs the base model"):
            read_adapter(tmp_path / "adapter")


def test_settings_validate_and_round_trip(tmp_path: Path) -> None:
    lokr = SETTINGS["lokr_factored"]
    assert LoraSettings.from_dict(lokr.to_dict()) == lokr
    peft_config = json.loads(json.dumps(lokr.peft_config().to_dict(), default=lambda v: sorted(v)))
    assert LoraSettings.from_dict(peft_config) == dataclasses.replace(lokr, target_modules=tuple(sorted(TARGETS)))
    plain = LoraSettings(r=8, lora_alpha=1.0, target_modules=TARGETS)
    assert plain.to_dict() == plain.to_peft_kwargs() and "adapter_type" not in plain.to_dict()  # as before types
    with pytest.raises(AcestepError, match="no use_rslora"):
        LoraSettings(r=4, lora_alpha=1.0, use_rslora=True, target_modules=TARGETS, adapter_type="loha")
    with pytest.raises(AcestepError, match="LoKr options"):
        LoraSettings(r=4, lora_alpha=1.0, target_modules=TARGETS, decompose_factor=4)
    with pytest.raises(AcestepError, match="unknown adapter_type"):
        LoraSettings(r=4, lora_alpha=1.0, target_modules=TARGETS, adapter_type="oft")


@pytest.mark.parametrize("kind", ["lora", *SETTINGS])
def test_the_planner_counts_peft_trainable_parameters(kind: str) -> None:
    from acestep.families.v1.models.configs import tiny_transformer_config
    from acestep.families.v1.plan import count_lora_parameters

    settings = SETTINGS.get(kind) or LoraSettings(r=4, lora_alpha=1.0, target_modules=TARGETS)
    model = tiny_model()
    model.add_adapter(settings.peft_config())  # PEFT's own adapter, not through our attach_lora
    peft_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_lora_parameters(tiny_transformer_config(), settings).at_rank(settings.r) == peft_count
    if kind == "loha":  # 2 r (in + out) per module: 6 modules of rank 4, 6 of rank 2 (to_k), all 64 x 64
        assert peft_count == 2 * 64 * 2 * (6 * 4 + 6 * 4 + 6 * 2 + 6 * 4)


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_the_1_5_planner_counts_peft_trainable_parameters(kind: str) -> None:
    from v15_helpers import tiny_dit

    from acestep.families.v15.plan import parameter_counts

    settings = SETTINGS[kind]
    model = tiny_dit()
    model.add_adapter(settings.peft_config())
    peft_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert parameter_counts(dict(model.config), settings, None)[1] == peft_count


def adapter_config_file(folder: Path, kind: str) -> str:
    settings = SETTINGS[kind]
    path = folder / f"{kind}.json"
    path.write_text(json.dumps(settings.to_dict()))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dora", "loha", "lokr_factored"])
def test_each_type_trains_resumes_exactly_and_writes_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from training_helpers import crash_at_step, synthetic_songs, tiny_transformer

    from acestep.families.training import run_training
    from acestep.lora import load_adapter
    from acestep.training import TrainConfig

    dataset = synthetic_songs([9, 12, 7])

    def config(name: str, resume: bool = False) -> TrainConfig:
        return TrainConfig(dataset_path="in-memory", lora_config_path=adapter_config_file(tmp_path, kind),
                           output_dir=str(tmp_path / "runs"), exp_name=name, max_steps=4, warmup_steps=1,
                           every_n_train_steps=2, learning_rate=1e-2, logger="none", progress_bar=False,
                           gradient_checkpointing=False, resume=resume)

    whole = run_training(config("whole"), tiny_transformer(), dataset)
    crash_at_step(monkeypatch, 3, lambda: run_training(config("parts"), tiny_transformer(), dataset))
    resumed = run_training(config("parts", resume=True), tiny_transformer(), dataset)
    final_whole, metadata = load_adapter(whole.adapter_dir)
    final_resumed, _ = load_adapter(resumed.adapter_dir)
    assert final_whole.keys() == final_resumed.keys()
    for key, value in final_whole.items():
        torch.testing.assert_close(final_resumed[key], value, rtol=1e-5, atol=1e-7)
    assert LoraSettings.from_dict(json.loads(metadata["acestep_lora_settings"])) == SETTINGS[kind]
    comfy = read_adapter(next(Path(whole.adapter_dir).glob("*-comfyui.safetensors")))
    assert comfy.kind == kind.removesuffix("_factored")
    assert sum(float(m.change().norm()) for m in comfy.modules.values()) > 0  # it trained away from the start


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr_factored"])
def test_merge_generate_and_inspect_take_every_type(tmp_path: Path, kind: str) -> None:
    from acestep.lora import format_report, inspect_lora, merge_file
    from acestep.lora.loading import load_loras

    settings = SETTINGS[kind]
    model, bases = trained_model(settings)
    path = export(model, settings, tmp_path / "a.safetensors")
    file = load_file(str(path))
    tiny_model().save_pretrained(tmp_path / "ckpt" / "ace_step_transformer")
    merged = load_file(str(merge_file(tmp_path / "ckpt", path, tmp_path / "merged", strength=0.6)
                           / "diffusion_pytorch_model.safetensors"))
    generating = tiny_model()
    assert load_loras(generating, [(str(path), 0.6)]) == []  # merged into the weights, no PEFT layer
    for name, base in bases.items():
        expected = comfy_weight(file, name, base, 0.6)
        torch.testing.assert_close(merged[f"{name}.weight"], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(generating.get_submodule(name).weight.detach(), expected, rtol=0, atol=1e-6)
    report = inspect_lora(path)
    assert report.kind == kind.removesuffix("_factored") and len(report.modules) == len(bases)
    if kind != "dora":  # |dW| is the whole change at strength 1
        row = next(r for r in report.modules if r.module == "transformer_blocks.1.attn.to_v")
        change = comfy_weight(file, row.module, bases[row.module], 1.0) - bases[row.module]
        assert row.delta_norm == pytest.approx(float(change.norm()), rel=1e-5)
    text = format_report(report)
    assert f"type:     {dict(dora='DoRA', loha='LoHa', lokr_factored='LoKr')[kind]}" in text
    if kind == "lokr_factored":
        assert "factor:   w1 4x4" in text


def test_resize_convert_and_bake_refuse_other_types_in_one_line(tmp_path: Path) -> None:
    from acestep.lora import bake_file, convert_file, resize_file
    from acestep.lora.cli import main

    model, _ = trained_model(SETTINGS["loha"])
    path = export(model, SETTINGS["loha"], tmp_path / "a.safetensors")
    for tool in (lambda: resize_file(path, tmp_path / "r.safetensors", rank=2),
                 lambda: convert_file(path, tmp_path / "k.safetensors"), lambda: bake_file(path, tmp_path / "b")):
        with pytest.raises(AcestepError, match="a loha adapter, not a plain LoRA: bake, convert and resize"):
            tool()
    with pytest.raises(SystemExit) as exit_info:
        main(["resize", str(path), str(tmp_path / "r.safetensors"), "--rank", "2"])
    assert "not a plain LoRA" in str(exit_info.value.code) and "\n" not in str(exit_info.value.code)
    assert not (tmp_path / "r.safetensors").exists()


def test_generation_checks_the_family_of_any_type(tmp_path: Path) -> None:
    from acestep.families.v1.generate import check_v1_loras
    from acestep.families.v15.generate import check_lora_family

    model, _ = trained_model(SETTINGS["lokr"])
    path = export(model, SETTINGS["lokr"], tmp_path / "a.safetensors")
    check_v1_loras([f"{path}:0.5"])
    with pytest.raises(AcestepError, match="ace-step-v1"):
        check_lora_family(path)


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_a_1_5_step_folder_writes_the_comfyui_file_of_each_type(tmp_path: Path, kind: str) -> None:
    from v15_helpers import tiny_dit

    from acestep.families.v15.export import write_step_files
    from acestep.lora.loading import load_loras

    settings = SETTINGS[kind]
    model = tiny_dit()
    bases = {name: m.weight.detach().clone() for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and name.endswith(TARGETS)}
    attach_lora(model, settings, "default")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=g)
                param.copy_(param * (1 + 0.3 * noise) if "magnitude" in name else 0.3 * noise)
    layers = adapted_layers(model)
    written = write_step_files(adapter_state_dict(model, "default"), tmp_path, 3, settings, "tiny", "exp",
                               base_weight=lambda name: layers[name].get_base_layer().weight)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "exp-step3-comfyui.safetensors",
        "official/adapter_config.json", "official/adapter_model.safetensors"]
    file = load_file(str(tmp_path / "exp-step3-comfyui.safetensors"))
    assert all(key.startswith("base_model.model.layers.") for key in file)  # the keys ComfyUI maps for 1.5
    adapter = read_adapter(tmp_path / "exp-step3-comfyui.safetensors")
    assert adapter.family == "ace-step-1.5" and set(adapter.modules) == set(bases)
    generating = tiny_dit()
    load_loras(generating, [(str(tmp_path / "exp-step3-comfyui.safetensors"), 0.5)])  # 1.5 generation's loader
    for name, layer in layers.items():
        layer.merge()
        torch.testing.assert_close(adapter.modules[name].apply(bases[name], 1.0),
                                   layer.get_base_layer().weight.detach(), rtol=0, atol=2e-6)
        torch.testing.assert_close(generating.get_submodule(name).weight.detach(),
                                   adapter.modules[name].apply(bases[name], 0.5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr_factored"])
def test_the_adapter_folder_loads_back_into_peft_at_its_trained_scale(tmp_path: Path, kind: str) -> None:
    from peft import PeftModel

    from acestep.lora import save_adapter
    from acestep.training.model import load_trained_adapter

    settings = SETTINGS[kind]
    model, _ = trained_model(settings)
    save_adapter(adapter_state_dict(model, "default"), tmp_path / "adapter", settings)
    ours, theirs = tiny_model(), PeftModel.from_pretrained(tiny_model(), str(tmp_path / "adapter"))
    assert load_trained_adapter(ours, tmp_path / "adapter") == settings
    name = "transformer_blocks.2.cross_attn.to_out.0"
    for loaded in (adapted_layers(ours)[name], theirs.base_model.model.get_submodule(name)):
        reference = adapted_layers(model)[name]
        x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), reference(x), rtol=1e-5, atol=1e-6)
