"""The transformer: published state-dict layout, forward behaviour, checkpointing, loading and LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from acestep.errors import CheckpointError
from acestep.models import ACEStepTransformer2DModel
from acestep.models.configs import PUBLISHED_TRANSFORMER_CONFIG, tiny_transformer_config
from acestep.models.rope import RotaryEmbedding, apply_rope

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
    config = {"_class_name": "ACEStepTransformer2DModel", "_diffusers_version": "0.32.2", **PUBLISHED_TRANSFORMER_CONFIG}
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
    sample, losses = model(**tiny_inputs(), return_dict=False)
    torch.testing.assert_close(sample, out.sample)


def test_text_and_lyric_padding_does_not_change_outputs() -> None:
    model = tiny_model()
    inputs = tiny_inputs(batch=1)
    reference = model(**inputs).sample
    padded = dict(inputs)
    padded["encoder_text_hidden_states"] = torch.cat([inputs["encoder_text_hidden_states"], torch.randn(1, 3, 32)], 1)
    padded["text_attention_mask"] = torch.cat([inputs["text_attention_mask"], torch.zeros(1, 3)], 1)
    padded["lyric_token_idx"] = torch.cat([inputs["lyric_token_idx"], torch.zeros(1, 4, dtype=torch.long)], 1)
    padded["lyric_mask"] = torch.cat([inputs["lyric_mask"], torch.zeros(1, 4)], 1)
    # Positions of the lyric tokens shift by the text padding, so pad text at the end only in one test and lyrics
    # in another; here both are appended after the real tokens of each part.
    only_lyrics = dict(inputs, lyric_token_idx=padded["lyric_token_idx"], lyric_mask=padded["lyric_mask"])
    torch.testing.assert_close(model(**only_lyrics).sample, reference, atol=1e-5, rtol=1e-5)
    states, mask = model.encode(
        padded["encoder_text_hidden_states"], padded["text_attention_mask"], inputs["speaker_embeds"],
        inputs["lyric_token_idx"], inputs["lyric_mask"],
    )
    assert mask[0, 1 + 5 : 1 + 8].eq(0).all() and mask[0, 0] == 1


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


def test_gradient_checkpointing_gives_identical_gradients() -> None:
    inputs = tiny_inputs()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=3).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
            assert model.lyric_encoder.gradient_checkpointing
        torch.manual_seed(7)  # same dropout masks in the lyric encoder
        model(**inputs).sample.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
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


def test_rope_matches_reference_formula() -> None:
    rope = RotaryEmbedding(8, 16, 1e6)
    cos, sin = rope(5)
    x = torch.randn(1, 1, 5, 8)
    out = apply_rope(x, cos, sin)
    freqs = 1e6 ** (-torch.arange(0, 8, 2).float() / 8)
    for p in range(5):
        angle = torch.cat([p * freqs, p * freqs])
        for i in range(4):
            a, b = 2 * i, 2 * i + 1
            want_a = x[0, 0, p, a] * angle[a].cos() - x[0, 0, p, b] * angle[a].sin()
            want_b = x[0, 0, p, b] * angle[b].cos() + x[0, 0, p, a] * angle[b].sin()
            torch.testing.assert_close(out[0, 0, p, a], want_a)
            torch.testing.assert_close(out[0, 0, p, b], want_b)


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


def test_fp16_forward_is_finite() -> None:
    model = tiny_model().to(torch.float16)
    out = model(**tiny_inputs()).sample
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
