"""Stage 1 for ACE-Step 1.5: ACE-Step's captioner (prose) and transcriber (languages + sectioned lyrics).

Parsing and the two-model run use scripted backends; the command line runs tiny random Qwen2.5-Omni models in
the published full-Omni layout (config with `thinker_config`, weights under `thinker.`, as the official
checkpoints ship), wired to say a captioner-shaped and a transcriber-shaped answer.
"""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from acestep.captioning.caption import Answer, CaptionError, CaptionSettings
from acestep.captioning.cli import EXIT_ERROR, EXIT_SOME_FAILED, main_transformers, transformers_parser
from acestep.captioning.clips import MODEL_SAMPLE_RATE
from acestep.captioning.official import (
    CAPTIONER_MODEL,
    TRANSCRIBER_MODEL,
    Transcription,
    caption_prose,
    clean_caption,
    parse_transcription,
    transcribe_song,
)
from acestep.captioning.parse import INSTRUMENTAL
from acestep.captioning.prompts import CAPTIONER_TASK, TRANSCRIBER_TASK
from acestep.captioning.qwen_omni import AUDIO_TOKEN, QwenOmniBackend, audio_token_count, chat_prefix
from acestep.captioning.runner import RunOptions, RunStopped, caption_folder
from acestep.captioning.tiny_omni import write_tiny_qwen_omni
from acestep.data.sidecars import read_music_metadata

PROSE = (
    "An upbeat indie pop song with bright electric guitars and a driving drum beat. "
    "A warm female voice sings the verses, and the chorus opens up with layered harmonies."
)
SUNG = "# Languages\nen\n\n# Lyrics\n[Verse 1]\nhello world, I sing for you\n\n[Chorus]\nla la la (oh yeah)"
SILENT = "# Languages\n\n# Lyrics\n[Intro] [Synth pads]\n[Instrumental]"


class Scripted:
    """Answers each request with the next scripted text and records (instruction, clip length)."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    def ask(self, audio: np.ndarray, instruction: str, max_new_tokens: int) -> Answer:
        self.calls.append((instruction, audio.shape[0]))
        return Answer(self.answers[(len(self.calls) - 1) % len(self.answers)])


def write_song(path: Path, seconds: float, sample_rate: int = 22_050) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sf.write(path, 0.2 * np.sin(2 * np.pi * 220.0 * t), sample_rate)
    return path


# ------------------------------------------------------------------------------------------------- parsing


def test_the_transcriber_answer_is_split_into_language_and_lyrics_kept_as_written() -> None:
    heard = parse_transcription(SUNG)
    assert heard == Transcription(
        "[Verse 1]\nhello world, I sing for you\n\n[Chorus]\nla la la (oh yeah)", "en"
    )
    # scene notes and numbered tags stay: 1.5 was trained on the transcriber's own format
    noted = parse_transcription("# Languages\nja\n# Lyrics\n\n\n[Intro] [Piano]\n\n\n\nこんにちは\n  \n")
    assert noted == Transcription("[Intro] [Piano]\n\nこんにちは", "ja")


@pytest.mark.parametrize(
    "answer",
    [SILENT, "# Languages\nen\n", "[Instrumental]", "# Languages\nen\n\n# Lyrics\n", "   "],
)
def test_no_sung_words_is_instrumental_without_a_language(answer: str) -> None:
    assert parse_transcription(answer) == Transcription(INSTRUMENTAL, "")


def test_an_answer_without_headers_is_all_lyrics() -> None:
    assert parse_transcription("[Verse]\nsome words\r\nmore words") == Transcription("[Verse]\nsome words\nmore words")


def test_the_caption_is_kept_as_prose_on_one_line() -> None:
    assert clean_caption("<think>hm</think>\nA calm piano piece,\n\n  with soft   strings.\x00") == (
        "A calm piano piece, with soft strings."
    )


def test_caption_prose_asks_the_official_task_and_rejects_junk() -> None:
    settings = CaptionSettings()
    wav = np.zeros(40 * MODEL_SAMPLE_RATE, np.float32)
    backend = Scripted([PROSE])
    assert caption_prose(backend, wav, settings) == PROSE
    assert backend.calls == [(CAPTIONER_TASK, 479_839)]  # the middle excerpt: one audio window
    with pytest.raises(CaptionError, match=r"unusable caption \(fewer than 3 words\): 'Rock\.'"):
        caption_prose(Scripted(["Rock."]), wav, settings)
    with pytest.raises(CaptionError, match="repeated over"):
        caption_prose(Scripted(["a song " * 20]), wav, settings)


def test_transcribe_song_joins_pieces_and_takes_the_language_most_pieces_were_sung_in() -> None:
    wav = np.zeros(95 * MODEL_SAMPLE_RATE, np.float32)  # four pieces
    backend = Scripted(
        [
            "# Languages\nen\n\n# Lyrics\n[Verse 1]\none",
            SILENT,  # an instrumental break neither adds lyrics nor votes on the language
            "# Languages\nes\n\n# Lyrics\n[Chorus]\ndos",
            "# Languages\nen\n\n# Lyrics\n[Outro]\nthree",
        ]
    )
    heard = transcribe_song(backend, wav, CaptionSettings())
    assert heard == Transcription("[Verse 1]\none\n\n[Chorus]\ndos\n\n[Outro]\nthree", "en")
    assert [instruction for instruction, _ in backend.calls] == [TRANSCRIBER_TASK] * 4
    assert transcribe_song(Scripted([SILENT]), wav, CaptionSettings()) == Transcription(INSTRUMENTAL)
    with pytest.raises(CaptionError, match="empty answer to every piece"):
        transcribe_song(Scripted([""]), wav, CaptionSettings())
    with pytest.raises(CaptionError, match=r"\(piece 1 of 4\): cut off at the 512-token"):
        transcribe_song(_Truncating(), wav, CaptionSettings())


class _Truncating:
    def ask(self, audio: np.ndarray, instruction: str, max_new_tokens: int) -> Answer:
        return Answer("[Verse]\nla", truncated=True)


# ------------------------------------------------------------------------------------------------ the run


def test_two_models_run_one_after_the_other_never_both_loaded(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_song(tmp_path / f"{name}.wav", 3.0)
    events: list[str] = []
    captioners: list[weakref.ref] = []

    def make_captioner() -> Scripted:
        events.append("load captioner")
        backend = Scripted([PROSE])
        captioners.append(weakref.ref(backend))
        return backend

    def make_transcriber() -> Scripted:
        gc.collect()
        events.append("load transcriber" + (" (captioner still loaded)" if captioners[0]() else ""))
        return Scripted([SUNG])

    options = RunOptions(lyrics=True, prose=True, transcriber=True)
    reports = caption_folder(tmp_path, make_captioner, options, False, make_transcriber)
    assert events == ["load captioner", "load transcriber"]
    assert [(r.prompt, r.lyrics, r.errors) for r in reports] == [("written (29 words)", "model: transcribed", [])] * 2
    for name in ("a", "b"):
        assert (tmp_path / f"{name}_prompt.txt").read_text(encoding="utf-8") == PROSE + "\n"
        assert (tmp_path / f"{name}_lyrics.txt").read_text(encoding="utf-8") == (
            "[Verse 1]\nhello world, I sing for you\n\n[Chorus]\nla la la (oh yeah)\n"
        )
    # resumed: everything is there, so neither model is loaded
    again = caption_folder(tmp_path, make_captioner, options, False, make_transcriber)
    assert events == ["load captioner", "load transcriber"]
    assert [(r.prompt, r.lyrics) for r in again] == [("kept", "kept")] * 2


def test_a_transcriber_that_cannot_load_keeps_the_finished_prompts(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_song(tmp_path / f"{name}.wav", 3.0)

    def no_transcriber() -> Scripted:
        raise OSError("no such model: transcriber")

    options = RunOptions(lyrics=True, prose=True, transcriber=True)
    with pytest.raises(RunStopped, match="no such model: transcriber") as stop:
        caption_folder(tmp_path, lambda: Scripted([PROSE]), options, False, no_transcriber)
    (first,) = stop.value.reports
    assert (first.audio.name, first.prompt, first.lyrics, stop.value.not_reached) == ("a.wav", "written (29 words)", "stopped", 1)
    assert stop.value.anything_done  # so the table of what was finished is printed
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["a_prompt.txt", "b_prompt.txt"]


def test_the_language_the_transcriber_heard_goes_beside_bpm_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bpm/key file holds what DSP measures plus the transcriber's language (DSP stubbed: no librosa here)."""
    from acestep.captioning import dsp

    measured = {"bpm": 120.0, "key": "A minor", "key_confidence": 0.8, "timesignature": "3"}
    monkeypatch.setattr(dsp, "require_librosa", lambda: None)
    monkeypatch.setattr(dsp, "estimate_bpm_key", lambda wav, sample_rate: dict(measured))
    for name in ("own", "silent", "sung"):
        write_song(tmp_path / f"{name}.wav", 3.0)
    (tmp_path / "own.lrc").write_text("[00:01.00]my own words\n", encoding="utf-8")
    transcriber = Scripted([SILENT, SUNG])  # files in order; own.wav has the user's lyrics, never transcribed
    options = RunOptions(lyrics=True, bpm_key=True, prose=True, transcriber=True)
    reports = caption_folder(tmp_path, lambda: Scripted([PROSE]), options, False, lambda: transcriber)
    assert len(transcriber.calls) == 2
    side = {
        name: json.loads((tmp_path / f"{name}_bpm_key.json").read_text(encoding="utf-8"))
        for name in ("own", "silent", "sung")
    }
    assert side["sung"] == {**measured, "language": "en"}
    assert side["silent"] == measured and side["own"] == measured  # instrumental / the user's lyrics: not known
    assert [r.bpm_key for r in reports] == ["120 bpm, A minor, 3/4"] * 2 + ["120 bpm, A minor, 3/4, en"]
    assert (tmp_path / "own_lyrics.txt").read_text(encoding="utf-8") == "my own words\n"
    assert read_music_metadata(tmp_path / "sung.wav") == {
        "bpm": 120.0, "keyscale": "A minor", "timesignature": "3", "language": "en"
    }


def test_the_official_models_hear_their_task_before_the_audio(official_models) -> None:
    backend = QwenOmniBackend.from_pretrained(str(official_models["captioner"]), device="cpu", task_first=True)
    text = backend.tokenizer.decode(backend.prompt_ids(audio_token_count(250), CAPTIONER_TASK))
    audio = "<|audio_bos|>" + AUDIO_TOKEN * audio_token_count(250) + "<|audio_eos|>"
    assert text == (
        chat_prefix() + "*Task* Describe this audio in detail\n" + audio + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert backend.ask(np.zeros(int(2.5 * MODEL_SAMPLE_RATE), np.float32), CAPTIONER_TASK, 8).text == PROSE


@pytest.fixture(scope="module")
def official_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("official")
    return {
        "captioner": write_tiny_qwen_omni(root / "captioner", answer=PROSE, full_omni=True),
        "transcriber": write_tiny_qwen_omni(root / "transcriber", answer=SUNG, full_omni=True),
        "silent": write_tiny_qwen_omni(root / "silent", answer=SILENT, full_omni=True),
        "mute": write_tiny_qwen_omni(root / "mute", silent_head=True, full_omni=True),
    }


def cli(data: Path, models: dict[str, Path], *extra: str) -> int:
    return main_transformers(
        [
            "--data_dir", str(data), "--device", "cpu", "--no_progress", "--lyrics",
            "--captioner", str(models["captioner"]), "--transcriber", str(models["transcriber"]), *extra,
        ]
    )


def test_the_script_writes_prose_and_sectioned_lyrics(official_models, tmp_path: Path, capsys) -> None:
    data = tmp_path / "songs"
    data.mkdir()
    write_song(data / "song.wav", 40.0)  # lyrics from two pieces
    assert cli(data, official_models) == 0
    assert (data / "song_prompt.txt").read_text(encoding="utf-8") == PROSE + "\n"
    assert (data / "song_lyrics.txt").read_text(encoding="utf-8") == (
        "[Verse 1]\nhello world, I sing for you\n\n[Chorus]\nla la la (oh yeah)\n\n"
        "[Verse 1]\nhello world, I sing for you\n\n[Chorus]\nla la la (oh yeah)\n"
    )
    captured = capsys.readouterr()
    assert "written (29 words)" in captured.out and "model: transcribed" in captured.out
    loads = [line for line in captured.err.splitlines() if line.startswith("loading ")]
    assert loads == [f"loading {official_models['captioner']} ...", f"loading {official_models['transcriber']} ..."]


def test_an_instrumental_song_and_a_mute_captioner(official_models, tmp_path: Path, capsys) -> None:
    data = tmp_path / "songs"
    data.mkdir()
    write_song(data / "song.wav", 3.0)
    models = {**official_models, "captioner": official_models["mute"], "transcriber": official_models["silent"]}
    assert cli(data, models) == EXIT_SOME_FAILED
    assert not (data / "song_prompt.txt").exists()
    assert (data / "song_lyrics.txt").read_text(encoding="utf-8") == "[instrumental]\n"
    out = capsys.readouterr().out
    assert "caption: " in out and "unusable caption (fewer than 3 words)" in out and "model: instrumental" in out


def test_a_missing_captioner_stops_in_one_line(official_models, tmp_path: Path, capsys) -> None:
    data = tmp_path / "songs"
    data.mkdir()
    write_song(data / "song.wav", 3.0)
    models = {**official_models, "captioner": tmp_path / "nowhere"}
    assert cli(data, models) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot read the captioning model config of")
    assert str(tmp_path / "nowhere") in err[-1]
    assert not (data / "song_lyrics.txt").exists()  # the transcriber pass never started


def test_the_flags_alone_name_the_official_models() -> None:
    args = transformers_parser().parse_args(["--data_dir", ".", "--captioner", "--transcriber"])
    assert (args.captioner, args.transcriber) == (CAPTIONER_MODEL, TRANSCRIBER_MODEL)
    assert (CAPTIONER_MODEL, TRANSCRIBER_MODEL) == ("ACE-Step/acestep-captioner", "ACE-Step/acestep-transcriber")
    plain = transformers_parser().parse_args(["--data_dir", "."])
    assert (plain.captioner, plain.transcriber) == (None, None)


@pytest.mark.slow  # librosa's beat tracker JIT-compiles with numba on first use
def test_bpm_key_time_signature_and_language_go_into_the_side_file(official_models, tmp_path: Path) -> None:
    pytest.importorskip("librosa")
    data = tmp_path / "songs"
    data.mkdir()
    write_song(data / "song.wav", 6.0)
    assert cli(data, official_models, "--bpm_key") == 0
    info = json.loads((data / "song_bpm_key.json").read_text(encoding="utf-8"))
    assert info["language"] == "en" and set(info) >= {"bpm", "key", "key_confidence"}
    metadata = read_music_metadata(data / "song.wav")  # what stage 2 reads for the 1.5 prompt
    assert metadata["language"] == "en" and metadata["keyscale"] == info["key"]
    silent = {**official_models, "transcriber": official_models["silent"]}
    assert cli(data, silent, "--bpm_key", "--overwrite") == 0
    assert "language" not in json.loads((data / "song_bpm_key.json").read_text(encoding="utf-8"))
