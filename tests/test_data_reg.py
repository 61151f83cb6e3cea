"""`python -m acestep.reg_songs` (work done in acestep.data.reg): regularization songs from a prompt list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

from acestep.core.errors import AcestepError
from acestep.data.reg import read_prompt_list, render_songs
from acestep.reg_songs import main


class FakeRenderer:
    """Stands in for the model: a quiet tone whose pitch follows the seed; fails on request."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[str, str, float, int]] = []
        self.fail_on = fail_on

    def __call__(self, prompt: str, lyrics: str, duration: float, seed: int) -> tuple[torch.Tensor, int]:
        if len(self.calls) == self.fail_on:
            raise KeyboardInterrupt  # as if the user stopped the run mid-song
        self.calls.append((prompt, lyrics, duration, seed))
        t = torch.arange(int(duration * 8000)) / 8000
        return 0.1 * torch.sin(2 * torch.pi * (200 + seed) * t).repeat(2, 1), 8000


def test_prompt_lists_in_text_and_json(tmp_path: Path) -> None:
    text = tmp_path / "prompts.txt"
    text.write_text("ambient, synth\n# a comment\n\n  pop, piano  \n", encoding="utf-8")
    songs = read_prompt_list(text, takes=2, seed=10, duration=12.0)
    assert [(s.name, s.prompt, s.seed, s.lyrics, s.duration) for s in songs] == [
        ("reg0001", "ambient, synth", 10, "", 12.0), ("reg0002", "ambient, synth", 11, "", 12.0),
        ("reg0003", "pop, piano", 12, "", 12.0), ("reg0004", "pop, piano", 13, "", 12.0)]
    listing = tmp_path / "prompts.json"
    listing.write_text(json.dumps(["rock", {"prompt": "folk", "lyrics": "[verse]\nla", "duration": 5, "seed": 99}]))
    songs = read_prompt_list(listing, takes=2, lyrics="[instrumental]")
    assert [(s.prompt, s.lyrics, s.duration, s.seed) for s in songs] == [
        ("rock", "[instrumental]", 30.0, 0), ("rock", "[instrumental]", 30.0, 1),
        ("folk", "[verse]\nla", 5.0, 99), ("folk", "[verse]\nla", 5.0, 100)]


@pytest.mark.parametrize(("content", "message"), [
    (None, "file not found"),
    ("[1, ", "not valid JSON"),
    ('{"prompt": "x"}', "a JSON list of prompts"),
    ('["ok", {"lyrics": "x"}]', "entry 2 has no prompt"),
    ('[{"prompt": "x", "sead": 1}]', "unknown key\\(s\\) sead"),
    ("[]", "no prompts"),
])
def test_a_bad_prompt_list_is_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "prompts.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AcestepError, match=message):
        read_prompt_list(path)


def test_songs_with_sidecars_and_a_resume_that_renders_only_what_is_missing(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ambient, synth\npop, piano\nrock, drums\n")
    songs = read_prompt_list(prompts, duration=0.5, seed=3)
    out = tmp_path / "reg"
    interrupted = FakeRenderer(fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        render_songs(songs, out, interrupted, "ace-step-v1", steps=4)
    assert sorted(p.name for p in out.iterdir()) == [
        "reg0001.json", "reg0001.wav", "reg0001_lyrics.txt", "reg0001_prompt.txt",
        "reg0002.json", "reg0002.wav", "reg0002_lyrics.txt", "reg0002_prompt.txt"]  # nothing half-written
    assert (out / "reg0002_prompt.txt").read_text() == "pop, piano\n"
    assert (out / "reg0002_lyrics.txt").read_text() == "[instrumental]\n"
    audio, rate = sf.read(out / "reg0002.wav")
    assert rate == 8000 and audio.shape == (4000, 2)
    assert json.loads((out / "reg0002.json").read_text()) == {
        "name": "reg0002", "prompt": "pop, piano", "lyrics": "", "duration": 0.5, "seed": 4, "steps": 4,
        "family": "ace-step-v1", "sample_rate": 8000}
    resumed = FakeRenderer()
    summary = render_songs(songs, out, resumed, "ace-step-v1", steps=4)
    assert (summary.rendered, summary.skipped) == (1, 2)
    assert resumed.calls == [("rock, drums", "", 0.5, 5)]
    assert (out / "reg0003.wav").is_file()
    before = (out / "reg0001.wav").stat().st_mtime_ns
    assert render_songs(songs, out, FakeRenderer(), "ace-step-v1", steps=4).rendered == 0
    assert (out / "reg0001.wav").stat().st_mtime_ns == before


def test_a_changed_list_or_a_foreign_wav_is_refused(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ambient, synth\n")
    out = tmp_path / "reg"
    render_songs(read_prompt_list(prompts, duration=0.5), out, FakeRenderer(), "ace-step-v1")
    prompts.write_text("metal, loud\n")
    with pytest.raises(AcestepError, match="reg0001.wav: rendered with another prompt"):
        render_songs(read_prompt_list(prompts, duration=0.5), out, FakeRenderer(), "ace-step-v1")
    (out / "reg0001.json").unlink()
    with pytest.raises(AcestepError, match="exists without its reg0001.json"):
        render_songs(read_prompt_list(prompts, duration=0.5), out, FakeRenderer(), "ace-step-v1")


def test_the_cli_checks_before_loading_a_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ambient, synth\n")
    loads: list[tuple] = []

    def load(*args: object) -> tuple[str, FakeRenderer]:
        loads.append(args)
        return "ace-step-v1", FakeRenderer()

    argv = ["--prompts", str(prompts), "--out_dir", str(tmp_path / "reg"), "--duration", "0.5", "--device", "cpu"]
    main(argv, load_renderer=load)
    assert loads == [(None, None, "cpu", "float32", None)]
    main(argv, load_renderer=load)  # all there: no model is loaded
    assert len(loads) == 1
    assert "0 songs rendered, 1 already there" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="error: --prompts .*missing.txt: file not found"):
        main(["--prompts", str(tmp_path / "missing.txt"), "--out_dir", str(tmp_path / "x")], load_renderer=load)


@pytest.mark.slow
def test_rendered_songs_become_a_reg_dataset_the_trainer_mixes_in(tiny_checkpoint: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented chain on the tiny v1 checkpoint: render, stage 2, stage 3, train with --reg_dataset."""
    from acestep import families
    from acestep.data.filenames import build_filename_dataset
    from acestep.families.preprocess import main as preprocess_main
    from acestep.families.training import main as train_main
    from acestep.families.training import training_parts_for
    from acestep.training.callbacks import read_metrics

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the default LoRA config path is relative
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ambient, synth, calm\npop, piano\n")
    songs = tmp_path / "reg_songs"
    main(["--prompts", str(prompts), "--out_dir", str(songs), "--checkpoint_dir", str(tiny_checkpoint),
          "--duration", "1.5", "--steps", "2", "--device", "cpu"])
    assert sorted(p.name for p in songs.glob("*.wav")) == ["reg0001.wav", "reg0002.wav"]
    assert sf.info(songs / "reg0001.wav").samplerate == 48000
    build_filename_dataset(songs, tmp_path / "names")
    prep = tmp_path / "reg_prep"
    preprocess_main(["--input_name", str(tmp_path / "names"), "--output_dir", str(prep), "--checkpoint_dir",
                     str(tiny_checkpoint), "--no-ssl", "--num_workers", "0"], song_stages=families.song_stages_for_args)
    train_main(["--dataset_path", str(prep), "--reg_dataset", str(prep), "--reg_weight", "0.5", "--checkpoint_dir",
                str(tiny_checkpoint), "--output_dir", str(tmp_path / "runs"), "--exp_name", "reg", "--max_steps", "2",
                "--every_n_train_steps", "2", "--logger", "none", "--no-progress_bar"],
               build_parts=training_parts_for)
    rows = read_metrics(tmp_path / "runs" / "reg" / "metrics.jsonl")
    assert [("loss" in r, "reg_loss" in r) for r in rows] == [(True, False), (False, True)]


@pytest.mark.slow
def test_ace_step_1_5_renders_reg_songs_too(tiny_v15_checkpoint: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "calm, piano", "lyrics": "[verse]\nla la"}]))
    main(["--prompts", str(prompts), "--out_dir", str(tmp_path / "reg"), "--checkpoint_dir",
          str(tiny_v15_checkpoint / "diffusers"), "--duration", "1", "--device", "cpu"])
    params = json.loads((tmp_path / "reg" / "reg0001.json").read_text())
    assert (params["family"], params["sample_rate"], params["lyrics"]) == ("ace-step-1.5", 48000, "[verse]\nla la")
    assert (tmp_path / "reg" / "reg0001_lyrics.txt").read_text() == "[verse]\nla la\n"
    audio, rate = sf.read(tmp_path / "reg" / "reg0001.wav")
    assert rate == 48000 and audio.shape[1] == 2 and audio.shape[0] > 40000
