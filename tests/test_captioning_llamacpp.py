"""The llama-server backend against a local HTTP server that checks each request and plays scripted answers."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from acestep.captioning.caption import Answer, BackendUnavailable, CaptionError
from acestep.captioning.cli import EXIT_ERROR, main_llamacpp
from acestep.captioning.clips import MODEL_SAMPLE_RATE
from acestep.captioning.llamacpp import NO_AUDIO, LlamaServerBackend
from acestep.captioning.prompts import SYSTEM_PROMPT, TAGS_INSTRUCTION


class FakeLlamaServer(ThreadingHTTPServer):
    """Serves /health and /v1/chat/completions; each chat reply is the next scripted (status, body, delay)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[tuple[int, object, float]] = []
        self.finish_reason = "stop"
        self.audio = True  # what /props says in modalities.audio
        self.health = 200
        self.requests: list[dict] = []
        self.decoded_audio: list[tuple[np.ndarray, int]] = []
        self.bad_requests: list[str] = []
        self.api_key: str | None = None  # as `llama-server --api-key`: a Bearer token on all but /health
        self.authorizations: list[str | None] = []

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: FakeLlamaServer

    def log_message(self, *args: object) -> None:
        pass

    def _refused(self) -> bool:
        """llama-server's answer to a missing or wrong key: 401 with an OpenAI-style error body."""
        self.server.authorizations.append(self.headers.get("Authorization"))
        if self.server.api_key is None or self.path == "/health":
            return False
        if self.headers.get("Authorization") == f"Bearer {self.server.api_key}":
            return False
        self._send(401, {"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}})
        return True

    def do_GET(self) -> None:
        if self._refused():
            return
        if self.path == "/health":
            self._send(self.server.health, {"status": "ok"})
        elif self.path == "/props":
            self._send(200, {"modalities": {"vision": False, "audio": self.server.audio}})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self._refused():
            return
        self.server.requests.append(body)
        problem = self._check(body)
        if problem:
            self.server.bad_requests.append(problem)
            self._send(400, {"error": problem})
            return
        status, answer, delay = self.server.script.pop(0) if self.server.script else (200, "rock", 0.0)
        time.sleep(delay)
        message = {"role": "assistant", "content": answer}
        reply = (
            {"choices": [{"message": message, "finish_reason": self.server.finish_reason}]}
            if status == 200
            else answer
        )
        self._send(status, reply)

    def _check(self, body: dict) -> str:
        """The request shape llama-server expects: system text, then input_audio (base64 WAV) and text."""
        if self.path != "/v1/chat/completions":
            return f"wrong path {self.path}"
        system, user = body["messages"]
        if system != {"role": "system", "content": SYSTEM_PROMPT} or user["role"] != "user":
            return "bad roles"
        audio_part, text_part = user["content"]
        if audio_part["type"] != "input_audio" or audio_part["input_audio"]["format"] != "wav":
            return "no input_audio wav part"
        if text_part["type"] != "text" or not text_part["text"]:
            return "no text part"
        try:
            wav, sr = sf.read(io.BytesIO(base64.b64decode(audio_part["input_audio"]["data"], validate=True)))
        except Exception as err:  # noqa: BLE001 - any decode failure is a bad request
            return f"audio is not a base64 WAV: {err}"
        self.server.decoded_audio.append((wav, sr))
        return ""

    def _send(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)


@pytest.fixture
def server() -> Iterator[FakeLlamaServer]:
    srv = FakeLlamaServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def backend_for(server: FakeLlamaServer, **kwargs: float) -> LlamaServerBackend:
    settings = {"timeout": 5.0, "retries": 2, "backoff_seconds": 0.01, **kwargs}
    return LlamaServerBackend("127.0.0.1", server.port, **settings)


CLIP = (0.25 * np.sin(2 * np.pi * 440.0 * np.arange(MODEL_SAMPLE_RATE) / MODEL_SAMPLE_RATE)).astype(
    np.float32
)


def test_request_shape_and_answer(server: FakeLlamaServer) -> None:
    server.script = [(200, "Tags: pop, piano", 0.0)]
    answer = backend_for(server).ask(CLIP, TAGS_INSTRUCTION, 64)
    assert answer == Answer("Tags: pop, piano", truncated=False)
    assert server.bad_requests == []
    body = server.requests[0]
    assert body["max_tokens"] == 64 and body["temperature"] == 0.0
    assert body["messages"][1]["content"][1]["text"] == TAGS_INSTRUCTION
    wav, sr = server.decoded_audio[0]
    assert sr == MODEL_SAMPLE_RATE and wav.shape == CLIP.shape
    assert np.abs(wav - CLIP).max() < 1e-3  # 16-bit PCM round trip


def test_server_errors_are_retried_then_succeed(server: FakeLlamaServer) -> None:
    server.script = [(503, {"error": "loading"}, 0.0), (500, {"error": "boom"}, 0.0), (200, "jazz", 0.0)]
    assert backend_for(server).ask(CLIP, TAGS_INSTRUCTION, 8).text == "jazz"
    assert len(server.requests) == 3


def test_server_errors_fail_after_the_retries(server: FakeLlamaServer) -> None:
    server.script = [(500, {"error": "boom"}, 0.0)] * 3
    with pytest.raises(CaptionError, match=r"failed after 3 attempts: HTTP 500"):
        backend_for(server).ask(CLIP, TAGS_INSTRUCTION, 8)
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(server: FakeLlamaServer) -> None:
    server.script = [(400, {"error": "audio input is not supported"}, 0.0)]
    with pytest.raises(CaptionError, match=r"HTTP 400.*audio input is not supported"):
        backend_for(server).ask(CLIP, TAGS_INSTRUCTION, 8)
    assert len(server.requests) == 1


def test_a_timeout_with_a_live_server_fails_the_output_without_a_retry(server: FakeLlamaServer) -> None:
    server.script = [(200, "late", 0.6), (200, "late", 0.6)]
    with pytest.raises(CaptionError, match=r"no answer within 0.2 s \(--timeout\); it is up"):
        backend_for(server, timeout=0.2, retries=1).ask(CLIP, TAGS_INSTRUCTION, 8)
    assert len(server.requests) == 1  # the same request would take as long again


def test_a_timeout_with_a_dead_server_stops_the_run(server: FakeLlamaServer) -> None:
    server.script = [(200, "late", 0.6)]
    server.health = 503
    with pytest.raises(
        BackendUnavailable, match=r"stopped answering .*no answer within 0.2 s, and /health fails"
    ):
        backend_for(server, timeout=0.2).ask(CLIP, TAGS_INSTRUCTION, 8)


def test_a_waiting_request_says_so(server: FakeLlamaServer) -> None:
    server.script = [(200, "rock", 0.35)]
    lines: list[str] = []
    backend = backend_for(server, notice_every=0.1)
    backend.say = lines.append
    assert backend.ask(CLIP, TAGS_INSTRUCTION, 8).text == "rock"
    assert 2 <= len(lines) <= 4
    assert lines[0] == f"waiting for llama-server at {backend.url}, 0 s (gives up at 5 s)"
    time.sleep(0.3)
    assert 2 <= len(lines) <= 4  # silent once answered


def test_a_server_that_stops_while_a_request_waits_stops_the_run_early(server: FakeLlamaServer) -> None:
    """A SIGTERMed llama-server holds the request open; the /health probe notices long before --timeout."""
    server.script = [(200, "never sent in time", 5.0)]
    server.health = 503
    lines: list[str] = []
    backend = backend_for(server, timeout=60.0, notice_every=0.1)
    backend.say = lines.append
    started = time.monotonic()
    with pytest.raises(
        BackendUnavailable,
        match=r"stopped answering after 0 answers \(no answer after 0 s, and /health fails\)",
    ):
        backend.ask(CLIP, TAGS_INSTRUCTION, 8)
    assert time.monotonic() - started < 2.0
    assert lines == [f"waiting for llama-server at {backend.url}, 0 s (gives up at 60 s)"]


def test_a_truncated_answer_is_flagged(server: FakeLlamaServer) -> None:
    server.script = [(200, "ld Ild Ild Ild", 0.0)]
    server.finish_reason = "length"
    assert backend_for(server).ask(CLIP, TAGS_INSTRUCTION, 4) == Answer("ld Ild Ild Ild", truncated=True)


def test_a_server_without_audio_stops_at_the_check(server: FakeLlamaServer) -> None:
    server.audio = False
    with pytest.raises(BackendUnavailable) as err:
        backend_for(server).check()
    assert str(err.value) == NO_AUDIO.format(url=f"http://127.0.0.1:{server.port}")
    assert "--mmproj" in str(err.value) and server.requests == []


def test_unsupported_input_is_fatal_not_retried(server: FakeLlamaServer) -> None:
    hint = "audio input is not supported - hint: if this is unexpected, you may need to provide the mmproj"
    server.script = [(500, {"error": {"code": 500, "message": hint}}, 0.0)] * 4
    with pytest.raises(BackendUnavailable, match="cannot hear audio"):
        backend_for(server, retries=3).ask(CLIP, TAGS_INSTRUCTION, 8)
    assert len(server.requests) == 1


def test_answer_without_choices_is_a_caption_error(server: FakeLlamaServer) -> None:
    backend = backend_for(server)
    backend.session.request = lambda *a, **k: _JsonResponse({"result": "odd"})  # type: ignore[method-assign]
    with pytest.raises(CaptionError, match="without choices"):
        backend.ask(CLIP, TAGS_INSTRUCTION, 8)


class _JsonResponse:
    status_code = 200
    text = "{}"

    def __init__(self, payload: object) -> None:
        self._payload = payload

    def json(self) -> object:
        return self._payload


def test_no_server_gives_a_clear_message() -> None:
    backend = LlamaServerBackend("127.0.0.1", free_port(), timeout=2.0, retries=1, backoff_seconds=0.01)
    with pytest.raises(
        BackendUnavailable, match=r"no llama-server answers at http://127\.0\.0\.1:\d+: start one"
    ):
        backend.check()


def test_script_end_to_end(
    server: FakeLlamaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sf.write(tmp_path / "one.wav", np.zeros((44_100, 2)) + 0.1, 44_100)
    sf.write(tmp_path / "two.flac", np.zeros((22_050, 1)) + 0.1, 22_050)
    server.script = [
        (200, "1. Pop\n2. Piano\n3. 100 BPM", 0.0),
        (200, "[Verse 1]\nhello there", 0.0),
        (500, {"error": "boom"}, 0.0),
        (500, {"error": "boom"}, 0.0),
        (500, {"error": "boom"}, 0.0),
    ]
    argv = [
        "--data_dir",
        str(tmp_path),
        "--lyrics",
        "--port",
        str(server.port),
        "--backoff",
        "0.01",
        "--retries",
        "2",
        "--no_progress",
    ]
    assert main_llamacpp(argv) == 1
    assert (tmp_path / "one_prompt.txt").read_text(encoding="utf-8") == "pop, piano\n"
    assert (tmp_path / "one_lyrics.txt").read_text(encoding="utf-8") == "[verse]\nhello there\n"
    assert not (tmp_path / "two_prompt.txt").exists()  # its tags request failed three times
    assert server.bad_requests == []
    out = capsys.readouterr().out
    assert "tags: " in out and "two.flac" in out and "HTTP 500" in out


def test_script_without_server_exits_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sf.write(tmp_path / "one.wav", np.zeros((16_000, 1)), 16_000)
    argv = ["--data_dir", str(tmp_path), "--port", str(free_port()), "--retries", "0", "--no_progress"]
    assert main_llamacpp(argv) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: no llama-server answers at http://127.0.0.1:") and "llama-server -hf" in err


def test_the_api_key_is_sent_as_a_bearer_token(server: FakeLlamaServer) -> None:
    server.api_key = "s3cret"
    server.script = [(200, "rock, piano", 0.0)]
    backend = backend_for(server, api_key="s3cret")
    backend.check()
    assert backend.ask(CLIP, TAGS_INSTRUCTION, 16) == Answer("rock, piano")
    assert server.authorizations == ["Bearer s3cret"] * 3  # /health, /props, the chat
    assert server.bad_requests == []


@pytest.mark.parametrize("key", [None, "wrong"])
def test_a_refused_key_stops_the_run_at_the_check(server: FakeLlamaServer, key: str | None) -> None:
    server.api_key = "s3cret"
    backend = backend_for(server, api_key=key)
    with pytest.raises(BackendUnavailable, match=r"refused the request \(HTTP 401: Invalid API Key\).*--api_key"):
        backend.check()
    with pytest.raises(BackendUnavailable, match="HTTP 401"):
        backend.ask(CLIP, TAGS_INSTRUCTION, 16)  # not retried, not a per-file failure
    assert len(server.authorizations) == 3  # /health, /props, one chat: a 401 is never retried


def test_script_with_api_key_flag_and_environment(
    server: FakeLlamaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sf.write(tmp_path / "one.wav", np.zeros((16_000, 1)) + 0.1, 16_000)
    server.api_key = "s3cret"
    argv = ["--data_dir", str(tmp_path), "--port", str(server.port), "--retries", "0", "--no_progress"]
    monkeypatch.delenv("LLAMA_API_KEY", raising=False)
    assert main_llamacpp(argv) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 401" in err and "--api_key" in err
    assert not (tmp_path / "one_prompt.txt").exists()

    server.script = [(200, "rock, piano", 0.0)]
    assert main_llamacpp([*argv, "--api_key", "s3cret"]) == 0
    assert (tmp_path / "one_prompt.txt").read_text(encoding="utf-8") == "rock, piano\n"

    monkeypatch.setenv("LLAMA_API_KEY", "s3cret")
    server.script = [(200, "jazz, drums", 0.0)]
    assert main_llamacpp([*argv, "--overwrite"]) == 0
    assert (tmp_path / "one_prompt.txt").read_text(encoding="utf-8") == "jazz, drums\n"
