"""ACE-Step 1.5 through the stage scripts on the tiny checkpoint: preprocess, train, render with the LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from data_helpers import write_audio

from acestep import families
from acestep.data.filenames import build_filename_dataset
from acestep.families.generation import main as generate_main
from acestep.families.training import main as train_main
from acestep.families.training import training_parts_for


@pytest.fixture(scope="module")
def prepared(tiny_v15_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stage 2 + 3 of two short songs, once with the encoder's outputs stored and once with its inputs."""
    from acestep.families.preprocess import main as preprocess_main

    songs = tmp_path_factory.mktemp("songs")
    write_audio(songs / "a.wav", seconds=2.0, sr=44100, channels=1, freq=330.0)
    (songs / "a_prompt.txt").write_text("acoustic, guitar", encoding="utf-8")
    write_audio(songs / "b.wav", seconds=1.5, freq=220.0)
    root = tmp_path_factory.mktemp("prep")
    build_filename_dataset(songs, root / "names")
    preps = {}
    for store in ("outputs", "inputs"):
        preps[store] = root / store
        preprocess_main(["--input_name", str(root / "names"), "--output_dir", str(preps[store]), "--checkpoint_dir",
                         str(tiny_v15_checkpoint / "original"), "--device", "cpu", "--dtype", "float32",
                         "--num_workers", "0", "--condition_store", store], song_stages=families.song_stages_for_args)
    return preps


@pytest.mark.slow
@pytest.mark.parametrize("store", ["outputs", "inputs"])
def test_train_then_render_with_the_lora(tiny_v15_checkpoint: Path, prepared: dict[str, Path], tmp_path: Path,
                                         store: str, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    prompts = tmp_path / "samples.json"
    prompts.write_text(json.dumps([{"prompt": "acoustic", "duration": 0.5, "seed": 1, "name": "probe"}]))
    train_main(["--dataset_path", str(prepared[store]), "--checkpoint_dir", str(tiny_v15_checkpoint / "original"),
                "--output_dir", str(runs), "--exp_name", "tiny", "--max_steps", "2", "--every_n_train_steps", "2",
                "--logger", "none", "--no-progress_bar", "--accelerator", "cpu", "--condition_dropout", "0.2",
                "--learning_rate", "1e-2", "--sample_every", "2", "--sample_prompts", str(prompts)],
               build_parts=training_parts_for)
    out = capsys.readouterr().out
    assert "checkpoint: ace-step-1.5 turbo" in out and "comfyui.safetensors" in out
    step = runs / "tiny" / "step-000002"
    assert (step / "adapter" / "adapter_config.json").is_file() and (step / "diffusers").is_dir()
    sample, _ = sf.read(runs / "tiny" / "samples" / "step_000002" / "probe_seed1.wav")
    assert sample.shape == (13 * 1920, 2)  # rendered during training: ceil(0.5 s x 25) latent frames at 48 kHz
    comfy = step / "tiny-step2-comfyui.safetensors"
    generate_main(["--checkpoint_dir", str(tiny_v15_checkpoint / "diffusers"), "--prompt", "acoustic", "--duration",
                   "1.0", "--seed", "3", "--lora", f"{comfy}:0.5", "--out_dir", str(tmp_path / "out")])
    wav, rate = sf.read(tmp_path / "out" / "ace15_seed3.wav")
    params = json.loads((tmp_path / "out" / "ace15_seed3.json").read_text(encoding="utf-8"))
    assert rate == 48000 and wav.shape == (48000, 2) and abs(wav).max() > 0
    assert params["steps"] == 8 and params["guidance_scale"] == 1.0 and params["loras"][0]["strength"] == 0.5
    with pytest.raises(SystemExit, match="exists; pick another --out_dir or pass --overwrite"):
        generate_main(["--checkpoint_dir", str(tiny_v15_checkpoint / "diffusers"), "--prompt", "acoustic",
                       "--duration", "1.0", "--seed", "3", "--out_dir", str(tmp_path / "out")])


def test_lora_and_dataset_of_the_other_family_are_refused(
    tiny_v15_checkpoint: Path, prepared: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    v1_lora = tmp_path / "v1.safetensors"
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 8),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(8, 2)}, str(v1_lora))
    with pytest.raises(SystemExit, match="an ace-step-v1 LoRA; this checkpoint is ace-step-1.5"):
        generate_main(["--checkpoint_dir", str(tiny_v15_checkpoint / "diffusers"), "--prompt", "x",
                       "--lora", str(v1_lora), "--out_dir", str(tmp_path / "o")])
    v15_lora = tmp_path / "v15.safetensors"
    save_file({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 8),
               "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 2)}, str(v15_lora))
    with pytest.raises(SystemExit, match="an ace-step-1.5 LoRA; this checkpoint is ace-step-v1"):
        generate_main(["--prompt", "x", "--lora", str(v15_lora), "--out_dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="is ace-step-1.5, but --checkpoint_dir .ACE-Step v1. is ace-step-v1"):
        train_main(["--dataset_path", str(prepared["outputs"]), "--output_dir", str(tmp_path / "r")],
                   build_parts=training_parts_for)
