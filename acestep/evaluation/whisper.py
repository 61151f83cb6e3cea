"""Lyrics transcription for the word error rate: whisper through transformers (WhisperForConditionalGeneration and
its processor, from a hub id or a local folder), English, 30 s windows transcribed one after another.

Decoding is plain greedy from the prompt <|startoftranscript|><|en|><|transcribe|><|notimestamps|> (the tokens the
model has): no timestamps, no temperature fallback, so a transcription is deterministic and short."""

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
        # the prompt's start tokens count against the decoder's positions
        self.max_new_tokens = min(max_new_tokens, int(model.config.max_target_positions) - 8)

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
            ids = self.greedy(features.to(self.device, self.model.dtype))
            texts.append(self.processor.tokenizer.decode(ids, skip_special_tokens=True))
        return " ".join(t.strip() for t in texts)

    def prompt_ids(self) -> list[int]:
        vocab = self.processor.tokenizer.get_vocab()  # English-only models have no <|en|> or <|transcribe|>
        return [vocab[t] for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
                if t in vocab]

    def greedy(self, features: torch.Tensor) -> list[int]:
        encoded = self.model.get_encoder()(features)
        ids = self.prompt_ids()
        end = self.processor.tokenizer.eos_token_id
        new: list[int] = []
        for _ in range(self.max_new_tokens):
            decoder_ids = torch.tensor([ids + new], device=self.device)
            logits = self.model(encoder_outputs=encoded, decoder_input_ids=decoder_ids).logits[0, -1]
            token = int(logits.argmax())
            if token == end:
                break
            new.append(token)
        return new
