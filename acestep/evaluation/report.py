"""The evaluation's outputs: eval.json (everything), eval.csv (one row per step and score), eval.png (scores against
the step beside the training and validation loss) and the printed table with the best step and why."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from acestep.core.atomic import atomic_write_json, atomic_write_text, atomic_write_with

from .best import RULE, Verdict
from .scores import SCORE_NAMES, StepScores

JSON_FILE, CSV_FILE, PNG_FILE = "eval.json", "eval.csv", "eval.png"
TABLE_COLUMNS = (("style_fd_clap", "style CLAP"), ("style_fd_mert", "style MERT"), ("style_cos_clap", "centre cos"),
                 ("prompt_clap", "prompt"), ("change_wave", "change"), ("copy_similarity", "nearest song"),
                 ("wer", "lyrics WER"))


def step_label(step: int) -> str:
    return "base" if step == 0 else str(step)


def write_reports(eval_dir: Path, steps: dict[int, StepScores], verdict: Verdict | None,
                  settings: dict[str, Any]) -> None:
    """eval.json and eval.csv, atomically (rewritten after every scored step, so a failure loses nothing)."""
    ordered = [steps[k] for k in sorted(steps)]
    atomic_write_json(eval_dir / JSON_FILE, {
        "settings": settings,
        "score_names": SCORE_NAMES,
        "steps": [{"step": s.step, "does_nothing": s.does_nothing, "barely_changes": s.faint, "scores": s.values,
                   "nearest_songs": [asdict(c) for c in s.nearest], "copies": [asdict(c) for c in s.copies]}
                  for s in ordered],
        "best": None if verdict is None else {"step": verdict.step, "why": verdict.why, "rule": RULE,
                                              "excluded": {str(k): v for k, v in verdict.excluded.items()},
                                              "relative_style": {str(k): v for k, v in verdict.style.items()}},
    })
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "score", "value", "meaning"])
    for s in ordered:
        for key, value in s.values.items():
            writer.writerow([s.step, key, f"{value:.6g}", SCORE_NAMES[key]])
        writer.writerow([s.step, "does_nothing", int(s.does_nothing), "1 = the renders equal the base model's"])
        writer.writerow([s.step, "copies", len(s.copies), "renders flagged as a near-copy of a training song"])
    atomic_write_text(eval_dir / CSV_FILE, buffer.getvalue())


def table(steps: dict[int, StepScores], verdict: Verdict | None) -> str:
    """One row per step, the columns of TABLE_COLUMNS that were scored, and a note per step."""
    columns = [(k, name) for k, name in TABLE_COLUMNS if any(k in s.values for s in steps.values())]
    header = ["step", *[name for _, name in columns], "note"]
    rows = []
    for step in sorted(steps):
        s = steps[step]
        note = ("does nothing" if s.does_nothing else
                "; ".join(f"near-copy of {c.song}" for c in s.copies) or
                (verdict.excluded.get(step, "") if verdict else "") or
                ("barely changes the sound (under -40 dB)" if s.faint else ""))
        if verdict and step == verdict.step:
            note = "BEST" + (f" ({note})" if note else "")
        rows.append([step_label(step), *[f"{s.values[k]:.4g}" if k in s.values else "-" for k, _ in columns], note])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    if verdict is not None:
        lines.append(f"Best step: {step_label(verdict.step)} - {verdict.why}.")
        lines.append(f"Rule: {RULE}.")
    return "\n".join(lines)


def write_plot(eval_dir: Path, steps: dict[int, StepScores], metrics: list[dict[str, float]],
               best: int | None) -> Path:
    """Score panels against the step (base at 0) and the run's loss / validation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(steps)
    keys = [k for k in ("style_fd_clap", "style_fd_mert", "style_cos_clap", "style_cos_mert", "prompt_clap",
                        "change_wave", "change_clap", "copy_similarity", "wer") if any(k in steps[s].values for s in order)]
    rows = (len(keys) + 2) // 2
    figure, grid = plt.subplots(rows, 2, figsize=(11, 2.4 * rows), sharex=True, squeeze=False)
    axes = list(grid.flat)
    for axis, key in zip(axes, keys):
        xs = [s for s in order if key in steps[s].values]
        axis.plot(xs, [steps[s].values[key] for s in xs], marker="o")
        axis.set_title(SCORE_NAMES[key], fontsize=8)
        if best is not None:
            axis.axvline(best, color="green", linestyle=":", alpha=0.7)
    loss_axis = axes[len(keys)]
    for axis in axes[len(keys) + 1:]:
        axis.set_visible(False)
    for key, label in (("loss", "training loss"), ("val_loss", "validation loss")):
        rows_with = [r for r in metrics if key in r]
        if rows_with:
            loss_axis.plot([r["step"] for r in rows_with], [r[key] for r in rows_with], label=label, alpha=0.8)
    if best is not None:
        loss_axis.axvline(best, color="green", linestyle=":", alpha=0.7, label=f"best step {step_label(best)}")
    loss_axis.set_title("loss (metrics.jsonl)", fontsize=8)
    loss_axis.set_xlabel("training step (0 = base model)")
    loss_axis.legend(fontsize=7)
    figure.tight_layout()
    path = eval_dir / PNG_FILE
    atomic_write_with(path, lambda temp: figure.savefig(temp, dpi=90, format="png"))
    plt.close(figure)
    return path


def read_best_step(eval_dir: Path) -> int | None:
    """The best step recorded in eval.json (kept from pruning), None when there is none."""
    try:
        best = json.loads((Path(eval_dir) / JSON_FILE).read_text(encoding="utf-8-sig")).get("best")
    except (OSError, ValueError):
        return None
    return int(best["step"]) if isinstance(best, dict) and best.get("step") else None
