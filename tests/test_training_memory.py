"""TensorMemoryTracker (live and peak tensor bytes) and the release of weights no forward pass reads."""

from __future__ import annotations

import torch

from acestep.families.v1.models.configs import tiny_transformer_config
from acestep.families.v1.probe import random_transformer, synthetic_batch
from acestep.families.v1.training import release_unused_weights
from acestep.training.memory import TensorMemoryTracker


def test_tracker_counts_new_storages_once_and_frees_them():
    existing = torch.zeros(1000)  # 4000 bytes, tracked explicitly
    tracker = TensorMemoryTracker()
    tracker.track(existing, existing[10:])  # a view of a tracked storage is not counted again
    assert tracker.current == 4000
    with tracker:
        a = torch.ones(2000)  # +8000
        view = a[::2]  # a view: no new storage
        b = a * 2  # +8000 -> peak 20000
        existing.add_(1)  # in place: nothing new
        del a, b, view  # -16000
        c = torch.ones(100, dtype=torch.float16)  # +200
    assert tracker.peak == 20000
    assert tracker.current == 4200
    del c
    assert tracker.current == 4000
    tracker.reset_peak()
    assert tracker.peak == 4000


def test_release_unused_weights_keeps_the_forward_pass_identical():
    config = tiny_transformer_config()
    model = random_transformer(config, torch.float32, "cpu").eval()
    tensors = synthetic_batch(config, frames=20, batch_size=1, lyric_tokens=7, text_tokens=5, ssl=False,
                              device="cpu").tensors
    inputs = dict(tensors, hidden_states=tensors.pop("target_latents"), timestep=torch.tensor([500.0]))
    with torch.no_grad():
        before = model(**inputs).sample
        width = config["num_attention_heads"] * config["attention_head_dim"]
        released = release_unused_weights(model, keep_ssl_projectors=True)
        assert released == config["num_layers"] * 4 * (width * width + width) * 4
        after = model(**inputs).sample
        assert torch.equal(before, after)
        projector_bytes = sum(p.numel() * 4 for p in model.projectors.parameters())
        assert release_unused_weights(model, keep_ssl_projectors=False) == projector_bytes
        assert torch.equal(model(**inputs).sample, before)
    assert model.transformer_blocks[0].cross_attn.add_q_proj.weight.numel() == 0
    assert model.transformer_blocks[0].cross_attn.to_q.weight.numel() == width * width
