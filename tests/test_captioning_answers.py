"""Unusable answers (cut off, looping) write no sidecar, and clips fit one audio window in both runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from transformers import WhisperFeatureExtractor

from acestep.captioning.caption import Answer, CaptionSettings, caption_tags, transcribe_lyrics
from acestep.captioning.clips import (
    MAX_CLIP_SAMPLES,
    MODEL_SAMPLE_RATE,
    consecutive_pieces,
    llama_cpp_audio_windows,
    middle_excerpt,
)
from acestep.captioning.junk import repeated_ngram, unusable_reason
from acestep.captioning.qwen_omni import audio_token_count
from acestep.captioning.runner import RunOptions, caption_folder
from acestep.core.errors import AcestepError

REAL_LYRICS = """[verse]
I walked along the river where the summer used to be
the water kept on singing what the winter took from me
[chorus]
oh carry me home, carry me home
over the hills and the silver sea"""


class OneAnswer:
    def __init__(self, text: str, truncated: bool = False) -> None:
        self.answer = Answer(text, truncated)
        self.asked = 0

    def ask(self, audio: np.ndarray, instruction: str, max_new_tokens: int) -> Answer:
        self.asked += 1
        return self.answer


@pytest.mark.parametrize(
    ("text", "loop"),
    [
        ("ld Ild " * 200, "ld ild"),
        ("la " * 40, "la"),
        ("我爱你" * 30, "我 爱 你"),
        ("[verse]\nhey you hey you hey you hey you hey you hey you hey you hey you hey you", "hey you"),
    ],
)
def test_loops_are_unusable(text: str, loop: str) -> None:
    gram, share = repeated_ngram(text)
    assert gram == loop and share > 0.6
    assert (
        unusable_reason(text, truncated=False, max_tokens=512)
        == f"{loop!r} repeated over {share:.0%} of the answer"
    )


@pytest.mark.parametrize(
    "text",
    [REAL_LYRICS, "la la la la", "rock, pop, electric guitar, drums, upbeat, female vocal", "[instrumental]"],
)
def test_real_answers_are_usable(text: str) -> None:
    assert unusable_reason(text, truncated=False, max_tokens=512) is None


def test_a_truncated_answer_is_unusable_whatever_it_says() -> None:
    assert (
        unusable_reason(REAL_LYRICS, truncated=True, max_tokens=512)
        == "cut off at the 512-token answer limit"
    )


def write_song(path: Path, seconds: float) -> None:
    sf.write(path, 0.2 * np.sin(np.arange(int(seconds * 8000)) / 8000 * 2 * np.pi * 220.0), 8000)


def test_truncated_lyrics_write_no_file_and_name_the_song(tmp_path: Path) -> None:
    write_song(tmp_path / "song.wav", 3.0)
    backend = OneAnswer("ld Ild " * 256, truncated=True)
    (report,) = caption_folder(tmp_path, lambda: backend, RunOptions(lyrics=True), progress=False)
    assert report.lyrics == "failed" and report.prompt == "failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.wav"]
    song = tmp_path / "song.wav"
    tags_error, lyrics_error = report.errors
    assert tags_error.startswith(
        f"tags: {song}: unusable tags answer (cut off at the 160-token answer limit): 'ld Ild ld Ild"
    )
    assert lyrics_error.startswith(
        f"lyrics: {song}: unusable lyrics answer: cut off at the 512-token answer limit: 'ld Ild ld Ild"
    )
    assert all(error.endswith("...'") and len(error) < 250 for error in report.errors)


def test_one_looping_piece_fails_the_whole_lyrics(tmp_path: Path) -> None:
    answers = iter([Answer(REAL_LYRICS), Answer("na " * 50)])

    class TwoPieces:
        def ask(self, audio: np.ndarray, instruction: str, max_new_tokens: int) -> Answer:
            return next(answers)

    wav = np.zeros(45 * MODEL_SAMPLE_RATE, np.float32)
    with pytest.raises(
        AcestepError, match=r"unusable lyrics answer \(piece 2 of 2\): 'na' repeated over 100%"
    ):
        transcribe_lyrics(TwoPieces(), wav, CaptionSettings())


def test_a_looping_tag_answer_is_not_written() -> None:
    with pytest.raises(AcestepError, match="unusable tags answer .'rock,' repeated over 100% of the answer"):
        caption_tags(OneAnswer("rock, " * 40), np.zeros(MODEL_SAMPLE_RATE, np.float32), CaptionSettings())


# --- one audio window per clip ---


@pytest.mark.parametrize(
    ("samples", "windows"),
    [
        (1, 1),
        (16_000, 1),
        (478_400, 1),
        (MAX_CLIP_SAMPLES, 1),
        (MAX_CLIP_SAMPLES + 1, 2),
        (480_000, 2),
        (959_839, 2),
        (959_840, 3),
    ],
)
def test_llama_cpp_window_rule(samples: int, windows: int) -> None:
    """29.9 s (478,400 samples) fits one window, 30.0 s takes two: the issue's 1224 vs 1974 prompt tokens."""
    assert llama_cpp_audio_windows(samples) == windows


def test_the_largest_clip_is_one_whole_window_in_transformers_too() -> None:
    extractor = WhisperFeatureExtractor(feature_size=16, sampling_rate=MODEL_SAMPLE_RATE)
    for samples, frames in ((MAX_CLIP_SAMPLES, 2999), (480_000, 3000)):
        features = extractor(
            np.ones(samples, np.float32) * 0.1,
            sampling_rate=MODEL_SAMPLE_RATE,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="np",
        )
        assert int(features["attention_mask"].sum()) == frames  # nothing cut off: one window
        assert audio_token_count(frames) == 750
    assert MAX_CLIP_SAMPLES == 479_839


def test_excerpts_and_pieces_never_exceed_one_window() -> None:
    wav = np.zeros(95 * MODEL_SAMPLE_RATE, np.float32)
    assert middle_excerpt(wav, MODEL_SAMPLE_RATE, 30.0).shape[0] == MAX_CLIP_SAMPLES
    assert middle_excerpt(wav, MODEL_SAMPLE_RATE, 10.0).shape[0] == 10 * MODEL_SAMPLE_RATE
    pieces = consecutive_pieces(wav, MODEL_SAMPLE_RATE, 30.0)
    assert [p.shape[0] for p in pieces[:-1]] == [MAX_CLIP_SAMPLES] * 3
    assert sum(p.shape[0] for p in pieces) == wav.shape[0]  # back to back, nothing lost
    assert all(llama_cpp_audio_windows(p.shape[0]) == 1 for p in pieces)
