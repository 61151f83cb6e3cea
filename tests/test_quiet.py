"""Only the named third-party chatter is silenced: Lightning's hardware lines and tip, torch's LeafSpec notice."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

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
        logger.info("Restoring states from the checkpoint path at run/last.ckpt")  # the trainer says "Resuming"
        logger.info("Restored all states from the checkpoint at run/last.ckpt")
        logger.info("Epoch 0: adjusting learning rate of group 0 to 1.0000e-04.")
        logger.warning("The dataloader does not have many workers which may be a bottleneck.")
    assert [r.getMessage()[:20] for r in caplog.records] == ["Epoch 0: adjusting l", "The dataloader does "]


def test_only_the_leafspec_deprecation_is_ignored() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("a real deprecation of ours", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real deprecation of ours"]


LIBRARY_BARS = ("Loading weights", "Writing model shards", "Saving the dataset", "Loading pipeline components",
                "Loading checkpoint shards")


def test_tiny_checkpoint_writes_and_stages_2_3_show_our_progress_and_no_library_bars(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """The demo's path: tiny checkpoints written, songs listed (stage 2) and encoded (stage 3) as a library call."""
    from transformers.utils import logging as transformers_logging

    from acestep.captioning.tiny_omni import write_tiny_qwen_omni
    from acestep.data.filenames import build_filename_dataset
    from acestep.data.preprocess import PreprocessSettings, RunOptions
    from acestep.demo_songs import write_synthetic_songs
    from acestep.families.v1.encoders import load_encoders, run_preprocess
    from acestep.families.v1.tiny import write_tiny_checkpoint
    from acestep.families.v15.tiny import write_tiny_v15_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "v1")
    write_tiny_v15_checkpoint(tmp_path / "v15")
    write_tiny_qwen_omni(tmp_path / "omni")
    songs = write_synthetic_songs(tmp_path / "songs", count=2, seconds=2.0)
    build_filename_dataset(songs, tmp_path / "filenames")
    encoders = load_encoders(str(checkpoint), device="cpu", ssl=True)
    result = run_preprocess(tmp_path / "filenames", tmp_path / "prep", encoders, PreprocessSettings(max_duration=2),
                            RunOptions(num_workers=0))
    assert result.encoded == 2
    captured = capfd.readouterr()
    printed = captured.out + captured.err
    assert [bar for bar in LIBRARY_BARS if bar in printed] == []
    assert "scanning" in printed and "encoding part-000-of-001" in printed  # our own progress stays
    assert transformers_logging.is_progress_bar_enabled()  # switched back on for everything else


def test_library_bars_off_restores_each_switch_and_keeps_download_bars() -> None:
    import datasets
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub import utils as hub
    from transformers.utils import logging as transformers_logging

    from acestep.core.quiet import library_bars_off

    datasets.disable_progress_bars()  # as the stage-2 command line leaves it
    with library_bars_off():
        assert not transformers_logging.is_progress_bar_enabled()
        assert not diffusers_logging.is_progress_bar_enabled()
        assert datasets.utils.are_progress_bars_disabled()
        assert not hub.are_progress_bars_disabled()  # a download still shows its bar
    assert transformers_logging.is_progress_bar_enabled() and diffusers_logging.is_progress_bar_enabled()
    assert datasets.utils.are_progress_bars_disabled() and not hub.are_progress_bars_disabled()
    datasets.enable_progress_bars()
