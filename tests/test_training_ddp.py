"""DDP training proven on CPU processes: `trainer_new.py --accelerator cpu --devices 2` (gloo) end to end.

Two processes with batch 1 must take exactly the step one process takes with batch 2 on the same songs: the same
crops, condition dropout, timesteps and noise (each song's draws come from its position in the run's order),
gradients averaged by DDP, per-song loss normalisation and per-song SSL losses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_helpers import synthetic_songs, train_cli

from acestep.core.errors import AcestepError
from acestep.lora import load_adapter
from acestep.training import TrainConfig
from acestep.training.callbacks import read_metrics
from acestep.training.data import RunOrderSampler
from acestep.training.run import _strategy, check_devices


def test_ranks_take_disjoint_slots_that_cover_the_run_order() -> None:
    single = [d for batch in RunOrderSampler(5, 2, 6, seed=7) for d in batch]
    ranks = [[d for batch in RunOrderSampler(5, 1, 6, seed=7, rank=r, world_size=2) for d in batch] for r in (0, 1)]
    merged = [d for pair in zip(*ranks) for d in pair]  # micro-batch m: rank 0's song, then rank 1's
    assert [(d.index, d.seed) for d in merged] == [(d.index, d.seed) for d in single]
    assert {d.seed for d in ranks[0]}.isdisjoint({d.seed for d in ranks[1]})
    assert [d.micro_batch for d in ranks[1]] == list(range(6))


def test_more_devices_than_gpus_and_no_nccl_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(dataset_path="x", accelerator="gpu", devices="2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(AcestepError, match=r"^--devices 2 asks for 2 GPUs but this machine has 1: use --devices 1$"):
        check_devices(config)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build that sees no GPU (tests/test_training_robustness
    with pytest.raises(AcestepError, match=r"sees no GPU .*; use --accelerator cpu$"):  # covers the CPU-only build)
        check_devices(config)
    check_devices(TrainConfig(dataset_path="x", accelerator="cpu", devices="2"))  # CPU processes: any number
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)  # Windows
    assert _strategy(config).process_group_backend == "gloo"
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    assert _strategy(config) == "ddp" and _strategy(TrainConfig(dataset_path="x", devices="1")) == "auto"


@pytest.mark.slow
def test_two_cpu_processes_equal_one_process_with_twice_the_batch(tmp_path: Path, tiny_checkpoint: Path) -> None:
    prep = tmp_path / "prep"
    synthetic_songs([12, 15, 14, 13], ssl=True).save_to_disk(str(prep))
    lora = tmp_path / "lora.json"
    lora.write_text(json.dumps({"r": 4, "lora_alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0",
                                                                            "linear_q", "linear_k"]}))
    prompts = tmp_path / "samples.json"
    prompts.write_text(json.dumps([{"prompt": "pop", "duration": 0.6, "seed": 1, "name": "pop"}]))
    # max_duration crops every song to 9 frames: the GLUMBConv feed-forward of the architecture mixes padded frames
    # into real ones, so padded latents would differ from unpadded by design. Text and SSL lengths still differ per
    # song (masks and per-song lists). Lyrics are dropped: the lyric encoder's own dropout draws per batch.
    common = ["--dataset_path", str(prep), "--checkpoint_dir", str(tiny_checkpoint), "--output_dir", str(tmp_path),
              "--lora_config_path", str(lora), "--accelerator", "cpu", "--base_dtype", "fp32",
              "--max_duration", "0.9", "--learning_rate", "1e-3", "--warmup_steps", "0", "--final_lr_fraction", "1",
              "--every_n_train_steps", "1", "--save_last", "5", "--lyrics_dropout", "1", "--prompt_dropout", "0.3",
              "--ssl_coeff", "1", "--logger", "csv", "--no-progress_bar"]
    ddp = common + ["--exp_name", "ddp", "--devices", "2", "--batch_size", "1"]
    first = train_cli(ddp + ["--max_steps", "2", "--sample_every", "1", "--sample_prompts", str(prompts),
                         "--sample_steps", "2"], tmp_path, timeout=300)
    run = tmp_path / "ddp"
    # One process reports and writes: one summary, one metrics row per step, one sample per step, one log.
    assert first.stdout.count("Training finished") == 1
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert sorted(p.relative_to(run).as_posix() for p in (run / "samples").rglob("*.wav")) == [
        "samples/step_000001/pop_seed1.wav", "samples/step_000002/pop_seed1.wav"]
    assert [p.name for p in (run / "logs").iterdir()] == ["version_0"]
    resumed = train_cli(ddp + ["--max_steps", "3", "--resume"], tmp_path, timeout=300)
    assert resumed.stdout.count("Training finished") == 1 and "resumed at 2" in resumed.stdout
    train_cli(common + ["--exp_name", "one", "--devices", "1", "--batch_size", "2", "--max_steps", "3"], tmp_path,
              timeout=300)

    assert sorted(p.name for p in run.iterdir()) == ["logs", "metrics.jsonl", "samples", "state", "step-000001",
                                                     "step-000002", "step-000003", "summary.txt", "train_config.json"]
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    for step in (1, 2, 3):
        folder = f"step-{step:06d}"
        assert sorted(p.name for p in (run / folder).iterdir()) == ["adapter", f"ddp-step{step}-comfyui.safetensors"]
        two, _ = load_adapter(run / folder)
        one, _ = load_adapter(tmp_path / "one" / folder)
        assert two.keys() == one.keys() and any(".lyric_encoder." in k for k in one)
        for key, value in one.items():
            # fp32 sums in another order, amplified by Adam where a gradient is near 0: ~5e-7 of a 1e-3 update
            torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-6, msg=f"step {step} {key}")
    two_rows, one_rows = read_metrics(run / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert [r["step"] for r in two_rows] == [1, 2, 3]
    for key in ("loss", "denoising_loss", "mert_loss", "m-hubert_loss", "grad_norm"):
        assert [r[key] for r in two_rows] == pytest.approx([r[key] for r in one_rows], rel=1e-5), key
