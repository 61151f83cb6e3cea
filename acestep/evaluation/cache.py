"""What the evaluation keeps on disk under RUN/eval, so a re-run does only what is new and a stopped one resumes:

  renders/step-000100/NAME-seedS.wav   one render per (step, prompt, seed), float WAV, written atomically
  renders/step-000100/NAME-seedS.json  what made it (prompt, lyrics, duration, seed, sampler steps, LoRA hash)
  embeddings/step-000100.safetensors   the listening models' view of that step's renders, stamped with a
                                       fingerprint of the renders and models (another setting: computed again)
  embeddings/songs.safetensors         the same for your songs
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acestep.core.atomic import atomic_write_json, atomic_write_with

RENDERS_DIR = "renders"
EMBEDDINGS_DIR = "embeddings"
FINGERPRINT_KEY = "acestep_eval_fingerprint"


@dataclass(frozen=True)
class EvalPrompt:
    """One fixed render: the same prompt, lyrics, length and seed at every step."""

    name: str
    prompt: str
    lyrics: str
    duration: float
    seed: int


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def file_hash(path: Path | None) -> str | None:
    """sha256 of a file (the LoRA a step renders with), so a replaced file is rendered again."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


class RenderCache:
    """Renders of one evaluation folder; a render counts as cached only when its settings match exactly."""

    def __init__(self, eval_dir: Path) -> None:
        self.eval_dir = Path(eval_dir)

    def wav_path(self, step: int, prompt: EvalPrompt) -> Path:
        return self.eval_dir / RENDERS_DIR / step_dir_name(step) / f"{prompt.name}-seed{prompt.seed}.wav"

    @staticmethod
    def settings(prompt: EvalPrompt, sampler_steps: int | None, lora_hash: str | None) -> dict[str, Any]:
        return {**asdict(prompt), "sampler_steps": sampler_steps, "lora_sha256": lora_hash}

    def get(self, step: int, prompt: EvalPrompt, settings: dict[str, Any]) -> tuple[np.ndarray, int] | None:
        """[channels, samples] and rate of a cached render made with these settings, else None."""
        import soundfile as sf

        wav, side = self.wav_path(step, prompt), self.wav_path(step, prompt).with_suffix(".json")
        try:
            if json.loads(side.read_text(encoding="utf-8-sig")) != settings:
                return None
            data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
        except (OSError, ValueError, RuntimeError):
            return None
        return data.T, int(rate)

    def has(self, step: int, prompt: EvalPrompt, settings: dict[str, Any]) -> bool:
        wav = self.wav_path(step, prompt)
        try:
            return wav.is_file() and json.loads(wav.with_suffix(".json").read_text(encoding="utf-8-sig")) == settings
        except (OSError, ValueError):
            return False

    def put(self, step: int, prompt: EvalPrompt, settings: dict[str, Any], wav: np.ndarray, rate: int) -> Path:
        """Side file first, WAV last (both atomic): a WAV under its real name is always complete and described."""
        import soundfile as sf

        path = self.wav_path(step, prompt)
        atomic_write_json(path.with_suffix(".json"), settings)
        atomic_write_with(path, lambda temp: sf.write(str(temp), np.asarray(wav, np.float32).T, rate,
                                                      subtype="FLOAT", format="WAV"))
        return path


class EmbeddingCache:
    """Named arrays per key (a step, or `songs`) in safetensors files, valid for one fingerprint."""

    def __init__(self, eval_dir: Path) -> None:
        self.folder = Path(eval_dir) / EMBEDDINGS_DIR

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def get(self, key: str, stamp: str | None) -> dict[str, np.ndarray] | None:
        """The arrays stored for `key` under `stamp` (None: whatever is stored, for a step whose LoRA is gone)."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.path(key)), framework="np") as handle:
                if stamp is not None and (handle.metadata() or {}).get(FINGERPRINT_KEY) != stamp:
                    return None
                return {name: handle.get_tensor(name) for name in handle.keys()}
        except (OSError, ValueError, RuntimeError):
            return None

    def cached_steps(self) -> list[int]:
        return sorted(int(p.stem.removeprefix("step-")) for p in self.folder.glob("step-*.safetensors")
                      if p.stem.removeprefix("step-").isdigit())

    def put(self, key: str, stamp: str, arrays: dict[str, np.ndarray]) -> None:
        from safetensors.numpy import save_file

        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
        atomic_write_with(self.path(key), lambda temp: save_file(tensors, str(temp), {FINGERPRINT_KEY: stamp}))
