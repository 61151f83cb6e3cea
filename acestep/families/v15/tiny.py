"""A tiny random ACE-Step 1.5 checkpoint in both published layouts, so tests and the demo run the real loading
code on CPU: OUT/original/ (the `ACE-Step/Ace-Step1.5` layout) and OUT/diffusers/ (AceStepPipeline.save_pretrained
of the original, converted in memory by the same code that loads a real checkpoint). With `xl`, an XL-shaped one:
the DiT wider than its condition encoder, in a folder named like the published XL's."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from acestep.core.atomic import build_into
from acestep.core.quiet import library_bars_off, old_weight_norm

from .checkpoint import (
    DEFAULT_DIT,
    TEXT_ENCODER_FOLDER,
    _component_classes,
    component_configs,
    diffusers_to_original,
    load_pipeline,
    resolve,
)

ACOUSTIC = 8  # latent channels (published: 64)
TEXT_WIDTH = 32  # Qwen3 hidden size (published: 1024)
SILENCE_FRAMES = 15000  # the published silence_latent.pt length (AceStepConditionEncoder's buffer shape)
DOWNSAMPLING = [2, 4, 4, 6, 10]  # 1920 samples per latent frame = 25 Hz at 48 kHz, as published
TOKENIZER_TEXT = (
    "# Instruction Fill the audio semantic mask based on the given conditions: # Caption # Metas - bpm: N/A "
    "- timesignature: - keyscale: - duration: seconds # Languages # Lyric en unknown [verse] [chorus] [outro] "
    "pop rock jazz electronic ambient synth calm slow bass energetic fast acoustic guitar happy melodic dark drums "
    "metal dreamy piano sad funk upbeat lights go on we move along la sun is high sing with me oh rain on the "
    "window goodbye run hey get up down major minor C D E F G A B 0 1 2 3 4 5 6 7 8 9"
)


def tiny_original_config() -> dict:
    """config.json of the tiny DiT folder, with the published keys (layer types alternate as published)."""
    return {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 16, "in_channels": 3 * ACOUSTIC, "audio_acoustic_hidden_dim": ACOUSTIC,
        "patch_size": 2, "rope_theta": 1000000.0, "attention_bias": False, "attention_dropout": 0.0,
        "rms_norm_eps": 1e-6, "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"],
        "text_hidden_dim": TEXT_WIDTH, "timbre_hidden_dim": ACOUSTIC, "num_lyric_encoder_hidden_layers": 2,
        "num_timbre_encoder_hidden_layers": 1, "pool_window_size": 5, "fsq_dim": 32,
        "fsq_input_levels": [8, 8, 8, 5, 5, 5], "fsq_input_num_quantizers": 1,
        "num_attention_pooler_hidden_layers": 1, "is_turbo": True, "model_version": "turbo",
    }


XL_DIT = "acestep-v15-xl-turbo"  # the published XL turbo's DiT folder name


def tiny_xl_config() -> dict:
    """config.json of a tiny XL DiT: wider than its condition encoder, as the published XL (DiT 2560 wide, 32 heads;
    condition encoder, tokenizer and null condition 2048 wide, 16 heads: the `encoder_*` keys)."""
    return {
        **tiny_original_config(),
        "hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
        "encoder_hidden_size": 32, "encoder_intermediate_size": 64, "encoder_num_attention_heads": 2,
        "encoder_num_key_value_heads": 1,
    }


def _write_text_encoder(folder: Path) -> None:
    """A tiny Qwen3 model and a byte-level BPE tokenizer with Qwen's special tokens, saved like the real folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([TOKENIZER_TEXT] * 20, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"], merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    tokenizer.save_pretrained(str(folder))
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    Qwen3Model(config).save_pretrained(str(folder))


def _write_vae(folder: Path) -> None:
    from diffusers import AutoencoderOobleck

    with old_weight_norm():
        vae = AutoencoderOobleck(
            encoder_hidden_size=2 * ACOUSTIC, downsampling_ratios=DOWNSAMPLING, channel_multiples=[1, 2, 2, 2, 2],
            decoder_channels=8, decoder_input_channels=ACOUSTIC, audio_channels=2, sampling_rate=48000,
        )
    vae.save_pretrained(str(folder))


def _write_original(root: Path, dit: str, config: dict | None = None) -> None:
    """DiT folder (model.safetensors with the original key names, config.json, silence_latent.pt [1, C, T]),
    vae/ and the text encoder folder."""
    config = config or tiny_original_config()
    configs = component_configs(config)
    classes = _component_classes()
    states = {name: classes[name](**configs[name]).state_dict() for name in configs}
    states["condition_encoder"].pop("silence_latent")
    dit_dir = root / dit
    dit_dir.mkdir(parents=True)
    weights = {key: value.contiguous() for key, value in diffusers_to_original(states).items()}
    save_file(weights, str(dit_dir / "model.safetensors"))
    (dit_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    # the published format is a torch tensor file; loaded with weights_only=True (no code runs)
    torch.save(torch.randn(1, ACOUSTIC, SILENCE_FRAMES) * 0.5, dit_dir / "silence_latent.pt")
    _write_vae(root / "vae")
    _write_text_encoder(root / TEXT_ENCODER_FOLDER)


def write_tiny_v15_checkpoint(
    out: str | Path, seed: int = 0, overwrite: bool = False, xl: bool = False
) -> tuple[Path, Path]:
    """OUT/original and OUT/diffusers (random weights, same values in both); built in a temp folder, then moved
    into place, replacing an earlier tiny checkpoint there only with `overwrite`. `xl`: XL-shaped (XL_DIT folder).
    Returns (original root, diffusers root)."""
    out = Path(out)

    @library_bars_off()  # a "Writing model shards" bar per tiny file says nothing
    def build(staging: Path) -> None:
        torch.manual_seed(seed)
        if xl:
            _write_original(staging / "original", XL_DIT, tiny_xl_config())
        else:
            _write_original(staging / "original", DEFAULT_DIT)
        pipeline = load_pipeline(resolve(staging / "original"))
        # diffusers records the folder a model was loaded from; here that is the temp build folder, whose random
        # name would make two writes of the same seed differ
        pipeline.vae.register_to_config(_name_or_path="original/vae")
        pipeline.save_pretrained(str(staging / "diffusers"), safe_serialization=True)
        (staging / "README.json").write_text(json.dumps({
            "what": "tiny random ACE-Step 1.5 checkpoint for tests and the demo; it makes noise, not music",
            "layouts": {"original": "ACE-Step/Ace-Step1.5", "diffusers": "AceStepPipeline.save_pretrained"},
            "seed": seed,
        }, indent=2))

    build_into(out, ("original", "diffusers"), overwrite, build)
    return out / "original", out / "diffusers"
