"""The preprocessed dataset (stage 3 output): row schema, 16-bit storage, loading for the trainer, merging shards.

Columns and layout are documented in docs/formats.md. Tensors are stored as float16 (Arrow has no bfloat16);
the trainer casts to its compute dtype per step, as the fork does with its float32 columns.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from acestep.core.atomic import atomic_write_json, atomic_write_text
from acestep.core.errors import AcestepError, InputError
from acestep.data.shards import ErrorRecord, PartProgress, list_parts, settings_mismatch

FORMAT_NAME = "acestep-preprocessed"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ERRORS_FILE = "errors.jsonl"
SSL_COLUMNS = ("mert_ssl_hidden_states", "mhubert_ssl_hidden_states")
FORK_ONLY_COLUMNS = ("attention_mask", "text_attention_mask", "speaker_embds")
DEFAULT_FAMILY = "ace-step-v1"  # datasets that record no family were written before 1.5 support: v1's


@dataclass
class EncodedSong:
    """One song's training tensors as the encoders return them (any float dtype, any device)."""

    row: int
    key: str
    filename: str
    prompt: str
    latents: torch.Tensor  # [8, 16, T] scaled DC-AE latents
    text_hidden: torch.Tensor  # [L, D] UMT5 states of the real tokens only
    lyric_ids: list[int]
    duration: float
    mert: torch.Tensor | None = None  # [Tm, 1024]
    mhubert: torch.Tensor | None = None  # [Th, 768]

    def to_record(self) -> dict[str, Any]:
        """The stored row: 16-bit floats, 32-bit ids, 8-bit mask (see docs/formats.md)."""
        record: dict[str, Any] = {
            "row": self.row,
            "keys": self.key,
            "filename": self.filename,
            "prompt": self.prompt,
            "target_latents": self._half("target_latents", self.latents),
            "latent_length": int(self.latents.shape[-1]),
            "encoder_text_hidden_states": self._half("encoder_text_hidden_states", self.text_hidden),
            "lyric_token_ids": np.asarray(self.lyric_ids, dtype=np.int32),
            "lyric_mask": np.ones(len(self.lyric_ids), dtype=np.int8),
            "duration": float(self.duration),
        }
        if self.mert is not None and self.mhubert is not None:
            record["mert_ssl_hidden_states"] = self._half("mert_ssl_hidden_states", self.mert)
            record["mhubert_ssl_hidden_states"] = self._half("mhubert_ssl_hidden_states", self.mhubert)
        return record

    def _half(self, column: str, tensor: torch.Tensor) -> np.ndarray:
        array = tensor.detach().to("cpu", torch.float32).numpy()
        with np.errstate(over="ignore"):
            half = array.astype(np.float16)
        if not np.isfinite(half).all():
            raise InputError(self.filename, f"{column} has values outside the float16 range")
        return half


def record_nbytes(record: dict[str, Any]) -> int:
    return sum(v.nbytes for v in record.values() if isinstance(v, np.ndarray))


def features_for_record(record: dict[str, Any]) -> datasets.Features:
    """Arrow schema of a row; 2-D columns use Array2D (fast reads), the 3-D latents nested lists."""

    def matrix(column: str) -> datasets.Array2D:
        return datasets.Array2D(shape=(None, record[column].shape[1]), dtype="float16")

    features = {
        "row": datasets.Value("int32"),
        "keys": datasets.Value("string"),
        "filename": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "target_latents": datasets.List(datasets.List(datasets.List(datasets.Value("float16")))),
        "latent_length": datasets.Value("int32"),
        "encoder_text_hidden_states": matrix("encoder_text_hidden_states"),
        "lyric_token_ids": datasets.List(datasets.Value("int32")),
        "lyric_mask": datasets.List(datasets.Value("int8")),
        "duration": datasets.Value("float32"),
    }
    features.update({c: matrix(c) for c in SSL_COLUMNS if c in record})
    return datasets.Features(features)


def is_fork_layout(dataset: datasets.Dataset) -> bool:
    """True for the reference fork's float32 layout (its trainer expects the extra mask/speaker columns)."""
    return "latent_length" not in dataset.column_names and "attention_mask" in dataset.column_names


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _check_parts_agree(prep: Path, parts: list[tuple[Path, PartProgress]]) -> None:
    first_dir, first = parts[0]
    for part_dir, other in parts[1:]:
        if other.shard.count != first.shard.count:
            raise AcestepError(
                f"{prep}: {first_dir.name} and {part_dir.name} come from different --shard splits"
            )
        diff = settings_mismatch(first.settings, other.settings)
        if diff:
            raise AcestepError(f"{prep}: {part_dir.name} differs from {first_dir.name} ({'; '.join(diff)})")


def _incomplete_parts(parts: list[tuple[Path, PartProgress]]) -> list[str]:
    count = parts[0][1].shard.count
    present = {p.shard.index: p for _, p in parts}
    missing = []
    for index in range(count):
        part = present.get(index)
        if part is None:
            missing.append(f"shard {index}/{count} not started")
        elif not part.complete:
            missing.append(f"shard {index}/{count}: {part.rows_total - len(part.done_rows)} songs left")
    return missing


def load_preprocessed(prep: str | Path) -> datasets.Dataset:
    """All committed songs of PREP as one Dataset in input-row order, formatted as torch tensors.

    Also accepts a plain save_to_disk folder (the fork's float32 layout). Floats come back as float32:
    the datasets torch formatter upcasts the stored float16.
    """
    prep = Path(prep)
    if _is_saved_dataset(prep):
        dataset = datasets.load_from_disk(str(prep))
        if not isinstance(dataset, datasets.Dataset):
            raise AcestepError(f"{prep}: a DatasetDict; point at one split's folder")
        return dataset.with_format("torch")
    parts = list_parts(prep)
    if not parts:
        raise AcestepError(f"{prep}: not a preprocessed dataset (no part-*/progress.json, no saved dataset)")
    _check_parts_agree(prep, parts)
    missing = _incomplete_parts(parts)
    if missing:
        warnings.warn(
            f"{prep}: preprocessing unfinished ({'; '.join(missing)}); using what is done", stacklevel=2
        )
    chunks = [datasets.load_from_disk(str(d / c.name)) for d, p in parts for c in p.chunks]
    if not chunks:
        raise AcestepError(f"{prep}: no song has been encoded yet")
    dataset = datasets.concatenate_datasets(chunks)
    return dataset.select(np.argsort(dataset["row"], kind="stable")).with_format("torch")


def dataset_family(prep: str | Path) -> str | None:
    """The model family a preprocessed folder holds (its settings' "family"; none recorded means v1, which
    wrote no family before 1.5 existed), or None for a folder with no preprocessed songs yet."""
    prep = Path(prep)
    manifest = prep / MANIFEST_FILE
    if manifest.is_file():
        return json.loads(manifest.read_text(encoding="utf-8")).get("family", DEFAULT_FAMILY)
    parts = list_parts(prep)
    if parts:
        return parts[0][1].settings.get("family", DEFAULT_FAMILY)
    if _is_saved_dataset(prep):
        return DEFAULT_FAMILY  # the fork's float32 layout
    return None


def dataset_trigger(prep: str | Path) -> str | None:
    """The trigger tag stage 3 put into every prompt of a preprocessed folder (None: none, or not a folder of ours)."""
    prep = Path(prep)
    manifest = prep / MANIFEST_FILE
    if manifest.is_file():
        return json.loads(manifest.read_text(encoding="utf-8")).get("settings", {}).get("trigger")
    parts = list_parts(prep) if prep.is_dir() else []
    return parts[0][1].settings.get("trigger") if parts else None


def storage_summary(parts: list[tuple[Path, PartProgress]]) -> dict[str, Any]:
    """Songs, errors, audio seconds and bytes on disk of the committed chunks."""
    songs = sum(len(c.rows) for _, p in parts for c in p.chunks)
    seconds = sum(c.audio_seconds for _, p in parts for c in p.chunks)
    nbytes = sum(c.bytes for _, p in parts for c in p.chunks)
    return {
        "songs": songs,
        "errors": sum(len(p.errors) for _, p in parts),
        "audio_seconds": round(seconds, 3),
        "bytes": nbytes,
        "bytes_per_audio_second": round(nbytes / seconds, 1) if seconds else None,
    }


def all_errors(parts: list[tuple[Path, PartProgress]]) -> list[ErrorRecord]:
    return sorted((e for _, p in parts for e in p.errors), key=lambda e: e.row)


def merge_parts(prep: str | Path) -> dict[str, Any]:
    """Check every shard finished with the same settings, then write PREP/manifest.json and PREP/errors.jsonl.

    Chunks stay where they are (no copy); load_preprocessed reads them through the part progress files.
    """
    prep = Path(prep)
    parts = list_parts(prep)
    if not parts:
        raise AcestepError(f"{prep}: nothing to merge (no part-*/progress.json)")
    _check_parts_agree(prep, parts)
    missing = _incomplete_parts(parts)
    if missing:
        raise AcestepError(f"{prep}: cannot merge yet: {'; '.join(missing)}")
    errors = all_errors(parts)
    atomic_write_text(
        prep / ERRORS_FILE, "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in errors)
    )
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "family": parts[0][1].settings.get("family", DEFAULT_FAMILY),
        "shards": parts[0][1].shard.count,
        "settings": parts[0][1].settings,
        "trigger": parts[0][1].settings.get("trigger"),
        **storage_summary(parts),
    }
    atomic_write_json(prep / MANIFEST_FILE, manifest)
    return manifest
