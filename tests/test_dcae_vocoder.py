"""Mel front-end, DC-AE wrapper and vocoder: the reference's lengths, layout and parameter counts."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderDC

from acestep.audio import resampled_length
from acestep.families.v1.models.dcae import (
    CROSSFADE,
    PUBLISHED_DCAE_CONFIG,
    MusicDCAE,
    decoded_length,
    latent_length_for_samples,
    overlapped_decoded_length,
    tiny_dcae_config,
)
from acestep.families.v1.models.mel import (
    LogMelSpectrogram,
    denormalize_mel,
    normalize_mel,
    slaney_mel_filterbank,
)
from acestep.families.v1.models.vocoder import ADaMoSHiFiGANV1, tiny_vocoder_config

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
    assert audio48[0].shape == (2, decoded_length(latents.shape[-1], 48000))
    assert torch.isfinite(audio[0]).all() and audio[0].abs().max() <= 1.0


def torchaudio_length(num_samples: int, orig: int, new: int) -> int:
    """torchaudio's Resample output length, written out: ceil(torch.as_tensor(new' * n / orig')), rates / gcd."""
    gcd = math.gcd(orig, new)
    return int(torch.ceil(torch.as_tensor((new // gcd) * num_samples / (orig // gcd))).item())


def test_resampled_length_rounds_like_the_reference() -> None:
    # 539,446 samples at 48 kHz: 495,616.0125 exactly, 495,616 after float32 rounding -> 121 frames, not 122.
    assert resampled_length(539_446, 48000, 44100) == 495_616
    assert latent_length_for_samples(539_446) == 121
    for n in range(539_000, 541_000, 7):
        assert resampled_length(n, 48000, 44100) == torchaudio_length(n, 48000, 44100), n
    # Decoding T latent frames at 48 kHz: the float32 rule is one sample shorter than the exact ceil for many T.
    shorter = 0
    for frames in range(1, 4000):
        exact = -(-frames * 4096 * 160 // 147)
        assert decoded_length(frames, 48000) == torchaudio_length(frames * 4096, 44100, 48000), frames
        shorter += decoded_length(frames, 48000) == exact - 1
    assert 0.3 < shorter / 3999 < 0.45
    assert decoded_length(100) == 409_600 and overlapped_decoded_length(100, 48000) == 100 * 4096 * 48000 // 44100


def test_mel_filterbank_is_built_in_float32_like_torchaudio() -> None:
    """Slaney scale and area normalisation evaluated in float32 the way torchaudio's melscale_fbanks is."""
    f_sp, logstep = 200.0 / 3, math.log(6.4) / 27.0
    min_log_mel = 1000.0 / f_sp

    def hz_to_mel(hz: float) -> float:
        return hz / f_sp if hz < 1000.0 else min_log_mel + math.log(hz / 1000.0) / logstep

    mels = torch.linspace(hz_to_mel(40.0), hz_to_mel(16000.0), 130)
    hz = torch.where(mels >= min_log_mel, 1000.0 * torch.exp(logstep * (mels - min_log_mel)), f_sp * mels)
    freqs = torch.linspace(0, 22050, 1025)[:, None]
    low, centre, high = hz[None, :-2], hz[None, 1:-1], hz[None, 2:]
    rising = (freqs - low) / (centre - low)
    falling = (high - freqs) / (high - centre)
    expected = torch.clamp(torch.minimum(rising, falling), min=0.0) * (2.0 / (high - low))
    fb = slaney_mel_filterbank()
    assert fb.dtype == torch.float32 and torch.equal(fb, expected)


class PositionVocoder:
    """A stand-in vocoder whose sample j of a block is 1000 x (mel value of its frame) + j, so each output
    sample says which block produced it and at which position; padded frames (log-mel 0) give just j."""

    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        frames = mel[:, 0].double().repeat_interleave(512, dim=-1)
        return (1000 * frames + torch.arange(frames.shape[-1], dtype=torch.float64))[:, None]


def test_overlapped_vocoder_seams_follow_the_reference(tiny_dcae: MusicDCAE) -> None:
    """Blocks start every 260096 samples; a block's samples [896, 1024) fade (linspace 1->0 / 0->1) into the
    last 128 kept samples of the previous block, which drops its own last 1024; the last block is padded
    with log-mel 0 and kept whole."""
    frames = 1100
    mel = torch.arange(1, frames + 1, dtype=torch.float32)[None, None].repeat(2, 128, 1)
    wav = MusicDCAE(tiny_dcae.dcae, PositionVocoder())._vocode_overlapped(mel)

    def block(start: int, position: torch.Tensor) -> torch.Tensor:
        frame = (start + position) // 512
        value = torch.where(frame < frames, frame + 1, torch.zeros_like(frame)).double()
        return 1000 * value + position

    starts = [0, 260096, 520192]  # 520192 + 260096 >= 1100 * 512: the third block is the last
    g = torch.arange(starts[-1] + 512 * 512)
    expected = torch.empty(g.shape[0], dtype=torch.float64)
    for k, start in enumerate(starts):
        own = (g >= start + (1024 if k else 0)) & (g < start + 512 * 512 - (1024 if k < len(starts) - 1 else 0))
        expected[own] = block(start, g[own] - start)
        if k:
            fade = (g >= start + 1024 - CROSSFADE) & (g < start + 1024)
            previous = block(starts[k - 1], g[fade] - starts[k - 1])
            expected[fade] = previous * torch.linspace(1, 0, CROSSFADE) + block(start, g[fade] - start) * torch.linspace(0, 1, CROSSFADE)
    assert wav.shape == (2, g.shape[0])
    # float32 output (values up to 1.4e6): a misplaced fade or block would be off by thousands.
    torch.testing.assert_close(wav[0].double(), expected, rtol=0, atol=1.0)
    torch.testing.assert_close(wav[1], wav[0])


def test_overlapped_decode_length_and_closeness(tiny_dcae: MusicDCAE) -> None:
    torch.manual_seed(3)
    latents = torch.randn(1, 8, 16, 520)  # two DC-AE windows, nine vocoder blocks (the stand-in vocoder)
    audio = MusicDCAE(tiny_dcae.dcae, PositionVocoder()).decode(latents, sr=48000, overlapped=True)[0]
    assert audio.shape == (2, overlapped_decoded_length(520, 48000)) == (2, 520 * 4096 * 48000 // 44100)
    assert torch.isfinite(audio).all()
    # The real (tiny) vocoder: overlapped and whole-song output agree away from the song's last block.
    mel = (torch.randn(2, 128, 600).cumsum(-1) * 0.05).clamp(-6, 2) - 4
    whole, blocks = tiny_dcae._vocode(mel), tiny_dcae._vocode_overlapped(mel)[..., : 600 * 512]
    assert (whole - blocks)[..., :-8192].abs().max() < 1e-3


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


def upstream_channels_first_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference vocoder's channels-first LayerNorm formula, step by step in x's dtype."""
    mean = torch.mean(x, 1, keepdim=True)
    variance = torch.mean((x - mean) ** 2, 1, keepdim=True)
    normed = (x - mean) / (variance + eps).sqrt()
    return weight.view(1, -1, 1) * normed + bias.view(1, -1, 1)


def test_vocoder_channels_first_norm_follows_the_reference_formula_in_bf16() -> None:
    """In bf16 the reference's hand-written mean/variance differ from F.layer_norm (float32 inside) by ~1e-2."""
    from acestep.families.v1.models.vocoder import LN_EPS, ChannelsFirstLayerNorm

    torch.manual_seed(0)
    norm = ChannelsFirstLayerNorm(64)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
    x = torch.randn(2, 64, 300) * 3 + 1
    torch.testing.assert_close(norm(x), upstream_channels_first_norm(x, norm.weight, norm.bias, LN_EPS),
                               rtol=1e-5, atol=1e-5)
    norm = norm.to(torch.bfloat16)
    x = x.to(torch.bfloat16)
    with torch.no_grad():
        ours = norm(x)
        expected = upstream_channels_first_norm(x, norm.weight, norm.bias, LN_EPS)
        fused = torch.nn.functional.layer_norm(x.transpose(1, 2), (64,), norm.weight, norm.bias, LN_EPS).transpose(1, 2)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, expected)
    assert not torch.equal(fused, expected)  # the two formulas really differ in bf16, so the check above means something


def test_log_mel_of_a_batch_and_of_stereo_equals_each_mono_channel_bit_for_bit() -> None:
    """Long inputs are where a batched matmul picks other kernels (it differed by 3.6e-7 at 130 latent frames)."""
    torch.manual_seed(0)
    mel = LogMelSpectrogram()
    wavs = torch.randn(2, 2, 4096 * 130) * 0.3
    batched, stereo = mel(wavs), [mel(wav) for wav in wavs]
    for item in range(2):
        for channel in range(2):
            mono = mel(wavs[item, channel][None])[0]
            assert torch.equal(batched[item, channel], mono)
            assert torch.equal(stereo[item][channel], mono)


def test_encode_of_a_batch_equals_each_song_encoded_alone(tiny_dcae: MusicDCAE) -> None:
    torch.manual_seed(1)
    wavs = torch.randn(3, 2, 48000 * 13) * 0.3
    latents, lengths = tiny_dcae.encode(wavs, torch.tensor([48000 * 13, 48000 * 9, 48000 * 5]))
    for item in range(3):
        alone, alone_length = tiny_dcae.encode(wavs[item : item + 1], torch.tensor([wavs.shape[-1]]))
        assert torch.equal(latents[item], alone[0])
    assert lengths.tolist()[0] == alone_length.item()
