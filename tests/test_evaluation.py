"""The evaluation (acestep.evaluation): Fréchet distance, scores, cache and resume, best step, one-line failures.

Rendering is replaced by a small synthetic renderer whose "LoRA" is a safetensors file (its tensor's norm is how far
the renders move), so these tests need no diffusion model; the listening models are the tiny random CLAP and MERT
written to disk and loaded through their real from_pretrained. The family renderer itself is covered in
test_evaluation_end_to_end.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import scipy.linalg
import soundfile as sf
import torch
from safetensors.numpy import load_file, save_file

from acestep.evaluation.best import pick_best
from acestep.evaluation.cli import main as evaluate_main
from acestep.evaluation.embedders import ClapEmbedder, ModelLoadError, singable_lyrics, word_error_rate
from acestep.evaluation.frechet import embedding_distance, frechet_distance, gaussian
from acestep.evaluation.scores import StepScores, score_step
from acestep.evaluation.tiny import write_tiny_eval_models

RATE = 48000
SECONDS = 1.0


# --- Fréchet distance -------------------------------------------------------------------------------------------

def test_identical_sets_have_distance_zero() -> None:
    x = np.random.default_rng(0).standard_normal((12, 6))
    assert embedding_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-9)


def test_frechet_matches_the_closed_form_for_diagonal_gaussians() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)  # = 7.25 + (4 + 1 + 0)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(12.25)


def test_frechet_matches_scipy_sqrtm_on_full_covariances() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((40, 5)), rng.standard_normal((40, 5)) @ rng.standard_normal((5, 5)) + 2
    mu1, cov1 = np.mean(a, 0), np.cov(a, rowvar=False)
    mu2, cov2 = np.mean(b, 0), np.cov(b, rowvar=False)
    independent = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2) - 2 * np.trace(scipy.linalg.sqrtm(cov1 @ cov2).real)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(independent, rel=1e-8)
    assert gaussian(a)[1] == pytest.approx(cov1)


def test_distance_grows_as_the_renders_move_away_step_by_step() -> None:
    rng = np.random.default_rng(2)
    songs = rng.standard_normal((8, 16))
    direction = rng.standard_normal(16)
    distances = [embedding_distance(songs + 0.3 * k * direction + 0.01 * rng.standard_normal((8, 16)), songs)
                 for k in range(6)]
    assert all(later > earlier for earlier, later in zip(distances, distances[1:])), distances


def test_word_error_rate_counts_substitutions_insertions_deletions() -> None:
    assert word_error_rate("the cat sat", "The cat sit on!") == pytest.approx(2 / 3)
    assert word_error_rate("a b c d", "a c d") == pytest.approx(1 / 4)
    assert word_error_rate("", "") == 0.0
    assert singable_lyrics("[verse]\nsun is high\n\n[chorus]\noh oh") == "sun is high oh oh"


# --- the listening models ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tiny_eval_models(tmp_path_factory.mktemp("eval_models"))


def test_tiny_models_are_byte_identical_for_a_seed(models: tuple[Path, Path], tmp_path: Path) -> None:
    clap, mert = write_tiny_eval_models(tmp_path)
    for first, second in ((models[0], clap), (models[1], mert), (models[0].parent / "whisper", tmp_path / "whisper")):
        names = sorted(p.name for p in first.iterdir())
        assert names == sorted(p.name for p in second.iterdir()) and "model.safetensors" in names
        for name in names:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_clap_embeds_audio_and_text_as_unit_vectors(models: tuple[Path, Path]) -> None:
    clap = ClapEmbedder.from_pretrained(models[0])
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(12.5 * 44100)) / 44100)
    audio = clap.audio(np.stack([tone, tone]), 44100)  # 12.5 s at 44.1 kHz: two 10 s windows after resampling
    text = clap.text(["pop, piano", "dark metal"])
    assert audio.shape == (16,) and text.shape == (2, 16)
    assert np.linalg.norm(audio) == pytest.approx(1.0, abs=1e-5)
    assert np.linalg.norm(text, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_a_missing_model_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"CLAP model .*missing: cannot load .*pass --clap"):
        ClapEmbedder.from_pretrained(tmp_path / "missing")


# --- scores and the best step -----------------------------------------------------------------------------------

def _arrays(clap: np.ndarray, text_sim: float, change: float) -> dict[str, np.ndarray]:
    return {"clap": clap, "text_sim": np.full(len(clap), text_sim), "change_wave": np.full(len(clap), change)}


def test_best_step_is_the_closest_style_that_keeps_the_prompt() -> None:
    rng = np.random.default_rng(3)
    songs = {"clap": rng.standard_normal((6, 8)) + 3}
    base = _arrays(rng.standard_normal((6, 8)), 0.5, 0.0)
    near = _arrays(songs["clap"] + 0.5 * rng.standard_normal((6, 8)), 0.5, 0.4)
    nearer_but_deaf = _arrays(songs["clap"] + 0.1 * rng.standard_normal((6, 8)), 0.3, 0.5)
    names, song_names = [f"r{i}" for i in range(6)], [f"s{i}" for i in range(6)]
    steps = {step: score_step(step, arrays, base, songs, names, song_names, copy_threshold=1.01)
             for step, arrays in ((0, base), (100, near), (200, nearer_but_deaf), (300, base))}
    verdict = pick_best(steps)
    assert verdict.step == 100, verdict
    assert "prompt adherence fell 0.200" in verdict.excluded[200]
    assert verdict.excluded[300].startswith("does nothing")
    assert verdict.style[200] < verdict.style[100] < 1.0


# --- the CLI on a run folder, with a synthetic renderer -----------------------------------------------------------

def _song(seed: int, seconds: float = SECONDS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    mono = 0.3 * np.sin(2 * np.pi * (110 + 60 * seed) * t) * np.exp(-3 * (t % 0.5)) + 0.02 * rng.standard_normal(len(t))
    return np.stack([mono, mono]).astype(np.float32)


def _write_lora(folder: Path, step: int, strength: float, copy_song: str = "") -> None:
    """A step folder as the trainer lays it out; the synthetic renderer reads `strength` (and a song to copy)."""
    (folder / "adapter").mkdir(parents=True)
    save_file({"w": np.array([strength], np.float32)}, str(folder / "adapter" / "adapter_model.safetensors"))
    save_file({"w": np.array([strength], np.float32)}, str(folder / f"run-step{step}-comfyui.safetensors"),
              {"copy": copy_song})


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    songs = tmp_path / "songs"
    songs.mkdir()
    rows = []
    for i in range(3):
        sf.write(songs / f"song{i}.wav", _song(i).T, RATE, subtype="FLOAT")
        (songs / f"song{i}_lyrics.txt").write_text("[verse]\nla la\n" if i else "[instrumental]\n", encoding="utf-8")
        rows.append({"keys": f"song{i}", "filename": str(songs / f"song{i}.wav"), "prompt": f"pop, tone {i}"})
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "prep"))
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (run / "train_config.json").write_text(json.dumps({"dataset_path": str(tmp_path / "prep"), "val_songs": 1,
                                                       "checkpoint_dir": None}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in range(1, 31)))
    _write_lora(run / "step-000010", 10, 0.0)  # an all-zero LoRA
    _write_lora(run / "step-000020", 20, 0.5)
    return run


class SyntheticRenderer:
    """The song of seed `seed` (a tone), moved by the LoRA's strength towards noise; a LoRA may name a song to copy."""

    def __init__(self, songs_dir: Path, fail_at: float | None = None) -> None:
        self.songs_dir, self.fail_at = songs_dir, fail_at
        self.strength, self.copy, self.calls = 0.0, "", []

    def open(self, args: object, device: str, dtype: str) -> tuple:
        return self.render, self.use_lora

    def use_lora(self, path: Path | None) -> None:
        from safetensors import safe_open

        self.strength, self.copy = 0.0, ""
        if path is not None:
            self.strength = float(load_file(str(path))["w"][0])
            with safe_open(str(path), framework="np") as handle:
                self.copy = (handle.metadata() or {}).get("copy", "")

    def render(self, prompt: str, lyrics: str, duration: float, seed: int) -> tuple[torch.Tensor, int]:
        self.calls.append((self.strength, prompt, seed))
        if self.fail_at is not None and self.strength == self.fail_at:
            raise RuntimeError("CUDA out of memory")
        if self.copy:
            wav, rate = sf.read(self.songs_dir / f"{self.copy}.wav", dtype="float32", always_2d=True)
            return torch.from_numpy(wav.T.copy()), rate
        noise = np.random.default_rng(seed + 100).standard_normal((2, int(duration * RATE))).astype(np.float32)
        wav = _song(seed + 7, duration) + self.strength * 0.3 * noise
        return torch.from_numpy(wav), RATE


def _argv(run: Path, models: tuple[Path, Path], *extra: str) -> list[str]:
    return ["--run", str(run), "--clap", str(models[0]), "--mert", str(models[1]), "--seconds", str(SECONDS),
            "--seeds", "2", "--device", "cpu", *extra]


def test_scores_every_step_writes_the_outputs_and_names_the_best(run_dir: Path, models: tuple[Path, Path],
                                                                   capsys: pytest.CaptureFixture) -> None:
    renderer = SyntheticRenderer(run_dir.parents[1] / "songs")
    result = evaluate_main(_argv(run_dir, models), renderer.open)
    assert sorted(result.steps) == [0, 10, 20] and result.rendered == 6  # 1 held-out prompt x 2 seeds x 3 steps
    assert result.steps[10].does_nothing and not result.steps[20].does_nothing
    assert result.steps[10].values["change_wave"] == 0.0 and result.steps[20].values["change_wave"] > 0.1
    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert [s["step"] for s in report["steps"]] == [0, 10, 20]
    assert report["best"]["step"] in (0, 20) and report["best"]["excluded"]["10"].startswith("does nothing")
    rows = (run_dir / "eval" / "eval.csv").read_text().splitlines()
    assert rows[0] == "step,score,value,meaning" and any(r.startswith("20,style_fd_mert,") for r in rows)
    assert (run_dir / "eval" / "eval.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "Evaluation: 6 renders of 1 s" in printed and "does nothing" in printed and "Best step:" in printed
    prompts = {call[1] for call in renderer.calls}
    assert prompts == {"pop, tone 2"}  # the held-out song's caption (--val_songs 1)


def test_a_render_that_is_a_training_song_is_flagged_with_its_name(run_dir: Path, models: tuple[Path, Path]) -> None:
    _write_lora(run_dir / "step-000030", 30, 0.1, copy_song="song1")
    result = evaluate_main(_argv(run_dir, models), SyntheticRenderer(run_dir.parents[1] / "songs").open)
    copies = result.steps[30].copies
    assert copies and {c.song for c in copies} == {"song1"} and copies[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert not result.steps[20].copies
    assert result.verdict.step != 30 and "near-copy of song1" in result.verdict.excluded[30]


def test_a_rerun_scores_only_the_new_steps(run_dir: Path, models: tuple[Path, Path]) -> None:
    renderer = SyntheticRenderer(run_dir.parents[1] / "songs")
    first = evaluate_main(_argv(run_dir, models), renderer.open)
    assert first.embedded_steps == [0, 10, 20]
    _write_lora(run_dir / "step-000030", 30, 1.0)
    again = SyntheticRenderer(run_dir.parents[1] / "songs")
    second = evaluate_main(_argv(run_dir, models), again.open)
    assert second.embedded_steps == [30] and second.rendered == 2
    assert {call[0] for call in again.calls} == {1.0}
    assert second.steps[20].values == pytest.approx(first.steps[20].values)


def test_a_failed_render_is_one_line_and_keeps_the_earlier_scores(run_dir: Path, models: tuple[Path, Path],
                                                                  capsys: pytest.CaptureFixture) -> None:
    renderer = SyntheticRenderer(run_dir.parents[1] / "songs", fail_at=0.5)
    with pytest.raises(SystemExit) as stopped:
        evaluate_main(_argv(run_dir, models), renderer.open)
    message = str(stopped.value.code)
    assert message.startswith("error: step 20, prompt song2 seed 0: the render failed (RuntimeError: CUDA out of "
                              "memory)") and "\n" not in message
    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert [s["step"] for s in report["steps"]] == [0, 10]
    # the next run renders only what is missing
    fixed = SyntheticRenderer(run_dir.parents[1] / "songs")
    result = evaluate_main(_argv(run_dir, models), fixed.open)
    assert result.embedded_steps == [20] and {call[0] for call in fixed.calls} == {0.5}


def test_a_missing_listening_model_stops_before_any_render(run_dir: Path, models: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    renderer = SyntheticRenderer(run_dir.parents[1] / "songs")
    argv = _argv(run_dir, models)
    argv[argv.index("--mert") + 1] = str(tmp_path / "no-mert")
    with pytest.raises(SystemExit) as stopped:
        evaluate_main(argv, renderer.open)
    assert str(stopped.value.code).startswith("error: MERT model ") and "--mert" in str(stopped.value.code)
    assert renderer.calls == []


def test_unknown_steps_and_empty_runs_are_one_line(run_dir: Path, models: tuple[Path, Path], tmp_path: Path) -> None:
    renderer = SyntheticRenderer(run_dir.parents[1] / "songs")
    with pytest.raises(SystemExit, match="error: --steps: no saved step 15 .*saved: 10, 20"):
        evaluate_main(_argv(run_dir, models, "--steps", "15"), renderer.open)
    with pytest.raises(SystemExit, match="no readable train_config.json"):
        evaluate_main(_argv(tmp_path, models), renderer.open)


def test_step_scores_need_no_model_for_identical_sets() -> None:
    x = np.random.default_rng(4).standard_normal((4, 8))
    arrays = _arrays(x, 0.4, 0.0)
    scores: StepScores = score_step(0, arrays, arrays, {"clap": x}, list("abcd"), list("wxyz"))
    assert scores.values["style_fd_clap"] == pytest.approx(0.0, abs=1e-9)
    assert [c.song for c in scores.nearest] == list("wxyz") and scores.values["copy_similarity"] == pytest.approx(1.0)


def test_lyrics_word_error_rate_keeps_an_unintelligible_step_from_best(run_dir: Path,
                                                                        models: tuple[Path, Path]) -> None:
    from acestep.evaluation.cli import build_parser, evaluate, load_listeners

    renderer = SyntheticRenderer(run_dir.parents[1] / "songs")
    args = build_parser().parse_args(_argv(run_dir, models))
    listeners = load_listeners(args, "cpu")
    heard = []

    def transcribe(mono: np.ndarray, rate: int) -> str:  # words while the render is close to the base, else mumble
        heard.append(len(mono) / rate)
        return "la la" if renderer.strength < 0.5 else "ba"

    listeners.transcribe, listeners.transcriber_name = transcribe, "fake"
    result = evaluate(args, renderer.open, listeners)
    assert heard == [SECONDS] * 6
    assert result.steps[0].values["wer"] == 0.0 and result.steps[20].values["wer"] == pytest.approx(1.0)
    assert result.steps[20].values["wer_vs_base"] == pytest.approx(1.0)
    assert "lyrics word error rate rose 100%" in result.verdict.excluded[20] and result.verdict.step == 0


def test_whisper_transcribes_through_from_pretrained_and_scores_lyrics(run_dir: Path, models: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    whisper = models[0].parent / "whisper"
    result = evaluate_main(_argv(run_dir, models, "--whisper", str(whisper)),
                           SyntheticRenderer(run_dir.parents[1] / "songs").open)
    for step in (0, 10, 20):  # random weights: some error rate, the same pipeline as a real whisper
        assert np.isfinite(result.steps[step].values["wer"]) and result.steps[step].values["wer"] >= 0
    assert result.steps[10].values["wer_vs_base"] == 0.0  # the same audio gives the same transcription
    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert report["settings"]["whisper"] == str(whisper)
    with pytest.raises(SystemExit, match="error: whisper model .*: cannot load .*--whisper"):
        evaluate_main(_argv(run_dir, models, "--whisper", str(tmp_path / "none")),
                      SyntheticRenderer(run_dir.parents[1] / "songs").open)
