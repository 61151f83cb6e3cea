"""Every training option as one dataclass; the command line is generated from it, so both stay in step."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acestep.core.atomic import atomic_write_json
from acestep.core.cli_help import make_parser
from acestep.core.errors import AcestepError

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy")
LOGGERS = ("csv", "tensorboard", "wandb", "none")
BASE_DTYPES = ("auto", "bf16", "fp16", "fp32", "fp8")
# the repository's config folder, whatever the current folder is (trainer_new.py may be started from anywhere)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
TIMESTEP_SCHEDULES = ("auto", "turbo", "logit_normal")
LR_SCHEDULES = ("linear", "cosine")
CHECKPOINTING_MODES = ("all", "none", "auto")  # or a number of blocks
PRESETS = ("6gb", "8gb", "10gb", "12gb", "16gb", "24gb")  # acestep.presets


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Defaults follow the reference fork's trainer_new.py unless the help says otherwise."""

    # data
    dataset_path: str = _opt("", "preprocessed dataset folder (stage 3 output)", required=True)
    batch_size: int = _opt(1, "songs per micro-batch; shorter songs are padded and masked")
    max_duration: float | None = _opt(None, "crop longer songs to a random window of this many seconds (default: no crop)")
    num_workers: int = _opt(0, "DataLoader worker processes")
    use_ssl: bool = _opt(True, "use stored MERT/mHuBERT features when the dataset has them")
    trigger: str | None = _opt(None, "the trigger tag the dataset was preprocessed with (stage 3 --trigger); a "
                               "dataset with another one is refused (default: whatever the dataset has)")
    overfit_one: bool = _opt(False, "smoke test of a dataset: train on its first song only for --overfit_steps steps "
                             "into EXP_NAME-overfit-one and say whether the loss on that song fell (try this first "
                             "when a LoRA changes nothing)")
    overfit_steps: int = _opt(300, "optimizer steps of --overfit_one")
    val_songs: int = _opt(0, "hold out the dataset's last N songs for a validation loss (0 = no validation)")
    val_dataset: str | None = _opt(None, "a separate preprocessed dataset for the validation loss (default: none)")
    val_every: int = _opt(100, "compute the validation loss every N optimizer steps (and at the last step)")
    val_timesteps: int = _opt(8, "noise levels of the validation loss, spread evenly over the schedule")
    reg_dataset: str | None = _opt(None, "regularization songs (prior preservation): a preprocessed dataset of the same "
                                   "model family, preprocessed without --trigger, of songs the base model should keep "
                                   "making, e.g. rendered by `python -m acestep.reg_songs` (default: none)")
    reg_weight: float = _opt(0.25, "with --reg_dataset: the fraction of micro-batches drawn from it, spread evenly "
                             "over the run (0.25 = every 4th); their loss is logged as reg_loss")
    # model
    checkpoint_dir: str | None = _opt(None, "ACE-Step checkpoint folder or Hub repo; v1 or 1.5, told by the folder "
                                      "(default: the official v1 one)")
    dit: str | None = _opt(None, "ACE-Step 1.5 original layout: the DiT folder to train (default: acestep-v15-turbo)")
    lora_config_path: str | None = _opt(None, "LoRA config JSON (r, alpha, targets); default: the "
                                        "repository's config/lora_config_transformer_only.json for v1, "
                                        "config/lora_config_v15.json for 1.5")
    base_dtype: str = _opt("auto", "dtype of the frozen base: auto = bf16 on GPUs that have it, else fp16; fp32 on CPU. "
                           "fp8: the blocks' linear weights stored in fp8 with per-channel scales, computed "
                           "in bf16 (fp16 on GPUs without bf16): ~2.4 GB less for v1, 1.6 GB (2B) / 4.2 GB (XL) for 1.5",
                           choices=BASE_DTYPES)
    release_unused_weights: bool = _opt(True, "free the checkpoint's never-used cross-attention add_* layers "
                                        "(1.26 GB in bf16) and, without SSL targets, the SSL projectors")
    gradient_checkpointing: str = _opt("all", "recompute the transformer blocks' activations in backward (less "
                                       "memory, each block ~1/3 slower): all, none, N (the first N blocks) or auto (the "
                                       "fewest blocks the planner says fit --vram_gb); bare flag = all, "
                                       "--no-gradient_checkpointing = none", nargs="?", const="all", negatable="none")
    vram_gb: float | None = _opt(None, "GPU memory for --gradient_checkpointing auto, in GB (default: the CUDA "
                                 "card's; required on a machine without one)")
    preset: str | None = _opt(None, "settings for a card: base dtype, optimizer, checkpointed blocks (auto at the "
                              "card's size) and crop length, the fastest the planner says fit the model of "
                              "--checkpoint_dir (python -m acestep.plan --presets); flags you give yourself win "
                              "(default: none)", choices=PRESETS)
    preset_applied: str = _opt("", "what --preset set (filled in by the trainer)", cli=False)
    compile: bool = _opt(False, "torch.compile each transformer block (needs a C++ compiler on the CPU, triton on "
                         "CUDA; where it cannot run it says so in one line and trains uncompiled). Off by default "
                         "until measured on a GPU")
    # objective
    shift: float = _opt(3.0, "timestep shift of the flow-matching schedule")
    num_train_timesteps: int = _opt(1000, "size of the training timestep table")
    logit_mean: float = _opt(0.0, "mean of the logit-normal timestep density")
    logit_std: float = _opt(1.0, "std of the logit-normal timestep density")
    ssl_coeff: float = _opt(1.0, "weight of the SSL projection losses (when the dataset has SSL features)")
    loss_reduction: str = _opt("reference", "reference: the reference trainers' masked MSE; masked_mean: true mean "
                               "over real frames (differs only with padding)", choices=("reference", "masked_mean"))
    prompt_dropout: float = _opt(0.0, "probability to zero a sample's prompt states (upstream: 0.15)")
    lyrics_dropout: float = _opt(0.0, "probability to drop a sample's lyrics (upstream: 0.15)")
    speaker_dropout: float = _opt(0.0, "probability to zero the speaker embedding (always zero in v1 data)")
    timestep_schedule: str = _opt("auto", "ACE-Step 1.5: logit_normal = t is the larger of two sigmoid(N(timestep_mu, "
                                  "timestep_sigma)) draws, as the models were trained and the current official trainer "
                                  "does for every variant; turbo = uniform over the 8 turbo sampling timesteps (the "
                                  "Feb 2026 official trainer's choice); auto = logit_normal", choices=TIMESTEP_SCHEDULES)
    timestep_mu: float | None = _opt(None, "ACE-Step 1.5 logit_normal schedule: mean (default: the DiT's config.json "
                                     "timestep_mu; published -0.4)")
    timestep_sigma: float | None = _opt(None, "ACE-Step 1.5 logit_normal schedule: std (default: the DiT's config.json "
                                        "timestep_sigma; published 1.0)")
    condition_dropout: float | None = _opt(None, "ACE-Step 1.5: probability to replace a sample's condition by "
                                           "null_condition_emb (default 0.15, as the models were pre-trained and the "
                                           "official trainer does)")
    # optimisation
    optimizer: str = _opt("adamw", "adamw, adamw8bit (bitsandbytes, CUDA) or prodigy", choices=OPTIMIZERS)
    learning_rate: float | None = _opt(None, "peak learning rate (default 1e-4 for AdamW, 1.0 for Prodigy: its multiplier)")
    weight_decay: float = _opt(1e-2, "decoupled weight decay")
    beta1: float | None = _opt(None, "Adam beta1 (default: the family's recipe: 0.8 for v1 as the fork, 0.9 for 1.5 as "
                               "the official trainer)")
    beta2: float | None = _opt(None, "Adam beta2 (default: 0.9 for v1, 0.999 for 1.5)")
    max_steps: int = _opt(10000, "optimizer steps of the run")
    lr_schedule: str | None = _opt(None, "linear: warm-up from 0, linear decay (v1's default, as the fork); cosine: "
                                   "warm-up from 0.1x lr, cosine decay (1.5's default, as the official trainer)",
                                   choices=LR_SCHEDULES)
    warmup_steps: int | None = _opt(None, "warm-up steps (default: 10 for v1; min(100, max_steps/10) for 1.5)")
    final_lr_fraction: float | None = _opt(None, "learning rate at the end as a fraction of the peak (default: v1 0 "
                                           "for AdamW, 0.1 for Prodigy, as the fork; 1.5 0.01 for AdamW, 1 for "
                                           "Prodigy, as the official trainer)")
    recipe: str = _opt("", "which optimizer recipe ran and what your flags changed (filled in by the trainer)", cli=False)
    accumulate_grad_batches: int = _opt(1, "micro-batches per optimizer step")
    gradient_clip_val: float = _opt(1.0, "clip the gradient norm to this (0 = off)")
    seed: int = _opt(42, "seed of the song order, crops, noise and timesteps")
    # saving and logging
    output_dir: str = _opt("runs", "folder holding one run folder per experiment")
    exp_name: str = _opt("lora", "run name: the run folder and the adapter name")
    every_n_train_steps: int = _opt(100, "save the adapter every N optimizer steps")
    save_last: int = _opt(5, "keep this many saved steps (older step folders are removed)")
    resume: bool = _opt(False, "continue the run in output_dir/exp_name from its last save")
    logger: str = _opt("csv", "csv (no setup, under the run folder), tensorboard, wandb or none", choices=LOGGERS)
    wandb_project: str = _opt("ace-step-lora", "Weights & Biases project")
    wandb_offline: bool = _opt(False, "keep W&B logs local (sync later with `wandb sync`)")
    sample_every: int = _opt(0, "render audio samples with the current adapter every N steps (0 = off)")
    sample_prompts: str | None = _opt(None, "JSON list / TOML [[samples]] of {prompt, lyrics, duration, seed, name} "
                                           "(default: none)")
    sample_steps: int = _opt(30, "sampling steps per rendered sample")
    eval_every: int = _opt(0, "score the saved steps with listening models every N optimizer steps, as `python -m "
                           "acestep.evaluate` does (0 = off; its cost is printed before the run)")
    eval_songs: int = _opt(2, "with --eval_every: prompts taken from your songs (validation songs first)")
    eval_seconds: float = _opt(10.0, "with --eval_every: seconds per render")
    eval_clap: str = _opt("laion/larger_clap_music", "with --eval_every: CLAP model (hub id or local folder)")
    eval_mert: str | None = _opt(None, "with --eval_every: MERT model, or 'none' (default: the checkpoint's mert/, "
                                 "else m-a-p/MERT-v1-330M)")
    # hardware
    accelerator: str = _opt("auto", "auto, gpu or cpu")
    devices: str = _opt("auto", "number of GPUs (or a list like 0,1); more than one trains with DDP")
    num_nodes: int = _opt(1, "machines for multi-node DDP")
    progress_bar: bool = _opt(True, "show the progress bar")

    def __post_init__(self) -> None:
        # Older configs and callers say True / False: all blocks or none.
        if isinstance(self.gradient_checkpointing, bool):
            self.gradient_checkpointing = "all" if self.gradient_checkpointing else "none"
        self.gradient_checkpointing = str(self.gradient_checkpointing)

    @property
    def checkpointed_blocks(self) -> int | None:
        """The number of blocks --gradient_checkpointing N names (None for all, none and auto)."""
        mode = self.gradient_checkpointing
        return None if mode in CHECKPOINTING_MODES else int(mode)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.exp_name

    def validate(self) -> None:
        """Reject settings that cannot work, before any model is loaded."""
        problems = [] if self.dataset_path else ["--dataset_path is required"]
        for name in ("batch_size", "max_steps", "accumulate_grad_batches", "every_n_train_steps", "save_last"):
            if getattr(self, name) < 1:
                problems.append(f"--{name} must be at least 1")
        if self.eval_every < 0 or self.eval_songs < 1 or self.eval_seconds <= 0:
            problems.append("--eval_every must be 0 or more, --eval_songs at least 1, --eval_seconds positive")
        if self.val_every < 1 or self.val_timesteps < 1:
            problems.append("--val_every and --val_timesteps must be at least 1")
        if self.overfit_steps < 1:
            problems.append("--overfit_steps must be at least 1")
        if self.val_songs < 0:
            problems.append("--val_songs must be >= 0")
        if self.reg_dataset and not 0.0 < self.reg_weight < 1.0:
            problems.append("--reg_weight must be between 0 and 1 (the fraction of micro-batches from --reg_dataset)")
        if self.val_songs and self.val_dataset:
            problems.append("give --val_songs or --val_dataset, not both")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            problems.append("--warmup_steps must be >= 0")
        from acestep.data.generate_args import MAX_DURATION_S  # stage 3 keeps at most this per song

        for f in dataclasses.fields(self):  # nan and inf pass every comparison below as if they were numbers
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value) and f.name != "max_duration":
                problems.append(f"--{f.name} must be a finite number, not {value}")
        if self.max_duration is not None and not 0 < self.max_duration <= MAX_DURATION_S:
            problems.append(f"--max_duration must be more than 0 and at most {MAX_DURATION_S:g} seconds, "
                            f"not {self.max_duration}")
        for name in ("prompt_dropout", "lyrics_dropout", "speaker_dropout", "condition_dropout"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"--{name} must be between 0 and 1")
        if self.timestep_sigma is not None and self.timestep_sigma <= 0:
            problems.append("--timestep_sigma must be positive")
        if self.final_lr_fraction is not None and not 0.0 <= self.final_lr_fraction <= 1.0:
            problems.append("--final_lr_fraction must be between 0 and 1")
        if any(c in self.exp_name for c in "/\\:") or self.exp_name in ("", ".", ".."):
            problems.append(f"--exp_name {self.exp_name!r} must be a plain folder name")
        mode = self.gradient_checkpointing
        if mode not in CHECKPOINTING_MODES and not (mode.isdigit()):
            problems.append(f"--gradient_checkpointing must be all, none, auto or a number of blocks, not {mode!r}")
        if self.vram_gb is not None and not 0 < self.vram_gb < 4096:
            problems.append("--vram_gb must be more than 0 and less than 4096")
        if problems:
            raise AcestepError("; ".join(problems))

    def for_overfit_one(self) -> TrainConfig:
        """The --overfit_one run: its own folder, its step count, one save at the end, the song as validation."""
        if not self.overfit_one:
            return self
        steps = self.overfit_steps
        return dataclasses.replace(
            self, exp_name=f"{self.exp_name}-overfit-one", max_steps=steps, every_n_train_steps=steps, save_last=1,
            val_songs=0, val_dataset=None, val_every=max(1, steps // 10),
            warmup_steps=None if self.warmup_steps is None else min(self.warmup_steps, steps),
            reg_dataset=None,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())


def _field_type(f: dataclasses.Field) -> type:
    annotation = str(f.type).replace(" ", "")
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if annotation.startswith(name):
            return kind
    return str


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("Train an ACE-Step LoRA (v1 or 1.5, told by --checkpoint_dir) on a preprocessed dataset.",
                         "trainer_new.py")
    for f in dataclasses.fields(TrainConfig):
        kind = _field_type(f)
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        negated = meta.pop("negatable", None)
        if not meta.pop("cli", True):
            continue
        if negated is not None:  # --no-NAME stores that value
            parser.add_argument(f"--no-{f.name}", dest=f.name, action="store_const", const=negated,
                                default=f.default, help=f"same as --{f.name} {negated}")
        if kind is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=f.default, help=help_text, **meta)
    return parser


def given_flags(argv: list[str] | None) -> set[str]:
    """The options the user typed (not defaults): a preset leaves them alone."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return set(vars(parser.parse_args(argv)))


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The options as typed; --preset is applied by the CLI layer (acestep.families.training.parse_config)."""
    config = TrainConfig(**vars(build_parser().parse_args(argv)))
    config.validate()
    return config
