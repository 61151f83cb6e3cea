"""The shared captioning loop with a scripted backend: sidecars, skip/overwrite, failures, sources, summary."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mutagen.flac import FLAC

from acestep.captioning.caption import Answer, BackendUnavailable
from acestep.captioning.cli import (
    EXIT_ERROR,
    EXIT_SOME_FAILED,
    common_parser,
    llamacpp_parser,
    run,
    transformers_parser,
)
from acestep.captioning.clips import MAX_CLIP_SAMPLES, MODEL_SAMPLE_RATE
from acestep.captioning.prompts import TAGS_INSTRUCTION
from acestep.captioning.runner import RunOptions, caption_folder, find_audio_files, summary_table

TAGS_ANSWER = "1. Rock\n2. Electric Guitar\n3. 120 BPM\n4. Energetic."
LYRICS_ANSWERS = ["Here are the lyrics:\n[Verse 1]\nfirst words", "[Chorus]\nsecond words", "[instrumental]"]


class ScriptedBackend:
    """Answers like a model would and records what it was asked."""

    def __init__(self, tags_answer: str = TAGS_ANSWER, lyrics_answers: list[str] | None = None) -> None:
        self.tags_answer = tags_answer
        self.lyrics_answers = list(lyrics_answers or LYRICS_ANSWERS)
        self.calls: list[tuple[str, int]] = []

    def ask(self, audio: np.ndarray, instruction: str, max_new_tokens: int) -> Answer:
        assert audio.dtype == np.float32 and audio.ndim == 1
        kind = "tags" if instruction == TAGS_INSTRUCTION else "lyrics"
        self.calls.append((kind, audio.shape[0]))
        if kind == "tags":
            return Answer(self.tags_answer)
        return Answer(
            self.lyrics_answers[
                (len([c for c in self.calls if c[0] == "lyrics"]) - 1) % len(self.lyrics_answers)
            ]
        )


def write_wav(path: Path, seconds: float, sample_rate: int = 8_000, channels: int = 2) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.2 * np.sin(2 * np.pi * 330.0 * t)
    sf.write(path, np.stack([tone] * channels, axis=1), sample_rate)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_wav(tmp_path / "long.wav", 65.0)
    (tmp_path / "sub").mkdir()
    flac = tmp_path / "sub" / "tagged.flac"
    sf.write(flac, np.zeros((8_000, 1)) + 0.1, 8_000)
    tagged = FLAC(flac)
    tagged["LYRICS"] = "[Verse]\nuser words"
    tagged.save()
    write_wav(tmp_path / "done.wav", 2.0)
    (tmp_path / "done_prompt.txt").write_text("kept, tags\n", encoding="utf-8")
    (tmp_path / "done_lyrics.txt").write_text("kept lyrics\n", encoding="utf-8")
    (tmp_path / "broken.mp3").write_bytes(b"\x00" * 64)
    (tmp_path / "notes.txt").write_text("not audio", encoding="utf-8")
    return tmp_path


def test_find_audio_files_is_recursive_and_sorted(folder: Path) -> None:
    names = [p.relative_to(folder).as_posix() for p in find_audio_files(folder)]
    assert names == ["broken.mp3", "done.wav", "long.wav", "sub/tagged.flac"]


def test_folder_run_writes_keeps_and_reports(folder: Path) -> None:
    backend = ScriptedBackend()
    reports = caption_folder(folder, lambda: backend, RunOptions(lyrics=True), progress=False)
    by_name = {r.audio.name: r for r in reports}

    assert (folder / "long_prompt.txt").read_text(encoding="utf-8") == "rock, electric guitar, energetic\n"
    assert (folder / "long_lyrics.txt").read_text(encoding="utf-8") == (
        "[verse]\nfirst words\n\n[chorus]\nsecond words\n"
    )
    assert (
        by_name["long.wav"].prompt == "written (3 tags)"
        and by_name["long.wav"].lyrics == "model: transcribed"
    )
    # tags from one audio window (just under 30 s); lyrics from three back-to-back pieces (30 + 30 + 5 s)
    long_calls = backend.calls[:4]
    assert long_calls == [
        ("tags", MAX_CLIP_SAMPLES),
        ("lyrics", MAX_CLIP_SAMPLES),
        ("lyrics", MAX_CLIP_SAMPLES),
        ("lyrics", 65 * MODEL_SAMPLE_RATE - 2 * MAX_CLIP_SAMPLES),
    ]

    tagged = folder / "sub" / "tagged.flac"
    assert (folder / "sub" / "tagged_lyrics.txt").read_text(encoding="utf-8") == "[verse]\nuser words\n"
    assert by_name["tagged.flac"].lyrics == "from FLAC LYRICS"
    assert tagged.with_name("tagged_prompt.txt").is_file()
    assert [c[0] for c in backend.calls[4:]] == ["tags"]  # the user's lyrics were not transcribed

    assert (folder / "done_prompt.txt").read_text(encoding="utf-8") == "kept, tags\n"
    assert (by_name["done.wav"].prompt, by_name["done.wav"].lyrics) == ("kept", "kept")

    broken = by_name["broken.mp3"]
    assert broken.failed and broken.prompt == "failed" and broken.lyrics == "failed"
    assert all("broken.mp3" in error for error in broken.errors)
    assert not (folder / "broken_prompt.txt").exists()

    table = summary_table(reports, folder)
    assert "sub/tagged.flac" in table.replace("\\", "/")
    assert "failures:" in table and "4 files, 3 complete, 1 with failures" in table


def test_overwrite_replaces_existing_sidecars(folder: Path) -> None:
    backend = ScriptedBackend(lyrics_answers=["There are no vocals in this audio."])
    audio = folder / "done.wav"
    reports = caption_folder(folder, lambda: backend, RunOptions(lyrics=True, overwrite=True), progress=False)
    assert (folder / "done_prompt.txt").read_text(encoding="utf-8") == "rock, electric guitar, energetic\n"
    assert (folder / "done_lyrics.txt").read_text(encoding="utf-8") == "[instrumental]\n"
    assert next(r for r in reports if r.audio == audio).lyrics == "model: instrumental"


def test_no_surviving_tag_fails_the_file_instead_of_writing_an_empty_prompt(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", 1.0)
    backend = ScriptedBackend(tags_answer="I'm sorry, I cannot describe this audio. 120 BPM")
    (report,) = caption_folder(tmp_path, lambda: backend, RunOptions(), progress=False)
    assert report.prompt == "failed" and not (tmp_path / "a_prompt.txt").exists()
    assert "no usable tags" in report.errors[0] and "a.wav" in report.errors[0]


def test_model_is_not_loaded_when_nothing_is_missing(folder: Path) -> None:
    for audio in find_audio_files(folder):
        audio.with_name(audio.stem + "_prompt.txt").write_text("x\n", encoding="utf-8")

    def refuse() -> ScriptedBackend:
        raise AssertionError("the backend was built although every sidecar exists")

    reports = caption_folder(folder, refuse, RunOptions(), progress=False)
    assert {r.prompt for r in reports} == {"kept"}


def _args(folder: Path, *extra: str) -> argparse.Namespace:
    return common_parser("test", "test").parse_args(["--data_dir", str(folder), "--no_progress", *extra])


def test_cli_exit_codes_and_summary(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args(folder), ScriptedBackend) == EXIT_SOME_FAILED  # broken.mp3 fails
    out = capsys.readouterr().out
    assert "long.wav" in out and "written (3 tags)" in out
    (folder / "broken.mp3").unlink()
    assert run(_args(folder), ScriptedBackend) == 0


def test_cli_stops_with_one_line_when_the_backend_cannot_answer(folder: Path, capsys) -> None:
    def unavailable() -> ScriptedBackend:
        raise BackendUnavailable("no llama-server answers at http://127.0.0.1:1")

    assert run(_args(folder), unavailable) == EXIT_ERROR
    assert capsys.readouterr().err.strip() == "error: no llama-server answers at http://127.0.0.1:1"


def test_bpm_key_without_librosa_gives_a_clear_message(folder: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "librosa", None)  # import librosa -> ImportError
    assert run(_args(folder, "--bpm_key"), ScriptedBackend) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "--bpm_key needs librosa" in err and "pip install 'acestep-lora-trainer[dsp]'" in err
    assert not (folder / "long_prompt.txt").exists()  # failed before any work


def test_a_model_that_cannot_be_loaded_is_tried_once_and_stops_the_run(folder: Path, capsys) -> None:
    """Issue 13 item 11: no retry of the load for every file; one line; the table of what was done."""
    loads = []

    def broken_model() -> ScriptedBackend:
        loads.append(1)
        raise OSError("cannot load the captioning model /models/x:\n  config.json is not valid JSON\n")

    assert run(_args(folder, "--lyrics"), broken_model) == EXIT_ERROR
    captured = capsys.readouterr()
    assert loads == [1]
    assert captured.err.splitlines() == [
        "error: cannot load the captioning model /models/x: config.json is not valid JSON"
    ]
    assert captured.out == ""  # nothing was done: no table, just the line
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".txt")) == [
        "done_lyrics.txt",
        "done_prompt.txt",
        "notes.txt",
    ]


class StopsAfter(ScriptedBackend):
    """Answers `answers` requests, then behaves like a server that went away."""

    def __init__(self, answers: int) -> None:
        super().__init__()
        self.left = answers

    def ask(self, audio: np.ndarray, instruction: str, max_new_tokens: int) -> Answer:
        if self.left == 0:
            raise BackendUnavailable("llama-server at http://127.0.0.1:1 stopped answering")
        self.left -= 1
        return super().ask(audio, instruction, max_new_tokens)


def test_a_fatal_error_mid_run_prints_the_table_and_keeps_finished_sidecars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a", "b", "c", "d"):
        write_wav(tmp_path / f"{name}.wav", 2.0)
    backend = StopsAfter(3)  # a: tags + lyrics, b: tags, then gone
    assert run(_args(tmp_path, "--lyrics"), lambda: backend) == EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: llama-server at http://127.0.0.1:1 stopped answering"]
    rows = {
        line.split()[0]: line.split()[1:]
        for line in captured.out.splitlines()
        if line.startswith(("a.", "b."))
    }
    assert rows == {
        "a.wav": ["written", "(3", "tags)", "model:", "transcribed", "-"],
        "b.wav": ["written", "(3", "tags)", "stopped", "-"],
    }
    assert (
        "2 files, 1 complete, 0 with failures; run stopped: 1 file(s) interrupted, 2 not reached"
        in captured.out
    )
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["a_lyrics.txt", "a_prompt.txt", "b_prompt.txt"]


@pytest.mark.parametrize("build", [llamacpp_parser, transformers_parser])
def test_help_marks_the_required_folder_once(build) -> None:
    """Every flag's help and default is checked for all command lines in test_cli_help.py; here: required is
    said once (the help text itself no longer says it)."""
    text = " ".join(build().format_help().split())
    assert "--data_dir DATA_DIR folder searched recursively for audio (required)" in text
    assert "(required) (required)" not in text
