"""inspect, convert and resize: numbers checked against the definitions (norms, singular values, kohya's rules)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lora_helpers import product, random_lora
from safetensors.torch import save_file

from acestep.core.errors import AcestepError, InputError
from acestep.lora import (
    LoraSettings,
    convert_file,
    format_report,
    inspect_lora,
    load_adapter,
    rank_advice,
    read_lora,
    resize_file,
    save_adapter,
)
from acestep.lora.cli import main as cli_main

MODULES = [f"transformer_blocks.{i}.attn.to_q" for i in range(3)]
SINGULAR = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)


def known_spectrum_lora(path: Path) -> torch.Tensor:
    """One module whose delta W (scale 1: r = alpha = 8, plain) has exactly the singular values SINGULAR."""
    g = torch.Generator().manual_seed(5)
    u, _ = torch.linalg.qr(torch.randn(24, 8, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(40, 8, generator=g, dtype=torch.float64))
    tensors = {f"{MODULES[0]}.lora_B.weight": (u * SINGULAR).float(), f"{MODULES[0]}.lora_A.weight": v.T.float()}
    save_adapter(tensors, path, LoraSettings(r=8, lora_alpha=8.0, use_rslora=False, target_modules=("to_q",)))
    return (u * SINGULAR) @ v.T


def test_inspect_reports_rank_scale_and_delta_norm(tmp_path: Path) -> None:
    settings = LoraSettings(r=16, lora_alpha=4.0, use_rslora=True, target_modules=("to_q",))
    tensors = random_lora(16)
    save_adapter(tensors, tmp_path / "run", settings)
    report = inspect_lora(tmp_path / "run")
    assert [row.module for row in report.modules] == MODULES
    assert report.style == "peft" and not report.baked and report.dtype == "float32"
    for row in report.modules:
        assert (row.rank, row.in_features, row.out_features, row.alpha) == (16, 40, 24, None)
        assert row.scale == pytest.approx(1.0)  # 4 / sqrt(16)
        expected = torch.linalg.matrix_norm(product(tensors, row.module)).item()
        assert row.delta_norm == pytest.approx(expected, rel=1e-9)
    text = format_report(report)
    assert "ranks:    min 16, median 16, max 16" in text
    assert "acestep_lora_settings" in text and MODULES[2] in text


def test_inspect_without_scale_information_says_so(tmp_path: Path) -> None:
    save_file(random_lora(4), tmp_path / "bare.safetensors")
    report = inspect_lora(tmp_path / "bare.safetensors")
    assert all(row.scale is None for row in report.modules)
    assert "scale:    unknown" in format_report(report)
    given = inspect_lora(tmp_path / "bare.safetensors", LoraSettings(r=4, lora_alpha=1.0, use_rslora=True))
    assert {row.scale for row in given.modules} == {0.5}


def test_convert_to_kohya_and_back_keeps_delta(tmp_path: Path) -> None:
    settings = LoraSettings(r=8, lora_alpha=1.0, use_rslora=True, target_modules=("to_q",))
    tensors = random_lora(8)
    save_adapter(tensors, tmp_path / "run", settings)
    kohya = convert_file(tmp_path / "run", tmp_path / "kohya.safetensors", "kohya")
    raw, _ = load_adapter(kohya)
    assert "lora_unet_transformer_blocks_2_attn_to_q.lora_down.weight" in raw
    assert raw["lora_unet_transformer_blocks_2_attn_to_q.alpha"].item() == 8.0
    read = read_lora(kohya)
    assert sorted(read.modules) == MODULES and read.style == "kohya"
    back = convert_file(kohya, tmp_path / "peft.safetensors", "peft")
    peft, metadata = load_adapter(back)
    assert sorted(peft) == sorted(tensors)
    assert "lora_adapter_metadata" not in metadata
    for module in MODULES:
        torch.testing.assert_close(product(peft, module), product(tensors, module) / math.sqrt(8), rtol=1e-6, atol=1e-6)


def test_convert_applies_alpha_tensors_and_already_baked(tmp_path: Path) -> None:
    tensors = random_lora(8, modules=1)
    stem = "lora_unet_transformer_blocks_0_attn_to_q"
    kohya = {f"{stem}.lora_down.weight": tensors[f"{MODULES[0]}.lora_A.weight"],
             f"{stem}.lora_up.weight": tensors[f"{MODULES[0]}.lora_B.weight"],
             f"{stem}.alpha": torch.tensor(2.0)}
    save_file(kohya, tmp_path / "kohya.safetensors")
    out, _ = load_adapter(convert_file(tmp_path / "kohya.safetensors", tmp_path / "peft.safetensors", "peft"))
    assert set(out) == {f"{MODULES[0]}.lora_A.weight", f"{MODULES[0]}.lora_B.weight"}
    torch.testing.assert_close(product(out, MODULES[0]), product(tensors, MODULES[0]) * 2 / 8, rtol=1e-6, atol=1e-6)
    save_file(tensors, tmp_path / "bare.safetensors")
    with pytest.raises(InputError, match="--lora_config_path"):
        convert_file(tmp_path / "bare.safetensors", tmp_path / "x.safetensors", "kohya")
    same, _ = load_adapter(convert_file(tmp_path / "bare.safetensors", tmp_path / "d.safetensors", "diffusion_model",
                                        already_baked=True))
    assert torch.equal(same[f"diffusion_model.{MODULES[0]}.lora_A.weight"], tensors[f"{MODULES[0]}.lora_A.weight"])


def test_unsupported_keys_and_unknown_kohya_names_are_clear_errors(tmp_path: Path) -> None:
    tensors = random_lora(4, modules=1)
    save_file({**tensors, f"{MODULES[0]}.lora_magnitude_vector": torch.ones(24)}, tmp_path / "dora.safetensors")
    with pytest.raises(InputError, match="a dora adapter, not a plain LoRA"):
        read_lora(tmp_path / "dora.safetensors")
    save_file({**tensors, f"{MODULES[0]}.lora_mid.weight": torch.ones(4, 4)}, tmp_path / "mid.safetensors")
    with pytest.raises(InputError, match="unsupported tensor 'transformer_blocks.0.attn.to_q.lora_mid.weight'"):
        read_lora(tmp_path / "mid.safetensors")
    save_file({"lora_unet_no_such_layer.lora_down.weight": torch.ones(4, 40),
               "lora_unet_no_such_layer.lora_up.weight": torch.ones(24, 4)}, tmp_path / "k.safetensors")
    with pytest.raises(InputError, match="names no module"):
        read_lora(tmp_path / "k.safetensors")


def test_resize_to_full_rank_is_lossless(tmp_path: Path) -> None:
    settings = LoraSettings(r=8, lora_alpha=2.0, use_rslora=False, target_modules=("to_q",))
    tensors = random_lora(8)
    save_adapter(tensors, tmp_path / "run", settings)
    out, reports = resize_file(tmp_path / "run", tmp_path / "full.safetensors", "rank", rank=8)
    resized, metadata = load_adapter(out)
    assert "acestep_lora_baked_scale" in metadata
    for report in reports:
        assert (report.old_rank, report.new_rank) == (8, 8)
        assert report.kept_fro == pytest.approx(1.0, abs=1e-9)
        torch.testing.assert_close(product(resized, report.module), 0.25 * product(tensors, report.module),
                                   rtol=1e-5, atol=1e-5)


def test_resize_to_lower_rank_keeps_the_reported_fraction(tmp_path: Path) -> None:
    delta = known_spectrum_lora(tmp_path / "run")
    out, [report] = resize_file(tmp_path / "run", tmp_path / "r3.safetensors", "rank", rank=3)
    expected_fraction = math.sqrt(sum(s**2 for s in (8, 4, 2)) / float(SINGULAR.pow(2).sum()))
    assert report.new_rank == 3
    assert report.kept_fro == pytest.approx(expected_fraction, rel=1e-9)
    resized, _ = load_adapter(out)
    approx = product(resized, MODULES[0])
    assert resized[f"{MODULES[0]}.lora_A.weight"].shape == (3, 40)
    norm = torch.linalg.matrix_norm
    assert (norm(approx) / norm(delta)).item() == pytest.approx(report.kept_fro, rel=1e-5)
    # Eckart-Young: what is left out is exactly the dropped singular values.
    residual = math.sqrt(float(SINGULAR[3:].pow(2).sum()))
    assert norm(delta - approx).item() == pytest.approx(residual, rel=1e-4)


@pytest.mark.parametrize(
    ("method", "target", "cap", "expected"),
    [
        ("sv_ratio", 5.0, None, 3),  # keep s > 8 / 5
        ("sv_fro", 0.99, None, 3),  # sqrt(84 / 85.33) = 0.9922, sqrt(80 / 85.33) = 0.968
        ("sv_cumulative", 0.9, None, 4),  # 15 / 15.9375 = 0.941, 14 / 15.9375 = 0.878
        ("sv_cumulative", 0.9, 2, 2),  # the rank caps dynamic methods
        ("sv_ratio", 1000.0, None, 8),
    ],
)
def test_dynamic_resize_follows_kohya_rules(
    tmp_path: Path, method: str, target: float, cap: int | None, expected: int
) -> None:
    known_spectrum_lora(tmp_path / "run")
    _, [report] = resize_file(tmp_path / "run", tmp_path / "out.safetensors", method, rank=cap, target=target)
    assert report.new_rank == expected


def test_rank_advice_names_the_rank_to_train_next(tmp_path: Path) -> None:
    known_spectrum_lora(tmp_path / "run")
    _, reports = resize_file(tmp_path / "run", tmp_path / "out.safetensors", "sv_fro", target=0.99)
    assert "max 3 (was 8)" in rank_advice(reports) and "r=4" in rank_advice(reports)
    with pytest.raises(AcestepError, match="needs --target"):
        resize_file(tmp_path / "run", tmp_path / "x.safetensors", "sv_fro")


def test_cli_inspect_and_resize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    known_spectrum_lora(tmp_path / "run")
    cli_main(["inspect", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    assert MODULES[0] in printed and "scale:    1 " in printed
    cli_main(["resize", str(tmp_path / "run"), str(tmp_path / "small.safetensors"), "--method", "sv_ratio",
              "--target", "5", "--table"])
    printed = capsys.readouterr().out
    assert "chosen ranks: min 3, median 3, max 3" in printed and (tmp_path / "small.safetensors").is_file()
    with pytest.raises(SystemExit) as error:
        cli_main(["convert", str(tmp_path / "missing.safetensors"), str(tmp_path / "x.safetensors")])
    assert error.value.code == f"error: {tmp_path / 'missing.safetensors'}: LoRA file not found"


def test_a_misspelt_config_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "lora.json"
    config.write_text(json.dumps({"r": 8, "lora_alpha": 8, "use_rlsora": True, "target_modules": ["to_q"]}))
    with pytest.raises(AcestepError, match="unknown key 'use_rlsora' in the LoRA config; did you mean 'use_rslora'"):
        LoraSettings.from_json(config)
    config.write_text(json.dumps({"r": 8, "lora_alpha": 8, "use_rslora": True, "target_modules": ["to_q"]}))
    assert LoraSettings.from_json(config).scale == pytest.approx(8 / 8**0.5)
    peft_written = tmp_path / "adapter_config.json"  # PEFT's own file carries all its fields
    peft_written.write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 8, "lora_dropout": 0.0,
                                        "target_modules": ["to_q"], "use_rslora": True}))
    assert LoraSettings.from_json(peft_written).use_rslora
