"""`python -m acestep.evaluate --run RUN_DIR`: render fixed prompts with the base model and every saved step's LoRA,
score them with listening models, and name the best step. The only module here that reaches the model families
(rendering through acestep.families.generation, MERT through the SSL loader of the training data)."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from acestep.core.cli_help import make_parser
from acestep.core.errors import AcestepError, one_line_errors

from .best import PROMPT_MARGIN, WER_MARGIN
from .cache import EvalPrompt
from .embedders import DEFAULT_CLAP, DEFAULT_MERT, ClapEmbedder, MertEmbedder, load_failure
from .runner import EvalPlan, EvalResult, Evaluator, Listeners, Render, UseLora
from .scores import COPY_SIMILARITY

EVAL_DIR = "eval"
CONFIG_FILE, METRICS_FILE = "train_config.json", "metrics.jsonl"
STEP_DIR = re.compile(r"^step-(\d+)$")
# seconds per rendered second of audio, tiny models, 8 sampler steps, a shared 2-core CPU (bench/eval_cost.py):
# 0.4 to 2.4 depending on family and load, about 9 under heavy load
TINY_CPU_SECONDS_PER_AUDIO_SECOND = 2.5


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("Is my LoRA any good? Render fixed prompts with the base model and each saved step, score them "
                    "with listening models (style distance to your songs, prompt adherence, change from the base "
                    "model, near-copies, lyrics), and name the best step. Resumable: renders and scores are cached "
                    "under RUN/eval.", "python -m acestep.evaluate")
    p.add_argument("--run", required=True, help="the training run folder (runs/EXP_NAME)")
    p.add_argument("--checkpoint_dir", default=None, help="the checkpoint the run trained on (default: the run's)")
    p.add_argument("--dit", default=None, help="ACE-Step 1.5 original layout: the DiT folder (default: the run's)")
    p.add_argument("--songs", type=int, default=4, help="prompts taken from your songs (validation songs first)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per render")
    p.add_argument("--seeds", type=int, default=1, help="renders per prompt, seeds --seed, --seed + 1, ...")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--steps", default=None,
                   help="training steps to score, comma-separated (default: every saved step); the base model "
                        "(step 0) is always scored")
    p.add_argument("--prompts", default=None,
                   help="a prompt list instead of your songs' captions: one prompt per line, or a JSON list of "
                        "prompts or {prompt, lyrics, duration, seed} (default: your songs' captions and lyrics)")
    p.add_argument("--sampler_steps", type=int, default=None,
                   help="diffusion steps per render (default: the model's own: 60 for v1, 8 for 1.5 turbo)")
    p.add_argument("--clap", default=DEFAULT_CLAP, help="CLAP model: hub id or local folder")
    p.add_argument("--mert", default=None,
                   help=f"MERT model: hub id, local folder or 'none' (default: the checkpoint's mert/ folder, else "
                        f"{DEFAULT_MERT})")
    p.add_argument("--whisper", default=None,
                   help="speech model for the lyrics word error rate, e.g. openai/whisper-small or a local folder "
                        "(default: none, no lyrics score)")
    p.add_argument("--copy_threshold", type=float, default=COPY_SIMILARITY,
                   help="similarity to one training song from which a render is flagged as a near-copy")
    p.add_argument("--prompt_margin", type=float, default=PROMPT_MARGIN,
                   help="how far prompt adherence may fall below the base model's for the best step")
    p.add_argument("--wer_margin", type=float, default=WER_MARGIN,
                   help="how far the lyrics word error rate may rise above the base model's for the best step")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="diffusion model precision (default: bfloat16 on a GPU, float32 on the CPU)")
    return p


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise AcestepError(f"--run {run_dir}: no such folder")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:
        raise AcestepError(f"--run {run_dir}: no readable {CONFIG_FILE}; is it a training run folder?") from error


def step_lora_file(folder: Path) -> Path:
    """The step folder's LoRA: its ComfyUI file (trained scale baked in, strength 1), else the folder itself."""
    baked = sorted(folder.glob("*-comfyui.safetensors"))
    return baked[0] if baked else folder


def saved_steps(run_dir: Path, wanted: str | None) -> list[tuple[int, Path | None]]:
    """(0, None) for the base model, then (step, LoRA file) of each saved step (or of `wanted`)."""
    from acestep.training.callbacks import list_step_folders

    found = {step: step_lora_file(folder) for step, folder in list_step_folders(run_dir)}
    if wanted:
        try:
            asked = [int(v) for v in wanted.split(",") if v.strip()]
        except ValueError as error:
            raise AcestepError(f"--steps {wanted}: give step numbers separated by commas") from error
        missing = [s for s in asked if s and s not in found]
        if missing:
            raise AcestepError(f"--steps: no saved step {missing[0]} in {run_dir} (saved: "
                               f"{', '.join(map(str, found)) or 'none'})")
        found = {s: found[s] for s in asked if s}
    if not found:
        raise AcestepError(f"{run_dir}: no saved step to evaluate yet")
    if not wanted:  # steps pruned since they were scored keep their scores
        from .cache import EmbeddingCache

        for step in EmbeddingCache(run_dir / EVAL_DIR).cached_steps():
            if step and step not in found:
                found[step] = run_dir / f"step-{step:06d}" / "pruned"
    return [(0, None), *sorted(found.items())]


def dataset_songs(config: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(training songs, held-out songs) as {name, prompt, lyrics, audio}, split as the trainer split them."""
    from acestep.data.preprocessed import load_preprocessed

    def rows(path: str) -> list[dict[str, str]]:
        from acestep.data.sidecars import lyrics_path, read_sidecar

        try:
            data = load_preprocessed(path)
        except (OSError, ValueError, AcestepError) as error:
            raise AcestepError(f"{path}: cannot read the run's dataset ({error}); pass --prompts") from error
        columns = [c for c in ("keys", "filename", "prompt", "lyrics") if c in data.column_names]
        out = []
        for item in data.select_columns(columns).with_format(None):
            audio = Path(item["filename"])
            lyrics = item.get("lyrics") or read_sidecar(lyrics_path(audio)) or ""
            out.append({"name": str(item.get("keys") or audio.stem), "prompt": item["prompt"], "lyrics": lyrics,
                        "audio": str(audio)})
        return out

    songs = rows(config["dataset_path"])
    if config.get("val_dataset"):
        return songs, rows(config["val_dataset"])
    cut = len(songs) - int(config.get("val_songs") or 0)
    return songs[:cut], songs[cut:]


def eval_prompts(args: argparse.Namespace, train: list[dict], held_out: list[dict]) -> list[EvalPrompt]:
    if args.prompts:
        from acestep.data.reg import read_prompt_list

        entries = read_prompt_list(args.prompts, args.seeds, args.seed, args.seconds)
        return [EvalPrompt(f"p{i // args.seeds:02d}", e.prompt, e.lyrics, e.duration, e.seed)
                for i, e in enumerate(entries)]
    source = (held_out or train)[: args.songs]
    return [EvalPrompt(re.sub(r"[^0-9A-Za-z_-]", "_", song["name"])[:40] or f"p{i:02d}", song["prompt"],
                       song["lyrics"], args.seconds, args.seed + k)
            for i, song in enumerate(source) for k in range(args.seeds)]


def load_mert(name: str, device: str) -> MertEmbedder:
    from acestep.families.v1.models.ssl import MERT_SPEC, extract_features, load_hubert

    try:
        model = load_hubert(name).to(device)
    except (OSError, ValueError) as error:
        raise load_failure("MERT", name, "--mert", error) from error
    return MertEmbedder(lambda mono48: extract_features(model, MERT_SPEC, mono48, mono48.shape[0]), name)


def load_whisper(name: str, device: str) -> Callable:
    from .whisper import WhisperTranscriber

    return WhisperTranscriber.from_pretrained(name, device)


def default_mert(checkpoint_dir: str | None) -> str:
    folder = Path(checkpoint_dir) / "mert" if checkpoint_dir else None
    return str(folder) if folder is not None and (folder / "config.json").is_file() else DEFAULT_MERT


def cost_line(renders: int, seconds: float, device: str) -> str:
    audio = renders * seconds
    line = f"Evaluation: {renders} renders of {seconds:g} s to make ({audio:g} s of audio), then scoring."
    if device == "cpu":
        line += (f" At the tiny models' CPU speed that is about {audio * TINY_CPU_SECONDS_PER_AUDIO_SECOND:.0f} s; "
                 "a real checkpoint on the CPU takes far longer (use a GPU).")
    return line


def main(argv: Sequence[str] | None = None,
         open_renderer: Callable[[argparse.Namespace, str, str], tuple[Render, UseLora]] | None = None) -> EvalResult:
    """`open_renderer(args, device, dtype)` -> (render, use_lora); default: the model families' renderer."""
    from acestep.core.quiet import quiet_third_party_noise

    quiet_third_party_noise()
    args = build_parser().parse_args(argv)
    with one_line_errors():
        result = evaluate(args, open_renderer)
    print(result.table)
    print(f"Scores: {result.plot.parent / 'eval.json'}, eval.csv; plot: {result.plot}")
    return result


def evaluate(args: argparse.Namespace,
             open_renderer: Callable[[argparse.Namespace, str, str], tuple[Render, UseLora]] | None = None,
             listeners: Listeners | None = None, log: Callable[[str], None] = print) -> EvalResult:
    """One evaluation of the run per `args`; `listeners` already loaded are reused (training evaluates often)."""
    plan, device, dtype = make_plan(args)
    listeners = listeners or load_listeners(args, device)
    evaluator = Evaluator(plan, listeners, lambda: (open_renderer or family_renderer)(args, device, dtype), log)
    todo = evaluator.missing_renders()
    log(cost_line(todo, args.seconds, device) if todo else "Evaluation: every render is cached; scoring only.")
    return evaluator.run()


def device_and_dtype(args: argparse.Namespace) -> tuple[str, str]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")


def load_listeners(args: argparse.Namespace, device: str) -> Listeners:
    """CLAP, MERT (unless 'none') and whisper (when named): a missing one stops here, before any render."""
    mert = args.mert or default_mert(args.checkpoint_dir)
    listeners = Listeners(ClapEmbedder.from_pretrained(args.clap, device),
                          None if mert.lower() == "none" else load_mert(mert, device))
    if args.whisper:
        listeners.transcribe, listeners.transcriber_name = load_whisper(args.whisper, device), args.whisper
    return listeners


def make_plan(args: argparse.Namespace) -> tuple[EvalPlan, str, str]:
    if args.songs < 1 or args.seeds < 1 or args.seconds <= 0:
        raise AcestepError("--songs and --seeds must be at least 1, --seconds positive")
    run_dir = Path(args.run)
    config = read_run_config(run_dir)
    args.checkpoint_dir = args.checkpoint_dir or config.get("checkpoint_dir")
    args.dit = args.dit or config.get("dit")
    steps = saved_steps(run_dir, args.steps)
    train, held_out = dataset_songs(config) if config.get("dataset_path") else ([], [])
    if not train and not args.prompts:
        raise AcestepError(f"{run_dir}: the run names no dataset; pass --prompts")
    prompts = eval_prompts(args, train, held_out)
    songs = [(s["name"], Path(s["audio"])) for s in [*train, *held_out] if Path(s["audio"]).is_file()]
    if not songs:
        raise AcestepError(f"{run_dir}: none of the run's song files is where the dataset says; the style scores "
                           "need your songs")
    device, dtype = device_and_dtype(args)
    from acestep.training.callbacks import read_metrics

    plan = EvalPlan(
        eval_dir=run_dir / EVAL_DIR, prompts=prompts, songs=songs, train_songs=[s["name"] for s in train],
        steps=steps, sampler_steps=args.sampler_steps, copy_threshold=args.copy_threshold,
        prompt_margin=args.prompt_margin, wer_margin=args.wer_margin, metrics=read_metrics(run_dir / METRICS_FILE),
        settings={"checkpoint_dir": args.checkpoint_dir, "prompts": [vars(p) for p in prompts],
                  "sampler_steps": args.sampler_steps, "clap": args.clap,
                  "mert": args.mert or default_mert(args.checkpoint_dir), "whisper": args.whisper,
                  "copy_threshold": args.copy_threshold, "prompt_margin": args.prompt_margin,
                  "wer_margin": args.wer_margin, "steps": [s for s, _ in steps]},
    )
    return plan, device, dtype


def family_renderer(args: argparse.Namespace, device: str, dtype: str) -> tuple[Render, UseLora]:
    from acestep.families.generation import load_lora_renderer

    _, render, use_lora = load_lora_renderer(args.checkpoint_dir, args.dit, device, dtype, args.sampler_steps)
    return render, use_lora
