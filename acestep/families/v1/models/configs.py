"""Transformer configurations: the published one and a tiny one with the same structure for tests and the demo."""

from __future__ import annotations

from typing import Any

PUBLISHED_TRANSFORMER_CONFIG: dict[str, Any] = {
    "in_channels": 8,
    "num_layers": 24,
    "inner_dim": 2560,
    "attention_head_dim": 128,
    "num_attention_heads": 20,
    "mlp_ratio": 2.5,
    "out_channels": 8,
    "max_position": 32768,
    "rope_theta": 1000000.0,
    "speaker_embedding_dim": 512,
    "text_embedding_dim": 768,
    "ssl_encoder_depths": [8, 8],
    "ssl_names": ["mert", "m-hubert"],
    "ssl_latent_dims": [1024, 768],
    "patch_size": [16, 1],
    "max_height": 16,
    "max_width": 32768,
    "lyric_encoder_vocab_size": 6693,
    "lyric_hidden_size": 1024,
}


def tiny_transformer_config(**overrides: Any) -> dict[str, Any]:
    """Every part of the published model at 0.86M parameters (SSL tap at block 1 of 3), for tests and the demo.

    The lyric-encoder size keys are ours (the reference hard-codes the Conformer size); the published defaults
    apply when they are absent, so the published config.json builds the published model.
    """
    config = dict(PUBLISHED_TRANSFORMER_CONFIG)
    config.update(
        num_layers=3,
        inner_dim=64,
        attention_head_dim=16,
        num_attention_heads=4,
        max_position=4096,
        speaker_embedding_dim=16,
        text_embedding_dim=32,
        ssl_encoder_depths=[1, 1],
        ssl_latent_dims=[32, 24],
        lyric_encoder_vocab_size=300,
        lyric_hidden_size=64,
        lyric_encoder_heads=4,
        lyric_encoder_linear_units=128,
        lyric_encoder_num_blocks=2,
    )
    config.update(overrides)
    return config
