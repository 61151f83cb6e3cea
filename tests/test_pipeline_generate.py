"""Generation on the tiny checkpoint: determinism, the length rule, LoRA strength and file formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from acestep.core.errors import InputError
from acestep.data.generate_args import read_lyrics
from acestep.families.v1.pipeline.cli import main, save_outputs
from acestep.families.v1.pipeline.erg import proportional_indices
from acestep.families.v1.pipeline.pipeline import (
    ACEStepPipeline,
    GenerationParams,
    latent_frames,
    output_samples,
)
from acestep.lora import LoraSettings, bake_file, save_adapter
from acestep.lora.loading import load_loras, parse_lora

REPO = Path(__file__).resolve().parents[1]
FAST = {"steps": 4, "duration": 1.5, "guidance_interval": 1.0}


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint: Path) -> ACEStepPipeline:
    return ACEStepPipeline.from_checkpoint(tiny_checkpoint)


def params(**overrides) -> GenerationParams:
    return GenerationParams(**{"prompt": "pop, piano", "lyrics": "[verse]\nhello world", **FAST, **overrides})


def test_length_rule() -> None:
    assert latent_frames(60) == 645 and latent_frames(240) == 2583
    assert output_samples(30) == 322 * 4096
    # torchaudio's length rule: ceil(float32(4096 T * 160 / 147)); 1,435,550.48 -> 1,435,551 here.
    assert output_samples(30, 48000) == int(np.ceil(np.float32(322 * 4096 * 160 / 147))) == 1_435_551
    # 160 frames: exactly 713,317.0068 but 713,317.0 in float32, one sample shorter than the exact ceil.
    assert latent_frames(15) == 161 and output_samples(14.9, 48000) == 713_317
    # Overlapped decode (songs over 48 s) truncates to int(4096 T * sr / 44100) instead.
    assert output_samples(60, 48000, overlapped=True) == 645 * 4096 * 48000 // 44100
    assert output_samples(30, 48000, overlapped=True) == output_samples(30, 48000)
    with pytest.raises(ValueError, match="too short"):
        latent_frames(0.05)


def test_erg_layer_mapping() -> None:
    assert proportional_indices(24, range(15, 20), 24) == [15, 16, 17, 18, 19]
    assert proportional_indices(12, range(8, 10), 12) == [8, 9]
    assert proportional_indices(3, range(15, 20), 24) == [1]
    assert proportional_indices(2, range(8, 10), 12) == [1]


def test_same_seed_same_audio_and_length(pipeline: ACEStepPipeline) -> None:
    first = pipeline.generate(params(), seeds=[1, 2])
    again = pipeline.generate(params(), seeds=[1])
    assert len(first) == 2
    assert first[0].shape == (2, output_samples(FAST["duration"], 48000))  # the reference's and the CLI's rate
    torch.testing.assert_close(first[0], again[0], rtol=0, atol=1e-6)
    assert not torch.allclose(first[0], first[1])
    assert torch.isfinite(first[0]).all() and first[0].abs().max() <= 1.0
    assert pipeline.generate(params(lyrics="", cfg_type="cfg", use_erg_tag=False), sample_rate=44100)[0].shape == (
        2, output_samples(FAST["duration"], 44100))


def _trained_adapter(pipeline: ACEStepPipeline, folder: Path) -> Path:
    settings = LoraSettings(r=4, lora_alpha=2.0, use_rslora=True, target_modules=("to_q", "to_k", "to_v", "to_out.0"))
    donor = type(pipeline.transformer).from_config(pipeline.transformer.config)
    donor.add_adapter(LoraConfig(**settings.to_peft_kwargs()))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in donor.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    return save_adapter(get_peft_model_state_dict(donor), folder, settings)


def test_lora_strength_zero_is_base_and_trained_lora_changes_output(pipeline: ACEStepPipeline, tmp_path: Path) -> None:
    adapter = _trained_adapter(pipeline, tmp_path / "run")
    baked = bake_file(adapter, tmp_path / "baked.safetensors")
    base = pipeline.sample_latents(params(), [3])
    names = load_loras(pipeline.transformer, [(adapter, 0.0)])
    try:
        torch.testing.assert_close(pipeline.sample_latents(params(), [3]), base, rtol=0, atol=1e-6)
        pipeline.transformer.set_adapters(names, [1.0])
        with_lora = pipeline.sample_latents(params(), [3])
        assert (with_lora - base).abs().max() > 1e-3
    finally:
        pipeline.transformer.delete_adapters(names)
    names = load_loras(pipeline.transformer, [(baked, 1.0)])
    try:
        torch.testing.assert_close(pipeline.sample_latents(params(), [3]), with_lora, rtol=1e-4, atol=1e-4)
    finally:
        pipeline.transformer.delete_adapters(names)
    torch.testing.assert_close(pipeline.sample_latents(params(), [3]), base, rtol=0, atol=1e-6)


def test_parse_lora_specs() -> None:
    assert parse_lora("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert parse_lora("a.safetensors") == ("a.safetensors", 1.0)
    assert parse_lora(r"C:\loras\a.safetensors") == (r"C:\loras\a.safetensors", 1.0)
    assert parse_lora(r"C:\loras\a.safetensors:0.7") == (r"C:\loras\a.safetensors", 0.7)


@pytest.mark.slow
def test_cli_writes_wavs_and_parameters(tiny_checkpoint: Path, tmp_path: Path) -> None:
    lyrics = tmp_path / "Song.TXT"
    lyrics.write_text("[verse]\nhello there", encoding="utf-8")
    command = [sys.executable, str(REPO / "generate.py"), "--prompt", "rock, drums", "--duration", "1.2", "--steps",
               "3", "--seed", "5", "6", "--lyrics", str(lyrics), "--checkpoint_dir", str(tiny_checkpoint),
               "--out_dir", str(tmp_path / "out"), "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "sampling" in result.stderr and "3/3" in result.stderr  # the progress bar, as lines in a log
    for seed in (5, 6):
        wavs = list((tmp_path / "out").glob(f"ace_*_seed{seed}.wav"))  # time-stamped names
        assert len(wavs) == 1
        for wav in wavs:
            audio, rate = sf.read(wav)
            assert rate == 48000 and audio.shape == (output_samples(1.2, 48000), 2)
            saved = json.loads(wav.with_suffix(".json").read_text())
            assert saved["seed"] == seed and saved["prompt"] == "rock, drums" and saved["steps"] == 3
            assert saved["lyrics"] == "[verse]\nhello there" and saved["sample_rate"] == 48000
    bad = subprocess.run([sys.executable, str(REPO / "generate.py"), "--prompt", "x", "--checkpoint_dir",
                          str(tmp_path / "missing")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:")


def test_outputs_never_replace_existing_files(tmp_path: Path) -> None:
    wav = torch.zeros(2, 100)
    first = save_outputs([wav, wav], params(), [1, 2], tmp_path, 48000, stamp="20260101-000000")
    second = save_outputs([wav], params(), [1], tmp_path, 48000, stamp="20260101-000000")
    assert [p.name for p in first] == ["ace_20260101-000000_seed1.wav", "ace_20260101-000000_seed2.wav"]
    assert [p.name for p in second] == ["ace_20260101-000000_seed1_2.wav"]
    (tmp_path / "ace_seed3.json").write_text("{}")  # a JSON alone also holds its name
    assert save_outputs([wav], params(), [3], tmp_path, 48000)[0].name == "ace_seed3_2.wav"
    assert json.loads((tmp_path / "ace_seed3.json").read_text()) == {}
    assert json.loads(second[0].with_suffix(".json").read_text())["seed"] == 1


def test_lyrics_argument_names_a_file_or_is_the_lyrics(tmp_path: Path) -> None:
    upper = tmp_path / "x.TXT"
    upper.write_text("\ufeff[chorus]\nla la", encoding="utf-8")
    assert read_lyrics(str(upper)) == "[chorus]\nla la"
    other = tmp_path / "words"
    other.write_text("any file", encoding="utf-8")
    assert read_lyrics(str(other)) == "any file"
    assert read_lyrics("[verse]\nsing this") == "[verse]\nsing this"
    assert read_lyrics("just one line") == "just one line"
    with pytest.raises(InputError, match="lyrics file not found"):
        read_lyrics(str(tmp_path / "missing.Txt"))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_lyrics(str(latin))


@pytest.mark.parametrize("problem", ["missing", "latin-1"])
def test_cli_lyrics_errors_are_one_line(tmp_path: Path, problem: str, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "song.TXT"
    if problem == "latin-1":
        path.write_bytes("\xe9t\xe9".encode("latin-1"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--prompt", "x", "--lyrics", str(path), "--checkpoint_dir", str(tmp_path / "never_loaded")])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message and "song.TXT" in message


def test_generate_defaults_to_the_clis_and_the_references_48_khz() -> None:
    import inspect

    from acestep.families.v1.pipeline.cli import DEFAULT_SAMPLE_RATE, build_parser

    default = inspect.signature(ACEStepPipeline.generate).parameters["sample_rate"].default
    assert default == DEFAULT_SAMPLE_RATE == 48000
    assert build_parser().parse_args(["--prompt", "pop"]).sample_rate == 48000


def test_device_and_dtype_auto_resolve_as_the_old_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """--device/--dtype default to auto (so --help needs no torch); a run resolves them as the old defaults did."""
    from acestep.data.generate_cli import resolve_device, torch_dtype
    from acestep.families.v1.pipeline.cli import build_parser

    args = build_parser().parse_args(["--prompt", "pop"])
    assert (args.device, args.dtype) == ("auto", "auto")
    for has_gpu, device, dtype in ((True, "cuda", torch.bfloat16), (False, "cpu", torch.float32)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda has_gpu=has_gpu: has_gpu)
        assert (resolve_device("auto"), torch_dtype("auto")) == (device, dtype)
    assert (resolve_device("cuda:1"), torch_dtype("float16")) == ("cuda:1", torch.float16)
