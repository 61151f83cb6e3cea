"""The run's order of songs (resumable, each song slot with its own random stream), padding with masks, and the
loader; what a family's songs and batches hold is the family's (its TrainingParts' songs and collate).

The order of songs and every random choice depend only on (seed, position in the run), so a resumed run sees
exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from acestep.core.errors import AcestepError

REG_STREAM = 0x4E6  # keeps the regularization songs' order and draws apart from the user's songs


def stream_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, micro-batch, rank, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


@dataclass(frozen=True)
class Draw:
    """One sample slot of the run: which song, in which micro-batch, and its own random stream."""

    index: int
    micro_batch: int
    seed: int
    reg: bool = False  # a song of --reg_dataset (regularization), not of the training songs


def reg_count(micro_batches: int, weight: Fraction) -> int:
    """Regularization micro-batches among the run's first `micro_batches`: exactly floor(micro_batches * weight).

    Micro-batch m is a reg one when this count grows from m to m + 1, so they are spread evenly (Bresenham) and
    depend only on m: a resumed run and every DDP rank follow the same schedule."""
    return micro_batches * weight.numerator // weight.denominator


class _SongOrder:
    """One dataset's songs in a fresh permutation per epoch; the permutation and each draw's seed come from the
    stream (`parts`..., epoch or position)."""

    def __init__(self, count: int, *parts: int) -> None:
        self.count, self.parts = count, parts
        self._epoch, self._order = -1, torch.empty(0)

    def index(self, position: int) -> int:
        epoch = position // self.count
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(stream_seed(*self.parts, epoch))
            self._epoch, self._order = epoch, torch.randperm(self.count, generator=generator)
        return int(self._order[position % self.count])

    def seed(self, position: int) -> int:
        return stream_seed(*self.parts, position)


class RunOrderSampler(Sampler[list[Draw]]):
    """Micro-batches of a whole run: each epoch a fresh permutation; rank r of W takes every W-th slot.

    `__len__` is the run's total so Lightning's progress matches; iteration starts at `start`, the first
    micro-batch not yet trained (0, or global_step * accumulate on resume).
    With `reg_samples` regularization songs, the fraction `reg_weight` of the micro-batches (see `reg_count`)
    draws from them in their own order; the training songs keep the order they have without regularization.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        total_micro_batches: int,
        seed: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        reg_samples: int = 0,
        reg_weight: Fraction = Fraction(0),
    ) -> None:
        if num_samples < 1:
            raise AcestepError("the dataset has no songs")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.total = total_micro_batches
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.reg_samples = reg_samples
        self.reg_weight = reg_weight if reg_samples else Fraction(0)

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[list[Draw]]:
        songs = _SongOrder(self.num_samples, self.seed)
        reg = _SongOrder(self.reg_samples, self.seed, REG_STREAM) if self.reg_samples else None
        for micro_batch in range(self.start, self.total):
            regs_before = reg_count(micro_batch, self.reg_weight)
            is_reg = reg is not None and reg_count(micro_batch + 1, self.reg_weight) > regs_before
            order, nth = (reg, regs_before) if is_reg else (songs, micro_batch - regs_before)
            draws = []
            for slot in range(self.batch_size):
                position = (nth * self.world_size + self.rank) * self.batch_size + slot
                draws.append(Draw(order.index(position), micro_batch, order.seed(position), is_reg))
            yield draws

    def state_dict(self) -> dict[str, int | str]:
        """What decides the batches; a resume with other values would see other batches."""
        return {"num_samples": self.num_samples, "batch_size": self.batch_size, "seed": self.seed,
                "world_size": self.world_size, "reg_samples": self.reg_samples, "reg_weight": str(self.reg_weight)}


def pad_stack(tensors: Sequence[torch.Tensor], pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack along a new batch dim, padding the first (time) dim to the longest; mask is 1 on real rows."""
    length = max(t.shape[0] for t in tensors)
    stacked = tensors[0].new_full((len(tensors), length, *tensors[0].shape[1:]), pad_value)
    mask = torch.zeros(len(tensors), length)
    for i, tensor in enumerate(tensors):
        stacked[i, : tensor.shape[0]] = tensor
        mask[i, : tensor.shape[0]] = 1.0
    return stacked, mask


class RunLoader(DataLoader):
    """A DataLoader whose position comes from the trainer's step, and which checks a resume keeps its order.

    Lightning saves `state_dict()` in its checkpoint; a resumed run with another batch size, seed or dataset
    would silently see other batches than the interrupted one, so that is refused.
    """

    def __init__(
        self, dataset: Dataset, sampler: RunOrderSampler, num_workers: int,
        collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    ) -> None:
        super().__init__(
            dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
        self.order = sampler

    def state_dict(self) -> dict[str, int | str]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, int | str]) -> None:
        saved = {"reg_samples": 0, "reg_weight": "0", **state}  # runs saved before regularization existed had none
        changed = [f"{k} {v} -> {self.state_dict()[k]}" for k, v in saved.items() if self.state_dict().get(k) != v]
        if changed:
            raise AcestepError(
                f"cannot resume with a different data order ({'; '.join(changed)}): use the interrupted run's settings"
            )
