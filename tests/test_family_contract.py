"""The contract every model family keeps (acestep.families.base.ModelFamily), checked the same way for each on its
own tiny checkpoint: encode -> store -> load -> step -> save -> bake -> load in each consumer -> generate.

A new family passes this file by adding its folder, its line in acestep.families.FAMILIES and its `write_tiny`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from data_helpers import write_audio
from safetensors import safe_open

from acestep import families
from acestep.data.filenames import build_filename_dataset
from acestep.data.preprocessed import dataset_family, load_preprocessed
from acestep.families.base import ModelFamily
from acestep.families.generation import main as generate_main
from acestep.families.preprocess import main as preprocess_main
from acestep.families.training import main as train_main
from acestep.families.training import training_parts_for
from acestep.lora import models as lora_models
from acestep.lora import read_lora
from acestep.lora.adapters import adapter_family
from acestep.lora.keys import DEFAULT_STYLE, detect_style
from acestep.training.callbacks import baked_file_name, step_folder_name
from acestep.training.config import TrainConfig

STEPS = 2


@pytest.fixture(scope="module", params=families.FAMILY_NAMES)
def family(request: pytest.FixtureRequest) -> ModelFamily:
    return families.get(request.param)


@pytest.fixture(scope="module")
def checkpoint(family: ModelFamily, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The family's own tiny checkpoint, written through the interface."""
    return family.write_tiny(tmp_path_factory.mktemp(f"tiny-{family.NAME}"))


@pytest.fixture(scope="module")
def stored(family: ModelFamily, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """encode -> store: stage 2 and stage 3 (the CLI layer picks the family from the checkpoint)."""
    songs = tmp_path_factory.mktemp(f"songs-{family.NAME}")
    write_audio(songs / "a.wav", seconds=2.0, sr=48000, channels=2, freq=330.0)
    (songs / "a_prompt.txt").write_text("acoustic, guitar", encoding="utf-8")
    write_audio(songs / "b.wav", seconds=1.5, sr=44100, channels=1, freq=220.0)
    root = tmp_path_factory.mktemp(f"prep-{family.NAME}")
    build_filename_dataset(songs, root / "names")
    preprocess_main(["--input_name", str(root / "names"), "--output_dir", str(root / "prep"), "--checkpoint_dir",
                     str(checkpoint), "--device", "cpu", "--dtype", "float32", "--num_workers", "0", "--no-ssl"])
    return root / "prep"


@pytest.fixture(scope="module")
def trained(family: ModelFamily, checkpoint: Path, stored: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """load -> step -> save: the trainer CLI on the stored songs; the step folder it wrote."""
    runs = tmp_path_factory.mktemp(f"runs-{family.NAME}")
    train_main(["--dataset_path", str(stored), "--checkpoint_dir", str(checkpoint), "--output_dir", str(runs),
                "--exp_name", "contract", "--max_steps", str(STEPS), "--every_n_train_steps", str(STEPS),
                "--logger", "none", "--no-progress_bar", "--accelerator", "cpu", "--learning_rate", "1e-2"])
    return runs / "contract" / step_folder_name(STEPS)


def test_the_family_keeps_the_interface(family: ModelFamily, checkpoint: Path) -> None:
    assert isinstance(family, ModelFamily)
    assert families.detect(checkpoint) is family
    resolved = family.resolve(checkpoint)
    assert resolved.family == family.NAME and family.NAME in resolved.describe()
    assert family.TRANSFORMER in lora_models.registered() and family.TRANSFORMER.family == family.NAME


@pytest.mark.slow
def test_encode_and_store(family: ModelFamily, stored: Path) -> None:
    assert dataset_family(stored) == family.NAME
    rows = load_preprocessed(stored)
    assert len(rows) == 2


@pytest.mark.slow
def test_load_gives_training_parts_with_blocks(family: ModelFamily, checkpoint: Path, stored: Path,
                                               tmp_path: Path) -> None:
    config = TrainConfig(dataset_path=str(stored), checkpoint_dir=str(checkpoint), output_dir=str(tmp_path),
                         accelerator="cpu")
    parts = training_parts_for(config)
    assert parts.family == family.NAME and len(parts.songs) == 2
    assert parts.blocks is family.BLOCKS  # one definition per family
    blocks = family.BLOCKS.blocks(parts.transformer)
    assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) >= 1
    assert parts.settings.r > 0 and parts.base_model


@pytest.mark.slow
def test_step_save_and_bake(family: ModelFamily, trained: Path) -> None:
    assert (trained / "adapter" / "adapter_config.json").is_file()
    assert (trained / "adapter" / "adapter_model.safetensors").is_file()
    baked = trained / baked_file_name("contract", STEPS)
    lora = read_lora(baked)
    assert lora.family == family.NAME and lora.modules
    assert adapter_family(baked) == family.NAME
    with safe_open(str(baked), "pt") as handle:
        keys = list(handle.keys())
        assert all(torch.isfinite(handle.get_tensor(key)).all() for key in keys)
    assert detect_style(keys) == DEFAULT_STYLE[family.NAME]  # the spelling ComfyUI reads for this family


@pytest.mark.slow
def test_each_consumer_loads_the_lora_and_generates(family: ModelFamily, checkpoint: Path, trained: Path,
                                                    tmp_path: Path) -> None:
    """Our generate.py with the ComfyUI file (both families) and with the PEFT step folder."""
    baked = trained / baked_file_name("contract", STEPS)
    for name, lora in (("comfy", baked), ("peft", trained)):
        out = tmp_path / name
        generate_main(["--checkpoint_dir", str(checkpoint), "--prompt", "acoustic", "--duration", "1.0", "--seed",
                       "3", "--steps", "2", "--lora", f"{lora}:0.5", "--out_dir", str(out), "--device", "cpu",
                       "--dtype", "float32"])
        wavs = sorted(out.glob("*.wav"))
        assert len(wavs) == 1
        wav, rate = sf.read(wavs[0])
        assert rate in (44100, 48000) and wav.shape[1] == 2 and abs(wav).max() > 0
        params = json.loads(wavs[0].with_suffix(".json").read_text(encoding="utf-8"))
        assert params["steps"] == 2


@pytest.mark.slow
def test_the_renderer_renders(family: ModelFamily, checkpoint: Path) -> None:
    render = family.renderer(family.resolve(checkpoint), "cpu", "float32", 2)
    wav, rate = render("pop", "", 1.0, 0)
    assert rate in (44100, 48000) and wav.shape[0] == 2 and wav.shape[-1] > 0
