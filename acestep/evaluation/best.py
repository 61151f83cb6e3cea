"""The best step, by a rule a user can check against the table:

1. Candidates are the saved steps that change the renders (not "does nothing"), flag no near-copy of a training
   song, keep prompt adherence within PROMPT_MARGIN of the base model's (CLAP text-audio cosine), and, when lyrics
   are scored, keep the word error rate within WER_MARGIN of the base model's.
2. Among them the best has the closest style: the lowest style distance relative to the base model's, averaged
   over the embedding spaces (CLAP, MERT).
3. No candidate: the base model is named and every step's reason is given.
"""

from __future__ import annotations

from dataclasses import dataclass

from .scores import StepScores

PROMPT_MARGIN = 0.02
WER_MARGIN = 0.10
RULE = ("closest style (lowest Fréchet distance to your songs relative to the base model, mean of CLAP and MERT) "
        f"among the steps that change the renders, copy no training song, keep prompt adherence within "
        f"{PROMPT_MARGIN} of the base model's and the lyrics word error rate within {WER_MARGIN:.0%} of it")


@dataclass
class Verdict:
    step: int  # 0: the base model (no step qualifies)
    why: str
    excluded: dict[int, str]  # step -> why it cannot be the best
    style: dict[int, float]  # step -> relative style distance (1 = as far as the base model)


def relative_style(scores: StepScores, base: StepScores) -> float:
    ratios = [scores.values[k] / base.values[k] if base.values[k] > 0 else scores.values[k]
              for k in ("style_fd_clap", "style_fd_mert") if k in scores.values and k in base.values]
    return sum(ratios) / len(ratios)


def exclusion(scores: StepScores, prompt_margin: float, wer_margin: float) -> str | None:
    if scores.does_nothing:
        return "does nothing (renders equal the base model's)"
    if scores.copies:
        worst = max(scores.copies, key=lambda c: c.similarity)
        return f"near-copy of {worst.song} (render {worst.render}, similarity {worst.similarity:.3f})"
    if scores.values["prompt_vs_base"] < -prompt_margin:
        return f"prompt adherence fell {-scores.values['prompt_vs_base']:.3f} below the base model's"
    if scores.values.get("wer_vs_base", 0.0) > wer_margin:
        return f"lyrics word error rate rose {scores.values['wer_vs_base']:.0%} above the base model's"
    return None


def pick_best(steps: dict[int, StepScores], prompt_margin: float = PROMPT_MARGIN,
              wer_margin: float = WER_MARGIN) -> Verdict:
    base = steps[0]
    style = {step: relative_style(s, base) for step, s in steps.items()}
    excluded = {step: why for step, s in steps.items() if step > 0 and (why := exclusion(s, prompt_margin, wer_margin))}
    candidates = [step for step in steps if step > 0 and step not in excluded]
    if not candidates:
        return Verdict(0, "no saved step qualifies: " + "; ".join(f"step {k}: {v}" for k, v in excluded.items())
                       if excluded else "no saved step was scored", excluded, style)
    best = min(candidates, key=lambda step: (style[step], step))
    closer = "closer to" if style[best] < 1 else "no closer to"
    why = (f"closest style among {len(candidates)} qualifying step(s): style distance {style[best]:.3f} x the base "
           f"model's ({closer} your songs), prompt adherence {steps[best].values['prompt_vs_base']:+.3f} vs base")
    if "wer_vs_base" in steps[best].values:
        why += f", lyrics word error rate {steps[best].values['wer_vs_base']:+.0%} vs base"
    return Verdict(best, why + ", no near-copy", excluded, style)
