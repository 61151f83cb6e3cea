"""Every tiny checkpoint writer gives the same bytes for the same seed, so two fresh demos train the same LoRA
(the v1 text tokenizer once came out different on every write, and with it every prompt state)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by its path relative to `root`."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def assert_same_bytes(tmp_path: Path, write: Callable[[Path], object]) -> dict[str, str]:
    write(tmp_path / "first")
    write(tmp_path / "second")
    first, second = file_hashes(tmp_path / "first"), file_hashes(tmp_path / "second")
    assert first.keys() == second.keys()
    differing = sorted(name for name in first if first[name] != second[name])
    assert differing == []
    return first


@pytest.mark.slow  # two writes of every component, ~20 s on a busy 2-core machine
def test_v1_tiny_checkpoint_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    from acestep.families.v1.tiny import write_tiny_checkpoint

    files = assert_same_bytes(tmp_path, lambda out: write_tiny_checkpoint(out, seed=3))
    assert "umt5-base/tokenizer.json" in files and "ace_step_transformer/diffusion_pytorch_model.safetensors" in files


def test_v1_text_tokenizer_scores_are_rounded_and_ties_ordered(tmp_path: Path) -> None:
    from acestep.families.v1.tiny import _train_text_tokenizer

    _train_text_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    assert [piece for piece, _ in vocab[:3]] == ["<pad>", "</s>", "<unk>"]
    rest = [(-score, piece) for piece, score in vocab[3:]]
    assert rest == sorted(rest) and all(score == round(score, 8) for _, score in vocab)


def test_v15_tiny_checkpoint_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    from acestep.families.v15.tiny import write_tiny_v15_checkpoint

    files = assert_same_bytes(tmp_path, lambda out: write_tiny_v15_checkpoint(out, seed=0))
    assert "diffusers/vae/config.json" in files and "original/vae/config.json" in files
    config = json.loads((tmp_path / "first" / "diffusers" / "vae" / "config.json").read_text(encoding="utf-8"))
    assert config["_name_or_path"] == "original/vae"  # not the temp build folder


@pytest.mark.parametrize("options", [{}, {"answer": "rock, pop", "full_omni": True}])
def test_tiny_omni_is_byte_identical(tmp_path: Path, options: dict) -> None:
    from acestep.captioning.tiny_omni import write_tiny_qwen_omni

    files = assert_same_bytes(tmp_path, lambda out: write_tiny_qwen_omni(out, **options))
    assert "tokenizer.json" in files and "model.safetensors" in files
