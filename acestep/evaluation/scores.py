"""Per-step scores from cached embeddings (cheap: every run recomputes them from the cache).

Embedding arrays of a step (one row per render, prompts in a fixed order): `clap` [n, d] unit vectors, `mert`
[n, h] mean features (optional), `text_sim` [n] CLAP cosine of each render to its own prompt, `change_wave` [n]
relative waveform difference from the base model's render at the same prompt and seed, `wer` [n] (optional).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .frechet import embedding_distance

NOTHING_CHANGE = 1e-5  # below this relative waveform change at every seed a step "does nothing" (numerically the base)
FAINT_CHANGE = 1e-2  # below this (-40 dB) the change is hardly audible: said in the table, not excluded
COPY_SIMILARITY = 0.95  # a render this close to one training song (both spaces) is flagged as a near-copy

# score key -> plain words (the csv, the table and the plot use these)
SCORE_NAMES = {
    "style_fd_clap": "style distance to your songs, CLAP (Fréchet; lower = closer)",
    "style_fd_mert": "style distance to your songs, MERT (Fréchet; lower = closer)",
    "style_cos_clap": "similarity to your songs' centre, CLAP (cosine; higher = closer)",
    "style_cos_mert": "similarity to your songs' centre, MERT (cosine; higher = closer)",
    "prompt_clap": "prompt adherence, CLAP text-audio (cosine; higher = follows the prompt)",
    "prompt_vs_base": "prompt adherence minus the base model's",
    "change_wave": "change from the base model, waveform (relative; 0 = identical)",
    "change_clap": "change from the base model, CLAP (1 - cosine at the same seed)",
    "copy_similarity": "nearest training song, similarity of the closest render (1 = a copy)",
    "wer": "lyrics word error rate (lower = words understood)",
    "wer_vs_base": "lyrics word error rate minus the base model's",
}


@dataclass
class Copy:
    render: str
    song: str
    similarity: float


@dataclass
class StepScores:
    step: int
    values: dict[str, float]
    nearest: list[Copy]  # each render's nearest training song
    copies: list[Copy] = field(default_factory=list)  # those at or above the copy threshold
    does_nothing: bool = False
    faint: bool = False  # changes the renders, but by less than FAINT_CHANGE


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def centroid_similarity(renders: np.ndarray, songs: np.ndarray) -> float:
    """Mean cosine of each render to the songs' centre (steadier than a Fréchet distance with few songs)."""
    return float((_unit(renders) @ _unit(songs.mean(0))).mean())


def copy_similarity(renders: np.ndarray, songs: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """[renders, songs] cosine after removing what every sound shares (`centre`: the mean of the songs and the base
    renders), so that only a real likeness to one song scores near 1."""
    return _unit(renders - centre) @ _unit(songs - centre).T


def score_step(step: int, emb: dict[str, np.ndarray], base: dict[str, np.ndarray], songs: dict[str, np.ndarray],
               render_names: list[str], song_names: list[str], copy_threshold: float = COPY_SIMILARITY,
               train: dict[str, np.ndarray] | None = None) -> StepScores:
    """Every score of one step (step 0 is the base model: its change is 0 by definition). Style is measured against
    all `songs`; memorization against the `train` songs (default: all), named by `song_names`."""
    train = songs if train is None else train
    values: dict[str, float] = {}
    spaces = [space for space in ("clap", "mert") if space in emb and space in songs]
    for space in spaces:
        values[f"style_fd_{space}"] = embedding_distance(emb[space], songs[space])
        values[f"style_cos_{space}"] = centroid_similarity(emb[space], songs[space])
    values["prompt_clap"] = float(np.mean(emb["text_sim"]))
    values["prompt_vs_base"] = values["prompt_clap"] - float(np.mean(base["text_sim"]))
    values["change_wave"] = float(np.mean(emb["change_wave"]))
    values["change_clap"] = float(np.mean(np.maximum(0.0, 1 - np.sum(_unit(emb["clap"]) * _unit(base["clap"]), axis=1))))
    similarity = np.min([copy_similarity(emb[s], train[s], np.concatenate([train[s], base[s]]).mean(0))
                         for s in spaces], axis=0)
    nearest = [Copy(render, song_names[int(j)], float(similarity[i, j]))
               for i, (render, j) in enumerate(zip(render_names, similarity.argmax(1)))]
    values["copy_similarity"] = max(c.similarity for c in nearest)
    if "wer" in emb and "wer" in base:
        values["wer"] = float(np.mean(emb["wer"]))
        values["wer_vs_base"] = values["wer"] - float(np.mean(base["wer"]))
    does_nothing = step > 0 and bool(np.all(emb["change_wave"] < NOTHING_CHANGE))
    faint = step > 0 and not does_nothing and bool(np.all(emb["change_wave"] < FAINT_CHANGE))
    copies = [c for c in nearest if c.similarity >= copy_threshold]
    return StepScores(step, values, nearest, copies, does_nothing, faint)


def relative_change(a: np.ndarray, b: np.ndarray) -> float:
    """|a - b| / |b| over the common length (a render against the base model's at the same seed)."""
    n = min(a.shape[-1], b.shape[-1])
    a, b = np.asarray(a[..., :n], np.float64), np.asarray(b[..., :n], np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
