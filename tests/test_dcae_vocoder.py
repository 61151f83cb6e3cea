"""Mel front-end, DC-AE wrapper and vocoder: the reference's lengths, layout and parameter counts."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderDC

from acestep.models.dcae import PUBLISHED_DCAE_CONFIG, MusicDCAE, latent_length_for_samples, tiny_dcae_config
from acestep.models.mel import LogMelSpectrogram, denormalize_mel, normalize_mel, slaney_mel_filterbank
from acestep.models.vocoder import ADaMoSHiFiGANV1, tiny_vocoder_config

warnings.filterwarnings("ignore", message=".*weight_norm.*")


@pytest.fixture(scope="module")
def tiny_dcae() -> MusicDCAE:
    torch.manual_seed(0)
    return MusicDCAE(AutoencoderDC(**tiny_dcae_config()).eval(), ADaMoSHiFiGANV1(**tiny_vocoder_config()).eval())


@pytest.mark.parametrize(("samples", "frames"), [(4096, 8), (132300, 258), (2646000, 5167)])
def test_mel_frame_counts_match_reference(samples: int, frames: int) -> None:
    assert LogMelSpectrogram()(torch.zeros(2, samples) + 0.01).shape == (2, 128, frames)


def test_mel_floor_normalisation_and_filterbank() -> None:
    mel = LogMelSpectrogram()(torch.zeros(1, 8192))
    # Silence: every bin has magnitude sqrt(1e-6), so mel = log(max(1e-3 * filter area, 1e-5)).
    expected = torch.log(torch.clamp(slaney_mel_filterbank().sum(0) * 1e-3, min=1e-5))
    torch.testing.assert_close(mel[0, :, 0], expected, rtol=1e-4, atol=1e-4)
    assert mel.min().item() >= torch.log(torch.tensor(1e-5)).item() - 1e-6
    assert normalize_mel(torch.tensor(-4.0)).item() == pytest.approx(0.0)
    assert normalize_mel(torch.tensor(3.0)).item() == pytest.approx(1.0)
    assert normalize_mel(torch.tensor(-11.513)).item() == pytest.approx(-1.0733, abs=1e-4)  # no clip
    assert denormalize_mel(normalize_mel(torch.tensor(1.234))).item() == pytest.approx(1.234)
    fb = slaney_mel_filterbank()
    assert fb.shape == (1025, 128)
    # No energy below 40 Hz or above 16 kHz (bins are 21.5 Hz apart).
    assert fb[:1].abs().sum() == 0 and fb[int(16000 / 21.533) + 2 :].abs().sum() == 0


@pytest.mark.parametrize(("seconds", "frames"), [(30, 323), (60, 646), (240, 2584), (360, 3876)])
def test_latent_length_rule(seconds: int, frames: int) -> None:
    assert latent_length_for_samples(seconds * 48000) == frames


def test_encode_decode_shapes(tiny_dcae: MusicDCAE) -> None:
    wav = torch.randn(2, 2, 48000 * 5) * 0.1
    latents, lengths = tiny_dcae.encode(wav, torch.tensor([48000 * 5, 48000 * 3]))
    assert latents.shape == (2, 8, 16, latent_length_for_samples(48000 * 5))
    assert lengths.tolist() == [53, 32]  # floor(T / sr * 44100 / 4096)
    audio = tiny_dcae.decode(latents)
    assert len(audio) == 2 and audio[0].shape == (2, latents.shape[-1] * 4096)
    audio48 = tiny_dcae.decode(latents[:1], sr=48000)
    assert audio48[0].shape == (2, -(-latents.shape[-1] * 4096 * 48000 // 44100))
    assert torch.isfinite(audio[0]).all() and audio[0].abs().max() <= 1.0


def test_overlapped_decode_keeps_the_length(tiny_dcae: MusicDCAE) -> None:
    latents = torch.randn(1, 8, 16, 700)
    audio = tiny_dcae.decode(latents, overlapped=True)[0]
    assert audio.shape == (2, 700 * 4096)
    assert torch.isfinite(audio).all()


def test_vocoder_output_length_and_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vocoder = ADaMoSHiFiGANV1(**tiny_vocoder_config()).eval()
    mel = torch.randn(3, 128, 12)
    assert vocoder.decode(mel).shape == (3, 1, 12 * 512)
    vocoder.save_pretrained(tmp_path)
    loaded, info = ADaMoSHiFiGANV1.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(loaded.eval().decode(mel), vocoder.decode(mel))
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "ADaMoSHiFiGANV1"


def test_published_vocoder_layout() -> None:
    with torch.device("meta"):
        vocoder = ADaMoSHiFiGANV1()
    state = vocoder.state_dict()
    params = dict(vocoder.named_parameters())
    assert sum(p.numel() for p in params.values()) == 103_005_138
    assert sum(p.numel() for n, p in params.items() if n.startswith("backbone.")) == 19_419_136
    assert {"head.conv_pre.weight_g", "head.conv_pre.weight_v", "head.resblocks.27.convs2.2.weight_v",
            "head.ups.6.weight_g", "backbone.stages.2.8.gamma", "backbone.channel_layers.3.1.weight"} <= set(state)
    assert not any(key.startswith("mel_transform") for key in state)
    assert not any(key.endswith(".weight") and ("head.conv" in key or "head.ups" in key) for key in state)


def test_published_dcae_config_builds(reference_dir: Path) -> None:
    config = json.loads((reference_dir / "music_dcae_f8c8_config.json").read_text())
    assert {k: v for k, v in config.items() if not k.startswith("_")} == PUBLISHED_DCAE_CONFIG
    with torch.device("meta"):
        dcae = AutoencoderDC.from_config(config)
    assert sum(p.numel() for p in dcae.parameters()) == 156_812_426
    assert len(dcae.state_dict()) == 192
