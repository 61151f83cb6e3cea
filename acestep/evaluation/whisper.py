"""Lyrics transcription for the word error rate: whisper through transformers (WhisperForConditionalGeneration and
its processor, from a hub id or a local folder), English, 30 s windows transcribed one after another."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .embedders import load_failure, resample


class WhisperTranscriber:
    def __init__(self, model: torch.nn.Module, processor: object, device: str = "cpu",
                 max_new_tokens: int = 200) -> None:
        self.model, self.processor, self.device = model.to(device).eval(), processor, device
        self.rate = int(processor.feature_extractor.sampling_rate)
        self.window = int(processor.feature_extractor.n_samples)
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_pretrained(cls, name: str | Path, device: str = "cpu") -> WhisperTranscriber:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        try:
            model = WhisperForConditionalGeneration.from_pretrained(str(name))
            processor = WhisperProcessor.from_pretrained(str(name))
        except (OSError, ValueError) as error:
            raise load_failure("whisper", name, "--whisper", error) from error
        return cls(model, processor, device)

    @torch.no_grad()
    def __call__(self, mono: np.ndarray, rate: int) -> str:
        audio = resample(mono, rate, self.rate)
        pieces = [audio[i : i + self.window] for i in range(0, max(len(audio), 1), self.window)]
        texts = []
        for piece in pieces:
            features = self.processor(piece, sampling_rate=self.rate, return_tensors="pt").input_features
            ids = self.model.generate(features.to(self.device, self.model.dtype), max_new_tokens=self.max_new_tokens)
            texts.append(self.processor.batch_decode(ids, skip_special_tokens=True)[0])
        return " ".join(t.strip() for t in texts)
