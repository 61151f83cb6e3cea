"""Stage 1 against the real llama-server binary, built from the llama-cpp-python sdist, serving the tiny Omni.

`bash scripts/llama_server_fixture.sh` builds the binary and converts the tiny models once per machine
(CI runs it before the tests); without it these tests skip and say why.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from acestep.captioning.caption import BackendUnavailable
from acestep.captioning.cli import EXIT_ERROR, EXIT_SOME_FAILED, main_llamacpp
from acestep.captioning.clips import MAX_CLIP_SAMPLES, MODEL_SAMPLE_RATE
from acestep.captioning.llamacpp import LlamaServerBackend, chat_request
from acestep.captioning.prompts import TAGS_INSTRUCTION

pytestmark = pytest.mark.real_server
REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "scripts" / "llama_server_fixture.sh"
TAGS = "rock, piano, upbeat"


@pytest.fixture(scope="module")
def fixture_paths() -> dict[str, Path]:
    """The built binary and the converted tiny models, or a skip that says what is missing."""
    done = subprocess.run(["bash", str(FIXTURE), "--print"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
        if missing:
            pytest.skip(f"llama-server cannot be built here: {', '.join(missing)} not found")
        pytest.skip(
            "llama-server fixture not built: run `bash scripts/llama_server_fixture.sh` (~9 min once)"
        )
    return {key: Path(value) for key, value in (line.split("=", 1) for line in done.stdout.split())}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def llama_server(
    paths: dict[str, Path], model: str, log: Path, hears: bool = True, api_key: str | None = None
) -> Iterator[tuple[int, subprocess.Popen]]:
    """Start the fixture's llama-server with its `model` ("TAGS" or "LOOP") GGUF, and its audio projector when it
    `hears`, on 127.0.0.1 with a free port (and `--api-key` when given); wait until it serves, always stop it."""
    port = free_port()
    command = [str(paths["LLAMA_SERVER"]), "-m", str(paths[f"{model}_GGUF"]), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-c", "4096", "-np", "1", "--threads", "1", "--no-webui", "--no-warmup"]
    if hears:
        command += ["--mmproj", str(paths[f"{model}_MMPROJ"])]
    if api_key:
        command += ["--api-key", api_key]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"llama-server exited ({process.returncode}): {log.read_text()[-2000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"llama-server did not get ready in 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield port, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def write_song(path: Path, seconds: float, sample_rate: int = 22_050) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sf.write(path, 0.2 * np.sin(2 * np.pi * 220.0 * t), sample_rate)
    return path


def songs(folder: Path, lengths: dict[str, float]) -> Path:
    folder.mkdir()
    for name, seconds in lengths.items():
        write_song(folder / f"{name}.wav", seconds)
    return folder


def cli(data: Path, port: int, *extra: str) -> int:
    return main_llamacpp(
        ["--data_dir", str(data), "--port", str(port), "--no_progress", "--backoff", "0.1", *extra]
    )


def test_tags_and_lyrics(fixture_paths, tmp_path: Path, capsys) -> None:
    data = songs(tmp_path / "songs", {"short": 3.0, "long": 40.0})  # long: lyrics in two pieces
    with llama_server(fixture_paths, "TAGS", tmp_path / "log") as (port, _):
        assert cli(data, port, "--lyrics") == 0
    out = capsys.readouterr().out
    for stem in ("short", "long"):
        assert (data / f"{stem}_prompt.txt").read_text(encoding="utf-8") == TAGS + "\n"
    assert (data / "short_lyrics.txt").read_text(encoding="utf-8") == TAGS + "\n"
    assert (data / "long_lyrics.txt").read_text(encoding="utf-8") == f"{TAGS}\n{TAGS}\n"
    assert "2 files, 2 complete, 0 with failures" in out


def test_a_server_started_with_an_api_key(fixture_paths, tmp_path: Path, capsys, monkeypatch) -> None:
    """Without the key the real server answers 401 (the run stops before the first song, in one line); with
    --api_key the key goes as a Bearer token and every sidecar is written."""
    monkeypatch.delenv("LLAMA_API_KEY", raising=False)
    data = songs(tmp_path / "songs", {"a": 2.0})
    with llama_server(fixture_paths, "TAGS", tmp_path / "log", api_key="s3cret") as (port, _):
        assert cli(data, port, "--lyrics") == EXIT_ERROR
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "HTTP 401" in err[0] and "--api_key" in err[0]
        assert sorted(p.name for p in data.iterdir()) == ["a.wav"]
        assert cli(data, port, "--lyrics", "--api_key", "s3cret") == 0
    assert (data / "a_prompt.txt").read_text(encoding="utf-8") == TAGS + "\n"
    assert (data / "a_lyrics.txt").read_text(encoding="utf-8") == TAGS + "\n"


def test_junk_lyrics_cut_off_at_the_limit_are_not_written(fixture_paths, tmp_path: Path, capsys) -> None:
    data = songs(tmp_path / "songs", {"song": 5.0})
    with llama_server(fixture_paths, "LOOP", tmp_path / "log") as (port, _):
        assert cli(data, port, "--lyrics") == EXIT_SOME_FAILED
    out = capsys.readouterr().out
    assert sorted(p.name for p in data.iterdir()) == ["song.wav"]
    song = data / "song.wav"
    assert f"tags: {song}: unusable tags answer (cut off at the 160-token answer limit): 'la la la" in out
    assert f"lyrics: {song}: unusable lyrics answer: cut off at the 512-token answer limit: 'la la la" in out


def test_a_server_without_mmproj_stops_at_once_in_one_line(fixture_paths, tmp_path: Path, capsys) -> None:
    data = songs(tmp_path / "songs", {"a": 2.0, "b": 2.0})
    with llama_server(fixture_paths, "TAGS", tmp_path / "log", hears=False) as (port, _):
        started = time.monotonic()
        assert cli(data, port, "--lyrics") == EXIT_ERROR
        took = time.monotonic() - started
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: llama-server at http://127.0.0.1:{port} cannot hear audio"
    )
    assert "--mmproj" in err[0]
    assert took < 5.0  # no retries, no backoff
    assert sorted(p.name for p in data.iterdir()) == ["a.wav", "b.wav"]


def test_the_audio_request_without_mmproj_is_fatal_not_retried(fixture_paths, tmp_path: Path) -> None:
    """Behind the /props check: the real 500 for audio on a server that cannot hear is not retried."""
    with llama_server(fixture_paths, "TAGS", tmp_path / "log", hears=False) as (port, _):
        backend = LlamaServerBackend("127.0.0.1", port, timeout=30, retries=3, backoff_seconds=5.0)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="cannot hear audio") as err:
            backend.ask(np.zeros(MODEL_SAMPLE_RATE, np.float32), TAGS_INSTRUCTION, 8)
        assert time.monotonic() - started < 5.0
    assert "audio input is not supported" in str(err.value)


def test_a_server_killed_mid_run(fixture_paths, tmp_path: Path, capsys, monkeypatch) -> None:
    data = songs(tmp_path / "songs", {"a": 2.0, "b": 2.0, "c": 2.0, "d": 2.0})
    with llama_server(fixture_paths, "TAGS", tmp_path / "log") as (port, process):
        answered = LlamaServerBackend.ask

        def ask_then_kill(self, *args, **kwargs):
            answer = answered(self, *args, **kwargs)
            if self.answers == 3:  # a: tags + lyrics, b: tags; then the server dies
                process.send_signal(signal.SIGKILL)
                process.wait()
            return answer

        monkeypatch.setattr(LlamaServerBackend, "ask", ask_then_kill)
        assert cli(data, port, "--lyrics", "--retries", "1") == EXIT_ERROR
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: llama-server at http://127.0.0.1:{port} stopped answering"
    )
    assert "after 3 answers" in err[0] and "rerun the same command" in err[0]
    assert sorted(p.name for p in data.glob("*.txt")) == ["a_lyrics.txt", "a_prompt.txt", "b_prompt.txt"]
    assert (
        "2 files, 1 complete, 0 with failures; run stopped: 1 file(s) interrupted, 2 not reached"
        in captured.out
    )


def prompt_tokens(port: int, samples: int) -> int:
    clip = (0.1 * np.sin(np.arange(samples) / MODEL_SAMPLE_RATE * 2 * np.pi * 220.0)).astype(np.float32)
    body = requests.post(
        f"http://127.0.0.1:{port}/v1/chat/completions", json=chat_request(clip, "x", 1), timeout=60
    )
    body.raise_for_status()
    return int(body.json()["usage"]["prompt_tokens"])


def test_the_longest_clip_fills_one_audio_window(fixture_paths, tmp_path: Path) -> None:
    """MAX_CLIP_SAMPLES costs what 1 s costs (one 750-token window); one sample more costs a second window."""
    with llama_server(fixture_paths, "TAGS", tmp_path / "log") as (port, _):
        one_second = prompt_tokens(port, MODEL_SAMPLE_RATE)
        longest = prompt_tokens(port, MAX_CLIP_SAMPLES)
        one_more = prompt_tokens(port, MAX_CLIP_SAMPLES + 1)
        thirty = prompt_tokens(port, 30 * MODEL_SAMPLE_RATE)
    assert longest == one_second
    assert one_more - longest == 750 and thirty == one_more


def test_a_server_stopped_with_a_request_in_flight_is_noticed_long_before_the_timeout(
    fixture_paths, tmp_path: Path
) -> None:
    """After SIGTERM the real server holds the open request without answering; the /health probe sees it."""
    log = tmp_path / "log"
    said: list[str] = []
    with llama_server(fixture_paths, "LOOP", log) as (port, process):

        def stop_once_processing() -> None:
            deadline = time.monotonic() + 30
            while "processing task" not in log.read_text(errors="replace") and time.monotonic() < deadline:
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)

        backend = LlamaServerBackend(
            "127.0.0.1", port, timeout=120, retries=1, notice_every=0.5, say=said.append
        )
        stopper = threading.Thread(target=stop_once_processing)
        stopper.start()
        started = time.monotonic()
        with pytest.raises(
            BackendUnavailable,
            match=r"stopped answering after 0 answers \(no answer after \d+ s, and /health fails\)",
        ):
            backend.ask(np.full(5 * MODEL_SAMPLE_RATE, 0.01, np.float32), "x", 2900)  # a long answer
        took = time.monotonic() - started
        stopper.join()
    assert took < 15.0  # not the 120 s timeout
    assert said and re.fullmatch(
        rf"waiting for llama-server at http://127.0.0.1:{port}, \d+ s \(gives up at 120 s\)", said[0]
    )
