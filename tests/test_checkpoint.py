"""The tiny checkpoint loads through the same code as the real one; incomplete folders fail clearly."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

import acestep.families.v1.checkpoint as checkpoint_module
from acestep.core.errors import CheckpointError
from acestep.data.tags import format_prompt
from acestep.families.v1.checkpoint import REPO_ID, resolve_checkpoint
from acestep.families.v1.lyrics import LyricTokenizer
from acestep.families.v1.models import ACEStepTransformer2DModel
from acestep.families.v1.models.dcae import MusicDCAE
from acestep.families.v1.models.ssl import MERT_SPEC, SSLFeatureExtractor, load_hubert
from acestep.families.v1.text_encoder import TextEncoder


def test_tiny_checkpoint_loads_every_component(tiny_checkpoint: Path) -> None:
    paths = resolve_checkpoint(tiny_checkpoint)
    transformer = ACEStepTransformer2DModel.from_pretrained(paths.transformer)
    dcae = MusicDCAE.from_pretrained(paths.dcae, paths.vocoder)
    text = TextEncoder.from_pretrained(paths.text_encoder)
    lyrics = LyricTokenizer.from_file(paths.lyrics_vocab)
    assert transformer.config.lyric_encoder_vocab_size == lyrics.vocab_size
    assert transformer.config.text_embedding_dim == text.hidden_size
    hidden, mask = text.encode(["pop, piano, upbeat", "rock"])
    assert hidden.shape[:2] == mask.shape and hidden.shape[-1] == text.hidden_size
    assert mask[1].sum() < mask[0].sum()
    latents, _ = dcae.encode(torch.randn(1, 2, 48000 * 3) * 0.1)
    assert latents.shape == (1, 8, 16, 33)
    assert Path(paths.mert).name == "mert" and Path(paths.mhubert).name == "mhubert"


def test_missing_parts_are_listed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    shutil.rmtree(broken / "music_vocoder")
    (broken / "umt5-base" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint(broken)
    message = str(error.value)
    assert "music_vocoder/config.json" in message and "umt5-base/model.safetensors" in message
    assert REPO_ID in message


def test_repo_ids_are_downloaded_and_folders_are_not(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(repo_id: str, cache_dir: Path) -> Path:
        calls.append(repo_id)
        return tiny_checkpoint

    monkeypatch.setattr(checkpoint_module, "download_snapshot", fake_download)
    assert resolve_checkpoint("someone/some-model").root == tiny_checkpoint
    assert calls == ["someone/some-model"]
    resolve_checkpoint(tiny_checkpoint)
    assert calls == ["someone/some-model"]
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint("someone/some-model", download=False)


def test_format_prompt_orders() -> None:
    tags = ["pop", " piano ", "", "upbeat"]
    assert format_prompt(tags) == "pop, piano, upbeat"
    shuffled = format_prompt(tags, "shuffle", seed=3)
    assert sorted(shuffled.split(", ")) == ["piano", "pop", "upbeat"]
    assert shuffled == format_prompt(tags, "shuffle", seed=3)
    with pytest.raises(ValueError, match="tag order"):
        format_prompt(tags, "random")


def test_mert_layout_loads_as_hubert_and_features_follow_the_frame_rule(tiny_checkpoint: Path) -> None:
    paths = resolve_checkpoint(tiny_checkpoint)
    model = load_hubert(paths.mert)
    assert type(model).__name__ == "HubertModel" and model.config.do_stable_layer_norm
    ssl = SSLFeatureExtractor.from_pretrained(paths.mert, paths.mhubert)
    seconds = 7
    wavs = torch.randn(2, 2, 48000 * seconds) * 0.1
    mert, mhubert = ssl.extract(wavs, torch.tensor([48000 * seconds, 48000 * 4]))
    # MERT: 5 s chunks at 24 kHz, ceil(len / 320) frames each, capped at 374 per full chunk.
    assert mert[0].shape == (374 + -(-2 * 24000 // 320), 32)
    assert mert[1].shape[0] == -(-4 * 24000 // 320)
    assert mhubert[0].shape == (-(-seconds * 16000 // 320), 24)
    assert abs(mert[0].shape[0] / seconds - 75) < 1 and abs(mhubert[0].shape[0] / seconds - 50) < 1
    assert MERT_SPEC.chunk_samples == 120000


def test_an_existing_checkpoint_is_never_overwritten(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from acestep.tiny_checkpoint import main as tiny_main

    weights = tiny_checkpoint / "ace_step_transformer" / "diffusion_pytorch_model.safetensors"
    before = weights.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        tiny_main([str(tiny_checkpoint), "--seed", "3"])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "--overwrite" in message and "ace_step_transformer" in message
    assert weights.read_bytes() == before
    real = tmp_path / "real"
    (real / "music_dcae_f8c8").mkdir(parents=True)
    (real / "music_dcae_f8c8" / "weights.bin").write_bytes(b"a real model")
    with pytest.raises(SystemExit):
        tiny_main([str(real)])
    assert [p.name for p in real.rglob("*")] == ["music_dcae_f8c8", "weights.bin"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_checkpoint_files_have_ordinary_permissions(tiny_checkpoint: Path) -> None:
    from acestep.core.atomic import readable_file_mode

    modes = {str(p.relative_to(tiny_checkpoint)): p.stat().st_mode & 0o777
             for p in tiny_checkpoint.rglob("*") if p.is_file()}
    assert {name for name, mode in modes.items() if mode != readable_file_mode()} == set()


def test_a_truncated_weight_file_is_one_line_in_every_stage(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from acestep.families.preprocess import main as preprocess_main
    from acestep.families.training import main as train_main
    from acestep.lora.cli import main as lora_main

    damaged = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, damaged)
    weights = damaged / "ace_step_transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="damaged weight file.*ace_step_transformer"):
        resolve_checkpoint(damaged)
    from training_helpers import synthetic_songs

    synthetic_songs([6]).save_to_disk(str(tmp_path / "prep"))
    commands = [
        (train_main, ["--dataset_path", str(tmp_path / "prep"), "--checkpoint_dir", str(damaged),
                      "--output_dir", str(tmp_path / "runs")]),
        (preprocess_main, ["--input_name", str(tmp_path), "--output_dir", str(tmp_path / "p"),
                           "--checkpoint_dir", str(damaged)]),
        (lora_main, ["merge", str(damaged), str(tmp_path / "lora.safetensors"), str(tmp_path / "m")]),
    ]
    for main, argv in commands:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        message = str(exit_info.value.code)
        assert message.startswith("error: ") and "\n" not in message, message
        assert "damaged weight file" in message and str(weights) in message, message
