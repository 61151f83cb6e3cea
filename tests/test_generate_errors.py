"""generate.py as a new user meets it, both families: bad input is one line, and a refusal comes before any render.

1.5 reads --lyrics files as v1 does, checks its outputs before loading a model, names a damaged weight file;
both families bound --duration as the planner does, refuse nan/inf LoRA strengths and LoRAs of another shape.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from acestep import families
from acestep.core.errors import CheckpointError
from acestep.families.generation import main as generate_main
from acestep.families.v15 import generate as v15_generate

REPO = Path(__file__).resolve().parents[1]


def one_line_exit(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        generate_main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.fixture()
def captured_renders(monkeypatch: pytest.MonkeyPatch) -> list[v15_generate.V15Params]:
    """1.5 rendering replaced by silence: the tests look at what would be rendered, fast."""
    seen: list[v15_generate.V15Params] = []

    def fake_render(pipe, params, is_turbo):  # noqa: ANN001, ANN202 - render's own signature
        seen.append(params)
        return [torch.zeros(2, 480) for _ in params.seeds]

    monkeypatch.setattr(v15_generate, "render", fake_render)
    return seen


def test_v15_lyrics_file_is_read_in_any_case_and_a_missing_one_is_one_line(
    tiny_v15_checkpoint: Path, tmp_path: Path, captured_renders: list
) -> None:
    lyrics = tmp_path / "song.TXT"
    lyrics.write_bytes(b"\xef\xbb\xbf[verse]\r\nhello there\r\n")
    generate_main(["--checkpoint_dir", str(tiny_v15_checkpoint / "diffusers"), "--prompt", "x", "--lyrics",
                   str(lyrics), "--out_dir", str(tmp_path / "out")])
    assert captured_renders[0].lyrics == "[verse]\nhello there\n"
    message = one_line_exit(["--checkpoint_dir", str(tiny_v15_checkpoint / "diffusers"), "--prompt", "x",
                             "--lyrics", str(tmp_path / "missing.txt"), "--out_dir", str(tmp_path / "out2")])
    assert "missing.txt: lyrics file not found" in message


def test_v15_refuses_to_overwrite_before_loading_anything(
    tiny_v15_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "ace15_seed4.json").write_text("{}", encoding="utf-8")

    def never(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the pipeline was loaded before the output check")

    monkeypatch.setattr("acestep.families.v15.checkpoint.load_pipeline", never)
    message = one_line_exit(["--checkpoint_dir", str(tiny_v15_checkpoint / "diffusers"), "--prompt", "x", "--seed",
                             "3", "4", "--out_dir", str(out)])
    assert "ace15_seed4.json exists; pick another --out_dir or pass --overwrite" in message
    assert (out / "ace15_seed4.json").read_text(encoding="utf-8") == "{}"


@pytest.mark.parametrize("layout, damaged", [
    ("original", "acestep-v15-turbo/model.safetensors"),
    ("original", "vae/diffusion_pytorch_model.safetensors"),
    ("diffusers", "transformer/diffusion_pytorch_model.safetensors"),
    ("diffusers", "text_encoder/model.safetensors"),
])
def test_damaged_v15_weight_file_is_named_in_one_line(
    tiny_v15_checkpoint: Path, tmp_path: Path, layout: str, damaged: str
) -> None:
    root = tmp_path / layout
    shutil.copytree(tiny_v15_checkpoint / layout, root)
    file = root / damaged
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])  # an interrupted download
    # generate, stage 3 and the trainer all resolve --checkpoint_dir through families.resolve
    with pytest.raises(CheckpointError, match=f"damaged weight file.*{file.name} .{len(data) // 2} bytes"):
        families.resolve(root)
    message = one_line_exit(["--checkpoint_dir", str(root), "--prompt", "x", "--out_dir", str(tmp_path / "o")])
    assert str(file) in message and "Download or copy those files again" in message
    for run in (_stage3, _trainer):
        with pytest.raises(SystemExit) as exit_info:
            run(root, tmp_path)
        assert str(exit_info.value.code).startswith("error: damaged weight file") and str(file) in str(
            exit_info.value.code)


def _stage3(checkpoint: Path, tmp_path: Path) -> None:
    from acestep.families.preprocess import main as preprocess_main

    preprocess_main(["--input_name", str(tmp_path / "names"), "--output_dir", str(tmp_path / "prep"),
                     "--checkpoint_dir", str(checkpoint), "--device", "cpu"], song_stages=families.song_stages_for_args)


def _trainer(checkpoint: Path, tmp_path: Path) -> None:
    from acestep.families.training import main as train_main
    from acestep.families.training import training_parts_for

    train_main(["--dataset_path", str(tmp_path / "prep"), "--checkpoint_dir", str(checkpoint), "--output_dir",
                str(tmp_path / "runs"), "--logger", "none"], build_parts=training_parts_for)


def test_damaged_silence_latent_is_one_line(tiny_v15_checkpoint: Path, tmp_path: Path) -> None:
    from acestep.families.v15.checkpoint import read_silence_latent

    dit = tmp_path / "dit"
    shutil.copytree(tiny_v15_checkpoint / "original" / "acestep-v15-turbo", dit)
    (dit / "silence_latent.pt").write_bytes((dit / "silence_latent.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="silence_latent.pt: damaged"):
        read_silence_latent(dit)


@pytest.mark.parametrize("duration", ["nan", "inf", "1e9", "0", "-3"])
@pytest.mark.parametrize("family", ["v1", "1.5"])
def test_duration_is_bounded_as_the_planner_does(
    tiny_v15_checkpoint: Path, tmp_path: Path, duration: str, family: str
) -> None:
    checkpoint = ["--checkpoint_dir", str(tiny_v15_checkpoint / "diffusers")] if family == "1.5" else []
    message = one_line_exit([*checkpoint, "--prompt", "x", "--duration", duration, "--out_dir", str(tmp_path)])
    assert f"--duration must be more than 0 and at most 3600 seconds, not {float(duration)}" in message


@pytest.mark.parametrize("strength", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("family", ["v1", "1.5"])
def test_lora_strength_must_be_finite(tiny_v15_checkpoint: Path, tmp_path: Path, strength: str, family: str) -> None:
    checkpoint = ["--checkpoint_dir", str(tiny_v15_checkpoint / "diffusers")] if family == "1.5" else []
    lora = tmp_path / "style.safetensors"
    message = one_line_exit([*checkpoint, "--prompt", "x", "--lora", f"{lora}:{strength}", "--out_dir",
                             str(tmp_path / "o")])
    assert f"style.safetensors: LoRA strength must be a finite number (e.g. 0.8), not {strength}" in message


def test_wrong_shape_lora_is_one_line_for_1_5(tiny_v15_checkpoint: Path, tmp_path: Path,
                                                captured_renders: list) -> None:
    lora = tmp_path / "xl.safetensors"  # a LoRA of a wider model (the tiny checkpoint's DiT is 32 wide)
    save_file({"layers.0.self_attn.to_q.lora_A.weight": torch.zeros(2, 96),
               "layers.0.self_attn.to_q.lora_B.weight": torch.zeros(32, 2)}, str(lora))
    message = one_line_exit(["--checkpoint_dir", str(tiny_v15_checkpoint / "diffusers"), "--prompt", "x", "--lora",
                             str(lora), "--out_dir", str(tmp_path / "o")])
    assert "xl.safetensors: layers.0.self_attn.to_q is 96 -> 32 in the LoRA but 32 -> 32 in this model" in message
    assert captured_renders == []


def test_wrong_shape_lora_is_one_line_for_v1(tmp_path: Path) -> None:
    from lora_helpers import tiny_model

    from acestep.core.errors import InputError
    from acestep.lora.loading import load_loras

    lora = tmp_path / "other.safetensors"  # the tiny transformer's to_q is 64 -> 64
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 64),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(2560, 2)}, str(lora))
    with pytest.raises(InputError, match="to_q is 64 -> 2560 in the LoRA but 64 -> 64 in this model"):
        load_loras(tiny_model(), [(str(lora), 1.0)])


@pytest.mark.slow
def test_wrong_shape_lora_through_v1_generate(tiny_checkpoint: Path, tmp_path: Path) -> None:
    lora = tmp_path / "other.safetensors"
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 3),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(5, 2)}, str(lora))
    message = one_line_exit(["--checkpoint_dir", str(tiny_checkpoint), "--prompt", "x", "--lora", str(lora),
                             "--device", "cpu", "--dtype", "float32", "--out_dir", str(tmp_path / "o")])
    assert "other.safetensors: transformer_blocks.0.attn.to_q is 3 -> 5 in the LoRA" in message


@pytest.mark.parametrize("lyrics", ["", "   \n\t ", "[inst]", "[Instrumental]"])
def test_no_lyrics_reach_the_1_5_dit_as_the_instrumental_marker(lyrics: str) -> None:
    from acestep.families.v15.encode import INSTRUMENTAL_LYRICS

    assert v15_generate.sung_lyrics(lyrics) == INSTRUMENTAL_LYRICS
    assert v15_generate.sung_lyrics("la\r\nla\rla") == "la\nla\nla"


def test_plain_help_lists_the_1_5_flags() -> None:
    result = subprocess.run([sys.executable, str(REPO / "generate.py"), "--help"], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    v15_part = result.stdout.split("ACE-Step 1.5 only:")[1]
    for flag in v15_generate.V15_ONLY_FLAGS:
        assert flag in v15_part
    assert "--lyrics" in result.stdout.split("ACE-Step 1.5 only:")[0]


def test_a_1_5_flag_with_v1_is_one_line(tmp_path: Path) -> None:
    message = one_line_exit(["--prompt", "x", "--bpm=120", "--out_dir", str(tmp_path)])
    assert "--bpm: ACE-Step 1.5 flag(s); --checkpoint_dir is an ACE-Step v1 checkpoint" in message
