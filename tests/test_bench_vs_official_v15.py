"""bench/vs_official_v15.py refuses a missing or wrong official checkout and unusable flags in one line, writes a
case our loader reads, records no machine paths; the comparison itself runs only where an official checkout and
its venv are named (ACESTEP_OFFICIAL_V15_SRC, ACESTEP_OFFICIAL_V15_PYTHON; CI has neither)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from bench import vs_official_v15 as bench


def _fake_official(root):
    for name in bench.OFFICIAL_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("", encoding="utf-8")
    return root


def _error(argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_a_missing_or_wrong_checkout_is_one_line(tmp_path):
    assert "--official_src is required" in _error([])
    assert "no such folder" in _error(["--official_src", str(tmp_path / "absent")])
    message = _error(["--official_src", str(tmp_path)])
    assert "not a checkout of ace-step/ACE-Step-1.5" in message and "fixed_lora_module.py" in message


def test_the_official_python_is_required_and_checked(tmp_path):
    official = _fake_official(tmp_path)
    assert "--official_python is required" in _error(["--official_src", str(official)])
    assert "no such file" in _error(["--official_src", str(official), "--official_python", str(tmp_path / "py")])


def test_the_official_worker_checks_the_checkout_too(tmp_path):
    message = _error(["--worker", "official", "--case", str(tmp_path), "--official_src", str(tmp_path),
                      "--dtype", "bf16"])
    assert "not a checkout" in message


def test_arguments_parse_and_official_flags_map_onto_its_defaults(tmp_path):
    official = _fake_official(tmp_path)
    args, src = bench.parse_args(["--official_src", str(official), "--official_python", sys.executable,
                                  "--ours_args=--no-gradient_checkpointing", "--ours_args", "",
                                  "--official_args", "--rank 16 --no-gradient-checkpointing"])
    assert src == official.resolve() and args.ours_args == ["--no-gradient_checkpointing", ""]
    defaults = bench.official_options("")
    assert (defaults["rank"], defaults["alpha"], defaults["dropout"], defaults["gradient_checkpointing"]) == (
        64, 128, 0.1, True)
    assert bench.official_changed("--rank 16 --no-gradient-checkpointing") == {
        "rank": 16, "gradient_checkpointing": False}
    assert bench.official_changed("") == {}


@pytest.mark.parametrize(("flag", "argv", "expected"), [
    ("--official_args", "--optimizer-type prodigy", "does not apply --optimizer-type prodigy"),
    ("--official_args", "--rank many", "invalid int value"),
    ("--official_args", "--attention-type all", "must be self, cross or both"),
    ("--ours_args", "--no_such_flag 1", "unknown trainer flags --no_such_flag"),
    ("--ours_args", "--condition_dropout 0.5", "does not apply --condition_dropout"),
    ("--ours_args", "--timestep_schedule turbo", "does not apply --timestep_schedule"),
    ("--ours_args", "--base_dtype fp8", "does not apply --base_dtype fp8"),
])
def test_flags_the_step_cannot_apply_are_refused(tmp_path, flag, argv, expected):
    official = _fake_official(tmp_path)
    message = _error(["--official_src", str(official), "--official_python", sys.executable, f"{flag}={argv}"])
    assert expected in message


def test_our_flags_are_recorded_and_the_base_dtype_follows_the_run():
    config, changed = bench.ours_options("--no-gradient_checkpointing --learning_rate 3e-4")
    assert config.base_dtype == "bf16" and config.gradient_checkpointing == "none"
    assert changed == {"base_dtype": "bf16", "gradient_checkpointing": "none", "learning_rate": 3e-4}
    assert bench.ours_options("", "fp32")[0].base_dtype == "fp32"


def test_a_worker_gets_a_lone_flag_as_its_ours_args(tmp_path):
    official = _fake_official(tmp_path)
    args, _ = bench.parse_args(["--official_src", str(official), "--official_python", sys.executable])
    argv = bench.worker_argv("ours", tmp_path, args, official, "--no-gradient_checkpointing")
    assert argv[0] == sys.executable
    parsed, _ = bench.parse_args(argv[2:])
    assert parsed.worker == "ours" and parsed.ours_args == ["--no-gradient_checkpointing"]
    assert bench.worker_argv("official", tmp_path, args, official)[0] == sys.executable  # --official_python


def test_the_case_is_an_official_layout_checkpoint_our_loader_reads(tmp_path):
    from acestep.families.v15.checkpoint import load_components, resolve

    info = bench.write_case(tmp_path, "tiny", 2, 2.0, 8, seed=2, dtype="bf16")
    dit = tmp_path / bench.DIT
    assert sorted(p.name for p in dit.iterdir()) == ["config.json", "model.safetensors", "silence_latent.pt"]
    config = json.loads((dit / "config.json").read_text(encoding="utf-8"))
    assert config["num_hidden_layers"] == 2 and config["layer_types"] == ["sliding_attention", "full_attention"]
    modules = load_components(resolve(tmp_path, bench.DIT), ("transformer", "condition_encoder"))
    assert modules["transformer"].config.num_hidden_layers == 2
    tensors, draws = bench.read_batch(tmp_path)
    assert tensors["target_latents"].shape == (1, 50, 8) and tensors["context_latents"].shape == (1, 50, 16)
    assert tensors["encoder_hidden_states"].shape == (1, 8, 32)
    assert draws["noise"].shape == (1, 50, 8) and draws["t"].shape == (1,) and draws["drop"].dtype == torch.bool
    assert 0 < info["t"] < 1 and info["t"] == float(draws["t"]) and info["dropped"] is True  # seed 2 drops
    assert float(draws["t"]) == float(draws["t"].bfloat16())  # a bf16 run's draws are bf16 values
    assert not bench.write_case(tmp_path / "other", "tiny", 1, 2.0, 8, seed=0, dtype="fp32")["dropped"]


def test_mid_cases_carry_the_published_encoders_or_one_layer_each():
    published, minimal = bench.case_config("mid", 3), bench.case_config("mid", 3, "minimal")
    assert published["hidden_size"] == minimal["hidden_size"] == 2048 and published["num_hidden_layers"] == 3
    assert published["num_lyric_encoder_hidden_layers"] == 8 and published["num_attention_pooler_hidden_layers"] == 2
    assert minimal["num_lyric_encoder_hidden_layers"] == minimal["num_timbre_encoder_hidden_layers"] == 1
    assert published["layer_types"][:3] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert len(published["layer_types"]) == 8 and len(bench.case_config("mid", 10)["layer_types"]) == 10


def test_the_official_timesteps_are_the_larger_of_two_logit_normal_draws():
    draws = [float(bench.official_draws(4, 2, seed, -0.4, 1.0)["draw.t"]) for seed in range(400)]
    single = torch.sigmoid(torch.randn(20000, generator=torch.Generator().manual_seed(0)) - 0.4).mean()
    assert all(0 < t < 1 for t in draws)
    assert sum(draws) / len(draws) == pytest.approx(0.535, abs=0.03) and float(single) < 0.45


def test_recorded_commands_hold_no_machine_paths():
    line = bench.recorded_command(["--official_src", "/somewhere/src", "--official_python=/venv/bin/python",
                                   "--work_dir", "/tmp/x", "--layers", "2"])
    assert line == ("python bench/vs_official_v15.py --official_src DIR --official_python PY --work_dir TMP "
                    "--layers 2")


def test_the_goal_column_says_what_misses():
    assert bench.goal_met({"time_vs_official_paired": 0.7, "tensor_peak_vs_official": 0.5}) == "yes"
    assert bench.goal_met({"time_vs_official_paired": 0.9, "tensor_peak_vs_official": 0.5}) == "no: time 0.90x > 0.8x"
    assert "tensor peak 0.70x > 0.6x" in bench.goal_met({"time_vs_official_paired": 0.7, "tensor_peak_vs_official": 0.7})


OFFICIAL_SRC = os.environ.get("ACESTEP_OFFICIAL_V15_SRC")
OFFICIAL_PYTHON = os.environ.get("ACESTEP_OFFICIAL_V15_PYTHON")


@pytest.mark.slow
@pytest.mark.skipif(not (OFFICIAL_SRC and OFFICIAL_PYTHON),
                    reason="needs an official checkout and its venv (ACESTEP_OFFICIAL_V15_SRC, ACESTEP_OFFICIAL_V15_PYTHON)")
def test_the_step1_loss_equals_the_official_one_in_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "notes_for", lambda *a: [])
    written = {}
    monkeypatch.setattr("bench.common.write_results", lambda stem, rows, *a: written.update(rows=rows) or ("j", "m"))
    bench.main(["--official_src", OFFICIAL_SRC, "--official_python", OFFICIAL_PYTHON, "--size", "tiny",
                "--seconds", "2", "--condition_tokens", "8", "--repeats", "1", "--dtype", "fp32", "--seed", "2",
                "--work_dir", str(tmp_path)])
    official, ours = written["rows"]
    assert official["implementation"] == "official" and official["dropped"] is True
    assert ours["loss_rel_diff"] < 1e-6 and ours["lora_params_m"] == official["lora_params_m"]
