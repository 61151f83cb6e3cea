"""ACE-Step 1.5 LoRA files: what AceStepPipeline and ComfyUI load at strength 1.0 is exactly the trained change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from v15_helpers import tiny_dit

from acestep.core.errors import AcestepError
from acestep.families.v15.export import write_step_files
from acestep.families.v15.lora_keys import original_name as v15_original_name
from acestep.lora import LoraSettings, convert_file, inspect_lora, merge_file, read_lora, resize_file
from acestep.training.model import adapter_state_dict, attach_lora

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def trained_model(settings: LoraSettings, seed: int = 0) -> torch.nn.Module:
    """A tiny DiT with a LoRA whose factors are all non-zero, as after training."""
    model = tiny_dit()
    attach_lora(model, settings, "trained")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return model.eval()


def dit_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor([0.75])
    return dict(hidden_states=torch.randn(1, 10, 64, generator=g), timestep=t, timestep_r=t,
                encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
                context_latents=torch.randn(1, 10, 128, generator=g))


def pipeline_with(transformer: torch.nn.Module):  # noqa: ANN201 - diffusers' pipeline
    from diffusers import AceStepPipeline, FlowMatchEulerDiscreteScheduler

    return AceStepPipeline(vae=None, text_encoder=None, tokenizer=None, transformer=transformer,
                           condition_encoder=None, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1))


@pytest.fixture(params=[LoraSettings(r=4, lora_alpha=8.0, use_rslora=False, target_modules=TARGETS),
                        LoraSettings(r=4, lora_alpha=1.0, use_rslora=True, target_modules=TARGETS)],
                ids=["alpha8-r4", "rslora"])
def step_folder(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, torch.nn.Module, LoraSettings]:
    settings = request.param
    model = trained_model(settings)
    write_step_files(adapter_state_dict(model, "trained"), tmp_path, 7, settings, "tiny", "exp")
    return tmp_path, model, settings


def test_pipeline_loads_the_diffusers_file_at_weight_1_as_trained(step_folder) -> None:  # noqa: ANN001
    folder, model, _ = step_folder
    with torch.no_grad():
        trained = model(**dit_inputs()).sample
        base = tiny_dit()(**dit_inputs()).sample
        pipe = pipeline_with(tiny_dit().eval())
        pipe.load_lora_weights(str(folder / "diffusers"), adapter_name="mine")
        pipe.set_adapters(["mine"], [1.0])
        loaded = pipe.transformer(**dit_inputs()).sample
        pipe.set_adapters(["mine"], [0.5])
        x = torch.randn(3, 128)
        layer, trained_layer = pipe.transformer.layers[1].cross_attn.to_v, model.layers[1].cross_attn.to_v
        half = layer(x) - layer.base_layer(x)
        full = trained_layer(x) - trained_layer.base_layer(x)
    assert (trained - base).abs().max() > 1e-2  # the LoRA changes the output
    torch.testing.assert_close(loaded, trained, rtol=0, atol=2e-6)
    torch.testing.assert_close(half, 0.5 * full, rtol=1e-5, atol=1e-6)  # weight 0.5 = half the trained change
    with torch.no_grad():  # the ComfyUI file is also what diffusers' original-format converter reads
        pipe = pipeline_with(tiny_dit().eval())
        pipe.load_lora_weights(str(folder), weight_name="exp-step7-comfyui.safetensors")
        torch.testing.assert_close(pipe.transformer(**dit_inputs()).sample, trained, rtol=0, atol=2e-6)


def test_comfyui_file_holds_the_original_names_with_the_scale_baked_in(step_folder) -> None:  # noqa: ANN001
    folder, model, settings = step_folder
    names = sorted(folder.glob("*.safetensors"))
    assert [p.name for p in names] == ["exp-step7-comfyui.safetensors"]  # the only LoRA file at the top
    targeted = [n for n, m in model.named_modules() if n.endswith(TARGETS) and hasattr(m, "lora_A")]
    projections = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out.0": "o_proj"}  # diffusers' converter
    original = {next(n[: -len(d)] + o for d, o in projections.items() if n.endswith(d)) for n in targeted}
    with safe_open(str(names[0]), framework="pt") as handle:
        keys = set(handle.keys())
        header = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in keys}
    assert keys == {f"base_model.model.{name}.lora_{f}.weight" for name in original for f in "AB"}
    assert "lora_adapter_metadata" not in header and header["acestep_family"] == "ace-step-1.5"
    assert not any(k.endswith(".alpha") for k in keys)  # ComfyUI then applies scale 1.0
    modules = dict(model.named_modules())
    for name in targeted:
        layer = modules[name]
        trained = settings.scale * layer.lora_B["trained"].weight @ layer.lora_A["trained"].weight
        stem = f"base_model.model.{v15_original_name(name)}"
        baked = tensors[f"{stem}.lora_B.weight"] @ tensors[f"{stem}.lora_A.weight"]
        torch.testing.assert_close(baked, trained, rtol=1e-5, atol=1e-7)


def test_lora_tools_work_on_1_5_files(step_folder, tmp_path: Path) -> None:  # noqa: ANN001
    folder, model, settings = step_folder
    comfy = folder / "exp-step7-comfyui.safetensors"
    adapter = folder / "adapter" / "adapter_model.safetensors"
    report = inspect_lora(comfy)
    assert report.family == "ace-step-1.5" and report.baked and {m.scale for m in report.modules} == {1.0}
    raw = inspect_lora(adapter)
    assert not raw.baked and [m.scale for m in raw.modules] == pytest.approx([settings.scale] * len(raw.modules))
    assert [m.module for m in raw.modules] == [m.module for m in report.modules]  # one naming inside the tools
    for m_raw, m_baked in zip(raw.modules, report.modules):
        assert m_raw.delta_norm == pytest.approx(m_baked.delta_norm, rel=1e-5)
    # convert: diffusers spelling and back; bake of the raw adapter gives the ComfyUI file's content
    as_diffusers = convert_file(comfy, tmp_path / "d.safetensors", "v15_diffusers")
    assert read_lora(as_diffusers).style == "v15_diffusers"
    back = convert_file(as_diffusers, tmp_path / "c.safetensors", None)
    baked_from_raw = convert_file(adapter, tmp_path / "b.safetensors", None)
    for path in (back, baked_from_raw):
        lora, reference = read_lora(path), read_lora(comfy)
        assert lora.style == "v15_comfyui" and lora.modules.keys() == reference.modules.keys()
        for name, module in lora.modules.items():
            torch.testing.assert_close(module.delta(), reference.modules[name].delta(), rtol=1e-5, atol=1e-7)
    with pytest.raises(AcestepError, match="cannot be written in the kohya key style"):
        convert_file(comfy, tmp_path / "k.safetensors", "kohya")
    resized, reports = resize_file(comfy, tmp_path / "r.safetensors", "rank", 2)
    assert read_lora(resized).family == "ace-step-1.5" and {r.new_rank for r in reports} == {2}


def test_merge_into_a_diffusers_1_5_transformer_gives_the_lora_output(step_folder, tmp_path: Path) -> None:  # noqa: ANN001
    folder, model, _ = step_folder
    root = tmp_path / "ckpt"
    tiny_dit().save_pretrained(root / "transformer")
    out = merge_file(root, folder / "exp-step7-comfyui.safetensors", tmp_path / "merged")
    from diffusers import AceStepTransformer1DModel

    merged = AceStepTransformer1DModel.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**dit_inputs()).sample, model(**dit_inputs()).sample, rtol=0, atol=2e-6)


def test_comfyui_names_are_modules_of_the_original_checkpoint(tiny_v15_checkpoint: Path, tmp_path: Path) -> None:
    """Every key stem of the ComfyUI file is `decoder.<stem>.weight` in the original model.safetensors, which is
    what ComfyUI loads as `diffusion_model.decoder.*`."""
    from acestep.families.v15.checkpoint import load_components, resolve

    checkpoint = resolve(tiny_v15_checkpoint / "original")
    model = load_components(checkpoint, ("transformer",))["transformer"]
    settings = LoraSettings(r=2, lora_alpha=4.0, use_rslora=False, target_modules=TARGETS)
    attach_lora(model, settings, "trained")
    write_step_files(adapter_state_dict(model, "trained"), tmp_path, 1, settings, "tiny", "exp")
    with safe_open(str(checkpoint.dit / "model.safetensors"), framework="pt") as handle:
        original = set(handle.keys())
    with safe_open(str(tmp_path / "exp-step1-comfyui.safetensors"), framework="pt") as handle:
        stems = {key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for key in handle.keys()}
    assert len(stems) == 4 * 2 * model.config.num_hidden_layers
    assert {f"decoder.{stem}.weight" for stem in stems} <= original


def test_a_step_folder_reads_as_its_adapter(step_folder) -> None:  # noqa: ANN001
    folder, _, settings = step_folder
    lora = read_lora(folder)
    assert lora.path == folder / "adapter" / "adapter_model.safetensors" and not lora.baked
    assert inspect_lora(folder).modules[0].scale == pytest.approx(settings.scale)


def test_merge_into_the_original_1_5_layout_matches_the_diffusers_merge(tiny_v15_checkpoint: Path,
                                                                        tmp_path: Path) -> None:
    """`lora merge` given the official app's layout writes a DiT folder of that layout: the DiT weights merged
    exactly as in the diffusers layout, every other key and file as it was, and our loader reads it."""
    import shutil

    from safetensors.torch import load_file, save_file

    from acestep.families.v15.checkpoint import load_components, resolve
    from acestep.families.v15.names import to_diffusers_name
    from acestep.lora.cli import main as lora_main

    root = tmp_path / "Ace-Step1.5"
    shutil.copytree(tiny_v15_checkpoint / "original", root)
    dit = root / "acestep-v15-turbo"
    source = load_file(str(dit / "model.safetensors"))
    generator = torch.Generator().manual_seed(5)
    factors = {}
    for module in ("layers.0.self_attn.to_q", "layers.0.cross_attn.to_v"):
        out_features, in_features = source[f"decoder.{v15_original_name(module)}.weight"].shape
        factors[f"{module}.lora_A.weight"] = torch.randn(2, in_features, generator=generator)
        factors[f"{module}.lora_B.weight"] = torch.randn(out_features, 2, generator=generator)
    lora = tmp_path / "style.safetensors"
    save_file(factors, str(lora), metadata={"acestep_family": "ace-step-1.5"})
    config = tmp_path / "lora.json"
    config.write_text('{"r": 2, "lora_alpha": 4, "target_modules": ["to_q", "to_v"]}', encoding="utf-8")

    with_diffusers = merge_file(tiny_v15_checkpoint / "diffusers", lora, tmp_path / "merged_diffusers", 0.7,
                                LoraSettings.from_json(config))
    expected = load_file(str(with_diffusers / "diffusion_pytorch_model.safetensors"))
    for given in (root, dit):  # the root holding one DiT folder, or the DiT folder itself
        out = root / f"acestep-v15-turbo-style-{given.name}"
        lora_main(["merge", str(given), str(lora), str(out), "--strength", "0.7", "--lora_config_path", str(config)])
        merged = load_file(str(out / "model.safetensors"))
        assert merged.keys() == source.keys()
        changed = {key for key in source if not torch.equal(merged[key], source[key])}
        assert changed == {f"decoder.{v15_original_name(m)}.weight" for m in
                           ("layers.0.self_attn.to_q", "layers.0.cross_attn.to_v")}
        for key, value in merged.items():
            if key.startswith("decoder."):
                torch.testing.assert_close(value, expected[to_diffusers_name(key.removeprefix("decoder."))],
                                           rtol=0, atol=0)
        for name in ("config.json", "silence_latent.pt"):
            assert (out / name).read_bytes() == (dit / name).read_bytes()
        checkpoint = resolve(root, dit=out.name)  # what generate.py --checkpoint_dir ROOT --dit NAME reads
        load_components(checkpoint, ("transformer",))
    with pytest.raises(SystemExit, match="already exists .pass --overwrite"):
        lora_main(["merge", str(dit), str(lora), str(out), "--lora_config_path", str(config)])
    with pytest.raises(SystemExit, match="several DiT folders"):
        lora_main(["merge", str(root), str(lora), str(tmp_path / "x"), "--lora_config_path", str(config)])
