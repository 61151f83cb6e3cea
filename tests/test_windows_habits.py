"""Windows habits: files saved with a UTF-8 BOM (PowerShell 5's default) are read everywhere, and the trainer's
default LoRA config is found from any current folder."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

BOM = b"\xef\xbb\xbf"
PACKAGE = Path(__file__).resolve().parents[1] / "acestep"
LORA_CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": ["to_q", "to_k"]}
# readers of files this toolkit wrote itself (run metrics, stage-3 manifests and progress, render parameters)
OWN_FILES = {"callbacks.py", "validation.py", "preprocessed.py", "shards.py", "reg.py", "ssl.py"}


def bom_file(path: Path, text: str) -> Path:
    path.write_bytes(BOM + text.encode("utf-8"))
    return path


def test_every_reader_of_user_files_accepts_a_bom(tmp_path: Path) -> None:
    from acestep.data.generate_args import read_lyrics
    from acestep.data.reg import read_prompt_list
    from acestep.data.sidecars import read_music_metadata, read_sidecar
    from acestep.lora import LoraSettings
    from acestep.lora.io import load_adapter, settings_from_metadata
    from acestep.training.sample_prompts import read_sample_prompts

    config = bom_file(tmp_path / "lora.json", json.dumps(LORA_CONFIG))
    assert LoraSettings.from_json(config).r == 4  # trainer and generate.py --lora_config_path
    sample = {"prompt": "pop", "lyrics": "", "duration": 5, "seed": 1, "name": "a"}
    assert read_sample_prompts(bom_file(tmp_path / "samples.json", json.dumps([sample])), 8)[0].name == "a"
    toml = bom_file(tmp_path / "samples.toml", '[[samples]]\nprompt = "pop"\nname = "b"\n')
    assert read_sample_prompts(toml, 8)[0].name == "b"
    assert read_sidecar(bom_file(tmp_path / "s_prompt.txt", "pop, piano")) == "pop, piano"
    bom_file(tmp_path / "s_bpm_key.json", json.dumps({"bpm": 120, "key": "A minor"}))
    assert read_music_metadata(tmp_path / "s.wav")["keyscale"] == "A minor"
    assert read_lyrics(str(bom_file(tmp_path / "words.txt", "la la"))) == "la la"
    assert [song.prompt for song in read_prompt_list(bom_file(tmp_path / "reg.json", '["rock", "jazz"]'))] == [
        "rock", "jazz"]
    assert [song.prompt for song in read_prompt_list(bom_file(tmp_path / "reg.txt", "rock\njazz\n"))] == [
        "rock", "jazz"]
    peft = tmp_path / "peft"
    peft.mkdir()
    save_file({"base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 8),
               "base_model.model.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(8, 4)},
              str(peft / "adapter_model.safetensors"))
    bom_file(peft / "adapter_config.json", json.dumps({**LORA_CONFIG, "peft_type": "LORA"}))
    settings = settings_from_metadata(load_adapter(peft / "adapter_model.safetensors")[1])
    assert settings is not None and settings.lora_alpha == 8


def test_a_bom_in_a_1_5_checkpoint_config_is_read(tiny_v15_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    from acestep.families.v15.checkpoint import resolve

    root = tmp_path / "original"
    shutil.copytree(tiny_v15_checkpoint / "original", root)
    config = root / "acestep-v15-turbo" / "config.json"
    config.write_bytes(BOM + config.read_bytes())
    assert resolve(root).variant == "turbo"


def test_no_reader_refuses_a_bom() -> None:
    """Text reads in the package decode with utf-8-sig (a BOM is dropped), except readers of our own files."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in OWN_FILES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "read_text":
                encodings = [k.value for k in node.keywords if k.arg == "encoding"] or node.args[:1]
                if not any(isinstance(e, ast.Constant) and e.value == "utf-8-sig" for e in encodings):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("family", ["v1", "1.5"])
def test_default_lora_config_is_found_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      family: str) -> None:
    from acestep.lora import LoraSettings

    if family == "v1":
        from acestep.families.v1.training import DEFAULT_LORA_CONFIG as default
    else:
        from acestep.families.v15.training import DEFAULT_LORA_CONFIG as default
    monkeypatch.chdir(tmp_path)  # not the repository root
    assert Path(default).is_absolute() and Path(default).parent == PACKAGE.parent / "config"
    assert LoraSettings.from_json(default).r > 0
