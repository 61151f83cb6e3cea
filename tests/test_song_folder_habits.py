"""A new user's song folder: one song in two formats, Windows line ends, lyrics files holding only whitespace.

Each is refused in one line or normalized the same way in stage 1, 2 and 3, so training sees what generation feeds.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from data_helpers import write_audio

from acestep.captioning.runner import RunOptions, caption_folder
from acestep.core.errors import AcestepError
from acestep.data.filenames import build_filename_dataset, filename_features, main, scan_folder
from acestep.data.preprocess import read_filename_rows, run_song_stages


@pytest.fixture()
def two_formats(tmp_path: Path) -> Path:
    songs = tmp_path / "songs"
    write_audio(songs / "a.wav", seconds=3.5)
    write_audio(songs / "a.mp3", seconds=3.5)
    write_audio(songs / "b.flac", seconds=3.5)
    write_audio(songs / "live" / "b.wav", seconds=3.5)  # another folder: its own side files, its own song
    return songs


def test_stage2_refuses_one_song_in_two_formats(two_formats: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--data_dir", str(two_formats), "--output_name", str(tmp_path / "names")])
    message = str(exit_info.value.code)
    assert message.startswith("error: 1 song(s) in two formats: ") and "\n" not in message
    assert f"{two_formats / 'a.mp3'} and {two_formats / 'a.wav'}" in message and "b." not in message
    assert not (tmp_path / "names").exists()
    (two_formats / "a.mp3").unlink()
    rows, _ = scan_folder(two_formats)
    assert sorted(row["keys"] for row in rows) == ["a", "b", "b"]


def test_stage1_refuses_one_song_in_two_formats_before_any_model(two_formats: Path) -> None:
    def no_backend():  # noqa: ANN202
        raise AssertionError("the captioning model was loaded")

    with pytest.raises(AcestepError, match="song.s. in two formats: .*a.mp3 and .*a.wav"):
        caption_folder(two_formats, no_backend, RunOptions(), progress=False)


def test_stage3_refuses_a_dataset_listing_one_song_in_two_formats(two_formats: Path, tmp_path: Path) -> None:
    rows = [{"keys": "a", "filename": str(two_formats / name), "tags": ["pop"], "speaker_emb_path": "",
             "norm_lyrics": "", "recaption": {}, "duration": 3.5, "sample_rate": 48000, "bpm": -1.0, "keyscale": "",
             "timesignature": "", "language": ""} for name in ("a.wav", "a.wav", "a.mp3")]  # a repeated row is fine
    datasets.Dataset.from_list(rows, features=filename_features()).save_to_disk(str(tmp_path / "fork_names"))
    with pytest.raises(AcestepError, match="1 song.s. in two formats"):
        run_song_stages(tmp_path / "fork_names", tmp_path / "prep", pipeline=None)  # type: ignore[arg-type]


def test_crlf_and_whitespace_only_side_files(tmp_path: Path) -> None:
    songs = tmp_path / "songs"
    write_audio(songs / "crlf.wav", seconds=3.5)
    (songs / "crlf_lyrics.txt").write_bytes(b"[verse]\r\nline one\r\nline two\r\n")
    (songs / "crlf_prompt.txt").write_bytes(b"pop,\r\npiano\r\n")
    write_audio(songs / "blank.wav", seconds=3.5)
    (songs / "blank_lyrics.txt").write_bytes(b"  \r\n\t\r\n")
    summary = build_filename_dataset(songs, tmp_path / "names")
    rows = {row.key: row for row in read_filename_rows(tmp_path / "names")}
    assert rows["crlf"].lyrics == "[verse]\nline one\nline two" and rows["crlf"].tags == ("pop", "piano")
    assert rows["blank"].lyrics == ""
    assert summary.with_lyrics == 1 and summary.instrumental == 1  # whitespace alone is no lyrics


def test_stage3_normalizes_lyrics_of_datasets_written_elsewhere(tmp_path: Path) -> None:
    rows = [{"keys": key, "filename": f"{key}.wav", "tags": ["pop"], "speaker_emb_path": "", "norm_lyrics": lyrics,
             "recaption": {}, "duration": 3.5, "sample_rate": 48000, "bpm": -1.0,
             "keyscale": "", "timesignature": "", "language": ""}
            for key, lyrics in (("crlf", "[verse]\r\nla la\rla\r\n"), ("blank", " \r\n \t"))]
    datasets.Dataset.from_list(rows, features=filename_features()).save_to_disk(str(tmp_path / "fork"))
    read = {row.key: row for row in read_filename_rows(tmp_path / "fork")}
    assert read["crlf"].lyrics == "[verse]\nla la\nla\n"
    assert read["blank"].lyrics == ""


def test_1_5_stage3_text_has_no_carriage_return(tmp_path: Path) -> None:
    from acestep.data.preprocess import FilenameRow
    from acestep.families.v15.encode import INSTRUMENTAL_LYRICS, song_text
    from acestep.families.v15.generate import sung_lyrics

    rows = [{"keys": "s", "filename": "s.wav", "tags": ["pop"], "speaker_emb_path": "",
             "norm_lyrics": "[chorus]\r\nhey\r\n", "recaption": {}, "duration": 3.5, "sample_rate": 48000,
             "bpm": -1.0, "keyscale": "", "timesignature": "", "language": ""}]
    datasets.Dataset.from_list(rows, features=filename_features()).save_to_disk(str(tmp_path / "fork"))
    row = read_filename_rows(tmp_path / "fork")[0]
    trained = song_text(row, "pop").lyrics
    assert "\r" not in trained and trained == sung_lyrics("[chorus]\r\nhey\r\n")  # training = generation
    assert song_text(FilenameRow("b", "b.wav", (), "   "), "pop").lyrics == INSTRUMENTAL_LYRICS


def test_regularization_songs_with_whitespace_lyrics_are_instrumental(tmp_path: Path) -> None:
    import torch

    from acestep.data.reg import RegSong, render_songs

    def silence(prompt: str, lyrics: str, duration: float, seed: int):  # noqa: ANN202
        return torch.full((2, 4800), 0.1), 48000

    render_songs([RegSong("r1", "ambient", " \n\t", 0.1, 1)], tmp_path, silence, "ace-step-v1", None)
    assert (tmp_path / "r1_lyrics.txt").read_text(encoding="utf-8") == "[instrumental]\n"
