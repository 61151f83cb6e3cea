"""Stage 3 orchestration (resume, shards, errors, storage) with small fake encoders: no checkpoint needed."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from data_helpers import (
    FakeDCAE,
    FakeLyrics,
    FakeSSL,
    FakeText,
    SimulatedKill,
    fake_format_prompt,
    fake_load_audio,
    reference_latent_length,
    tone,
    write_audio,
)

from acestep.core.errors import AcestepError
from acestep.data.filenames import build_filename_dataset
from acestep.data.preprocess import PreprocessSettings, RunOptions
from acestep.data.preprocessed import load_preprocessed, merge_parts
from acestep.data.shards import ShardSpec, read_progress
from acestep.families.v1.encoders import SongEncoders, run_preprocess

GOOD = {"s0": 1.0, "s1": 3.5, "s2": 0.5, "s4": 2.0, "s6": 1.2, "s7": 4.0}


def make_encoders(kill_after: int | None = None, ssl: bool = True) -> SongEncoders:
    return SongEncoders(
        load_audio=fake_load_audio,
        format_prompt=fake_format_prompt,
        dcae=FakeDCAE(kill_after),
        text=FakeText(),
        lyrics=FakeLyrics(),
        ssl=FakeSSL() if ssl else None,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


@pytest.fixture(scope="module")
def filenames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 songs: 6 good (mono and stereo), one silent, one with unsupported lyrics, one undecodable."""
    root = tmp_path_factory.mktemp("songs")
    for i, (name, seconds) in enumerate(GOOD.items()):
        write_audio(root / f"{name}.wav", seconds, 48000, 1 + i % 2, freq=200 + 100 * i)
        (root / f"{name}_prompt.txt").write_text(f"tag{i}, genre {i}, mood", encoding="utf-8")
        (root / f"{name}_lyrics.txt").write_text(f"line {i}\nla la", encoding="utf-8")
    write_audio(root / "s3_silent.wav", 1.0, 48000, 2, silent=True)
    write_audio(root / "s5_swedish.wav", 1.0, 48000, 2)
    (root / "s5_swedish_lyrics.txt").write_text("svenska ord", encoding="utf-8")
    scanned = tmp_path_factory.mktemp("filenames") / "scanned"
    build_filename_dataset(root, scanned)
    # a file that passes the stage-2 header probe but breaks while decoding (or was damaged since)
    broken = root / "s8_broken.flac"
    broken.write_bytes(b"fLaC this is not a real flac stream" * 10)
    dataset = datasets.load_from_disk(str(scanned))
    dataset = dataset.add_item({**dataset[0], "keys": broken.stem, "filename": str(broken)})
    out = scanned.with_name("ds")
    dataset.save_to_disk(str(out))
    return out


def run(filenames: Path, prep: Path, encoders: SongEncoders | None = None, **options) -> object:
    settings = options.pop("settings", PreprocessSettings())
    return run_preprocess(
        filenames, prep, encoders or make_encoders(), settings, RunOptions(show_progress=False, **options)
    )


def as_rows(dataset: datasets.Dataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


def assert_same_dataset(a: datasets.Dataset, b: datasets.Dataset) -> None:
    assert a.column_names == b.column_names and len(a) == len(b)
    for row_a, row_b in zip(as_rows(a), as_rows(b)):
        for column in a.column_names:
            va, vb = row_a[column], row_b[column]
            if isinstance(va, torch.Tensor):
                assert va.dtype == vb.dtype and torch.equal(va, vb), column
            else:
                assert va == vb, column


@pytest.fixture(scope="module")
def reference_run(filenames: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prep = tmp_path_factory.mktemp("prep") / "full"
    run(filenames, prep, chunk_rows=2)
    return prep


def test_columns_dtypes_shapes(reference_run: Path, filenames: Path) -> None:
    dataset = load_preprocessed(reference_run)
    assert dataset["keys"] == list(GOOD)  # input-row order, bad songs missing
    chunk = next((reference_run / "part-000-of-001").glob("chunk-*"))
    schema = datasets.load_from_disk(str(chunk)).features
    assert schema["target_latents"] == datasets.List(datasets.List(datasets.List(datasets.Value("float16"))))
    assert schema["encoder_text_hidden_states"] == datasets.Array2D((None, 8), "float16")
    assert schema["mert_ssl_hidden_states"] == datasets.Array2D((None, 16), "float16")
    assert schema["lyric_token_ids"].feature.dtype == "int32" and schema["lyric_mask"].feature.dtype == "int8"
    source = datasets.load_from_disk(str(filenames))
    for row in as_rows(dataset):
        seconds = GOOD[row["keys"]]
        samples = round(seconds * 48000)
        frames = reference_latent_length(samples)
        assert row["target_latents"].shape == (8, 16, frames) and row["latent_length"] == frames
        assert row["duration"] == pytest.approx(seconds)
        tags = source[int(row["row"])]["tags"]
        assert sorted(row["prompt"].split(", ")) == sorted(tags)
        assert row["encoder_text_hidden_states"].shape == (len(tags) + 1, 8)  # real tokens only
        assert (row["encoder_text_hidden_states"].abs() < 90).all()  # no padding garbage stored
        lyrics = source[int(row["row"])]["norm_lyrics"]
        assert row["lyric_token_ids"].tolist() == FakeLyrics().encode(lyrics)
        assert row["lyric_mask"].tolist() == [1] * len(row["lyric_token_ids"])
        assert (
            row["mert_ssl_hidden_states"].shape[1] == 16 and row["mhubert_ssl_hidden_states"].shape[1] == 12
        )
    latents = dataset[0]["target_latents"]
    expected = FakeDCAE().encode(fake_load_audio(Path(dataset[0]["filename"]), 360)[None])[0][0]
    assert torch.allclose(latents, expected, atol=2e-3)  # float16 round trip


def test_bad_songs_are_listed_and_nothing_else_is_lost(reference_run: Path) -> None:
    errors = [json.loads(line) for line in (reference_run / "errors.jsonl").read_text().splitlines()]
    reasons = {Path(e["filename"]).name: e["reason"] for e in errors}
    assert set(reasons) == {"s3_silent.wav", "s5_swedish.wav", "s8_broken.flac"}
    assert reasons["s3_silent.wav"] == "silent"
    assert (
        reasons["s5_swedish.wav"]
        == "lyrics: mostly 'sv', unsupported (--lyrics_fallback_language encodes them anyway)"
    )
    assert reasons["s8_broken.flac"].startswith("cannot decode")
    manifest = json.loads((reference_run / "manifest.json").read_text())
    assert manifest["songs"] == len(GOOD) and manifest["errors"] == 3
    assert manifest["audio_seconds"] == pytest.approx(sum(GOOD.values()))


def test_killed_run_resumes_without_reencoding(filenames: Path, reference_run: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    with pytest.raises(SimulatedKill):
        run(filenames, prep, make_encoders(kill_after=3), chunk_rows=2)
    progress = read_progress(prep / "part-000-of-001")
    assert sum(len(c.rows) for c in progress.chunks) == 3 and not progress.complete
    assert not (prep / "manifest.json").exists()
    with pytest.warns(UserWarning, match="unfinished"):
        assert len(load_preprocessed(prep)) == 3
    encoders = make_encoders()
    run(filenames, prep, encoders, chunk_rows=2)
    assert encoders.dcae.calls == len(GOOD) - 3
    assert_same_dataset(load_preprocessed(prep), load_preprocessed(reference_run))


def test_crash_leftovers_are_never_read(filenames: Path, reference_run: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    shutil.copytree(reference_run, prep)
    part = prep / "part-000-of-001"
    progress = json.loads((part / "progress.json").read_text())
    dropped = progress["chunks"].pop()  # as if killed between the chunk rename and the progress write
    (part / "progress.json").write_text(json.dumps(progress))
    (part / "chunk-00099.tmp-deadbeef").mkdir()
    (part / "progress.json.tmp-1234").write_text("{half")
    with pytest.warns(UserWarning):
        assert len(load_preprocessed(prep)) == len(GOOD) - len(dropped["rows"])
    encoders = make_encoders()
    run(filenames, prep, encoders)
    assert encoders.dcae.calls == len(dropped["rows"])
    assert sorted(p.name for p in part.iterdir() if ".tmp-" in p.name) == []
    assert_same_dataset(load_preprocessed(prep), load_preprocessed(reference_run))


def test_shards_in_parallel_then_merge(filenames: Path, reference_run: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    first = run(filenames, prep, shard=ShardSpec.parse("0/2"))
    assert first.manifest is None  # the other shard is missing
    with pytest.raises(AcestepError, match=r"shard 1/2 not started"):
        merge_parts(prep)
    with pytest.raises(AcestepError, match="2-way split"):
        run(filenames, prep)
    second = run(filenames, prep, shard=ShardSpec.parse("1/2"), batch_size=3, num_workers=2)
    assert second.manifest is not None and second.manifest["songs"] == len(GOOD)
    assert_same_dataset(load_preprocessed(prep), load_preprocessed(reference_run))
    assert (prep / "errors.jsonl").read_text() == (reference_run / "errors.jsonl").read_text()


def test_resume_refuses_other_settings(filenames: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    with pytest.raises(SimulatedKill):
        run(filenames, prep, make_encoders(kill_after=1))
    with pytest.raises(AcestepError, match=r"other settings \(ssl: True -> False\)"):
        run(filenames, prep, make_encoders(ssl=False), settings=PreprocessSettings(ssl=False))


def test_retry_errors_and_fallback_language(filenames: Path, reference_run: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    shutil.copytree(reference_run, prep)
    with pytest.raises(AcestepError, match="lyrics_fallback_language"):
        run(filenames, prep, settings=PreprocessSettings(lyrics_fallback_language="en"))
    encoders = make_encoders()
    result = run(filenames, prep, encoders, retry_errors=True)
    assert encoders.dcae.calls == 0 and len(result.new_errors) == 3  # the three bad songs were tried again


def test_no_ssl_columns_and_overflow_is_reported(filenames: Path, tmp_path: Path) -> None:
    encoders = make_encoders(ssl=False)
    real_encode = encoders.text.encode

    def overflowing(prompts: list[str]):
        hidden, mask = real_encode(prompts)
        if "tag1" in prompts[0]:
            hidden[0, 0, 0] = 1e6
        return hidden, mask

    encoders.text.encode = overflowing
    prep = tmp_path / "prep"
    result = run(filenames, prep, encoders, settings=PreprocessSettings(ssl=False))
    dataset = load_preprocessed(prep)
    assert "mert_ssl_hidden_states" not in dataset.column_names and len(dataset) == len(GOOD) - 1
    assert any("outside the float16 range" in e.reason for e in result.new_errors)


def test_fork_filename_and_preprocessed_layouts(filenames: Path, tmp_path: Path) -> None:
    source = datasets.load_from_disk(str(filenames))
    fork = source.remove_columns(["duration", "sample_rate"])
    fork = fork.map(lambda row: {"tags": row["tags"] or [""]})  # the fork writes [""] for an empty prompt
    fork.save_to_disk(str(tmp_path / "fork_filenames"))
    run(tmp_path / "fork_filenames", tmp_path / "prep", settings=PreprocessSettings(tag_order="as_written"))
    dataset = load_preprocessed(tmp_path / "prep")
    assert len(dataset) == len(GOOD) and dataset[0]["prompt"] == "tag0, genre 0, mood"

    plain = datasets.Dataset.from_list(
        [
            {
                "keys": "x",
                "target_latents": np.zeros((8, 16, 5), np.float32),
                "attention_mask": np.ones(5, np.float32),
                "encoder_text_hidden_states": np.zeros((3, 768), np.float32),
                "text_attention_mask": np.ones(3, np.float32),
                "speaker_embds": np.zeros(512, np.float32),
                "lyric_token_ids": np.zeros(1, np.int64),
                "lyric_mask": np.ones(1, np.float32),
            }
        ]
    )
    plain.save_to_disk(str(tmp_path / "fork_prep"))
    loaded = load_preprocessed(tmp_path / "fork_prep")
    assert loaded[0]["target_latents"].shape == (8, 16, 5) and "speaker_embds" in loaded.column_names
    from acestep.data.report import build_report

    report = build_report(tmp_path / "fork_prep")
    assert report.fork_layout and report.skipped is None and not report.tag_counts
    assert report.durations == [pytest.approx(5 * 4096 / 44100)] and report.text_tokens == [3]


def test_report_counts_and_png(
    reference_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from acestep.data.report import build_report, main

    report = build_report(reference_run)
    assert report.songs == len(GOOD) and report.skipped == 3 and report.has_ssl and not report.fork_layout
    assert sorted(report.durations) == pytest.approx(sorted(GOOD.values()))
    assert report.tag_counts["mood"] == len(GOOD) and report.tag_counts["tag0"] == 1
    assert report.text_tokens == [4] * len(GOOD) and report.without_lyrics == 0
    assert report.padded_songs == 4 and report.invented_prompts == 0  # s0, s2, s4, s6 are under 3 s
    png = tmp_path / "r.png"
    main([str(reference_run), "--output", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert f"songs:                 {len(GOOD)}  (skipped: 3)" in out and "mood (6)" in out
    assert "padded to 3 s:        4" in out


def test_cli_run_summary_and_merge(
    filenames: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from acestep.data import preprocess
    from acestep.families.v1 import encoders

    seen = {}

    def fake_load(checkpoint_dir, device, dtype, ssl, lyrics_vocab):
        seen.update(checkpoint_dir=checkpoint_dir, device=device, dtype=dtype, ssl=ssl)
        return make_encoders(ssl=ssl)

    monkeypatch.setattr(encoders, "load_encoders", fake_load)
    prep = tmp_path / "prep"
    args = ["--input_name", str(filenames), "--output_dir", str(prep), "--checkpoint_dir", "CKPT", "--no-ssl"]
    stage3 = functools.partial(preprocess.main, song_stages=encoders.v1_song_stages)
    stage3([*args, "--device", "cpu", "--num_workers", "0"])
    assert seen == {"checkpoint_dir": "CKPT", "device": "cpu", "dtype": "auto", "ssl": False}
    out = capsys.readouterr().out
    assert f"this run: {len(GOOD)} songs encoded" in out and "3 skipped" in out
    assert "MB per second of audio" in out and "s8_broken.flac  cannot decode" in out
    preprocess.main(["merge", str(prep)])
    assert json.loads(capsys.readouterr().out)["songs"] == len(GOOD)
    with pytest.raises(SystemExit, match="error: .*other settings"):
        stage3([*args[:-1], "--shard", "0/1"])
    with pytest.raises(SystemExit, match="--shard must look like i/n"):
        stage3([*args, "--shard", "2"])


def test_normalize_loudness_reaches_target() -> None:
    import pyloudnorm

    from acestep.data.preprocess import normalize_loudness

    wav = torch.from_numpy(tone(4.0, 48000, 2).T.copy())
    louder = normalize_loudness(wav, -14.0)
    measured = pyloudnorm.Meter(48000).integrated_loudness(louder.T.double().numpy())
    assert measured == pytest.approx(-14.0, abs=0.1) and louder.abs().max() <= 1.0
    silent = torch.zeros(2, 48000 * 2)
    assert torch.equal(normalize_loudness(silent, -14.0), silent)


def test_ordered_prefetch_keeps_order_and_bounds_work() -> None:
    import threading
    import time

    from acestep.data.preprocess import ordered_prefetch

    started: list[int] = []
    lock = threading.Lock()

    def slow(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.002 * (i % 3))
        return i * i

    consumed = 0
    for item, value in ordered_prefetch(range(20), slow, workers=2):
        assert value == item * item and item == consumed
        assert len(started) <= consumed + 1 + 2 * 2  # never more than 2*workers ahead
        consumed += 1
    assert consumed == 20


def test_a_foreign_output_folder_is_refused_and_untouched(filenames: Path, tmp_path: Path) -> None:
    prep = tmp_path / "mine"
    prep.mkdir()
    (prep / "manifest.json").write_text("my own notes", encoding="utf-8")
    with pytest.raises(AcestepError, match="not a preprocessed dataset this toolkit wrote"):
        run(filenames, prep)
    assert [p.name for p in prep.iterdir()] == ["manifest.json"]
    assert (prep / "manifest.json").read_text(encoding="utf-8") == "my own notes"


def test_invented_prompts_and_padding_are_listed_by_name(filenames: Path, tmp_path: Path) -> None:
    from acestep.data.preprocess import summary_lines

    source = datasets.load_from_disk(str(filenames))
    untagged = tmp_path / "untagged"
    source.map(lambda row, i: {"tags": [] if i == 0 else row["tags"]}, with_indices=True).save_to_disk(str(untagged))
    prep = tmp_path / "prep"
    result = run(untagged, prep, chunk_rows=2)
    notes = {(n.key, n.reason) for n in read_progress(prep / "part-000-of-001").notes}
    assert ("s0", "no tags: trained with the prompt 'music'") in notes
    assert ("s2", "only 0.50 s long: padded with silence to 3 s") in notes
    assert {key for key, reason in notes if "padded" in reason} == {"s0", "s2", "s4", "s6"}
    text = "\n".join(summary_lines(prep, result))
    assert "with something you did not write" in text and "s0.wav" in text and "s2.wav" in text


def test_a_chunk_is_committed_after_bounded_time(tmp_path: Path) -> None:
    """A SIGKILL loses only rows not yet committed: after `chunk_seconds` of work they are, before 64 rows."""
    from acestep.data.preprocessed import EncodedSong, features_for_record
    from acestep.data.shards import PartWriter

    now = [0.0]
    writer = PartWriter(tmp_path / "prep", ShardSpec(), {"s": 1}, rows_total=10, make_features=features_for_record,
                        chunk_seconds=300.0, clock=lambda: now[0])

    def song(row: int) -> dict:
        return EncodedSong(row=row, key=f"k{row}", filename=f"/m/{row}.wav", prompt="p",
                           latents=torch.zeros(8, 16, 4), text_hidden=torch.zeros(2, 8), lyric_ids=[1, 2],
                           duration=1.0).to_record()

    part = tmp_path / "prep" / "part-000-of-001"
    writer.add(song(0), 1.0, 10)
    now[0] = 299.0
    writer.add(song(1), 1.0, 10)
    assert read_progress(part).chunks == []  # nothing committed yet: still within the time bound
    now[0] = 300.0
    writer.add(song(2), 1.0, 10)
    assert [c.rows for c in read_progress(part).chunks] == [[0, 1, 2]]  # on disk without any flush() call
    now[0] = 400.0
    writer.add(song(3), 1.0, 10)
    assert len(read_progress(part).chunks) == 1  # the clock restarts at each commit


def test_time_bounded_chunks_give_the_same_dataset(filenames: Path, reference_run: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    run(filenames, prep, chunk_rows=64, chunk_seconds=0.0)  # every song its own chunk
    assert len(read_progress(prep / "part-000-of-001").chunks) == len(GOOD)
    assert_same_dataset(load_preprocessed(prep), load_preprocessed(reference_run))


def test_insert_trigger_first_random_and_past_the_cut() -> None:
    from acestep.data.preprocess import MAX_PROMPT_CHARS, insert_trigger

    assert insert_trigger("rock, loud", "mystyle", "first", 0) == "mystyle, rock, loud"
    placed = {insert_trigger("a, b, c, d", "mystyle", "random", i) for i in range(40)}
    assert len(placed) > 2 and all(p.split(", ").count("mystyle") == 1 for p in placed)
    assert insert_trigger("a, b, c", "x", "random", 7) == insert_trigger("a, b, c", "x", "random", 7)
    long = insert_trigger("tag, " * 100, "mystyle", "first", 0)
    assert long.startswith("mystyle, ") and len(long) <= MAX_PROMPT_CHARS


def test_the_trigger_is_in_every_prompt_and_in_the_manifest(filenames: Path, tmp_path: Path) -> None:
    from acestep.data.preprocessed import dataset_trigger
    from acestep.training import TrainConfig
    from acestep.training.run import check_trigger

    prep = tmp_path / "prep"
    run(filenames, prep, settings=PreprocessSettings(trigger="mystyle"))
    manifest = merge_parts(prep)
    assert manifest["trigger"] == "mystyle" and manifest["settings"]["trigger_position"] == "first"
    prompts = load_preprocessed(prep)["prompt"]
    assert prompts and all(p.startswith("mystyle, ") for p in prompts)
    assert dataset_trigger(prep) == "mystyle"
    assert check_trigger(TrainConfig(dataset_path=str(prep))) == "mystyle"  # none asked: the dataset's
    assert check_trigger(TrainConfig(dataset_path=str(prep), trigger="mystyle")) == "mystyle"
    with pytest.raises(AcestepError, match="preprocessed with the trigger 'mystyle', not 'other'"):
        check_trigger(TrainConfig(dataset_path=str(prep), trigger="other"))


def test_no_trigger_stores_the_settings_of_older_versions(reference_run: Path) -> None:
    from acestep.data.preprocessed import dataset_trigger
    from acestep.training import TrainConfig
    from acestep.training.run import check_trigger

    settings = read_progress(next(reference_run.glob("part-*"))).settings
    assert "trigger" not in settings and "trigger_position" not in settings
    assert dataset_trigger(reference_run) is None
    with pytest.raises(AcestepError, match="preprocessed with no trigger, not 'mystyle'"):
        check_trigger(TrainConfig(dataset_path=str(reference_run), trigger="mystyle"))
