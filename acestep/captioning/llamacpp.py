"""Qwen2.5-Omni through a running llama-server (OpenAI-compatible /v1/chat/completions, audio as base64 WAV).

For users who already run llama.cpp (GGUF weights, CPU offload): nothing heavy is imported here.
"""

from __future__ import annotations

import base64
import io
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import requests
import soundfile as sf
from tqdm import tqdm

from acestep.captioning.caption import Answer, BackendUnavailable, CaptionError
from acestep.captioning.clips import MODEL_SAMPLE_RATE
from acestep.captioning.prompts import SYSTEM_PROMPT

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# One request is about 1,200 prompt tokens (750 of them one audio window) and up to 512 answer tokens.
# On the tiny test model (tests/test_captioning_real_server.py, 2 CPU cores) the fixed part of a request
# (WAV upload, mel, audio encoder, HTTP) measured 0.4-0.5 s, a 512-token answer 0.7-0.9 s: the time is
# the model's. A 7B Q4 model on a CPU (prompt at tens of tokens/s, answers at 5-10 tokens/s) takes one to
# three minutes for a full lyrics answer; 300 s covers that with room, and on a GPU it takes seconds.
# A long timeout costs nothing when a server dies: the /health probe while waiting notices that.
DEFAULT_TIMEOUT = 300.0
NOTICE_EVERY = 15.0  # seconds between "waiting for llama-server" lines
HEALTH_TIMEOUT = 10.0
UNSUPPORTED_INPUT = "input is not supported"  # llama-server's 500 for audio without an mmproj
NO_AUDIO = (
    "llama-server at {url} cannot hear audio (it was started without the model's mmproj): restart it with "
    "--mmproj mmproj-<model>.gguf beside -m <model>.gguf, or with -hf ggml-org/Qwen2.5-Omni-7B-GGUF"
)
STOPPED = (
    "llama-server at {url} stopped answering after {answers} answers ({last}); finished sidecars are kept: "
    "start it again and rerun the same command to go on"
)
API_KEY_ENV = "LLAMA_API_KEY"  # what llama-server reads for its own --api-key
REFUSED_KEY = (
    "llama-server at {url} refused the request (HTTP 401: {detail}): it was started with --api-key; pass the same "
    "key with --api_key or ${env}"
)
NO_SERVER = (
    "no llama-server answers at {url}: start one with an audio-capable Qwen2.5-Omni GGUF and its mmproj, "
    "e.g. `llama-server -hf ggml-org/Qwen2.5-Omni-7B-GGUF --port {port}`, or pass --host/--port"
)


def wav_base64(audio: np.ndarray, sample_rate: int = MODEL_SAMPLE_RATE) -> str:
    """16-bit PCM WAV bytes of a mono clip, base64-encoded as the `input_audio` part wants them."""
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_request(audio: np.ndarray, instruction: str, max_new_tokens: int) -> dict[str, Any]:
    """The /v1/chat/completions body: system prompt, then the audio and the instruction in one user turn."""
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": wav_base64(audio), "format": "wav"}},
                    {"type": "text", "text": instruction},
                ],
            },
        ],
        "max_tokens": max_new_tokens,
        "temperature": 0.0,
        "stream": False,
    }


def _say_on_stderr(line: str) -> None:
    tqdm.write(line, file=sys.stderr)  # above a live progress bar, never through it


class LlamaServerBackend:
    """Sends each clip to llama-server.

    Retries HTTP 429/5xx answers with exponential backoff. Stops the run (BackendUnavailable) when the
    server cannot hear audio, stopped answering (also while a request waits), or never answered. A timeout
    is not retried: the same request would take as long again.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff_seconds: float = 2.0,
        notice_every: float = NOTICE_EVERY,
        say: Callable[[str], None] = _say_on_stderr,
        api_key: str | None = None,
    ) -> None:
        self.url = f"http://{host}:{port}"
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.notice_every = notice_every
        self.say = say
        self.answers = 0
        self.session = requests.Session()
        # llama-server checks `Authorization: Bearer KEY` on every endpoint but /health and /models
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.session.headers.update(self.headers)

    def check(self) -> None:
        """Fail before the first song: nothing answers, the model is not loaded, or it cannot hear audio."""
        self._request("GET", "/health")
        try:
            props = self._request("GET", "/props")
        except BackendUnavailable:
            raise
        except CaptionError:
            return  # a server without /props: a missing mmproj shows at the first request instead
        modalities = props.get("modalities") if isinstance(props, dict) else None
        if isinstance(modalities, dict) and not modalities.get("audio", False):
            raise BackendUnavailable(NO_AUDIO.format(url=self.url))

    def ask(self, audio: np.ndarray, instruction: str, max_new_tokens: int) -> Answer:
        body = self._watched("/v1/chat/completions", chat_request(audio, instruction, max_new_tokens))
        try:
            choice = body["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise CaptionError(
                f"llama-server answered without choices[0].message.content: {str(body)[:200]}"
            ) from None
        self.answers += 1
        return Answer(content or "", truncated=choice.get("finish_reason") == "length")

    def _watched(self, path: str, payload: dict[str, Any]) -> Any:
        """POST in a worker thread; every `notice_every` s say how long it has waited and probe /health.

        A server stopped with SIGTERM keeps an in-flight request open without answering, so without the
        probe a stopped server would only show after --timeout.
        """
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                outcome["body"] = self._request("POST", path, payload)
            except BaseException as err:  # noqa: BLE001 - handed to the waiting thread as it is
                outcome["error"] = err
            finally:
                done.set()

        started = time.monotonic()
        threading.Thread(target=work, daemon=True).start()  # daemon: an abandoned request never blocks exit
        while not done.wait(self.notice_every):
            waited = time.monotonic() - started
            self.say(
                f"waiting for llama-server at {self.url}, {waited:.0f} s (gives up at {self.timeout:g} s)"
            )
            if not done.is_set():
                self._fail_unless_alive(f"no answer after {waited:.0f} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["body"]

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        attempts = self.retries + 1
        unreachable = 0
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
            try:
                response = self.session.request(method, self.url + path, json=payload, timeout=self.timeout)
            except requests.ConnectionError as err:
                unreachable += 1
                last = f"connection failed ({type(err).__name__})"
                continue
            except requests.Timeout:
                self._fail_unless_alive(f"no answer within {self.timeout:g} s")
                raise CaptionError(
                    f"llama-server gave no answer within {self.timeout:g} s (--timeout); it is up, "
                    "so it is busy or slow: raise --timeout for slow machines"
                ) from None
            if response.status_code in RETRY_STATUSES:
                if UNSUPPORTED_INPUT in response.text:  # a missing mmproj: every request fails alike
                    raise BackendUnavailable(NO_AUDIO.format(url=self.url) + f" ({response.text[:120]})")
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code == 401:  # a wrong or missing key fails every request alike
                raise BackendUnavailable(
                    REFUSED_KEY.format(url=self.url, detail=_error_message(response), env=API_KEY_ENV)
                )
            if response.status_code >= 400:
                raise CaptionError(
                    f"llama-server refused {path}: HTTP {response.status_code}: {response.text[:200]}"
                )
            try:
                return response.json()
            except ValueError:
                raise CaptionError(f"llama-server sent non-JSON from {path}: {response.text[:200]}") from None
        if unreachable == attempts:
            if self.answers:
                raise BackendUnavailable(STOPPED.format(url=self.url, answers=self.answers, last=last))
            raise BackendUnavailable(NO_SERVER.format(url=self.url, port=self.port))
        raise CaptionError(f"llama-server {path} failed after {attempts} attempts: {last}")

    def _fail_unless_alive(self, what: str) -> None:
        """After a timeout or while a request waits: a server without /health stops the run, not every song."""
        try:  # not self.session: a request may be in flight on it in another thread
            alive = (
                requests.get(self.url + "/health", headers=self.headers, timeout=HEALTH_TIMEOUT).status_code == 200
            )
        except requests.RequestException:
            alive = False
        if not alive:
            raise BackendUnavailable(
                STOPPED.format(url=self.url, answers=self.answers, last=f"{what}, and /health fails")
            )


def _error_message(response: requests.Response) -> str:
    """llama-server's `error.message` (an OpenAI-style error body), else the start of the body."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or response.text[:120] or response.reason)
