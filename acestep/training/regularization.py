"""Regularization audio (prior preservation): songs the base model should keep making, mixed into training.

`--reg_dataset PATH` (a preprocessed dataset of the same model family, e.g. renders of `python -m acestep.reg_songs`)
supplies `--reg_weight` of the run's micro-batches, a fraction: of n micro-batches exactly floor(n * weight) are
regularization ones, spread evenly, decided by the micro-batch's index alone (`acestep.training.data.reg_count`),
so a resume repeats the schedule. A regularization micro-batch trains with the same objective as any other; its
loss is logged as `reg_loss`, and `loss` stays the loss on the user's songs.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import datasets
from torch.utils.data import Dataset

from acestep.core.errors import AcestepError
from acestep.data.preprocessed import dataset_family, dataset_trigger, load_preprocessed

from .data import Draw, reg_count


def reg_fraction(weight: float) -> Fraction:
    """--reg_weight as an exact fraction (0.1 is 1/10, not the nearest binary float), so counts are exact."""
    return Fraction(str(weight))


def check_reg_folder(path: str) -> str:
    """The model family of --reg_dataset, refused in one line when missing or made with a trigger tag
    (regularization songs show what the model makes without one); reads no songs."""
    folder = Path(path)
    if not folder.is_dir():
        raise AcestepError(f"--reg_dataset {path}: folder not found (give a preprocessed dataset, stage 3 output)")
    found = dataset_family(folder)
    if found is None:
        raise AcestepError(f"--reg_dataset {path}: not a preprocessed dataset (run stage 3 on the rendered songs)")
    trigger = dataset_trigger(folder)
    if trigger:
        raise AcestepError(f"--reg_dataset {path} was preprocessed with the trigger {trigger!r}; regularization "
                           "songs show what the model makes without it: preprocess them without --trigger")
    return found


def load_reg_rows(path: str, family: str) -> datasets.Dataset:
    """The songs of --reg_dataset, refused in one line when missing, of another model family or made with a
    trigger tag."""
    folder = Path(path)
    found = check_reg_folder(path)
    if found != family:
        raise AcestepError(f"--reg_dataset {path} is {found}, but the run trains {family}; "
                           "preprocess the regularization songs with the same --checkpoint_dir")
    rows = load_preprocessed(folder)
    if len(rows) == 0:
        raise AcestepError(f"--reg_dataset {path}: the dataset has no songs")
    return rows


class MixedSongs(Dataset):
    """The training songs and the regularization songs behind one index: a Draw's `reg` flag picks the dataset,
    and the item says which one it came from."""

    def __init__(self, songs: Dataset, reg_songs: Dataset) -> None:
        self.songs = songs
        self.reg_songs = reg_songs

    def __len__(self) -> int:
        return len(self.songs)

    def __getitem__(self, draw: Draw) -> dict[str, Any]:
        item = (self.reg_songs if draw.reg else self.songs)[draw]
        item["reg"] = draw.reg
        return item


class MixedCollate:
    """The family's collate, with the micro-batch's `reg` flag carried through (a micro-batch is all one kind).

    A class rather than a closure, so DataLoader workers started by spawn (Windows) can pickle it."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        reg = bool(items[0].pop("reg"))
        for item in items[1:]:
            item.pop("reg")
        batch = self.collate(items)
        batch["reg"] = reg
        return batch


def reg_mix_line(path: str, weight: float, steps: int, accumulate: int) -> str:
    """The run summary's line: how many of the run's micro-batches were regularization songs."""
    total = steps * accumulate
    count = reg_count(total, reg_fraction(weight))
    share = f" ({100 * count / total:.0f}%)" if total else ""
    return (f"Regularization: {count} of {total} micro-batches{share} came from {path} (--reg_weight {weight:g}); "
            "their loss is reg_loss in metrics.jsonl, the training loss covers your songs only.")
