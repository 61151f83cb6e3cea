"""README's commands, run as written on the tiny checkpoint, so README and the tools cannot drift apart.

The commands are read from README.md (optional `[...]` parts dropped; CKPT, OUT and the step folder filled in;
a few flags appended to keep it short). They run as a Windows user's shell would meet them: a legacy
console encoding (PYTHONIOENCODING=cp1252), a song whose name cp1252 cannot encode, output to a pipe (no
terminal). Besides finishing, each must stay quiet: no third-party chatter, no redrawn bars in the log.
One Python process runs them one after another as `python SCRIPT` / `python -m MODULE` would (runpy), so
the libraries are imported once instead of twelve times.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from acestep.demo_songs import write_synthetic_songs

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
TRAINED_STEPS = 2
# Appended to README's command (argparse keeps the last value) to keep the run short.
SHORTER = {
    "preprocess_dataset_new.py": ["--no-ssl"],
    "trainer_new.py": ["--max_steps", str(TRAINED_STEPS), "--every_n_train_steps", str(TRAINED_STEPS)],
    "generate.py": ["--duration", "3", "--steps", "2"],
    "acestep.reg_songs": ["--duration", "2", "--steps", "2"],
}
# What each command leaves behind, relative to the working folder.
WRITES = {
    "acestep.tiny_checkpoint": "ckpt/ace_step_transformer",
    "convert2hf_dataset_new.py": "data/filenames",
    "preprocess_dataset_new.py": "data/prep/manifest.json",
    "acestep.data.report": "data/prep/report.png",
    "trainer_new.py": f"runs/mystyle/step-{TRAINED_STEPS:06d}",
    "add_alpha_in_lora.py": "my_lora.safetensors",
    "acestep.lora resize": "my_lora_r16.safetensors",
    "acestep.lora convert": "my_lora_kohya.safetensors",
    "acestep.lora merge": "merged_transformer",
    "acestep.reg_songs": "data/reg_songs/reg0001.wav",
}
ORDER = ["acestep.tiny_checkpoint", "convert2hf_dataset_new.py", "preprocess_dataset_new.py", "acestep.data.report",
         "trainer_new.py", "add_alpha_in_lora.py", "acestep.lora inspect", "acestep.lora resize",
         "acestep.lora convert", "acestep.lora merge", "generate.py", "acestep.reg_songs", "acestep.plan"]
NOISE = ["Failed to initialize NumPy", "weight_norm", "LeafSpec", "litmodels", "litlogger", "GPU available",
         "TPU available", "Traceback", "UnicodeEncodeError", "--- Logging error ---"]
UNENCODABLE_SONG = "東京 ballad"  # cp1252 has no code for these characters
UNENCODABLE_BROKEN = "壊れた.wav"


DRIVER = r"""
import json, runpy, sys, traceback, warnings
warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)  # runpy's own
for key, words in json.loads(sys.argv[1]):
    for stream in (sys.stdout, sys.stderr):
        stream.write(f"\n@@@ {key}\n")
        stream.flush()
    code = 0
    try:
        if words[0] == "-m":
            sys.argv = [words[1], *words[2:]]
            runpy.run_module(words[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(words)
            runpy.run_path(words[0], run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        stream.write(f"\n@@@ exit {code}\n")
        stream.flush()
    if code:
        break
"""


def _sections(text: str) -> dict[str, tuple[str, int | None]]:
    """{key: (output, exit code)} from the driver's marked output."""
    sections = {}
    for part in text.split("\n@@@ ")[1:]:
        head, _, body = part.partition("\n")
        if head.startswith("exit "):
            key = list(sections)[-1]
            sections[key] = (sections[key][0], int(head[5:]))
        else:
            sections[head] = (body, None)
    return sections


@dataclass
class Ran:
    key: str
    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str


def readme_commands() -> dict[str, list[str]]:
    """{program key: arguments} of every `python ...` command README shows, except stage 1 and benchmarks."""
    found = re.findall(r"`(python [^`\n]+)`", README)
    found += [line for line in re.findall(r"^(python .+)$", README, re.MULTILINE)]
    commands = {}
    for text in found:
        text = re.sub(r"\s*\[[^\]]*\]", "", text.split("  #")[0]).strip()
        words = shlex.split(text)[1:]
        if words[0] == "-m":
            command = words[2] if len(words) > 2 and words[2] in _LORA_COMMANDS else None
            key = f"{words[1]} {command}" if words[1] == "acestep.lora" and command else words[1]
        else:
            key = words[0]
        if key.startswith(("generate_prompts_lyrics", "bench/")) or "|" in text:
            continue
        commands.setdefault(key, words)
    return commands


_LORA_COMMANDS = ("inspect", "bake", "convert", "resize", "merge")


def _fill(words: list[str], key: str) -> list[str]:
    replaced = {"CKPT": "ckpt", "OUT": "ckpt" if key == "acestep.tiny_checkpoint" else "OUT"}
    step = f"step-{TRAINED_STEPS:06d}"
    return [re.sub(r"step-\d{6}", step, replaced.get(w, w)) for w in words] + SHORTER.get(key, [])


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Ran]]:
    work = tmp_path_factory.mktemp("readme")
    songs = write_synthetic_songs(work / "songs", count=2, seconds=3.0)
    for suffix in (".wav", "_prompt.txt", "_lyrics.txt"):
        (songs / f"song01{suffix}").rename(songs / f"{UNENCODABLE_SONG}{suffix}")
    (songs / UNENCODABLE_BROKEN).write_bytes(b"RIFF\x00\x00 not audio")
    (work / "song.txt").write_text("[verse]\nla la la\n", encoding="utf-8")
    (work / "reg_prompts.txt").write_text("ambient, synth, calm\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "cp1252", "HF_HUB_OFFLINE": "1"}
    commands = readme_commands()
    plan = []
    for key in ORDER:
        words = _fill(commands[key], key)
        plan.append((key, words if words[0] == "-m" else [str(REPO / words[0]), *words[1:]]))
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(plan)], cwd=work, env=env, capture_output=True,
                          timeout=600)  # bytes: text mode would turn a bar's carriage returns into newlines
    stdout, stderr = (stream.decode("cp1252", errors="replace") for stream in (done.stdout, done.stderr))
    outs, errs = _sections(stdout), _sections(stderr)
    results = {key: Ran(key, words, outs[key][1], outs[key][0], errs[key][0])
               for key, words in plan if key in outs}
    assert done.returncode == 0, stderr[-3000:]
    return work, results


def test_readme_shows_every_stage_command() -> None:
    assert set(ORDER) <= set(readme_commands())


@pytest.mark.slow
def test_readme_commands_run_on_the_tiny_checkpoint(chain: tuple[Path, dict[str, Ran]]) -> None:
    work, results = chain
    for key in ORDER:
        assert key in results, f"not reached: {key}"
        ran = results[key]
        assert ran.returncode == 0, f"{' '.join(ran.argv)} failed:\n{ran.stdout[-2000:]}\n{ran.stderr[-3000:]}"
        if key in WRITES:
            assert (work / WRITES[key]).exists(), f"{key} did not write {WRITES[key]}"
    assert list((work / "outputs").glob("*.wav")), "generate.py wrote no WAV file"
    assert "fits" in results["acestep.plan"].stdout


@pytest.mark.slow
def test_a_song_name_the_console_cannot_encode_crashes_nothing(chain: tuple[Path, dict[str, Ran]]) -> None:
    _, results = chain
    stage2 = results["convert2hf_dataset_new.py"]
    assert "\\u58ca\\u308c\\u305f.wav" in stage2.stdout  # the skipped file, named in escapes
    assert "kept:                  2" in stage2.stdout  # the song with the unencodable name was kept
    for ran in results.values():
        assert "UnicodeEncodeError" not in ran.stderr and "--- Logging error ---" not in ran.stderr, ran.key


@pytest.mark.slow
def test_runs_are_quiet_and_log_whole_lines(chain: tuple[Path, dict[str, Ran]]) -> None:
    _, results = chain
    noisy = [(ran.key, noise) for ran in results.values() for noise in NOISE if noise in ran.stdout + ran.stderr]
    assert noisy == []
    redrawn = [ran.key for ran in results.values() if "\r" in ran.stdout + ran.stderr]
    assert redrawn == [], "bars redrawn in a log"
    trainer_log = results["trainer_new.py"].stdout
    assert re.search(r"training: 100%.* 2/2 ", trainer_log), trainer_log
    assert "/?" not in trainer_log, "a bar without the run's total"
