"""Silence third-party messages a user can do nothing about; every other warning stays visible.

Lightning announces "GPU available: ..., TPU available: ...", a litmodels advertisement and "`Trainer.fit`
stopped: `max_steps=N` reached" (our own summary says it better) on every run, and its own code trips a
torch deprecation (`LeafSpec`) that only Lightning can fix.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)
NOISE_PREFIXES = ("GPU available:", "TPU available:", "HPU available:", "IPU available:", "💡 Tip:",
                  "`Trainer.fit` stopped: `max_steps=", "Restoring states from the checkpoint path at ",
                  "Restored all states from the checkpoint at ")  # the trainer says "Resuming ... at step N" first


class DropNoise(logging.Filter):
    """Drops log records that start with one of NOISE_PREFIXES."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(NOISE_PREFIXES)


def quiet_third_party_noise() -> None:
    """Install the filters (idempotent); call at the start of a command line."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNoise) for f in logger.filters):
            logger.addFilter(DropNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)


@contextmanager
def old_weight_norm() -> Iterator[None]:
    """Silence torch's FutureWarning about the old `weight_norm`, only around building a model that needs it:
    the published checkpoints (v1 vocoder, 1.5 Oobleck VAE) store its `weight_g`/`weight_v` names, so the
    deprecated function stays and the warning says nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.nn\.utils\.weight_norm` is deprecated",
                                category=FutureWarning)
        yield


@contextmanager
def library_bars_off() -> Iterator[None]:
    """transformers' "Loading weights" / "Writing model shards", diffusers' "Loading pipeline components" and
    datasets' "Saving the dataset" bars off for a block (or a decorated function) whose work our own progress
    line or bar already reports; each library's setting is restored afterwards. Hub download bars stay on:
    transformers switches them off with its own, so they are switched back on here (a download is worth a bar).
    """
    import datasets
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub import utils as hub
    from transformers.utils import logging as transformers_logging

    before = (transformers_logging.is_progress_bar_enabled(), diffusers_logging.is_progress_bar_enabled(),
              datasets.utils.are_progress_bars_disabled(), hub.are_progress_bars_disabled())
    with warnings.catch_warnings():  # datasets warns when an environment variable overrides the switch
        warnings.simplefilter("ignore")
        transformers_logging.disable_progress_bar()
        diffusers_logging.disable_progress_bar()
        datasets.disable_progress_bars()
        if not before[3]:
            hub.enable_progress_bars()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if before[0]:
                transformers_logging.enable_progress_bar()
            if before[1]:
                diffusers_logging.enable_progress_bar()
            if not before[2]:
                datasets.enable_progress_bars()
            if before[3]:
                hub.disable_progress_bars()
            else:
                hub.enable_progress_bars()
