"""Samples during training: files are written, and the training run is exactly the run without samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from test_training_run import make_config
from training_helpers import synthetic_songs, tiny_transformer

from acestep.core.errors import AcestepError
from acestep.families.training import run_training
from acestep.families.v1.pipeline.pipeline import output_samples
from acestep.lora import load_adapter
from acestep.training.callbacks import read_metrics
from acestep.training.sample_prompts import read_sample_prompts


def test_sample_prompt_files(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[[samples]]\nprompt = "pop"\nduration = 2.0\nseed = 7\nname = "a"\n')
    prompts = read_sample_prompts(toml, steps=5)
    assert prompts[0].name == "a" and prompts[0].params.seed == 7 and prompts[0].params.steps == 5
    bad = tmp_path / "bad.json"
    bad.write_text('[{"lyrics": "no prompt"}]')
    with pytest.raises(AcestepError, match="needs at least a 'prompt'"):
        read_sample_prompts(bad, steps=5)


def test_sampling_writes_files_and_leaves_training_unchanged(tiny_checkpoint: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "samples.json"
    prompts.write_text(json.dumps([{"prompt": "pop, piano", "lyrics": "[verse]\nla la", "duration": 1.2,
                                    "seed": 3, "name": "pop"}]))
    dataset = synthetic_songs([9, 12], ssl=False)
    common = dict(max_steps=4, every_n_train_steps=2, checkpoint_dir=str(tiny_checkpoint))
    plain = run_training(make_config(tmp_path, exp_name="plain", **common), tiny_transformer(), dataset)
    sampled = run_training(
        make_config(tmp_path, exp_name="sampled", sample_every=2, sample_prompts=str(prompts), sample_steps=3,
                    **common),
        tiny_transformer(), dataset,
    )
    for step in (2, 4):
        wav = sampled.run_dir / "samples" / f"step_{step:06d}" / "pop_seed3.wav"
        audio, rate = sf.read(wav)
        assert rate == 44100 and audio.shape == (output_samples(1.2), 2)
        assert json.loads(wav.with_suffix(".json").read_text())["training_step"] == step
    plain_rows, sampled_rows = read_metrics(plain.metrics_file), read_metrics(sampled.metrics_file)
    assert [r["loss"] for r in sampled_rows] == [r["loss"] for r in plain_rows]
    plain_lora, _ = load_adapter(plain.adapter_dir)
    sampled_lora, _ = load_adapter(sampled.adapter_dir)
    for key, value in plain_lora.items():
        assert torch.equal(sampled_lora[key], value), key
