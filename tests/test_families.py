"""The model-family seam: detection from the folder, both 1.5 layouts, exact key conversion, one-line refusals."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acestep import families
from acestep.core.errors import CheckpointError
from acestep.families.v15 import checkpoint as v15_checkpoint
from acestep.families.v15.checkpoint import diffusers_to_original, load_components, original_to_diffusers

PACKAGE = Path(__file__).resolve().parents[1] / "acestep"


def test_conversion_round_trips_every_key_exactly(tiny_v15_checkpoint: Path) -> None:
    original = load_file(tiny_v15_checkpoint / "original" / "acestep-v15-turbo" / "model.safetensors")
    components, unused = original_to_diffusers(original)
    assert unused == []
    back = diffusers_to_original(components)
    assert sorted(back) == sorted(original)
    assert all(torch.equal(back[key], original[key]) for key in original)
    # the original names are the published ones, the converted ones the installed diffusers classes'
    assert "decoder.layers.0.self_attn.q_proj.weight" in original
    assert "decoder.layers.1.cross_attn.o_proj.weight" in original and "decoder.proj_in.1.weight" in original
    assert "null_condition_emb" in original and any(k.startswith("encoder.lyric_encoder.") for k in original)
    assert "layers.0.self_attn.to_q.weight" in components["transformer"]
    assert "layers.1.cross_attn.to_out.0.weight" in components["transformer"]
    assert "proj_in_conv.weight" in components["transformer"]
    assert "null_condition_emb" in components["condition_encoder"]


def test_both_layouts_load_the_same_weights(tiny_v15_checkpoint: Path) -> None:
    _, original = families.resolve(tiny_v15_checkpoint / "original")
    family, converted = families.resolve(tiny_v15_checkpoint / "diffusers")
    assert family.NAME == "ace-step-1.5" and original.layout == "original" and converted.layout == "diffusers"
    assert original.variant == converted.variant == "turbo"
    names = ("transformer", "condition_encoder")
    a, b = load_components(original, names), load_components(converted, names)
    for name in names:
        state_a, state_b = a[name].state_dict(), b[name].state_dict()
        assert sorted(state_a) == sorted(state_b)
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    # silence_latent.pt is [1, C, T] on disk and [1, T, C] in the condition encoder, as generation uses it
    raw = torch.load(original.dit / "silence_latent.pt", weights_only=True)
    assert torch.equal(a["condition_encoder"].silence_latent, raw.transpose(1, 2))


def test_detect_reports_what_it_found(tiny_v15_checkpoint: Path, tiny_checkpoint: Path) -> None:
    assert families.detect(tiny_checkpoint).NAME == "ace-step-v1"
    assert families.detect(tiny_v15_checkpoint / "original").NAME == "ace-step-1.5"
    _, dit_folder = families.resolve(tiny_v15_checkpoint / "original" / "acestep-v15-turbo")  # the DiT folder itself
    assert dit_folder.root == tiny_v15_checkpoint / "original"
    _, v1 = families.resolve(tiny_checkpoint)
    assert "ace-step-v1" in v1.describe() and "original layout" in dit_folder.describe()
    with pytest.raises(CheckpointError, match="not an ACE-Step checkpoint"):
        families.detect(tiny_checkpoint / "umt5-base")
    with pytest.raises(CheckpointError, match="--dit"):
        families.resolve(tiny_checkpoint, dit="acestep-v15-base")


def test_incomplete_original_layout_is_listed(tiny_v15_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_v15_checkpoint / "original", broken)
    shutil.copytree(broken / "acestep-v15-turbo", broken / "acestep-v15-sft")
    (broken / "acestep-v15-sft" / "silence_latent.pt").unlink()
    shutil.rmtree(broken / "vae")
    with pytest.raises(CheckpointError) as error:
        v15_checkpoint.resolve(broken, dit="acestep-v15-sft")
    assert "acestep-v15-sft/silence_latent.pt" in str(error.value) and "vae/" in str(error.value)


def test_family_mismatch_is_one_line() -> None:
    with pytest.raises(families.FamilyMismatch) as error:
        families.check_same_family("ace-step-v1", "ace-step-1.5", "dataset prep/", "--checkpoint_dir")
    assert "\n" not in str(error.value) and "ace-step-v1" in str(error.value)


def test_machinery_never_imports_families() -> None:
    """The design rule: data/, training/ and lora/ do not import the families package (no upward arrow)."""
    offenders = []
    for folder in ("data", "training", "lora"):
        for path in (PACKAGE / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [("." * node.level) + (node.module or "")]
                offenders += [f"{path.name}: {n}" for n in names if "families" in n]
    assert offenders == []


def test_stage3_family_layer_hands_v1_its_own_encoders(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import argparse

    from acestep.data.preprocess import parse_args
    from acestep.families.v1.encoders import SongPipeline

    args = parse_args(["--input_name", "x", "--output_dir", str(tmp_path / "prep"), "--checkpoint_dir",
                       str(tiny_checkpoint), "--no-ssl", "--device", "cpu", "--dtype", "float32"])
    stages = families.song_stages_for_args(args)
    assert isinstance(stages, SongPipeline) and stages.encoders.ssl is None
    assert "family" not in stages.stored_settings()  # v1 settings unchanged: older v1 folders stay resumable
    assert isinstance(args, argparse.Namespace) and args.checkpoint_dir == str(tiny_checkpoint)


def test_repo_ids_are_identified_from_their_file_list(tiny_v15_checkpoint: Path, monkeypatch) -> None:
    listings = {
        "ACE-Step/acestep-v15-xl-turbo-diffusers": {"model_index.json", "condition_encoder/config.json",
                                                    "transformer/config.json", "vae/config.json"},
        "ACE-Step/Ace-Step1.5": {"acestep-v15-turbo/model.safetensors", "acestep-v15-turbo/config.json",
                                 "acestep-v15-turbo/silence_latent.pt", "vae/config.json"},
        "ACE-Step/ACE-Step-v1-3.5B": {"ace_step_transformer/config.json", "music_dcae_f8c8/config.json"},
    }
    monkeypatch.setattr(families, "list_repo", lambda repo: listings[repo])
    assert families.detect("ACE-Step/acestep-v15-xl-turbo-diffusers").NAME == "ace-step-1.5"
    assert families.detect("ACE-Step/Ace-Step1.5").NAME == "ace-step-1.5"
    assert families.detect("ACE-Step/ACE-Step-v1-3.5B").NAME == "ace-step-v1"
    downloads = []
    monkeypatch.setattr(v15_checkpoint, "_download",
                        lambda repo: downloads.append(repo) or tiny_v15_checkpoint / "diffusers")
    _, found = families.resolve("ACE-Step/acestep-v15-xl-turbo-diffusers")
    assert downloads == ["ACE-Step/acestep-v15-xl-turbo-diffusers"] and found.layout == "diffusers"


@pytest.mark.slow
def test_tiny_checkpoint_cli_writes_both_layouts(tmp_path: Path, capsys) -> None:
    from acestep.tiny_checkpoint import main

    main([str(tmp_path / "tiny"), "--family", "ace-step-1.5"])
    assert "original layout" in capsys.readouterr().out
    assert (tmp_path / "tiny" / "diffusers" / "model_index.json").is_file()
    assert families.detect(tmp_path / "tiny" / "original").NAME == "ace-step-1.5"
    assert [p.name for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".tiny-")] == []


def test_1_5_with_an_older_diffusers_fails_in_one_line_naming_the_version(
    tiny_v15_checkpoint: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from acestep.core import dependencies
    from acestep.families.generation import main as generate_main

    pyproject = (PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"diffusers>={dependencies.MIN_DIFFUSERS_V15.removesuffix(".0")}"' in pyproject  # the pin says the same
    monkeypatch.setattr(dependencies, "installed_diffusers", lambda: "0.41.0")
    with pytest.raises(SystemExit) as stop:
        generate_main(["--checkpoint_dir", str(tiny_v15_checkpoint / "original"), "--prompt", "pop"])
    line = str(stop.value.code)
    assert line == ('error: ACE-Step 1.5 needs diffusers 0.42.0 or newer (installed: 0.41.0); install it with: '
                    'pip install "diffusers>=0.42.0"')
    with pytest.raises(families.AcestepError, match="needs diffusers 0.42.0"):
        families.resolve(tiny_v15_checkpoint / "diffusers")
    assert families.resolve(tiny_checkpoint)[0].NAME == families.V1  # v1 does not need the new classes
