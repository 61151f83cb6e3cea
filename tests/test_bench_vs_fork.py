"""bench/vs_fork.py refuses a missing or wrong fork checkout and unusable `--ours_args` in one line, before any
model is built, and passes our trainer flags through to the step it measures (no fork needed here)."""

from __future__ import annotations

import pytest

from bench import vs_fork


def _fake_fork(root):
    for name in vs_fork.FORK_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("", encoding="utf-8")
    return root


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        vs_fork.main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_a_missing_fork_src_is_one_line(capsys):
    assert "--fork_src is required" in _error([], capsys)


def test_a_folder_that_is_not_the_fork_says_what_is_missing(tmp_path, capsys):
    message = _error(["--fork_src", str(tmp_path)], capsys)
    assert "not a checkout of woct0rdho/ACE-Step" in message and "trainer_new.py" in message
    assert "no such folder" in _error(["--fork_src", str(tmp_path / "absent")], capsys)


def test_the_fork_worker_checks_the_checkout_too(tmp_path, capsys):
    message = _error(["--worker", "fork", "--case", str(tmp_path), "--fork_src", str(tmp_path), "--dtype", "bf16"],
                     capsys)
    assert "not a checkout" in message


def test_arguments_of_a_fork_checkout_parse(tmp_path):
    fork = _fake_fork(tmp_path)
    args, fork_src = vs_fork.parse_args(["--fork_src", str(fork), "--ours_args", "--base_dtype fp8",
                                         "--ours_args", ""])
    assert fork_src == fork.resolve()
    assert args.ours_args == ["--base_dtype fp8", ""]
    assert vs_fork.parse_args(["--fork_src", str(fork)])[0].ours_args == [""]


def test_our_flags_reach_the_probe_and_are_recorded():
    config, kwargs, changed = vs_fork.ours_options("")
    assert config.base_dtype == "bf16" and kwargs["fp8_base"] is False and kwargs["checkpointing"] is True
    assert changed == {"base_dtype": "bf16"}
    config, kwargs, changed = vs_fork.ours_options("--base_dtype fp8 --no-gradient_checkpointing")
    assert kwargs["fp8_base"] is True and kwargs["checkpointing"] is False
    assert changed == {"base_dtype": "fp8", "gradient_checkpointing": "none"}
    assert vs_fork.ours_options("", "fp32")[0].base_dtype == "fp32"  # --dtype fp32: our base in fp32 too


@pytest.mark.parametrize(("ours_args", "expected"), [
    ("--optimizer prodigy", "does not apply --optimizer"),
    ("--no_such_flag 1", "unknown trainer flags --no_such_flag"),
    ("--base_dtype fp4", "invalid choice"),
])
def test_flags_the_step_cannot_apply_are_refused(tmp_path, capsys, ours_args, expected):
    fork = _fake_fork(tmp_path)
    message = _error(["--fork_src", str(fork), "--ours_args", ours_args], capsys)
    assert expected in message


def test_the_paired_ratio_is_the_median_of_the_rounds_ratios():
    assert vs_fork.paired_ratio([1.0, 3.0, 2.0], [2.0, 2.0, 4.0]) == 0.5  # rounds: 0.5, 1.5, 0.5


def test_checkpointing_modes_become_the_probes_arguments():
    assert vs_fork.checkpointing_arguments("all") == {"checkpointing": True}
    assert vs_fork.checkpointing_arguments("none") == {"checkpointing": False}
    assert vs_fork.checkpointing_arguments(False) == {"checkpointing": False}
    assert vs_fork.checkpointing_arguments("3") == {"checkpointing": True, "checkpointed_blocks": 3}
    assert vs_fork.checkpointing_arguments("auto") == {"checkpointing": True}  # the worker sizes it
    _, kwargs, changed = vs_fork.ours_options("--gradient_checkpointing auto --vram_gb 10 --compile")
    assert kwargs["checkpointing"] is True and "checkpointed_blocks" not in kwargs
    assert changed["vram_gb"] == 10 and changed["compile"] is True
    with pytest.raises(vs_fork.BenchError, match="OPTION_TO_PROBE"):
        vs_fork._switch("release_unused_weights")("auto")


def test_a_worker_gets_a_lone_flag_as_its_ours_args(tmp_path):
    fork = _fake_fork(tmp_path)
    argv = vs_fork.worker_argv("ours", tmp_path, fork, "bf16", "--no-gradient_checkpointing")
    args, _ = vs_fork.parse_args(argv[2:])
    assert args.worker == "ours" and args.ours_args == ["--no-gradient_checkpointing"]
