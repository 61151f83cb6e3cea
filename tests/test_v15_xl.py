"""ACE-Step 1.5 XL on a tiny XL-shaped checkpoint (DiT 48 wide, condition encoder 32 wide, as the published XL's
2560 / 2048): its condition encoder computes the official XL timbre formula (special token first), in both layouts
and in every loader stage 3, training and generation use; its LoRA files match its modules."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from v15_official_reference import official_timbre

from acestep.families.v15.checkpoint import load_components, load_pipeline, resolve
from acestep.families.v15.tiny import ACOUSTIC, XL_DIT

ENCODER_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


def dit_config(root: Path) -> dict:
    return json.loads((resolve(root / "original").dit / "config.json").read_text())


def encoder_config(config: dict) -> dict:
    """The official rule (AceStepConditionGenerationModel): the encoder takes the `encoder_*` values where given."""
    return {**config, **{key: config.get(f"encoder_{key}", config[key]) for key in ENCODER_KEYS}}


def official_timbre_weights(root: Path) -> dict[str, torch.Tensor]:
    """The timbre encoder's weights under their names in the original model.safetensors."""
    state = load_file(str(resolve(root / "original").dit / "model.safetensors"))
    prefix = "encoder.timbre_encoder."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def references(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three packed references of 20 frames (longer than the sliding window 16): two for song 0, one for song 1."""
    return torch.randn(3, 20, ACOUSTIC, generator=torch.Generator().manual_seed(seed)), torch.tensor([0, 0, 1])


def expected_timbre(root: Path, xl: bool, packed: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return official_timbre(official_timbre_weights(root), encoder_config(dit_config(root)), packed, order, xl)


def plain_diffusers_encoder(root: Path) -> torch.nn.Module:
    """diffusers 0.42.1's own loading of the condition encoder (no special token)."""
    from diffusers.pipelines.ace_step import AceStepConditionEncoder

    return AceStepConditionEncoder.from_pretrained(root / "diffusers" / "condition_encoder").eval()


def test_tiny_xl_checkpoint_is_shaped_like_the_published_xl(tiny_v15_xl_checkpoint: Path,
                                                            tiny_v15_checkpoint: Path) -> None:
    config = dit_config(tiny_v15_xl_checkpoint)
    assert resolve(tiny_v15_xl_checkpoint / "original").dit.name == XL_DIT
    assert config["encoder_hidden_size"] == 32 and config["hidden_size"] == 48  # narrower encoder, as 2048 < 2560
    for layout in ("original", "diffusers"):
        checkpoint = resolve(tiny_v15_xl_checkpoint / layout)
        assert checkpoint.is_xl and "ace-step-1.5 XL turbo" in checkpoint.describe()
        assert not resolve(tiny_v15_checkpoint / layout).is_xl
        modules = load_components(checkpoint, ("transformer", "condition_encoder"))
        embedder = modules["transformer"].condition_embedder
        assert (embedder.in_features, embedder.out_features) == (32, 48)
        assert modules["condition_encoder"].null_condition_emb.shape == (1, 1, 32)
        assert modules["condition_encoder"].timbre_encoder.special_token.shape == (1, 1, 32)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_xl_condition_encoder_equals_the_official_xl_formula(tiny_v15_xl_checkpoint: Path, layout: str) -> None:
    root = tiny_v15_xl_checkpoint
    encoder = load_components(resolve(root / layout), ("condition_encoder",))["condition_encoder"]
    packed, order = references()
    expected = expected_timbre(root, True, packed, order)
    with torch.no_grad():
        timbre, mask = encoder.timbre_encoder(packed, order)
        plain, _ = plain_diffusers_encoder(root).timbre_encoder(packed, order)
    assert mask.tolist() == [[1, 1], [1, 0]]
    gap = (plain - expected)[mask.bool()].abs().max().item()
    assert gap > 1.0  # diffusers without the token: another vector (3.5 measured at this size)
    torch.testing.assert_close(timbre, expected, rtol=1e-5, atol=1e-5)
    # the whole condition: lyrics, then the song's timbre embeddings, then text; only the timbre rows change
    g = torch.Generator().manual_seed(1)
    text, lyrics = torch.randn(2, 4, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    ones = torch.ones(2, 4, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        states, _ = encoder(text, ones[0], lyrics, ones[1], packed, order)
        old, _ = plain_diffusers_encoder(root)(text, ones[0], lyrics, ones[1], packed, order)
    for song, count in ((0, 2), (1, 1)):
        torch.testing.assert_close(states[song, 5:5 + count], expected[song, :count], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(states[song, :5], old[song, :5], rtol=0, atol=0)
        torch.testing.assert_close(states[song, 5 + count:9 + count], old[song, 5 + count:9 + count], rtol=0, atol=0)


def test_2b_condition_encoder_keeps_the_2b_formula(tiny_v15_checkpoint: Path) -> None:
    """The official 2B files leave the token out (the line is commented out), as diffusers does."""
    encoder = load_components(resolve(tiny_v15_checkpoint / "original"), ("condition_encoder",))["condition_encoder"]
    packed, order = references()
    with torch.no_grad():
        timbre, _ = encoder.timbre_encoder(packed, order)
    torch.testing.assert_close(timbre, expected_timbre(tiny_v15_checkpoint, False, packed, order),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_stage3_training_and_generation_load_the_xl_encoder(tiny_v15_xl_checkpoint: Path, layout: str) -> None:
    from acestep.families.v15.encode import song_stages_from_args

    root = tiny_v15_xl_checkpoint
    checkpoint = resolve(root / layout)
    args = argparse.Namespace(device="cpu", dtype="float32", max_duration=30.0, target_lufs=None, tag_order="shuffle")
    packed, order = references(2)
    expected = expected_timbre(root, True, packed, order)
    encoders = {
        "stage 3": song_stages_from_args(checkpoint, args).pipe.condition_encoder,
        "generation": load_pipeline(checkpoint).condition_encoder,
        "samples": load_pipeline(checkpoint, with_transformer=False).condition_encoder,
        "training (the trainer's load_components)": load_components(checkpoint, ("condition_encoder",))["condition_encoder"],
    }
    for where, encoder in encoders.items():
        with torch.no_grad():
            timbre, _ = encoder.timbre_encoder(packed, order)
        torch.testing.assert_close(timbre, expected, rtol=1e-5, atol=1e-5, msg=where)


def test_xl_step_folder_files_fit_the_xl_modules(tiny_v15_xl_checkpoint: Path, tmp_path: Path) -> None:
    """ComfyUI file: every key a `decoder.*` weight of the XL model.safetensors, factors of that weight's shape, delta W
    the trained one; diffusers file: AceStepPipeline at weight 1.0 gives the trained output (official/ is checked in
    test_v15_official_app.py, XL included)."""
    from diffusers import AceStepPipeline, FlowMatchEulerDiscreteScheduler
    from safetensors import safe_open
    from test_v15_official_app import SETTINGS, adapted, official_name, trained_transformer

    from acestep.families.v15.export import write_step_files
    from acestep.training.model import adapter_state_dict

    root, settings = tiny_v15_xl_checkpoint, SETTINGS["lora"]
    model = trained_transformer(root, settings)
    write_step_files(adapter_state_dict(model, "trained"), tmp_path, 4, settings, "tiny", "xl")
    weights = load_file(str(resolve(root / "original").dit / "model.safetensors"))
    with safe_open(str(tmp_path / "xl-step4-comfyui.safetensors"), framework="pt") as handle:
        comfy = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    layers = adapted(model, "trained")
    assert len(comfy) == 2 * len(layers) == 2 * 16
    for name, layer in layers.items():
        stem = f"base_model.model.{official_name(name)}"
        baked = comfy[f"{stem}.lora_B.weight"] @ comfy[f"{stem}.lora_A.weight"]
        assert baked.shape == weights[f"decoder.{official_name(name)}.weight"].shape
        trained = settings.scale * layer.lora_B["trained"].weight @ layer.lora_A["trained"].weight
        torch.testing.assert_close(baked, trained, rtol=1e-5, atol=1e-7)
    o_proj = weights["decoder.layers.0.self_attn.o_proj.weight"]
    assert o_proj.shape == (48, 64)  # 4 heads x 16 into the 48-wide DiT: not the encoder's width

    g = torch.Generator().manual_seed(5)
    inputs = dict(hidden_states=torch.randn(1, 10, ACOUSTIC, generator=g), timestep=torch.tensor([0.5]),
                  timestep_r=torch.tensor([0.5]), encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
                  context_latents=torch.randn(1, 10, 2 * ACOUSTIC, generator=g))
    fresh = load_components(resolve(root / "original"), ("transformer",))["transformer"]
    pipe = AceStepPipeline(vae=None, text_encoder=None, tokenizer=None, transformer=fresh, condition_encoder=None,
                           scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1))
    with torch.no_grad():
        base = fresh(**inputs).sample
        pipe.load_lora_weights(str(tmp_path / "diffusers"), adapter_name="xl")
        loaded, trained = pipe.transformer(**inputs).sample, model(**inputs).sample
    assert (trained - base).abs().max() > 1e-2
    torch.testing.assert_close(loaded, trained, rtol=0, atol=2e-6)


@pytest.mark.slow
def test_demo_runs_the_xl_chain(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`python demo.py --family ace-step-1.5 --xl`: tiny XL checkpoint, stage 3 stores the official XL timbre,
    training writes the three consumers' files, the official app's loading takes official/, one render."""
    import soundfile as sf
    from peft import PeftModel
    from test_v15_official_app import official_decoder

    from acestep.data.preprocessed import load_preprocessed
    from acestep.demo import main
    from acestep.lora import read_lora

    out = tmp_path / "demo_output"
    main(["--family", "ace-step-1.5", "--xl", "--output_dir", str(out), "--songs", "2", "--seconds", "3.5",
          "--steps", "2"])
    printed = capsys.readouterr().out
    assert "ACE-Step 1.5 demo done" in printed and "ace-step-1.5 XL turbo" in printed
    root = out / "tiny_checkpoint_v15_xl"
    silence = torch.load(resolve(root / "original").dit / "silence_latent.pt", weights_only=True).transpose(1, 2)
    reference = silence[:, :750], torch.tensor([0])  # what the pipeline feeds without reference audio (30 s)
    official = expected_timbre(root, True, *reference)[0, 0]
    without_token = expected_timbre(root, False, *reference)[0, 0]
    stored = load_preprocessed(next(out.glob("prep-v15-*")))[0]["encoder_hidden_states"].float()
    assert stored.shape[1] == 32  # the condition encoder's width, not the DiT's
    assert (stored - official).abs().max(dim=1).values.min() < 1e-2  # one row: the XL timbre embedding
    assert (stored - without_token).abs().max(dim=1).values.min() > 0.5
    step = next(out.glob("runs/demo15-*/step-000002"))
    assert read_lora(next(step.glob("*-comfyui.safetensors"))).family == "ace-step-1.5"
    assert (step / "diffusers" / "pytorch_lora_weights.safetensors").is_file()
    PeftModel.from_pretrained(official_decoder(root), str(step / "official"), is_trainable=False)
    assert f"official ACE-Step 1.5 app LoRA folder: {step / 'official'}" in printed
    wav, rate = sf.read(next(out.glob("samples-v15-*/*.wav")))
    assert rate == 48000 and wav.shape == (88 * 1920, 2) and abs(wav).max() > 0
