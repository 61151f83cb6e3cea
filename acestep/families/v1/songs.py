"""v1's stored songs as the trainer draws them: rows of a preprocessed v1 dataset as float tensors (latents
[8, 16, T] at 10.77 frames a second, prompt states, lyric ids, optional SSL features), a random crop, and the
batches the v1 step reads (`collate_songs`). Items are by `acestep.training.data.Draw`: a song's crop comes from its
own stream."""

from __future__ import annotations

import math
from typing import Any

import datasets
import torch
from torch.utils.data import Dataset

from acestep.core.errors import AcestepError
from acestep.data.preprocessed import SSL_COLUMNS
from acestep.training.data import Draw, pad_stack

LATENT_FRAMES_PER_SECOND = 44100 / 512 / 8
REQUIRED_COLUMNS = ("target_latents", "encoder_text_hidden_states", "lyric_token_ids", "lyric_mask")


class SongLatents(Dataset):
    """Rows of the preprocessed dataset as float tensors, optionally cropped to `max_frames` latent frames.

    A crop keeps the SSL features of the same stretch of audio (their row ranges are scaled from the frame
    range). Text and lyrics always describe the whole song, as in the reference.
    """

    def __init__(self, dataset: datasets.Dataset, max_frames: int | None = None, use_ssl: bool = True) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
        if missing:
            raise AcestepError(f"the dataset lacks the column(s) {', '.join(missing)}: not a preprocessed dataset")
        self.has_ssl = use_ssl and all(c in dataset.column_names for c in SSL_COLUMNS)
        columns = list(REQUIRED_COLUMNS) + (list(SSL_COLUMNS) if self.has_ssl else [])
        if "text_attention_mask" in dataset.column_names:  # the fork's layout pads the prompt states
            columns.append("text_attention_mask")
        self.dataset = dataset.select_columns(columns).with_format("torch")
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, draw: Draw) -> dict[str, Any]:
        row = self.dataset[draw.index]
        latents = row["target_latents"].float()
        text = row["encoder_text_hidden_states"].float()
        text_mask = row.get("text_attention_mask")
        item = {
            "target_latents": latents,
            "encoder_text_hidden_states": text,
            "text_attention_mask": torch.ones(text.shape[0]) if text_mask is None else text_mask.float(),
            "lyric_token_ids": row["lyric_token_ids"].long(),
            "lyric_mask": row["lyric_mask"].float(),
            "micro_batch": draw.micro_batch,
            "seed": draw.seed,
        }
        if self.has_ssl:
            item["ssl"] = [row[c].float() for c in SSL_COLUMNS]
        return self._crop(item, torch.Generator().manual_seed(draw.seed))

    def _crop(self, item: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        frames = item["target_latents"].shape[-1]
        if self.max_frames is None or frames <= self.max_frames:
            return item
        start = int(torch.randint(0, frames - self.max_frames + 1, (1,), generator=generator))
        end = start + self.max_frames
        item["target_latents"] = item["target_latents"][..., start:end]
        if "ssl" in item:
            item["ssl"] = [_same_stretch(f, start / frames, end / frames) for f in item["ssl"]]
        return item


def _same_stretch(features: torch.Tensor, begin: float, end: float) -> torch.Tensor:
    """Rows of `features` covering the fraction [begin, end) of the song (at least one row)."""
    rows = features.shape[0]
    first = min(round(begin * rows), rows - 1)
    return features[first: max(round(end * rows), first + 1)]


def collate_songs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad latents (time), prompt states and lyric ids to the longest in the batch; masks mark real entries."""
    latents, frame_mask = pad_stack([i["target_latents"].permute(2, 0, 1) for i in items])
    text, _ = pad_stack([i["encoder_text_hidden_states"] for i in items])
    text_mask, _ = pad_stack([i["text_attention_mask"] for i in items])
    lyrics, _ = pad_stack([i["lyric_token_ids"] for i in items])
    lyric_mask, _ = pad_stack([i["lyric_mask"] for i in items])
    batch = {
        "target_latents": latents.permute(0, 2, 3, 1).contiguous(),
        "attention_mask": frame_mask,
        "encoder_text_hidden_states": text,
        "text_attention_mask": text_mask,
        "lyric_token_ids": lyrics,
        "lyric_mask": lyric_mask,
        "micro_batch": items[0]["micro_batch"],
        "seeds": [i["seed"] for i in items],  # each song's own stream: its draws do not depend on its batch
    }
    if "ssl" in items[0]:
        batch["ssl_hidden_states"] = [[i["ssl"][k] for i in items] for k in range(len(items[0]["ssl"]))]
    return batch


def frames_for_seconds(seconds: float | None) -> int | None:
    """Latent frames in `seconds` of audio (10.77 per second), at least 1; None stays None (no crop)."""
    return None if seconds is None else max(1, math.floor(seconds * LATENT_FRAMES_PER_SECOND))
