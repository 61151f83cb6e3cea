"""The evaluation loop: render what is missing, embed what is new, score every step, write the reports after each
step (so a failure keeps the steps before it). Rendering comes in as callables, so this stays family-free."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acestep.core.errors import AcestepError

from .best import PROMPT_MARGIN, WER_MARGIN, Verdict, pick_best
from .cache import EmbeddingCache, EvalPrompt, RenderCache, file_hash, fingerprint
from .embedders import ClapEmbedder, MertEmbedder, singable_lyrics, to_mono, word_error_rate
from .report import JSON_FILE, table, write_plot, write_reports
from .scores import COPY_SIMILARITY, StepScores, relative_change, score_step

Render = Callable[[str, str, float, int], tuple[Any, int]]  # (prompt, lyrics, seconds, seed) -> (wav, rate)
UseLora = Callable[[Path | None], None]
Transcribe = Callable[[np.ndarray, int], str]


@dataclass
class Listeners:
    """The listening models; `transcribe` (mono wav, rate) -> text is optional (lyrics WER)."""

    clap: ClapEmbedder
    mert: MertEmbedder | None = None
    transcribe: Transcribe | None = None
    transcriber_name: str | None = None


@dataclass
class EvalPlan:
    eval_dir: Path
    prompts: list[EvalPrompt]
    songs: list[tuple[str, Path]]  # (name, audio file) of the songs the style is measured against
    train_songs: list[str]  # names among `songs` that were trained on (memorization)
    steps: list[tuple[int, Path | None]]  # (step, LoRA file); step 0 = the base model, None
    sampler_steps: int | None = None
    copy_threshold: float = COPY_SIMILARITY
    prompt_margin: float = PROMPT_MARGIN
    wer_margin: float = WER_MARGIN
    metrics: list[dict[str, float]] = field(default_factory=list)  # the run's metrics.jsonl rows (plot)
    settings: dict[str, Any] = field(default_factory=dict)  # recorded in eval.json


@dataclass
class EvalResult:
    steps: dict[int, StepScores]
    verdict: Verdict
    rendered: int  # renders made by this run (the rest came from the cache)
    embedded_steps: list[int]  # steps whose embeddings this run computed
    table: str
    plot: Path


def _read_song(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as error:
        raise AcestepError(f"{path}: cannot read the song ({error})") from error
    return data.T, int(rate)


class Evaluator:
    def __init__(self, plan: EvalPlan, listeners: Listeners, open_renderer: Callable[[], tuple[Render, UseLora]],
                 log: Callable[[str], None] = print) -> None:
        self.plan, self.listeners, self.open_renderer, self.log = plan, listeners, open_renderer, log
        self.renders = RenderCache(plan.eval_dir)
        self.embeddings = EmbeddingCache(plan.eval_dir)
        self._renderer: tuple[Render, UseLora] | None = None
        self._lora_on: object = ()
        self.rendered = 0
        self.render_seconds = 0.0

    def models_stamp(self) -> dict[str, Any]:
        mert = self.listeners.mert.name if self.listeners.mert else None
        return {"clap": self.listeners.clap.name, "mert": mert, "whisper": self.listeners.transcriber_name}

    def song_embeddings(self) -> dict[str, np.ndarray]:
        stamp = fingerprint([[name, str(p), p.stat().st_size, p.stat().st_mtime_ns] for name, p in self.plan.songs]
                            + [self.models_stamp()])
        cached = self.embeddings.get("songs", stamp)
        if cached is not None:
            return cached
        arrays = self._embed_audio([_read_song(path) for _, path in self.plan.songs])
        self.embeddings.put("songs", stamp, arrays)
        return arrays

    def _embed_audio(self, wavs: list[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
        arrays = {"clap": np.stack([self.listeners.clap.audio(w, r) for w, r in wavs])}
        if self.listeners.mert is not None:
            arrays["mert"] = np.stack([self.listeners.mert.audio(w, r) for w, r in wavs])
        return arrays

    def _render(self, step: int, lora: Path | None, prompt: EvalPrompt, settings: dict) -> tuple[np.ndarray, int]:
        cached = self.renders.get(step, prompt, settings)
        if cached is not None:
            return cached
        if self._renderer is None:
            self._renderer = self.open_renderer()
        render, use_lora = self._renderer
        if self._lora_on != lora:
            use_lora(lora)
            self._lora_on = lora
        started = time.perf_counter()
        try:
            wav, rate = render(prompt.prompt, prompt.lyrics, prompt.duration, prompt.seed)
        except AcestepError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of the model is one line, the scores so far stay
            raise AcestepError(f"step {step}, prompt {prompt.name} seed {prompt.seed}: the render failed "
                               f"({type(error).__name__}: {error}); the scores of earlier steps are kept in "
                               f"{self.plan.eval_dir / JSON_FILE}") from error
        wav = np.asarray(wav.float().cpu().numpy() if hasattr(wav, "cpu") else wav, dtype=np.float32)
        self.render_seconds += time.perf_counter() - started
        self.rendered += 1
        self.renders.put(step, prompt, settings, wav, rate)
        return wav, rate

    def step_embeddings(self, step: int, lora: Path | None,
                        text: np.ndarray) -> tuple[dict[str, np.ndarray] | None, bool]:
        """(arrays, computed now) of one step; cached arrays are used when renders and models are unchanged. A step
        whose LoRA is gone (pruned during training) keeps the scores it was given."""
        if lora is not None and not lora.exists():
            return self.embeddings.get(f"step-{step:06d}", None), False
        lora_hash = file_hash(lora)
        settings = [self.renders.settings(p, self.plan.sampler_steps, lora_hash) for p in self.plan.prompts]
        base_settings = [self.renders.settings(p, self.plan.sampler_steps, None) for p in self.plan.prompts]
        stamp = fingerprint([settings, base_settings, self.models_stamp()])
        cached = self.embeddings.get(f"step-{step:06d}", stamp)
        if cached is not None:
            return cached, False
        wavs = [self._render(step, lora, p, s) for p, s in zip(self.plan.prompts, settings)]
        arrays = self._embed_audio(wavs)
        arrays["text_sim"] = np.sum(arrays["clap"] * text, axis=1)
        changes = []
        for (wav, _), prompt, base in zip(wavs, self.plan.prompts, base_settings):
            base_wav = self.renders.get(0, prompt, base) if step else (wav, 0)
            changes.append(relative_change(wav, base_wav[0]) if base_wav is not None else np.nan)
        arrays["change_wave"] = np.asarray(changes)
        if self.listeners.transcribe is not None:
            arrays["wer"] = np.asarray([
                word_error_rate(words, self.listeners.transcribe(to_mono(w), r)) if (words := singable_lyrics(
                    p.lyrics)) and "instrumental" not in words.lower() else np.nan
                for (w, r), p in zip(wavs, self.plan.prompts)])
        self.embeddings.put(f"step-{step:06d}", stamp, arrays)
        return arrays, True

    def missing_renders(self) -> int:
        """Renders this run has to make (the cost printed before it starts)."""
        total = 0
        for step, lora in self.plan.steps:
            if lora is not None and not lora.exists():
                continue
            lora_hash = file_hash(lora)
            total += sum(not self.renders.has(step, p, self.renders.settings(p, self.plan.sampler_steps, lora_hash))
                         for p in self.plan.prompts)
        return total

    def run(self) -> EvalResult:
        plan = self.plan
        plan.eval_dir.mkdir(parents=True, exist_ok=True)
        songs = self.song_embeddings()
        train = [i for i, (name, _) in enumerate(plan.songs) if name in set(plan.train_songs)] or list(
            range(len(plan.songs)))
        train_songs = {k: v[train] for k, v in songs.items()}
        song_names = [plan.songs[i][0] for i in train]
        text = self.listeners.clap.text([p.prompt for p in plan.prompts])
        render_names = [f"{p.name}-seed{p.seed}" for p in plan.prompts]
        scores: dict[int, StepScores] = {}
        embedded: list[int] = []
        base: dict[str, np.ndarray] | None = None
        verdict = None
        for step, lora in plan.steps:
            before = self.rendered
            arrays, computed = self.step_embeddings(step, lora, text)
            if arrays is None:
                continue
            self.log(f"step {step or 'base'}: " + (f"scored ({self.rendered - before} new renders)" if computed
                                                    else "scores from the cache"))
            if computed:
                embedded.append(step)
            base = arrays if step == 0 else base
            arrays = _clean_wer(arrays)
            scores[step] = score_step(step, arrays, _clean_wer(base), songs, render_names, song_names,
                                      plan.copy_threshold, train_songs)
            verdict = pick_best(scores, plan.prompt_margin, plan.wer_margin)
            write_reports(plan.eval_dir, scores, verdict, plan.settings)
        assert verdict is not None
        plot = write_plot(plan.eval_dir, scores, plan.metrics, verdict.step)
        return EvalResult(scores, verdict, self.rendered, embedded, table(scores, verdict), plot)


def _clean_wer(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Instrumental prompts have no WER: the mean runs over the others; no lyrics at all drops the score."""
    if "wer" not in arrays:
        return arrays
    wer = arrays["wer"][np.isfinite(arrays["wer"])]
    rest = {k: v for k, v in arrays.items() if k != "wer"}
    return {**rest, "wer": wer} if wer.size else rest
