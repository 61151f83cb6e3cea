"""Only the named third-party chatter is silenced: Lightning's hardware lines and tip, torch's LeafSpec notice."""

from __future__ import annotations

import logging
import warnings

import pytest

from acestep.core.quiet import LIGHTNING_LOGGERS, quiet_third_party_noise


def test_lightning_chatter_goes_and_real_messages_stay(caplog: pytest.LogCaptureFixture) -> None:
    quiet_third_party_noise()
    quiet_third_party_noise()  # idempotent: one filter per logger
    logger = logging.getLogger(LIGHTNING_LOGGERS[0])
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=LIGHTNING_LOGGERS[0]):
        logger.info("GPU available: False, used: False")
        logger.info("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]")
        logger.info("Restoring states from the checkpoint path at run/last.ckpt")
        logger.warning("The dataloader does not have many workers which may be a bottleneck.")
    assert [r.getMessage()[:20] for r in caplog.records] == ["Restoring states fro", "The dataloader does "]


def test_only_the_leafspec_deprecation_is_ignored() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("a real deprecation of ours", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real deprecation of ours"]
