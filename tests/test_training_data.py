"""Batches, crops, run order, options and the LR schedule of the trainer."""

from __future__ import annotations

import pytest
import torch
from training_helpers import synthetic_songs

from acestep.core.errors import AcestepError
from acestep.families.training import parse_config
from acestep.families.v1.songs import SongLatents, collate_songs, frames_for_seconds
from acestep.families.v1.training import FORK_RECIPE
from acestep.training.config import TrainConfig
from acestep.training.data import Draw, RunLoader, RunOrderSampler
from acestep.training.optim import WarmupLinearDecay, build_lr_scheduler, build_optimizer, resolve_recipe


def test_collate_pads_every_sequence_and_masks_the_padding() -> None:
    songs = SongLatents(synthetic_songs([6, 9], ssl=True))
    first, second = songs[Draw(0, 0, 0)], songs[Draw(1, 0, 1)]
    batch = collate_songs([first, second])
    assert batch["target_latents"].shape == (2, 8, 16, 9)
    assert batch["attention_mask"].tolist() == [[1.0] * 6 + [0.0] * 3, [1.0] * 9]
    assert torch.equal(batch["target_latents"][0, ..., :6], first["target_latents"])
    assert batch["target_latents"][0, ..., 6:].abs().max() == 0
    assert batch["encoder_text_hidden_states"].shape == (2, 4, 32)
    assert batch["text_attention_mask"].tolist() == [[1.0, 1, 1, 0], [1.0, 1, 1, 1]]
    assert batch["lyric_token_ids"].shape == (2, 7) and batch["lyric_token_ids"].dtype == torch.long
    assert batch["lyric_mask"].tolist() == [[1.0] * 5 + [0.0] * 2, [1.0] * 7]
    mert, mhubert = batch["ssl_hidden_states"]
    assert [t.shape[0] for t in mert] == [round(6 / 10.7666 * 75), round(9 / 10.7666 * 75)]
    assert [t.shape[1] for t in mhubert] == [24, 24]


def test_stored_float16_values_come_back_as_float32() -> None:
    dataset = synthetic_songs([5])
    item = SongLatents(dataset)[Draw(0, 0, 0)]
    assert item["target_latents"].dtype == torch.float32
    stored = torch.as_tensor(dataset[0]["target_latents"])
    assert torch.equal(item["target_latents"], stored.float())


def test_crop_keeps_the_ssl_rows_of_the_same_stretch() -> None:
    dataset = synthetic_songs([40], ssl=True)
    whole = SongLatents(dataset)[Draw(0, 0, 0)]
    cropped = SongLatents(dataset, max_frames=10)[Draw(0, 0, 123)]
    latents = whole["target_latents"]
    starts = [s for s in range(31) if torch.equal(latents[..., s:s + 10], cropped["target_latents"])]
    assert len(starts) == 1
    start = starts[0]
    for full, part in zip(whole["ssl"], cropped["ssl"]):
        first = round(start / 40 * full.shape[0])
        assert torch.equal(part, full[first: first + part.shape[0]])
        assert part.shape[0] == pytest.approx(full.shape[0] / 4, abs=1)
    again = SongLatents(dataset, max_frames=10)[Draw(0, 0, 123)]
    assert torch.equal(again["target_latents"], cropped["target_latents"])


def test_short_songs_are_not_cropped_and_ssl_can_be_switched_off() -> None:
    dataset = synthetic_songs([8], ssl=True)
    item = SongLatents(dataset, max_frames=20, use_ssl=False)[Draw(0, 0, 5)]
    assert item["target_latents"].shape[-1] == 8 and "ssl" not in item
    assert frames_for_seconds(10.0) == 107 and frames_for_seconds(None) is None


def test_run_order_visits_each_song_once_per_epoch_and_splits_ranks() -> None:
    sampler = RunOrderSampler(num_samples=5, batch_size=2, total_micro_batches=10, seed=7)
    flat = [d.index for batch in sampler for d in batch]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert flat[:5] != flat[5:10]  # a fresh permutation each epoch
    ranks = [RunOrderSampler(5, 1, 5, seed=7, rank=r, world_size=2) for r in (0, 1)]
    draws = [[d for b in s for d in b] for s in ranks]
    assert sorted(d.index for d in draws[0][:2] + draws[1][:2] + draws[0][2:3]) == list(range(5))
    assert len({d.seed for d in draws[0]} | {d.seed for d in draws[1]}) == 10


def test_run_order_resumes_at_the_same_position() -> None:
    whole = list(RunOrderSampler(7, 2, 12, seed=3))
    tail = list(RunOrderSampler(7, 2, 12, seed=3, start=5))
    assert len(RunOrderSampler(7, 2, 12, seed=3, start=5)) == 12  # Lightning counts the whole run
    assert tail == whole[5:]


def test_loader_refuses_to_resume_with_another_order() -> None:
    songs = SongLatents(synthetic_songs([4, 4, 4]))
    loader = RunLoader(songs, RunOrderSampler(3, 1, 4, seed=1), 0, collate_songs)
    loader.load_state_dict(loader.state_dict())
    with pytest.raises(AcestepError, match="batch_size 2 -> 1"):
        loader.load_state_dict({**loader.state_dict(), "batch_size": 2})


def test_defaults_follow_the_fork_and_flags_parse() -> None:
    parsed = parse_config(["--dataset_path", "prep", "--no-gradient_checkpointing", "--max_duration", "30"])
    assert parsed.beta1 is parsed.beta2 is parsed.warmup_steps is None  # the family's recipe fills them in
    config = resolve_recipe(parsed, FORK_RECIPE)  # v1's: the fork's
    assert (config.beta1, config.beta2, config.weight_decay, config.shift) == (0.8, 0.9, 1e-2, 3.0)
    assert (config.warmup_steps, config.max_steps, config.gradient_clip_val, config.ssl_coeff) == (10, 10000, 1.0, 1.0)
    assert config.lora_config_path is None  # the family picks its default config
    assert config.gradient_checkpointing == "none" and config.max_duration == 30.0
    assert config.prompt_dropout == config.lyrics_dropout == config.speaker_dropout == 0.0


def test_bad_options_are_reported_together() -> None:
    with pytest.raises(AcestepError, match="--batch_size must be at least 1; --lyrics_dropout must be between 0 and 1"):
        parse_config(["--dataset_path", "p", "--batch_size", "0", "--lyrics_dropout", "2"])
    with pytest.raises(AcestepError, match="plain folder name"):
        TrainConfig(dataset_path="p", exp_name="a/b").validate()


def test_schedule_warms_up_then_decays_to_the_final_fraction() -> None:
    schedule = WarmupLinearDecay(warmup_steps=10, max_steps=110, final=0.1)
    assert [schedule(s) for s in (0, 5, 10)] == [0.0, 0.5, 1.0]
    assert schedule(60) == pytest.approx(0.5 * 0.9 + 0.1)
    assert schedule(110) == pytest.approx(0.1) and schedule(500) == pytest.approx(0.1)
    assert WarmupLinearDecay(10, 110)(110) == 0.0


@pytest.mark.parametrize("name", ["adamw", "prodigy"])
def test_optimizers_get_the_fork_settings(name: str) -> None:
    param = torch.nn.Parameter(torch.zeros(3))
    config = resolve_recipe(TrainConfig(dataset_path="p", optimizer=name, warmup_steps=0, max_steps=10), FORK_RECIPE)
    optimizer = build_optimizer([param], config)
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == 1e-2
    if name == "adamw":
        assert isinstance(optimizer, torch.optim.AdamW) and group["betas"] == (0.8, 0.9) and group["lr"] == 1e-4
    else:
        assert type(optimizer).__name__ == "Prodigy" and group["lr"] == 1.0
        assert group["use_bias_correction"] and group["safeguard_warmup"]
        scheduler = build_lr_scheduler(optimizer, config)
        assert scheduler.lr_lambdas[0].final == 0.1


def test_adamw8bit_without_bitsandbytes_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("acestep.training.optim.bitsandbytes_available", lambda: False)
    with pytest.raises(AcestepError, match="pip install bitsandbytes"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))],
                        resolve_recipe(TrainConfig(dataset_path="p", optimizer="adamw8bit"), FORK_RECIPE))
    with pytest.raises(ValueError, match="recipe is not resolved"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainConfig(dataset_path="p"))


def test_the_forks_float32_layout_is_read_too() -> None:
    import datasets

    fork = datasets.Dataset.from_dict({
        "keys": ["a"],
        "target_latents": [torch.randn(8, 16, 5).tolist()],
        "attention_mask": [[1.0] * 5],
        "encoder_text_hidden_states": [torch.randn(6, 32).tolist()],
        "text_attention_mask": [[1, 1, 1, 1, 0, 0]],
        "speaker_embds": [[0.0] * 512],
        "lyric_token_ids": [[3, 4]],
        "lyric_mask": [[1, 1]],
    })
    batch = collate_songs([SongLatents(fork)[Draw(0, 0, 0)]])
    assert batch["target_latents"].shape == (1, 8, 16, 5)
    assert batch["text_attention_mask"].tolist() == [[1.0, 1, 1, 1, 0, 0]]
    assert "ssl_hidden_states" not in batch


def test_a_dataset_without_latents_is_refused_by_name() -> None:
    import datasets

    with pytest.raises(AcestepError, match="target_latents"):
        SongLatents(datasets.Dataset.from_dict({"keys": ["a"], "filename": ["a.wav"]}))
