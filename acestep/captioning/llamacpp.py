"""Qwen2.5-Omni through a running llama-server (OpenAI-compatible /v1/chat/completions, audio as base64 WAV).

For users who already run llama.cpp (GGUF weights, CPU offload): nothing heavy is imported here.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import numpy as np
import requests
import soundfile as sf

from acestep.captioning.caption import BackendUnavailable, CaptionError
from acestep.captioning.clips import MODEL_SAMPLE_RATE
from acestep.captioning.prompts import SYSTEM_PROMPT

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
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


class LlamaServerBackend:
    """Sends each clip to llama-server; retries timeouts and 429/5xx answers with exponential backoff."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        timeout: float = 300.0,
        retries: int = 3,
        backoff_seconds: float = 2.0,
    ) -> None:
        self.url = f"http://{host}:{port}"
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.session = requests.Session()

    def check(self) -> None:
        """Fail early with a clear message when nothing answers (llama-server's /health is 200 once loaded)."""
        self._request("GET", "/health")

    def ask(self, audio: np.ndarray, instruction: str, max_new_tokens: int) -> str:
        body = self._request("POST", "/v1/chat/completions", chat_request(audio, instruction, max_new_tokens))
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise CaptionError(
                f"llama-server answered without choices[0].message.content: {str(body)[:200]}"
            ) from None
        return content or ""

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
                last = f"no reply within {self.timeout:g} s"
                continue
            if response.status_code in RETRY_STATUSES:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                raise CaptionError(
                    f"llama-server refused {path}: HTTP {response.status_code}: {response.text[:200]}"
                )
            try:
                return response.json()
            except ValueError:
                raise CaptionError(f"llama-server sent non-JSON from {path}: {response.text[:200]}") from None
        if unreachable == attempts:
            raise BackendUnavailable(NO_SERVER.format(url=self.url, port=self.port))
        raise CaptionError(f"llama-server {path} failed after {attempts} attempts: {last}")
