"""MERT-v1-330M and mHuBERT-147 features for the SSL (REPA) loss, extracted as the reference does (data-side.md 6).

Both load as transformers `HubertModel` without remote code: MERT's remote `MERTModel` is a HubertModel with
stable layer norm for its published config, so its `mert_model` config is translated to a `HubertConfig`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import HubertConfig, HubertModel

from acestep.core.quiet import library_bars_off

from .dcae import resample_batch

NORM_EPS = 1e-7
FRAME_STRIDE = 320


@dataclass(frozen=True)
class SSLSpec:
    sample_rate: int
    chunk_samples: int
    length_divisor: int  # valid length at the model rate = 48 kHz length // divisor


MERT_SPEC = SSLSpec(24000, 120000, 2)
MHUBERT_SPEC = SSLSpec(16000, 480000, 3)
MERT_REPO = "m-a-p/MERT-v1-330M"
MHUBERT_REPO = "utter-project/mHuBERT-147"


def _local_config(name_or_path: str | Path) -> dict | None:
    config = Path(name_or_path) / "config.json"
    return json.loads(config.read_text(encoding="utf-8-sig")) if config.is_file() else None


@library_bars_off()  # the stage's own line says what is loaded; downloads keep their bars
def load_hubert(name_or_path: str | Path, torch_dtype: torch.dtype = torch.float32) -> HubertModel:
    """A HubertModel from a folder or hub id; a `mert_model` config becomes the equivalent HubertConfig."""
    raw = _local_config(name_or_path)
    if raw is None:
        from huggingface_hub import hf_hub_download

        raw = json.loads(Path(hf_hub_download(str(name_or_path), "config.json")).read_text(encoding="utf-8"))
    if raw.get("model_type") != "hubert":
        fields = {k: v for k, v in raw.items() if k not in ("model_type", "auto_map", "architectures")}
        fields.setdefault("conv_pos_batch_norm", False)
        config = HubertConfig(**fields)
        return HubertModel.from_pretrained(str(name_or_path), config=config, torch_dtype=torch_dtype).eval()
    return HubertModel.from_pretrained(str(name_or_path), torch_dtype=torch_dtype).eval()


def _normalise(wav: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the valid part, with torch's unbiased variance and eps 1e-7."""
    return (wav - wav.mean()) / torch.sqrt(wav.var() + NORM_EPS)


@torch.no_grad()
def extract_features(model: HubertModel, spec: SSLSpec, mono48: torch.Tensor, length48: int) -> torch.Tensor:
    """One song -> [frames, hidden]: consecutive zero-padded chunks in one batch, ceil(len/320) frames each."""
    wav = resample_batch(mono48[None, :length48], 48000, spec.sample_rate)[0]
    wav = _normalise(wav[: length48 // spec.length_divisor])
    chunks = []
    valid = []
    for start in range(0, wav.shape[0], spec.chunk_samples):
        piece = wav[start : start + spec.chunk_samples]
        valid.append(piece.shape[0])
        chunks.append(torch.nn.functional.pad(piece, (0, spec.chunk_samples - piece.shape[0])))
    param = next(model.parameters())
    hidden = model(torch.stack(chunks).to(param.device, param.dtype)).last_hidden_state
    frames = [hidden[i, : min(math.ceil(n / FRAME_STRIDE), hidden.shape[1])] for i, n in enumerate(valid)]
    return torch.cat(frames, dim=0).float().cpu()


class SSLFeatureExtractor:
    """Both SSL models; `extract` gives per-song feature lists as the trainer's SSL loss expects."""

    def __init__(self, mert: HubertModel, mhubert: HubertModel) -> None:
        self.mert, self.mhubert = mert, mhubert

    @classmethod
    def from_pretrained(
        cls, mert: str | Path = MERT_REPO, mhubert: str | Path = MHUBERT_REPO,
        torch_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    ) -> SSLFeatureExtractor:
        return cls(load_hubert(mert, torch_dtype).to(device), load_hubert(mhubert, torch_dtype).to(device))

    def extract(
        self, wavs: torch.Tensor, wav_lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """[B, 2, T] at 48 kHz -> ([Tm, 1024] per song, [Th, 768] per song)."""
        mono = wavs.float().mean(dim=1)
        mert = [extract_features(self.mert, MERT_SPEC, m, int(n)) for m, n in zip(mono, wav_lengths)]
        mhubert = [extract_features(self.mhubert, MHUBERT_SPEC, m, int(n)) for m, n in zip(mono, wav_lengths)]
        return mert, mhubert
