"""Stage 2: the filename dataset built from a folder of songs and side files."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import datasets
import pytest
from data_helpers import write_audio

from acestep.core.atomic import DATASET_MARKER
from acestep.core.errors import AcestepError, InputError
from acestep.data.filenames import build_filename_dataset, main, scan_folder
from acestep.data.sidecars import read_sidecar, split_tags

FORK_COLUMNS = ["keys", "filename", "tags", "speaker_emb_path", "norm_lyrics", "recaption"]


@pytest.fixture()
def song_dir(tmp_path: Path) -> Path:
    root = tmp_path / "songs"
    write_audio(root / "a_rock.wav", 1.0, 44100, 1)
    (root / "a_rock_prompt.txt").write_text("rock, electric guitar ,, male vocals, ", encoding="utf-8")
    (root / "a_rock_lyrics.txt").write_text("[verse]\nhello world\n", encoding="utf-8")
    write_audio(root / "sub" / "b_bom.FLAC", 2.0, 48000, 2)
    (root / "sub" / "b_bom_prompt.txt").write_bytes(codecs.BOM_UTF8 + "jazz, 爵士".encode())
    write_audio(root / "sub" / "deeper" / "c_inst.mp3", 1.0, 44100, 2)
    (root / "sub" / "deeper" / "c_inst_prompt.txt").write_text("ambient", encoding="utf-8")
    (root / "sub" / "deeper" / "c_inst_lyrics.txt").write_text("  [inst]  ", encoding="utf-8")
    write_audio(root / "d_noprompt.ogg", 1.0, 22050, 2)
    write_audio(root / "e.m4a", 1.0, 44100, 2)
    write_audio(root / "f.opus", 1.0, 48000, 2)
    write_audio(root / "g.aac", 1.0, 32000, 1)
    (root / "h_empty.wav").write_bytes(b"")
    write_audio(root / "i_latin1.wav", 1.0, 48000, 2)
    (root / "i_latin1_lyrics.txt").write_bytes("café olé".encode("latin-1"))
    (root / "notes.txt").write_text("not audio", encoding="utf-8")
    (root / "lost_prompt.txt").write_text("orphan", encoding="utf-8")
    return root


def test_split_tags_strips_and_drops_empty_pieces() -> None:
    assert split_tags("rock, electric guitar ,, male vocals, ") == ["rock", "electric guitar", "male vocals"]
    assert split_tags("") == []


def test_read_sidecar_tolerates_bom_and_rejects_other_encodings(tmp_path: Path) -> None:
    bom = tmp_path / "x_prompt.txt"
    bom.write_bytes(codecs.BOM_UTF8 + b"  pop \n")
    assert read_sidecar(bom) == "pop"
    assert read_sidecar(tmp_path / "missing_prompt.txt") is None
    latin = tmp_path / "y_lyrics.txt"
    latin.write_bytes("é".encode("latin-1"))
    with pytest.raises(InputError, match=r"y_lyrics\.txt: text is not UTF-8 \(byte 0xe9"):
        read_sidecar(latin)
    utf16 = tmp_path / "z_lyrics.txt"
    utf16.write_text("la la", encoding="utf-16")
    with pytest.raises(InputError, match="UTF-16"):
        read_sidecar(utf16)


def test_scan_folder_rows_and_summary(song_dir: Path) -> None:
    rows, summary = scan_folder(song_dir, default_tag="pop")
    by_key = {r["keys"]: r for r in rows}
    assert sorted(by_key) == ["a_rock", "b_bom", "c_inst", "d_noprompt", "e", "f", "g"]
    assert by_key["a_rock"]["tags"] == ["rock", "electric guitar", "male vocals"]
    assert by_key["a_rock"]["norm_lyrics"] == "[verse]\nhello world"
    assert by_key["b_bom"]["tags"] == ["jazz", "爵士"]
    assert by_key["d_noprompt"]["tags"] == ["pop"]
    assert by_key["a_rock"]["sample_rate"] == 44100 and by_key["a_rock"]["duration"] == pytest.approx(1.0)
    assert by_key["b_bom"]["duration"] == pytest.approx(2.0)
    assert by_key["f"]["sample_rate"] == 48000 and by_key["g"]["sample_rate"] == 32000
    assert all(Path(r["filename"]).is_absolute() and Path(r["filename"]).is_file() for r in rows)
    assert summary.files_found == 9 and summary.kept == 7
    assert summary.with_prompt == 3 and summary.with_lyrics == 2
    assert summary.instrumental == 6  # everything but a_rock: no lyrics or only [inst]
    skipped = dict(summary.skipped)
    assert skipped[str(song_dir / "h_empty.wav")] == "empty file"
    assert "not UTF-8" in skipped[str(song_dir / "i_latin1_lyrics.txt")]
    assert summary.orphan_sidecars == [str(song_dir / "lost_prompt.txt")]
    text = "\n".join(summary.lines("pop"))
    assert "WARNING: 4 file(s) have no _prompt.txt" in text and "i_latin1_lyrics.txt" in text


def test_build_writes_fork_columns_plus_extras_atomically(song_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "filenames"
    build_filename_dataset(song_dir, out, repeat_count=1)
    (out / "stale.txt").write_text("old output is replaced", encoding="utf-8")
    build_filename_dataset(song_dir, out, repeat_count=3, overwrite=True)
    dataset = datasets.load_from_disk(str(out))
    metadata = ["bpm", "keyscale", "timesignature", "language"]  # unknown here: -1 / ""
    assert dataset.column_names == [*FORK_COLUMNS, "duration", "sample_rate", *metadata]
    assert dataset[0]["bpm"] == -1 and dataset[0]["keyscale"] == "" and dataset[0]["language"] == ""
    assert len(dataset) == 21
    assert dataset.features["tags"] == datasets.List(datasets.Value("string"))
    assert dataset.features["sample_rate"] == datasets.Value("int32")
    assert dataset[0]["recaption"] == {} and dataset[0]["speaker_emb_path"] == ""
    assert dataset["keys"][:7] == dataset["keys"][7:14]
    assert dataset[3]["tags"] == []  # no prompt file and no default tag
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(AcestepError, match="no audio files"):
        scan_folder(tmp_path)
    with pytest.raises(AcestepError, match="repeat_count"):
        build_filename_dataset(tmp_path, tmp_path / "out", repeat_count=0)


def test_cli_prints_summary(song_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--data_dir", str(song_dir), "--output_name", str(tmp_path / "out"), "--default_tag", "pop"])
    out = capsys.readouterr().out
    assert "audio files found:     9" in out and "skipped:               2" in out
    assert "wrote 7 rows" in out and "default tag 'pop'" in out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_song_folder_is_never_replaced(song_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(song_dir)
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["--data_dir", str(song_dir), "--output_name", str(song_dir), *extra])
        message = str(exit_info.value.code)
        assert message.startswith("error: ") and "not a dataset this toolkit wrote" in message and "\n" not in message
    assert snapshot(song_dir) == before


def test_only_our_own_dataset_is_replaced_and_only_with_overwrite(song_dir: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    datasets.Dataset.from_dict({"a": [1]}).save_to_disk(str(foreign))  # a dataset, but not one we wrote
    before = snapshot(foreign)
    with pytest.raises(AcestepError, match="not a dataset this toolkit wrote"):
        build_filename_dataset(song_dir, foreign, overwrite=True)
    assert snapshot(foreign) == before
    ours = tmp_path / "ours"
    build_filename_dataset(song_dir, ours)
    assert json.loads((ours / DATASET_MARKER).read_text(encoding="utf-8"))["kind"] == "filenames"
    first = snapshot(ours)
    with pytest.raises(AcestepError, match="pass --overwrite"):
        build_filename_dataset(song_dir, ours, repeat_count=2)
    assert snapshot(ours) == first
    build_filename_dataset(song_dir, ours, repeat_count=2, overwrite=True)
    assert len(datasets.load_from_disk(str(ours))) == 14
    empty = tmp_path / "empty"
    empty.mkdir()
    build_filename_dataset(song_dir, empty)  # an empty folder holds nothing to lose
    assert len(datasets.load_from_disk(str(empty))) == 7


def test_empty_prompt_is_missing_and_short_songs_are_named(tmp_path: Path) -> None:
    root = tmp_path / "songs"
    write_audio(root / "blank.wav", 4.0, 44100, 1)
    (root / "blank_prompt.txt").write_text("  \n", encoding="utf-8")
    write_audio(root / "commas.wav", 4.0, 44100, 1)
    (root / "commas_prompt.txt").write_text(" , ,", encoding="utf-8")
    write_audio(root / "tiny.wav", 0.2, 44100, 1)
    (root / "tiny_prompt.txt").write_text("rock", encoding="utf-8")
    rows, summary = scan_folder(root, default_tag="lofi")
    by_key = {r["keys"]: r for r in rows}
    assert by_key["blank"]["tags"] == ["lofi"] and by_key["commas"]["tags"] == ["lofi"]
    assert summary.with_prompt == 1
    assert summary.empty_prompts == [str(root / "blank_prompt.txt"), str(root / "commas_prompt.txt")]
    assert [(path, round(seconds, 2)) for path, seconds in summary.short] == [(str(root / "tiny.wav"), 0.2)]
    text = "\n".join(summary.lines("lofi"))
    assert "WARNING: 2 file(s) have no _prompt.txt" in text
    assert f"{root / 'blank_prompt.txt'}: empty prompt file" in text
    assert f"{root / 'tiny.wav'}: only 0.20 s long" in text and "shorter than 3 s:      1" in text
