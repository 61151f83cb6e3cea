"""Stage 2 + 3 end to end on the tiny checkpoint: generated audio (rates, channels, formats) and broken inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import pytest
import torch
from data_helpers import SimulatedKill, reference_latent_length, write_audio

from acestep.data.filenames import build_filename_dataset
from acestep.data.preprocess import PreprocessSettings, RunOptions
from acestep.data.preprocessed import load_preprocessed
from acestep.families.v1.encoders import run_preprocess

for _module in (
    "acestep.audio",
    "acestep.families.v1.models.dcae",
    "acestep.families.v1.models.ssl",
    "acestep.families.v1.text_encoder",
    "acestep.families.v1.checkpoint",
    "acestep.tiny_checkpoint",
):
    pytest.importorskip(_module, reason="the model components this end-to-end test drives")

MAX_DURATION = 3.2
# name: (seconds, sample rate, channels, expected seconds after crop / pad to 3 s, tolerance)
SONGS = {
    "a_short.wav": (1.0, 44100, 1, 3.0, 1e-4),
    "b_long.flac": (4.0, 48000, 2, MAX_DURATION, 1e-4),
    "c_lossy.mp3": (2.0, 22050, 2, 3.0, 1e-4),
    "d_mono.wav": (3.1, 32000, 1, 3.1, 1e-4),
    "e_aac.m4a": (1.5, 44100, 2, 3.0, 1e-4),
    "f_opus.opus": (1.0, 48000, 1, 3.0, 1e-4),
}
LYRICS = {
    "a_short": "[verse]\nHello world, 2 times\n\n[chorus]\nla la la",
    "b_long": "[inst]",
    "c_lossy": "我喜欢音乐\nwe sing along",
}
SWEDISH = (
    "Jag älskar dig så mycket, min vän.\nVi dansar hela natten lång under stjärnorna.\nSjung med mig nu."
)
BAD = {"g_silent.wav": "silent", "h_swedish.wav": "lyrics", "i_broken.wav": "decode"}


class KillAfter:
    """Wraps the real DC-AE and stops the run (like kill -9) after `limit` songs."""

    def __init__(self, dcae, limit: int) -> None:
        self.dcae, self.limit, self.calls = dcae, limit, 0

    def encode(self, *args, **kwargs):
        if self.calls >= self.limit:
            raise SimulatedKill
        self.calls += 1
        return self.dcae.encode(*args, **kwargs)


@pytest.fixture(scope="module")
def encoders(tiny_checkpoint: Path):
    from acestep.families.v1.encoders import load_encoders

    return load_encoders(str(tiny_checkpoint), device="cpu", dtype="float32", ssl=True)


@pytest.fixture(scope="module")
def filenames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("songs")
    for i, (name, (seconds, sr, channels, _, _)) in enumerate(SONGS.items()):
        path = write_audio(root / name, seconds, sr, channels, freq=220 * (i + 1))
        (root / f"{path.stem}_prompt.txt").write_text(f"genre{i}, instrument {i}, calm", encoding="utf-8")
        if path.stem in LYRICS:
            (root / f"{path.stem}_lyrics.txt").write_text(LYRICS[path.stem], encoding="utf-8")
    write_audio(root / "g_silent.wav", 2.0, 48000, 2, silent=True)
    write_audio(root / "h_swedish.wav", 1.0, 48000, 2)
    (root / "h_swedish_lyrics.txt").write_text(SWEDISH, encoding="utf-8")
    broken = write_audio(root / "i_broken.wav", 2.0, 48000, 2)
    broken.write_bytes(broken.read_bytes()[:60])  # header survives, samples are cut off
    out = tmp_path_factory.mktemp("filenames") / "ds"
    build_filename_dataset(root, out)
    return out


def run(filenames: Path, prep: Path, encoders, **options):
    settings = PreprocessSettings(max_duration=MAX_DURATION, tag_order="as_written")
    return run_preprocess(filenames, prep, encoders, settings, RunOptions(show_progress=False, **options))


@pytest.fixture(scope="module")
def full_run(filenames: Path, encoders, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prep = tmp_path_factory.mktemp("prep") / "full"
    run(filenames, prep, encoders, num_workers=2, chunk_rows=3)
    return prep


def test_columns_dtypes_and_shapes(full_run: Path, filenames: Path, encoders) -> None:
    from acestep.audio import prepare_training_audio

    dataset = load_preprocessed(full_run)
    assert dataset["keys"] == [Path(n).stem for n in SONGS]
    chunk = datasets.load_from_disk(str(next((full_run / "part-000-of-001").glob("chunk-*"))))
    features = chunk.features
    assert features["target_latents"].feature.feature.feature.dtype == "float16"
    for column in ("encoder_text_hidden_states", "mert_ssl_hidden_states", "mhubert_ssl_hidden_states"):
        assert features[column].dtype == "float16", column
    assert (
        features["lyric_token_ids"].feature.dtype == "int32"
        and features["lyric_mask"].feature.dtype == "int8"
    )
    source = datasets.load_from_disk(str(filenames))
    for row in (dataset[i] for i in range(len(dataset))):
        name = next(n for n in SONGS if Path(n).stem == row["keys"])
        expected_seconds, tolerance = SONGS[name][3], SONGS[name][4]
        assert row["duration"] == pytest.approx(expected_seconds, abs=tolerance), name
        wav = prepare_training_audio(row["filename"], max_duration=MAX_DURATION)
        frames = reference_latent_length(wav.shape[-1])
        assert row["latent_length"] == frames and row["target_latents"].shape == (8, 16, frames), name
        expected_latents = encoders.dcae.encode(wav[None], torch.tensor([wav.shape[-1]]), sr=48000)[0][0]
        assert torch.allclose(row["target_latents"], expected_latents.float(), atol=1e-2, rtol=1e-2), name

        hidden, mask = encoders.text.encode([row["prompt"]])
        real = hidden[0][mask[0].bool()].float()
        assert row["prompt"] == ", ".join(source[int(row["row"])]["tags"])
        assert row["encoder_text_hidden_states"].shape == real.shape
        assert torch.allclose(row["encoder_text_hidden_states"], real, atol=1e-2, rtol=1e-2)

        lyrics = source[int(row["row"])]["norm_lyrics"]
        ids = encoders.lyrics.encode(lyrics, mode="training")
        assert row["lyric_token_ids"].tolist() == ids[:4096] and row["lyric_mask"].tolist() == [1] * len(ids)

        mert, mhubert = encoders.ssl.extract(wav[None], torch.tensor([wav.shape[-1]]))
        assert row["mert_ssl_hidden_states"].shape == mert[0].shape
        assert row["mhubert_ssl_hidden_states"].shape == mhubert[0].shape
        assert math.isclose(mert[0].shape[0] / row["duration"], 75, rel_tol=0.05)
        assert math.isclose(mhubert[0].shape[0] / row["duration"], 50, rel_tol=0.05)
    empty = dataset[[Path(n).stem for n in SONGS].index("d_mono")]
    assert empty["lyric_token_ids"].tolist() == [0] and empty["lyric_mask"].tolist() == [1]


def test_bad_files_are_listed(full_run: Path) -> None:
    errors = [
        json.loads(line) for line in (full_run / "errors.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    reasons = {Path(e["filename"]).name: e["reason"] for e in errors}
    assert sorted(reasons) == sorted(BAD)
    assert "silent" in reasons["g_silent.wav"].lower()
    assert reasons["h_swedish.wav"].startswith("lyrics:")
    manifest = json.loads((full_run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["songs"] == len(SONGS) and manifest["errors"] == len(BAD)


def test_killed_run_resumes_to_the_same_dataset(
    filenames: Path, full_run: Path, encoders, tmp_path: Path
) -> None:
    prep = tmp_path / "prep"
    killer = KillAfter(encoders.dcae, 2)
    encoders_killed = type(encoders)(**{**vars(encoders), "dcae": killer})
    with pytest.raises(SimulatedKill):
        run(filenames, prep, encoders_killed, chunk_rows=1)
    counter = KillAfter(encoders.dcae, 10**6)
    run(filenames, prep, type(encoders)(**{**vars(encoders), "dcae": counter}), chunk_rows=1)
    assert counter.calls == len(SONGS) - 2
    resumed, full = load_preprocessed(prep), load_preprocessed(full_run)
    assert resumed.column_names == full.column_names and len(resumed) == len(full)
    for a, b in zip(resumed, full):
        for column in full.column_names:
            if isinstance(a[column], torch.Tensor):
                assert torch.equal(a[column], b[column]), column
            else:
                assert a[column] == b[column], column
