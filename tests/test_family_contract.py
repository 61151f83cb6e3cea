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
from safetensors.torch import load_file

from acestep import families
from acestep.data.filenames import build_filename_dataset
from acestep.data.preprocessed import DEFAULT_FAMILY, dataset_family, load_preprocessed
from acestep.families.base import ModelFamily
from acestep.families.generation import main as generate_main
from acestep.families.preprocess import main as preprocess_main
from acestep.families.training import main as train_main
from acestep.families.training import training_parts_for
from acestep.lora import models as lora_models
from acestep.lora import read_lora
from acestep.lora.adapters import adapter_family
from acestep.lora.keys import (
    detect_family,
    detect_style,
    factor_keys,
    kohya_lookup_for,
    model_names,
    module_path,
    split_key,
)
from acestep.lora.merge import check_matches_config, load_transformer_weights, packed_folder, packed_layout_of
from acestep.lora.models import kind_for_config
from acestep.lora.naming import key_styles, naming_for, unmarked_naming
from acestep.training.callbacks import baked_file_name, step_folder_name
from acestep.training.config import TrainConfig

STEPS = 2


@pytest.fixture(scope="module", params=families.FAMILY_NAMES)
def family(request: pytest.FixtureRequest) -> ModelFamily:
    return families.get(request.param)


@pytest.fixture(scope="module")
def written(family: ModelFamily, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the family's tiny checkpoint is written into: every layout it writes lies under it."""
    return tmp_path_factory.mktemp(f"tiny-{family.NAME}")


@pytest.fixture(scope="module")
def checkpoint(family: ModelFamily, written: Path) -> Path:
    """The family's own tiny checkpoint, written through the interface."""
    return family.write_tiny(written)


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


def test_the_family_names_its_lora_keys_for_every_style(family: ModelFamily, checkpoint: Path) -> None:
    """Module path -> the keys of each of its styles -> module path, for every Linear in the blocks of its tiny
    transformer: the keys tell the style, the module paths tell the family."""
    naming = family.KEY_NAMING
    assert families.get(family.NAME) is family and naming_for(family.NAME) is naming and naming.family == family.NAME
    assert set(naming.styles) <= set(key_styles()) and naming.default_style == next(iter(naming.styles))
    _, state = load_transformer_weights(checkpoint)
    modules = {key.removesuffix(".weight") for key, value in state.items()
               if key.startswith(f"{family.BLOCKS.block_list}.") and key.endswith(".weight") and value.ndim == 2}
    assert len(modules) >= 4
    for style in naming.styles:
        keys = {module: factor_keys(module, style) for module in modules}
        tensor_keys = [key for triple in keys.values() for key in triple if key is not None]
        assert len(set(tensor_keys)) == len(tensor_keys) and detect_style(tensor_keys) == style
        parts: dict[str, dict[str, str]] = {}
        for key in tensor_keys:
            stem, role = split_key(key)
            parts.setdefault(module_path(stem, kohya_lookup_for(modules)), {})[role] = key
        assert detect_family(parts) == family.NAME
        back = model_names(parts, None)
        assert back == model_names(parts, family.NAME) and set(back) == modules, style
        for module, roles in back.items():
            assert (roles["down"], roles["up"], roles.get("alpha")) == keys[module]


def test_merge_finds_the_transformer_folder_of_the_checkpoint_root(family: ModelFamily, checkpoint: Path) -> None:
    """`lora merge` given the root finds the transformer in the sub-folder the family registered, and its config
    names the family's transformer and builds exactly those weights."""
    kind = family.TRANSFORMER
    present = [folder for folder in kind.folders if (checkpoint / folder).is_dir()]
    assert present, f"{family.NAME}'s tiny checkpoint has none of its transformer folders {kind.folders}"
    config, state = load_transformer_weights(checkpoint)
    assert kind_for_config(config) is kind and len(state) >= 4
    check_matches_config(config, state, checkpoint)
    for folder in present:
        assert load_transformer_weights(checkpoint / folder)[1].keys() == state.keys()
    assert packed_folder(checkpoint) is None  # the root of this layout is not taken for a packed one


def test_merge_finds_the_transformer_in_the_packed_layout(family: ModelFamily, written: Path, checkpoint: Path) -> None:
    """A family that packs its transformer into one file with other weights (1.5's original DiT folder): every such
    folder of its tiny checkpoint is found (itself, or the root holding it), and the weights under the layout's
    prefix, renamed by it, are exactly the transformer of the folder layout (the tiny writer gives both the same
    values)."""
    layout = family.TRANSFORMER.packed
    if layout is None:
        return
    assert layout.weights in layout.marks
    folders = sorted(folder for folder in written.rglob("*") if folder.is_dir() and packed_layout_of(folder))
    assert folders, f"{family.NAME}'s tiny checkpoint has no {layout.folder}"
    _, expected = load_transformer_weights(checkpoint)
    for folder in folders:
        assert packed_folder(folder) == packed_folder(folder.parent) == (folder, family.NAME, layout)
        inside = {layout.model_name(key.removeprefix(layout.prefix)): value
                  for key, value in load_file(str(folder / layout.weights)).items() if key.startswith(layout.prefix)}
        assert inside.keys() == expected.keys()
        for name, value in inside.items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_files_and_datasets_that_name_no_family_are_of_one_family() -> None:
    """The data layer's default (datasets before 1.5 support) and the LoRA tools' (files before the header) agree."""
    assert unmarked_naming().family == DEFAULT_FAMILY == families.V1


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
    assert detect_style(keys) == family.KEY_NAMING.default_style  # the spelling ComfyUI reads for this family


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


@pytest.fixture(scope="module")
def stored_with_trigger(family: ModelFamily, checkpoint: Path, stored: Path,
                        tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 3 again on the same songs, with a trigger tag in every prompt."""
    out = tmp_path_factory.mktemp(f"prep-trigger-{family.NAME}") / "prep"
    preprocess_main(["--input_name", str(stored.parent / "names"), "--output_dir", str(out), "--checkpoint_dir",
                     str(checkpoint), "--device", "cpu", "--dtype", "float32", "--num_workers", "0", "--no-ssl",
                     "--trigger", "mystyle"])
    return out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_validation_regularization_and_trigger(family: ModelFamily, checkpoint: Path, stored: Path,
                                               stored_with_trigger: Path, tmp_path: Path) -> None:
    """One run: the triggered songs (one held out for validation) mixed half and half with the untriggered ones as
    regularization songs; the trigger is stamped into every LoRA file."""
    steps = 4
    train_main(["--dataset_path", str(stored_with_trigger), "--checkpoint_dir", str(checkpoint), "--output_dir",
                str(tmp_path), "--exp_name", "features", "--max_steps", str(steps), "--every_n_train_steps", "2",
                "--val_songs", "1", "--val_every", "2", "--reg_dataset", str(stored), "--reg_weight", "0.5",
                "--logger", "none", "--no-progress_bar", "--accelerator", "cpu", "--learning_rate", "1e-2"])
    run = tmp_path / "features"
    rows = _metrics(run)
    assert [row["step"] for row in rows] == list(range(1, steps + 1))
    val = [row for row in rows if "val_loss" in row]
    assert [row["step"] for row in val] == [2, 4] and all(row["val_loss"] > 0 for row in val)
    reg = [row for row in rows if "reg_loss" in row]
    assert len(reg) == steps // 2 and all(row["reg_loss"] > 0 for row in reg)  # every other micro-batch
    baked = [f for f in run.rglob("*.safetensors") if f.parent.name != "adapter"]
    assert len(baked) >= 2 and all(read_lora(f).trigger == "mystyle" for f in baked)
    assert read_lora(run / step_folder_name(steps) / baked_file_name("features", steps)).family == family.NAME
    assert "mystyle" in (run / "summary.txt").read_text(encoding="utf-8")


@pytest.mark.slow
def test_overfit_one_trains_on_one_song_and_gives_a_verdict(family: ModelFamily, checkpoint: Path, stored: Path,
                                                            tmp_path: Path) -> None:
    train_main(["--dataset_path", str(stored), "--checkpoint_dir", str(checkpoint), "--output_dir", str(tmp_path),
                "--overfit_one", "--overfit_steps", "3", "--logger", "none", "--no-progress_bar", "--accelerator",
                "cpu", "--learning_rate", "1e-2"])
    runs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(runs) == 1 and runs[0].name.endswith("overfit-one")
    rows = _metrics(runs[0])
    assert [row["step"] for row in rows] == [1, 2, 3] and "val_loss" in rows[-1]
    summary = (runs[0] / "summary.txt").read_text(encoding="utf-8")
    assert "Overfit check PASSED" in summary or "Overfit check FAILED" in summary
