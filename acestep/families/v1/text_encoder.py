"""The prompt encoder: UMT5 `last_hidden_state` over comma-joined tags (data-side.md section 4)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, UMT5EncoderModel

from acestep.core.quiet import library_bars_off

MAX_TEXT_TOKENS = 256


class TextEncoder:
    """UMT5 encoder + tokenizer from a `umt5-base/` folder."""

    def __init__(self, model: UMT5EncoderModel, tokenizer, device: str | torch.device = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, torch_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> TextEncoder:
        with library_bars_off():  # a local folder: the stage's own line says what is loaded
            model = UMT5EncoderModel.from_pretrained(str(folder), torch_dtype=torch_dtype).to(device)
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        return cls(model, tokenizer, device)

    @property
    def hidden_size(self) -> int:
        return self.model.config.d_model

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(last_hidden_state [B, L, d], attention mask [B, L]); L <= 256, padded to the longest prompt."""
        batch = self.tokenizer(
            prompts, padding="longest", truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        return hidden, batch.attention_mask
