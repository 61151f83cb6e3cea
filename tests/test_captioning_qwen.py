"""Qwen2.5-Omni through transformers, on the tiny random thinker of acestep.captioning.tiny_omni (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from acestep.captioning.caption import Answer, CaptionSettings
from acestep.captioning.cli import main_transformers
from acestep.captioning.clips import MODEL_SAMPLE_RATE
from acestep.captioning.parse import parse_tags
from acestep.captioning.qwen_omni import (
    AUDIO_TOKEN,
    MISSING_GPTQMODEL,
    QwenOmniBackend,
    audio_token_count,
    chat_prefix,
    chat_suffix,
)
from acestep.captioning.runner import RunOptions, caption_folder
from acestep.captioning.tiny_omni import MEL_BINS, write_tiny_qwen_omni
from acestep.core.errors import CheckpointError


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen_omni(tmp_path_factory.mktemp("tiny_qwen_omni"))


def write_song(path: Path, seconds: float, sample_rate: int = 22_050) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sf.write(path, np.stack([0.2 * np.sin(2 * np.pi * 220.0 * t)] * 2, axis=1), sample_rate)
    return path


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 99, 100, 101, 200, 1234, 2999, 3000])
def test_audio_token_count_matches_the_audio_encoder(tiny_model: Path, frames: int) -> None:
    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_model).eval()
    features = torch.randn(1, MEL_BINS, 3000)
    mask = torch.zeros(1, 3000, dtype=torch.long)
    mask[0, :frames] = 1
    with torch.no_grad():
        out = thinker.get_audio_features(features, feature_attention_mask=mask)
    assert out.last_hidden_state.shape[0] == audio_token_count(frames)


def test_prompt_layout_follows_the_omni_chat_template(tiny_model: Path) -> None:
    backend = QwenOmniBackend.from_pretrained(str(tiny_model), device="cpu")
    captured = {}
    original = backend.thinker.generate

    def spy(**kwargs):
        captured.update(kwargs)
        return original(**kwargs)

    backend.thinker.generate = spy
    backend.ask(np.zeros(int(2.5 * MODEL_SAMPLE_RATE), np.float32), "Tags please.", 4)
    text = backend.tokenizer.decode(captured["input_ids"][0])
    n_audio = audio_token_count(250)  # 2.5 s = 250 feature frames of 10 ms
    assert text == chat_prefix() + "<|audio_bos|>" + AUDIO_TOKEN * n_audio + "<|audio_eos|>" + chat_suffix(
        "Tags please."
    )
    assert text.startswith("<|im_start|>system\nYou are Qwen") and text.endswith("<|im_start|>assistant\n")
    assert captured["input_features"].shape == (1, MEL_BINS, 3000)
    assert int(captured["feature_attention_mask"].sum()) == 250


def test_the_script_writes_what_the_model_says(tmp_path: Path, capsys) -> None:
    model = write_tiny_qwen_omni(tmp_path / "model", answer="rock, piano, upbeat")
    data = tmp_path / "songs"
    data.mkdir()
    write_song(data / "short.wav", 3.0)
    write_song(data / "long.wav", 40.0)  # two lyric pieces: 30 s + 10 s
    argv = ["--data_dir", str(data), "--lyrics", "--model", str(model), "--device", "cpu", "--no_progress"]
    assert main_transformers(argv) == 0
    for stem in ("short", "long"):
        assert (data / f"{stem}_prompt.txt").read_text(encoding="utf-8") == "rock, piano, upbeat\n"
    assert (data / "short_lyrics.txt").read_text(encoding="utf-8") == "rock, piano, upbeat\n"
    assert (data / "long_lyrics.txt").read_text(
        encoding="utf-8"
    ) == "rock, piano, upbeat\nrock, piano, upbeat\n"
    assert "2 files, 2 complete, 0 with failures" in capsys.readouterr().out


def test_random_answers_are_written_valid_or_reported(tiny_model: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "songs"
    data.mkdir()
    write_song(data / "short.wav", 3.0)
    code = main_transformers(
        ["--data_dir", str(data), "--model", str(tiny_model), "--device", "cpu", "--no_progress"]
    )
    out = capsys.readouterr().out
    assert code in (0, 1)
    prompt = data / "short_prompt.txt"
    if prompt.exists():  # garbage answers either parse to valid tags ...
        tags = prompt.read_text(encoding="utf-8").strip().split(", ")
        assert tags and parse_tags(", ".join(tags)) == tags
    else:  # ... or the file is reported, never written empty
        assert "short.wav: no usable tags" in out or "short.wav: unusable tags answer" in out


def test_silent_model_fails_files_instead_of_writing_empty_sidecars(tmp_path: Path, capsys) -> None:
    model = write_tiny_qwen_omni(tmp_path / "silent", silent_head=True)
    data = tmp_path / "songs"
    data.mkdir()
    write_song(data / "a.wav", 2.0)
    code = main_transformers(
        ["--data_dir", str(data), "--lyrics", "--model", str(model), "--device", "cpu", "--no_progress"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert sorted(p.name for p in data.iterdir()) == ["a.wav"]
    assert "tags: " in out and "no usable tags in the model's answer: ''" in out
    assert "lyrics: " in out and "empty answer" in out


def test_full_omni_checkpoint_layout_loads_the_thinker(tiny_model: Path, tmp_path: Path) -> None:
    """The published repo stores the whole Omni model: config with thinker_config, weights prefixed `thinker.`."""
    full = tmp_path / "full_omni"
    full.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (full / name).write_bytes((tiny_model / name).read_bytes())
    thinker_config = json.loads((tiny_model / "config.json").read_text(encoding="utf-8"))
    config = {
        "model_type": "qwen2_5_omni",
        "architectures": ["Qwen2_5OmniForConditionalGeneration"],
        "thinker_config": thinker_config,
        "enable_audio_output": True,
    }
    (full / "config.json").write_text(json.dumps(config), encoding="utf-8")
    # save_pretrained writes the legacy thinker names; the published file has them under `thinker.`
    published = {
        "thinker." + key: value for key, value in load_file(tiny_model / "model.safetensors").items()
    }
    published["talker.codec_head.weight"] = torch.zeros(2, 2)  # parts the thinker must ignore
    for name in (
        "thinker.model.layers.0.mlp.down_proj.weight",
        "thinker.audio_tower.conv1.weight",
        "thinker.lm_head.weight",
    ):
        assert name in published
    save_file(published, full / "model.safetensors")

    backend = QwenOmniBackend.from_pretrained(str(full), device="cpu")
    expected = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_model).state_dict()
    loaded = backend.thinker.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_gptq_checkpoint_without_gptqmodel_says_what_to_install(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    gptq = tmp_path / "gptq"
    gptq.mkdir()
    for path in tiny_model.iterdir():
        (gptq / path.name).write_bytes(path.read_bytes())
    config = json.loads((gptq / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (gptq / "config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.setitem(__import__("sys").modules, "gptqmodel", None)
    with pytest.raises(CheckpointError) as err:
        QwenOmniBackend.from_pretrained(str(gptq), device="cpu")
    assert str(err.value) == MISSING_GPTQMODEL.format(model=gptq, default="Qwen/Qwen2.5-Omni-7B")
    assert "pip install 'acestep-lora-trainer[gptq]'" in str(err.value)


def test_missing_model_folder_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read the captioning model config"):
        QwenOmniBackend.from_pretrained(str(tmp_path / "nowhere"), device="cpu")


def test_an_answer_cut_off_at_max_new_tokens_is_flagged(tmp_path: Path) -> None:
    looping = QwenOmniBackend.from_pretrained(
        str(write_tiny_qwen_omni(tmp_path / "loop", answer="la ", repeat=True)), device="cpu"
    )
    clip = np.zeros(MODEL_SAMPLE_RATE, np.float32)
    assert looping.ask(clip, "Lyrics please.", 6) == Answer("la " * 6, truncated=True)
    stops = QwenOmniBackend.from_pretrained(
        str(write_tiny_qwen_omni(tmp_path / "stops", answer="rock, piano, upbeat")), device="cpu"
    )
    assert stops.ask(clip, "Tags please.", 6) == Answer("rock, piano, upbeat", truncated=False)
    assert stops.ask(clip, "Tags please.", 1) == Answer("rock, piano, upbeat", truncated=True)


def test_looping_lyrics_are_reported_and_not_written(tmp_path: Path) -> None:
    backend = QwenOmniBackend.from_pretrained(
        str(write_tiny_qwen_omni(tmp_path / "loop", answer="la ", repeat=True)), device="cpu"
    )
    data = tmp_path / "songs"
    data.mkdir()
    write_song(data / "a.wav", 2.0)
    options = RunOptions(lyrics=True, settings=CaptionSettings(tag_tokens=8, lyrics_tokens=24))
    (report,) = caption_folder(data, lambda: backend, options, progress=False)
    assert sorted(p.name for p in data.iterdir()) == ["a.wav"]
    assert report.errors == [
        f"tags: {data / 'a.wav'}: unusable tags answer (cut off at the 8-token answer limit): '{'la ' * 7}la'",
        f"lyrics: {data / 'a.wav'}: unusable lyrics answer: cut off at the 24-token answer limit: "
        f"'{'la ' * 23}la'",
    ]


def test_an_unloadable_model_is_loaded_once_and_stops_in_one_line(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text("{not json", encoding="utf-8")
    data = tmp_path / "songs"
    data.mkdir()
    for name in ("a", "b", "c", "d"):
        write_song(data / f"{name}.wav", 1.0)
    loads = []
    original = QwenOmniBackend.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        loads.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(QwenOmniBackend, "from_pretrained", classmethod(counted))
    argv = ["--data_dir", str(data), "--lyrics", "--model", str(model), "--device", "cpu", "--no_progress"]
    assert main_transformers(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert loads == [1]
    assert err[0] == f"loading {model} ..."
    assert len(err) == 2 and err[1].startswith(f"error: cannot read the captioning model config of {model}")


def test_the_published_layout_the_converter_reads_loads_and_answers(tmp_path: Path) -> None:
    """The layout scripts/llama_server_fixture.sh converts: the same answer through transformers."""
    model = write_tiny_qwen_omni(tmp_path / "full", answer="rock, piano, upbeat", full_omni=True)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["Qwen2_5OmniModel"] and "thinker_config" in config
    backend = QwenOmniBackend.from_pretrained(str(model), device="cpu")
    clip = np.zeros(MODEL_SAMPLE_RATE, np.float32)
    assert backend.ask(clip, "Tags please.", 8) == Answer("rock, piano, upbeat", truncated=False)


def test_the_tiny_model_writer_never_writes_into_a_full_folder(tmp_path: Path, capsys) -> None:
    from acestep.captioning.tiny_omni import main

    (tmp_path / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2 and "is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_stage1_prints_a_non_ascii_song_name_on_a_cp1252_console(tmp_path: Path) -> None:
    """Windows consoles and logs in cp1252 cannot encode 東京: stage 1 must print it escaped, not crash."""
    import os
    import subprocess
    import sys

    model = write_tiny_qwen_omni(tmp_path / "model", answer="rock, piano, upbeat")
    data = tmp_path / "songs"
    data.mkdir()
    write_song(data / "東京 ballad.wav", 3.0)
    (data / "壊れた.wav").write_bytes(b"RIFF\x00\x00 not audio")
    script = Path(__file__).resolve().parents[1] / "generate_prompts_lyrics.py"
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    done = subprocess.run(
        [sys.executable, str(script), "--data_dir", str(data), "--model", str(model), "--device", "cpu"],
        capture_output=True, env=env, timeout=300, check=False,
    )
    output = (done.stdout + done.stderr).decode("cp1252")
    assert "UnicodeEncodeError" not in output and "Traceback" not in output, output
    assert (data / "東京 ballad_prompt.txt").read_text(encoding="utf-8") == "rock, piano, upbeat\n"
    assert "\\u58ca" in output  # the broken file is named, escaped
    assert done.returncode == 1, output  # one file failed
