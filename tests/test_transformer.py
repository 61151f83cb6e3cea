"""The transformer: published state-dict layout, forward behaviour, checkpointing, loading and LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from acestep.core.errors import CheckpointError
from acestep.families.v1.models import ACEStepTransformer2DModel
from acestep.families.v1.models.configs import PUBLISHED_TRANSFORMER_CONFIG, tiny_transformer_config

REPO = Path(__file__).resolve().parents[1]


def tiny_model(seed: int = 0, **overrides) -> ACEStepTransformer2DModel:
    torch.manual_seed(seed)
    return ACEStepTransformer2DModel(**tiny_transformer_config(**overrides)).eval()


def tiny_inputs(batch: int = 2, frames: int = 12, text: int = 5, lyrics: int = 7, seed: int = 1) -> dict:
    config = tiny_transformer_config()
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 8, 16, frames, generator=g),
        "attention_mask": torch.ones(batch, frames),
        "encoder_text_hidden_states": torch.randn(batch, text, config["text_embedding_dim"], generator=g),
        "text_attention_mask": torch.ones(batch, text),
        "speaker_embeds": torch.zeros(batch, config["speaker_embedding_dim"]),
        "lyric_token_idx": torch.randint(0, config["lyric_encoder_vocab_size"], (batch, lyrics), generator=g),
        "lyric_mask": torch.ones(batch, lyrics),
        "timestep": torch.tensor([500.0, 20.0][:batch]),
    }


def published_on_meta() -> ACEStepTransformer2DModel:
    with torch.device("meta"):
        return ACEStepTransformer2DModel(**PUBLISHED_TRANSFORMER_CONFIG)


def test_published_config_matches_manifest(reference_dir: Path) -> None:
    manifest = json.loads((reference_dir / "transformer_manifest.json").read_text())
    model = published_on_meta()
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert ours == manifest["state_dict"]
    assert len(ours) == 874
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"] == 3_305_659_264
    assert not [name for name, _ in model.named_buffers() if name in ours]


def test_published_config_json_builds_published_model() -> None:
    config = {
        "_class_name": "ACEStepTransformer2DModel",
        "_diffusers_version": "0.32.2",
        **PUBLISHED_TRANSFORMER_CONFIG,
    }
    with torch.device("meta"):
        model = ACEStepTransformer2DModel.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 3_305_659_264


@pytest.mark.parametrize(
    ("config_file", "modules", "params"),
    [("lora_config_transformer_only.json", 192, 62_914_560), ("lora_config.json", 210, 65_273_856)],
)
def test_lora_attaches_to_published_counts(config_file: str, modules: int, params: int) -> None:
    settings = json.loads((REPO / "config" / config_file).read_text())
    model = published_on_meta()
    model.add_adapter(LoraConfig(**settings))
    lora_a = [name for name, _ in model.named_modules() if name.endswith("lora_A.default")]
    assert len(lora_a) == modules
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == params


def test_forward_shapes_and_outputs() -> None:
    model = tiny_model()
    out = model(**tiny_inputs())
    assert out.sample.shape == (2, 8, 16, 12)
    assert out.proj_losses == []
    assert torch.isfinite(out.sample).all()
    as_tuple = model(**tiny_inputs(), return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[1] == []
    torch.testing.assert_close(as_tuple[0], out.sample)


def test_encode_then_decode_is_forward() -> None:
    """The pipeline's split: encode once, decode per step (a scalar timestep is broadcast over the batch)."""
    model = tiny_model()
    inputs = tiny_inputs()
    states, mask = model.encode(
        inputs["encoder_text_hidden_states"],
        inputs["text_attention_mask"],
        inputs["speaker_embeds"],
        inputs["lyric_token_idx"],
        inputs["lyric_mask"],
    )
    both = torch.tensor([300.0, 300.0])
    decoded = model.decode(
        inputs["hidden_states"], inputs["attention_mask"], states, mask, torch.tensor(300.0)
    )
    full = model(**dict(inputs, timestep=both))
    torch.testing.assert_close(decoded.sample, full.sample, rtol=0, atol=0)


def test_masked_lyric_padding_does_not_change_outputs() -> None:
    model = tiny_model()
    inputs = tiny_inputs(batch=1)
    reference = model(**inputs).sample
    padded = dict(
        inputs,
        lyric_token_idx=torch.cat([inputs["lyric_token_idx"], torch.randint(0, 300, (1, 4))], 1),
        lyric_mask=torch.cat([inputs["lyric_mask"], torch.zeros(1, 4)], 1),
    )
    torch.testing.assert_close(model(**padded).sample, reference, atol=1e-5, rtol=1e-5)


def test_masked_text_content_is_ignored_but_its_length_moves_the_lyrics() -> None:
    """Encoder tokens get RoPE positions over [speaker | text | lyrics], so text padding shifts the lyric keys."""
    model = tiny_model()
    inputs = tiny_inputs(batch=1)
    pad_mask = torch.cat([inputs["text_attention_mask"], torch.zeros(1, 3)], 1)
    outputs = []
    for seed in (0, 1):
        junk = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(seed))
        text = torch.cat([inputs["encoder_text_hidden_states"], junk], 1)
        outputs.append(
            model(**dict(inputs, encoder_text_hidden_states=text, text_attention_mask=pad_mask)).sample
        )
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(outputs[0], model(**inputs).sample, atol=1e-4)
    states, mask = model.encode(
        inputs["encoder_text_hidden_states"],
        inputs["text_attention_mask"],
        inputs["speaker_embeds"],
        inputs["lyric_token_idx"],
        inputs["lyric_mask"],
    )
    assert states.shape == (1, 1 + 5 + 7, 64) and mask.shape == (1, 13) and mask.eq(1).all()


def test_latent_padding_changes_real_frames_by_design() -> None:
    """GroupNorm statistics span all frames and GLUMBConv mixes neighbours: padded frames are not inert."""
    model = tiny_model()
    inputs = tiny_inputs(batch=1)
    reference = model(**inputs).sample
    padded = dict(
        inputs,
        hidden_states=torch.cat([inputs["hidden_states"], torch.zeros(1, 8, 16, 4)], -1),
        attention_mask=torch.cat([inputs["attention_mask"], torch.zeros(1, 4)], 1),
    )
    out = model(**padded).sample
    assert out.shape == (1, 8, 16, 16) and torch.isfinite(out).all()
    assert not torch.allclose(out[..., :12], reference, atol=1e-3)


def test_masked_lyrics_change_nothing_but_real_lyrics_do() -> None:
    model = tiny_model()
    inputs = tiny_inputs(batch=1)
    base = model(**inputs).sample
    other = dict(inputs, lyric_token_idx=(inputs["lyric_token_idx"] + 1) % 300)
    assert not torch.allclose(model(**other).sample, base)
    masked = dict(inputs, lyric_mask=torch.zeros(1, 7))
    masked_other = dict(other, lyric_mask=torch.zeros(1, 7))
    torch.testing.assert_close(model(**masked).sample, model(**masked_other).sample)


def test_batch_items_are_independent() -> None:
    model = tiny_model()
    inputs = tiny_inputs(batch=2)
    both = model(**inputs).sample
    first = model(**{k: v[:1] for k, v in inputs.items()}).sample
    torch.testing.assert_close(both[:1], first, atol=1e-5, rtol=1e-5)


def count_checkpoint_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap torch.utils.checkpoint where each module imported it; count calls per module."""
    calls: dict[str, int] = {}
    for module in ("transformer", "lyric_encoder"):
        target = f"acestep.families.v1.models.{module}.checkpoint"

        def counted(*args, _module=module, **kwargs):
            assert kwargs.get("use_reentrant") is False
            calls[_module] = calls.get(_module, 0) + 1
            return torch.utils.checkpoint.checkpoint(*args, **kwargs)

        monkeypatch.setattr(target, counted)
    return calls


def test_gradient_checkpointing_gives_identical_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = tiny_inputs()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=3).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
            assert model.lyric_encoder.gradient_checkpointing
        calls = count_checkpoint_calls(monkeypatch)
        torch.manual_seed(7)  # same dropout masks in the lyric encoder
        model(**inputs).sample.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        # One checkpointed call per transformer block (3) and per Conformer layer (2), only when enabled.
        assert calls == ({"transformer": 3, "lyric_encoder": 2} if checkpointing else {})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_ssl_projection_losses_depend_on_features() -> None:
    model = tiny_model()
    inputs = tiny_inputs()
    g = torch.Generator().manual_seed(5)
    mert = [torch.randn(30, 32, generator=g), torch.randn(25, 32, generator=g)]
    hubert = [torch.randn(20, 24, generator=g), torch.randn(18, 24, generator=g)]
    losses = model(**inputs, ssl_hidden_states=[mert, hubert]).proj_losses
    assert [name for name, _ in losses] == ["mert", "m-hubert"]
    assert all(torch.isfinite(value) and 0 < value < 2 for _, value in losses)
    flipped = model(**inputs, ssl_hidden_states=[[-t for t in mert], None]).proj_losses
    assert [name for name, _ in flipped] == ["mert"]
    # Negating the targets maps the cosine c to -c: loss 1 - c becomes 1 + c.
    torch.testing.assert_close(flipped[0][1], 2.0 - losses[0][1])
    # A target equal to the interpolated projection itself gives loss 0 (linear, align_corners=False).
    with torch.no_grad():
        tapped = []
        handle = model.transformer_blocks[1].register_forward_hook(lambda m, a, out: tapped.append(out))
        model(**inputs)
        handle.remove()
        projected = model.projectors[0](tapped[0][0])
        target = torch.nn.functional.interpolate(
            projected.T[None], size=30, mode="linear", align_corners=False
        )[0].T
    exact = model(**inputs, ssl_hidden_states=[[target, mert[1]], None]).proj_losses[0][1]
    single = model(**{k: v[1:] for k, v in inputs.items()}, ssl_hidden_states=[[mert[1]], None]).proj_losses[
        0
    ][1]
    torch.testing.assert_close(exact, single / 2, atol=1e-5, rtol=1e-4)


def test_ssl_tap_reads_the_configured_block() -> None:
    """The projectors see the output of block `ssl_encoder_depths` (1 in the tiny config), not later blocks."""
    model = tiny_model()
    inputs = tiny_inputs()
    mert = [torch.randn(30, 32), torch.randn(25, 32)]
    before = model(**inputs, ssl_hidden_states=[mert, None]).proj_losses[0][1]
    with torch.no_grad():
        model.transformer_blocks[2].scale_shift_table.add_(1.0)
    torch.testing.assert_close(model(**inputs, ssl_hidden_states=[mert, None]).proj_losses[0][1], before)
    with torch.no_grad():
        model.transformer_blocks[1].scale_shift_table.add_(1.0)
    assert not torch.allclose(model(**inputs, ssl_hidden_states=[mert, None]).proj_losses[0][1], before)


def test_controlnet_input_is_renormalised_to_the_tokens() -> None:
    model = tiny_model()
    inputs = tiny_inputs()
    control = torch.randn(2, 12, 64)
    base = model(**inputs).sample
    torch.testing.assert_close(
        model(**inputs, block_controlnet_hidden_states=control, controlnet_scale=0.0).sample, base
    )
    guided = model(**inputs, block_controlnet_hidden_states=control).sample
    assert not torch.allclose(guided, base, atol=1e-3)
    # Only the shape of the control signal counts: its mean and spread are replaced by the tokens' own.
    rescaled = model(**inputs, block_controlnet_hidden_states=3.0 * control + 2.0).sample
    torch.testing.assert_close(rescaled, guided, atol=1e-4, rtol=1e-4)


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    model = tiny_model()
    inputs = tiny_inputs()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "ACEStepTransformer2DModel"
    loaded = ACEStepTransformer2DModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(**inputs).sample, model(**inputs).sample, rtol=0, atol=0)
    half = ACEStepTransformer2DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16).eval()
    assert half.proj_in.early_conv_layers[0].weight.dtype == torch.bfloat16
    out = half(**inputs).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert (out.float() - model(**inputs).sample).abs().mean() < 0.1


def test_sharded_checkpoint_loads(tmp_path: Path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    loaded = ACEStepTransformer2DModel.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_mismatched_file_names_the_keys(tmp_path: Path) -> None:
    tiny_model().save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop("lyric_proj.bias")
    state["not_a_module.weight"] = torch.zeros(2)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="lyric_proj.bias") as error:
        ACEStepTransformer2DModel.from_pretrained(tmp_path)
    assert "not_a_module.weight" in str(error.value)
    state["lyric_proj.bias"] = torch.zeros(3)
    del state["not_a_module.weight"]
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="lyric_proj.bias"):
        ACEStepTransformer2DModel.from_pretrained(tmp_path)


def test_half_precision_forwards_are_finite_and_close() -> None:
    model = tiny_model()
    inputs = tiny_inputs()
    reference = model(**inputs).sample
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the trainer's bf16-mixed with fp32 weights
        mixed = model(**inputs).sample
    assert torch.isfinite(mixed).all() and (mixed.float() - reference).abs().mean() < 0.1
    for dtype in (torch.float16, torch.bfloat16):
        out = tiny_model().to(dtype)(**inputs).sample
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert (out.float() - reference).abs().mean() < 0.1
