"""Our ACE-Step 1.5 LoRA training step against the official one (ACE-Step-1.5 training_v2), side by side.

`python bench/vs_official_v15.py --official_src DIR --official_python PY [--size mid --layers 2] [--seconds 30]
[--official_args "--rank 16"] [--ours_args "" --ours_args "--no-gradient_checkpointing"]`

bench/vs_fork.py's method for 1.5. DIR is a checkout of github.com/ace-step/ACE-Step-1.5 (or a mirror of it);
only acestep/models, acestep/training and acestep/training_v2 are read, nothing of it is copied here. Its model
code needs transformers < 4.58 (ours needs a newer one), so the official side runs in a venv of its own, PY:

    git clone https://github.com/ace-step/ACE-Step-1.5 DIR   # or: git archive HEAD acestep | tar -x -C DIR
    python3 -m venv VENV
    echo torch==2.13.0 > constraints.txt   # the torch of our venv; the pin keeps pip from pulling another
    VENV/bin/pip install -c constraints.txt torch==2.13.0 "transformers<4.58" peft einops \
        vector-quantize-pytorch loguru safetensors
    python bench/vs_official_v15.py --official_src DIR --official_python VENV/bin/python

The parent (our venv) writes one case to a temporary folder: a random 1.5 checkpoint in the official layout (a DiT
folder with model.safetensors in bf16, config.json and silence_latent.pt; `--size mid` keeps the published 2B
width with `--layers` DiT layers and the published encoders, or one layer each with `--encoders minimal`; `--size
tiny` is the tests' tiny model), one micro-batch as the official preprocessing stores it (target and context
latents, the condition encoder's output and masks) and the draws of a step: t (the official rule: the larger of
two sigmoid(N(timestep_mu, sigma)) draws, r = t), the noise and the condition-drop decision (rand < cfg_ratio
0.15). In a bf16 run the draws and the batch are rounded to bf16 values once, so both sides start from the same
numbers (the official step casts them to bf16, ours keeps fp32 and lets autocast round inside). Each side then
runs in its own worker process (both packages are called `acestep`; a worker puts only its own on sys.path and
checks which one it imported), loads the same folder with its own code, and steps when the parent says so:
official, ours, official, ours... so load from other work on the machine falls on both alike. Reported per side:
the median step time, the tensor peak (our TensorMemoryTracker, torch only, in both workers: weights, LoRA
factors, gradients, optimizer state, batch and activations), the worker's peak RSS, and the loss of step 1, which
must agree with the official one.

The official step, as training_v2's FixedLoRATrainer runs it with the defaults of its CLI (`train_fixed`): the
model loaded as model_loader.load_decoder_for_training does (all parameters frozen, moved to the compute dtype,
eval); LoRA by FixedLoRAModule (PEFT get_peft_model on the decoder: r 64, alpha 128, dropout 0.1, q/k/v/o_proj of
self- and cross-attention); configure_memory_features (transformers' gradient checkpointing of every DiT layer,
input grads forced); the whole model cast to the compute dtype (LoRA factors and their AdamW state included);
decoder in train mode; build_optimizer (AdamW lr 1e-4, weight decay 0.01, torch's betas) and build_scheduler
(cosine, warm-up 100); per step FixedLoRAModule.training_step (batch cast to the dtype, CFG dropout to
null_condition_emb, x_t = t x1 + (1 - t) x0, decoder forward with r = t, MSE to x1 - x0), backward,
clip_grad_norm_ 1.0, optimizer and scheduler step, zero_grad. One micro-batch per optimizer step on both sides
(the official default accumulates 4: that only divides the loss and defers the update).
`--official_args` takes its CLI's flags for the few settings listed in OFFICIAL_FLAGS; any other is refused.

Changed to run the official step on CPU (nothing else):
- precision: on CUDA its Fabric runs bf16-mixed (autocast) around a bf16 model; here the same autocast on the
  CPU (`--dtype bf16`), or fp32 without autocast (`--dtype fp32`, its own choice on a CPU); Fabric itself is left
  out (single process: its backward and clip_gradients are loss.backward() and clip_grad_norm_), as ours runs
  without Lightning.
- attention: its loader takes flash_attention_2 on CUDA GPUs that have it, else sdpa; here sdpa (the CPU), which
  builds the 4-D masks its eager/sdpa path uses.
- the model class is imported from the checkout (acestep/models/<variant>/modeling_acestep_v15_<variant>.py)
  instead of through AutoModel's trust_remote_code copy in the checkpoint folder (the same file).
- t, the noise and the condition-drop decision come from the parent: sample_timesteps, apply_cfg_dropout and
  torch.randn_like as fixed_lora_module calls them are replaced by functions returning the parent's values
  (apply_cfg_dropout's own torch.where on the parent's decision).
- acestep/training/__init__.py is not run (it imports the dataset builder and the data module, and with them
  torchaudio): the modules of that folder the step imports (configs, lora_injection, lora_utils, lokr_utils,
  lora_checkpoint, path_safety) are loaded from it as they are.

Our step is the trainer's 1.5 step without Lightning: the checkpoint resolved and loaded by
acestep.families.v15.checkpoint (with its row-major residual stream, families/v15/layout.py; the official model's
layers read a transposed view, which on the CPU makes every frozen Linear copy its weight per call) (our loader also wants vae/ and text-encoder folders: the case has empty ones,
neither side reads them), the frozen null_condition_emb, V15Step, LoraTrainingModule (attach_lora, checkpointing)
and its training_step under the autocast Lightning's precision uses, backward, gradient clipping, the trainer's
optimizer and schedule. The parent's t, noise and condition-drop decision replace its draws (draw_per_song of
acestep.families.v15.objective). `--ours_args` takes trainer flags; those the benchmark does
not apply are refused. Our base dtype defaults to `--dtype`.

tests/test_bench_vs_official_v15.py runs the fp32 comparison at tiny size (the losses must be equal) when
ACESTEP_OFFICIAL_V15_SRC and ACESTEP_OFFICIAL_V15_PYTHON name a checkout and its venv's python.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_FILES = ("acestep/training_v2/fixed_lora_module.py", "acestep/training_v2/optim.py",
                  "acestep/training_v2/trainer_helpers.py", "acestep/models/turbo/modeling_acestep_v15_turbo.py")
DIT = "acestep-v15-turbo"
EMPTY_FOLDERS = ("vae", "Qwen3-Embedding-0.6B")  # our resolver wants them; the DiT folder is all either side reads
CFG_RATIO = 0.15  # the official trainer's default (TrainingConfigV2.cfg_ratio)
DEFAULT_LOSS_RTOL = 0.01
FP32_LOSS_RTOL = 1e-4
# official train_fixed flag -> (dest, type, default); what the official worker applies
OFFICIAL_FLAGS: dict[str, tuple[str, Any, Any]] = {
    "--rank": ("rank", int, 64), "--alpha": ("alpha", int, 128), "--dropout": ("dropout", float, 0.1),
    "--attention-type": ("attention_type", str, "both"), "--lr": ("learning_rate", float, 1e-4),
    "--weight-decay": ("weight_decay", float, 0.01), "--max-grad-norm": ("max_grad_norm", float, 1.0),
    "--warmup-steps": ("warmup_steps", int, 100), "--cfg-ratio": ("cfg_ratio", float, CFG_RATIO),
}
# TrainConfig fields our worker applies (the rest must stay at the trainer's defaults). The timestep schedule and
# condition_dropout's probability are not among them: the parent draws t and the drop decision for both sides.
OURS_APPLIED = {"base_dtype", "gradient_checkpointing", "lora_config_path", "optimizer", "learning_rate",
                "weight_decay", "beta1", "beta2", "max_steps", "warmup_steps", "final_lr_fraction",
                "gradient_clip_val", "seed", "dataset_path"}


class BenchError(Exception):
    """A problem with the command line or the official checkout, shown as one line."""


def _vs_fork() -> Any:
    """bench/vs_fork.py (stdlib imports only) by file, so the official worker can use its worker loop without our
    package on sys.path."""
    spec = importlib.util.spec_from_file_location("vs_fork_for_v15", REPO / "bench/vs_fork.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_official_src(path: str | None) -> Path:
    """The official checkout's root, or a one-line reason it is not one."""
    if not path:
        raise BenchError("--official_src is required: a checkout of github.com/ace-step/ACE-Step-1.5")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BenchError(f"--official_src {path}: no such folder")
    missing = [name for name in OFFICIAL_FILES if not (root / name).is_file()]
    if missing:
        raise BenchError(f"--official_src {path}: not a checkout of ace-step/ACE-Step-1.5 with training_v2 "
                         f"(missing {', '.join(missing)})")
    return root.resolve()


def check_official_python(path: str | None) -> str:
    if not path:
        raise BenchError("--official_python is required: the python of a venv with transformers < 4.58 (see "
                         "the module docstring for the setup)")
    if not Path(path).expanduser().is_file():
        raise BenchError(f"--official_python {path}: no such file")
    return str(Path(path).expanduser())


def official_options(official_args: str) -> dict[str, Any]:
    """The official CLI flags given, over its defaults (OFFICIAL_FLAGS); any other flag is refused."""
    parser = argparse.ArgumentParser(prog="--official_args", add_help=False, exit_on_error=False)
    for flag, (dest, kind, default) in OFFICIAL_FLAGS.items():
        parser.add_argument(flag, dest=dest, type=kind, default=default)
    parser.add_argument("--gradient-checkpointing", dest="gradient_checkpointing",
                        action=argparse.BooleanOptionalAction, default=True)
    try:
        namespace, unknown = parser.parse_known_args(shlex.split(official_args))
    except (argparse.ArgumentError, SystemExit) as error:
        raise BenchError(f"--official_args {official_args!r}: {error}") from None
    if unknown:
        raise BenchError(f"--official_args {official_args!r}: the benchmark does not apply {' '.join(unknown)} "
                         f"(it applies {', '.join([*OFFICIAL_FLAGS, '--[no-]gradient-checkpointing'])})")
    if namespace.attention_type not in ("self", "cross", "both"):
        raise BenchError(f"--official_args: --attention-type must be self, cross or both, not "
                         f"{namespace.attention_type!r}")
    return vars(namespace)


def ours_options(ours_args: str, dtype: str = "bf16") -> tuple[Any, dict[str, Any]]:
    """(TrainConfig, the flags given that differ from the trainer's defaults), read as bench/vs_fork.py reads them;
    flags the step does not apply are refused."""
    vs_fork = _vs_fork()
    try:
        config, changed = vs_fork.trainer_flags(ours_args, dtype)
    except vs_fork.BenchError as error:
        raise BenchError(str(error)) from None
    refused = sorted(set(changed) - OURS_APPLIED)
    if config.base_dtype in ("auto", "fp8"):
        refused.insert(0, f"base_dtype {config.base_dtype}")
    if refused:
        raise BenchError(f"--ours_args {ours_args!r}: the benchmark's 1.5 step does not apply "
                         + ", ".join(f"--{name}" for name in refused))
    return config, changed


def official_changed(official_args: str) -> dict[str, Any]:
    """The official settings that differ from its CLI's defaults (what a results row records)."""
    defaults = official_options("")
    return {k: v for k, v in official_options(official_args).items() if v != defaults[k]}


# ---------------------------------------------------------------- the case both workers load

PUBLISHED_ENCODER_LAYERS = {"num_lyric_encoder_hidden_layers": 8, "num_timbre_encoder_hidden_layers": 4,
                            "num_attention_pooler_hidden_layers": 2}


def case_config(size: str, layers: int, encoders: str = "published") -> dict[str, Any]:
    """config.json of the case's DiT folder: the tests' tiny model, or the published 2B's width (mid) with `layers`
    DiT layers and the published encoders (condition encoder, audio tokenizer and detokenizer: 818 M parameters the
    official trainer keeps on its device, ours frees) or `minimal` ones (one layer each; the step never runs them)."""
    from acestep.families.v15.tiny import tiny_original_config

    if size == "tiny":
        config = tiny_original_config()
    else:
        config = {
            "hidden_size": 2048, "intermediate_size": 6144, "num_attention_heads": 16, "num_key_value_heads": 8,
            "head_dim": 128, "in_channels": 192, "audio_acoustic_hidden_dim": 64, "patch_size": 2,
            "rope_theta": 1000000, "attention_bias": False, "attention_dropout": 0.0, "rms_norm_eps": 1e-6,
            "sliding_window": 128, "text_hidden_dim": 1024, "timbre_hidden_dim": 64,
            "num_lyric_encoder_hidden_layers": 1, "num_timbre_encoder_hidden_layers": 1, "pool_window_size": 5,
            "fsq_dim": 2048, "fsq_input_levels": [8, 8, 8, 5, 5, 5], "fsq_input_num_quantizers": 1,
            "num_attention_pooler_hidden_layers": 1, "is_turbo": True, "model_version": "turbo",
        }
        if encoders == "published":
            config.update(PUBLISHED_ENCODER_LAYERS)
    # the official encoders' layers read layer_types too (the published list has 24 entries for 8 + 4 + 2 + 2)
    types = max(layers, *(config[key] for key in PUBLISHED_ENCODER_LAYERS))
    config.update(num_hidden_layers=layers, use_sliding_window=True, timestep_mu=-0.4, timestep_sigma=1.0,
                  data_proportion=0.5,
                  layer_types=[("sliding_attention", "full_attention")[i % 2] for i in range(types)])
    return config


def official_draws(frames: int, channels: int, seed: int, mu: float, sigma: float) -> dict[str, Any]:
    """t (the larger of two sigmoid(N(mu, sigma)) draws, as training_v2's sample_timesteps), noise and the
    condition-drop decision (rand < CFG_RATIO, as apply_cfg_dropout), from a CPU generator."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    pair = torch.sigmoid(torch.randn(2, 1, generator=generator) * sigma + mu)
    return {
        "draw.t": pair.max(0).values,
        "draw.noise": torch.randn(1, frames, channels, generator=generator),
        "draw.drop": (torch.rand(1, generator=generator) < CFG_RATIO),
    }


def write_case(folder: Path, size: str, layers: int, seconds: float, condition_tokens: int, seed: int,
               dtype: str, encoders: str = "published") -> dict[str, Any]:
    """A random checkpoint in the official layout (bf16 weights), one micro-batch and one step's draws."""
    import torch
    from safetensors.torch import save_file

    from acestep.families.v15.checkpoint import _component_classes, component_configs, diffusers_to_original
    from acestep.families.v15.tiny import SILENCE_FRAMES
    from acestep.families.v15.training import frames_for_seconds

    config = case_config(size, layers, encoders)
    configs = component_configs(config)
    classes = _component_classes()
    torch.manual_seed(seed)
    states = {name: classes[name](**configs[name]).state_dict() for name in configs}
    states["condition_encoder"].pop("silence_latent")
    dit = folder / DIT
    dit.mkdir(parents=True)
    weights = {k: v.to(torch.bfloat16).contiguous() for k, v in diffusers_to_original(states).items()}
    decoder_params = sum(v.numel() for k, v in weights.items() if k.startswith("decoder."))
    other_params = sum(v.numel() for k, v in weights.items() if not k.startswith("decoder."))
    save_file(weights, str(dit / "model.safetensors"))
    del states, weights
    (dit / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    channels = config["audio_acoustic_hidden_dim"]
    # the published format is a torch tensor file [1, C, T]; read with weights_only=True (no code runs)
    torch.save(torch.randn(1, channels, SILENCE_FRAMES), dit / "silence_latent.pt")
    for name in EMPTY_FOLDERS:
        (folder / name).mkdir()
    frames = frames_for_seconds(seconds)
    width = config.get("encoder_hidden_size", config["hidden_size"])
    g = torch.Generator().manual_seed(seed + 1)
    tensors = {
        "target_latents": torch.randn(1, frames, channels, generator=g),
        "attention_mask": torch.ones(1, frames),
        "encoder_hidden_states": torch.randn(1, condition_tokens, width, generator=g),
        "encoder_attention_mask": torch.ones(1, condition_tokens),
        "context_latents": torch.randn(1, frames, 2 * channels, generator=g),
        **official_draws(frames, channels, seed, config["timestep_mu"], config["timestep_sigma"]),
    }
    if dtype == "bf16":  # both sides start from the numbers the official step's bf16 casts would give
        tensors = {k: v.to(torch.bfloat16).float() if v.is_floating_point() else v for k, v in tensors.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "batch.safetensors"))
    return {"size": size, "encoders": encoders if size == "mid" else "tiny", "layers": layers, "audio_s": seconds,
            "frames": frames, "condition_tokens": condition_tokens, "dit_params_m": decoder_params / 1e6,
            "encoders_params_m": other_params / 1e6, "t": float(tensors["draw.t"]),
            "dropped": bool(tensors["draw.drop"])}


def write_case_apart(*args: Any) -> dict[str, Any]:
    """`write_case` in a process of its own: Linux hands a process's peak RSS on through fork and exec, so a parent
    that once held the weights would lend that peak to both workers' 'peak RSS'."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(write_case, *args).result()


def read_batch(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(batch tensors, draws: t [1], noise [1, T, C], drop [1] bool) as written by `write_case`."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "batch.safetensors"))
    draws = {k.split(".", 1)[1]: tensors.pop(k) for k in [k for k in tensors if k.startswith("draw.")]}
    return tensors, draws


# ---------------------------------------------------------------- workers

def _imported_from(package: Any, root: Path) -> None:
    if not Path(package.__file__).resolve().is_relative_to(root):
        raise BenchError(f"imported {package.__file__}, expected the acestep of {root}")


def official_worker(case: Path, official_src: Path, dtype_name: str, official_args: str) -> None:
    """training_v2's step (see the module docstring for what differs on the CPU)."""
    vs_fork = _vs_fork()
    memory = vs_fork.load_our_memory_module()
    sys.path.insert(0, str(official_src))
    import torch

    import acestep

    _imported_from(acestep, official_src)
    training_package = types.ModuleType("acestep.training")  # its __init__ imports the dataset builder (torchaudio)
    training_package.__path__ = [str(official_src / "acestep/training")]
    sys.modules["acestep.training"] = training_package
    from acestep.models.turbo.modeling_acestep_v15_turbo import AceStepConditionGenerationModel
    from acestep.training_v2 import fixed_lora_module
    from acestep.training_v2.configs import LoRAConfigV2, TrainingConfigV2
    from acestep.training_v2.optim import build_optimizer, build_scheduler
    from acestep.training_v2.trainer_helpers import configure_memory_features

    options = official_options(official_args)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    model, info = AceStepConditionGenerationModel.from_pretrained(
        str(case / DIT), attn_implementation="sdpa", dtype=dtype, output_loading_info=True)
    unloaded = {key: names for key, names in info.items() if key != "error_msgs" and names}
    if unloaded:
        raise BenchError(f"the official model does not load the case's weights: {unloaded}")
    for param in model.parameters():  # model_loader.load_decoder_for_training
        param.requires_grad = False
    model = model.to(device="cpu", dtype=dtype)
    model.eval()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    if options["attention_type"] != "both":  # cli.validation.resolve_target_modules
        targets = [f"{options['attention_type']}_attn.{name}" for name in targets]
    lora = LoRAConfigV2(r=options["rank"], alpha=options["alpha"], dropout=options["dropout"], target_modules=targets,
                        attention_type=options["attention_type"])
    config = model.config
    training = TrainingConfigV2(
        learning_rate=options["learning_rate"], weight_decay=options["weight_decay"], batch_size=1,
        gradient_accumulation_steps=1, max_grad_norm=options["max_grad_norm"], warmup_steps=options["warmup_steps"],
        gradient_checkpointing=options["gradient_checkpointing"], cfg_ratio=options["cfg_ratio"],
        timestep_mu=config.timestep_mu, timestep_sigma=config.timestep_sigma, data_proportion=config.data_proportion,
        device="cpu", precision=dtype_name)
    module = fixed_lora_module.FixedLoRAModule(model, lora, training, torch.device("cpu"), dtype)
    params = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, optimizer_type="adamw", lr=training.learning_rate,
                                weight_decay=training.weight_decay, device_type="cpu")
    scheduler = build_scheduler(optimizer, scheduler_type="cosine", total_steps=1000,
                                warmup_steps=training.warmup_steps, lr=training.learning_rate)
    if training.gradient_checkpointing:
        checkpointing, _, _ = configure_memory_features(module.model.decoder)
        module.force_input_grads_for_checkpointing = checkpointing
    module.model = module.model.to(dtype)
    module.model.decoder.train()

    tensors, draws = read_batch(case)
    t, noise, drop = draws["t"], draws["noise"], draws["drop"]
    randn_like = torch.randn_like

    def parent_noise(like: Any, *args: Any, **kwargs: Any) -> Any:
        if tuple(like.shape) == tuple(noise.shape):
            return noise.to(like.device, like.dtype)
        return randn_like(like, *args, **kwargs)

    def parent_timesteps(batch_size: int, device: Any, dtype: Any, **_: Any) -> tuple[Any, Any]:
        value = t.to(device, dtype)
        return value, value

    def parent_cfg_dropout(states: Any, null: Any, cfg_ratio: float = CFG_RATIO) -> Any:
        keep = (~drop).to(states.device, states.dtype).view(-1, 1, 1)
        return torch.where(keep > 0, states, null.expand_as(states))

    torch.randn_like = parent_noise
    fixed_lora_module.sample_timesteps = parent_timesteps
    fixed_lora_module.apply_cfg_dropout = parent_cfg_dropout

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):  # Fabric's bf16-mixed
            loss = module.training_step(tensors)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def measure_memory() -> int:
        return vs_fork.tensor_peak(memory, step, module.model, optimizer, [*tensors.values(), *draws.values()])

    layers = len(module.model.decoder.base_model.model.layers)
    vs_fork.serve(step, measure_memory, {
        "lora_dtype": str(params[0].dtype), "lora_params_m": sum(p.numel() for p in params) / 1e6,
        "checkpointed_blocks": f"{layers if training.gradient_checkpointing else 0} of {layers}"})


def ours_worker(case: Path, ours_args: str, dtype_name: str) -> None:
    """Our trainer's 1.5 step on the case, with the draws the parent wrote."""
    sys.path.insert(0, str(REPO))
    import torch

    import acestep

    _imported_from(acestep, REPO)
    vs_fork = _vs_fork()
    memory = vs_fork.load_our_memory_module()
    from acestep.families.v15 import BLOCKS, objective
    from acestep.families.v15.checkpoint import load_components, resolve
    from acestep.families.v15.training import DEFAULT_LORA_CONFIG, OFFICIAL_RECIPE, collate_v15
    from acestep.lora import LoraSettings
    from acestep.training.model import resolve_base_dtype
    from acestep.training.module import LoraTrainingModule
    from acestep.training.optim import build_lr_scheduler, build_optimizer, resolve_recipe

    config, _ = ours_options(ours_args, dtype_name)
    config = resolve_recipe(config, OFFICIAL_RECIPE)  # the 1.5 family's, as a 1.5 run resolves it
    dtype = resolve_base_dtype(config.base_dtype, on_gpu=False)
    checkpoint = resolve(case, DIT)
    modules = load_components(checkpoint, ("transformer", "condition_encoder"), dtype)
    null = modules.pop("condition_encoder").null_condition_emb.detach().clone()
    transformer = modules["transformer"]
    tensors, draws = read_batch(case)

    def parent_draws(generators: Any, frame_mask: Any, channels: int, sampler: Any, dropout: float) -> Any:
        return objective.SongDraws(keep=~draws["drop"], t=draws["t"], noise=draws["noise"])

    objective.draw_per_song = parent_draws
    step_objective = objective.V15Step(objective.TimestepSampler("logit_normal"), null, 0.0)
    settings = LoraSettings.from_json(config.lora_config_path or REPO / DEFAULT_LORA_CONFIG)
    module = LoraTrainingModule(transformer, settings, config, dataset=None, step=step_objective, collate=collate_v15,
                                blocks=BLOCKS)
    transformer.train()
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config)
    scheduler = build_lr_scheduler(optimizer, config)
    batch = {**tensors, "micro_batch": 0, "seeds": [0]}  # the parent's draws replace what the seed would give
    autocast = dtype != torch.float32

    def step() -> float:
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):  # Lightning's bf16-mixed / 16-mixed
            loss = module.training_step(dict(batch), 0)
        loss.backward()
        if config.gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(params, config.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def measure_memory() -> int:
        return vs_fork.tensor_peak(memory, step, transformer, optimizer, [*tensors.values(), *draws.values()])

    blocks = transformer.config.num_hidden_layers
    checkpointed = {"all": blocks, "none": 0}.get(config.gradient_checkpointing, config.gradient_checkpointing)
    vs_fork.serve(step, measure_memory, {
        "lora_dtype": str(params[0].dtype), "lora_params_m": sum(p.numel() for p in params) / 1e6,
        "checkpointed_blocks": f"{checkpointed} of {blocks}"})


# ---------------------------------------------------------------- the parent

def worker_argv(kind: str, case: Path, args: argparse.Namespace, official_src: Path, ours_args: str = "") -> list[str]:
    python = args.official_python if kind == "official" else sys.executable
    return [python, str(Path(__file__).resolve()), "--worker", kind, "--case", str(case),
            "--official_src", str(official_src), "--dtype", args.dtype,
            f"--official_args={args.official_args}", f"--ours_args={ours_args}"]  # "=": a lone flag is a value


def loss_rtol(args: argparse.Namespace) -> float:
    if args.loss_rtol is not None:
        return args.loss_rtol
    return FP32_LOSS_RTOL if args.dtype == "fp32" else DEFAULT_LOSS_RTOL


def run_case(args: argparse.Namespace, official_src: Path) -> list[dict]:
    """Both implementations on one case, stepped in turns; one result row each (the official one first)."""
    vs_fork = _vs_fork()
    label = f"[{args.size} {args.layers} layers {args.seconds:g} s]"
    with tempfile.TemporaryDirectory(prefix="vs_official_v15_", dir=args.work_dir) as tmp:
        case = Path(tmp)
        print(f"{label} writing a random checkpoint and a batch ...", flush=True)
        info = write_case_apart(case, args.size, args.layers, args.seconds, args.condition_tokens, args.seed,
                                args.dtype, args.encoders)
        names = ["official", *[f"ours {a}".strip() for a in args.ours_args]]
        argvs = [worker_argv("official", case, args, official_src)]
        argvs += [worker_argv("ours", case, args, official_src, a) for a in args.ours_args]
        try:
            runs = vs_fork.step_in_turns(list(zip(names, argvs)), args.repeats, label, f"{label} steps in turns")
        except vs_fork.BenchError as error:
            raise BenchError(str(error)) from None
    rows: list[dict] = []
    for run, ours_args in zip(runs, [None, *args.ours_args]):
        row = {
            **info,
            "implementation": "official" if ours_args is None else "ours",
            "settings": json.dumps(official_changed(args.official_args) if ours_args is None
                                   else ours_options(ours_args, args.dtype)[1], sort_keys=True),
            **vs_fork.measured(run, runs[0]),
        }
        if rows:
            row.update(vs_fork.ratios(row, rows[0], "official"))
            row["goal_met"] = goal_met(row)
        row["loss_agrees"] = row["loss_rel_diff"] <= loss_rtol(args)
        vs_fork.print_row(label, run["name"], 28, row, "the official")
        rows.append(row)
    return rows


TIME_GOAL, PEAK_GOAL = 0.8, 0.6  # issue 24: at equal settings, time <= 0.8x and tensor peak <= 0.6x the official


def goal_met(row: dict) -> str:
    """'yes', or what misses: the paired time ratio and the tensor peak ratio against issue 24's goal."""
    misses = []
    if row["time_vs_official_paired"] > TIME_GOAL:
        misses.append(f"time {row['time_vs_official_paired']:.2f}x > {TIME_GOAL}x")
    if row["tensor_peak_vs_official"] > PEAK_GOAL:
        misses.append(f"tensor peak {row['tensor_peak_vs_official']:.2f}x > {PEAK_GOAL}x")
    return "no: " + ", ".join(misses) if misses else "yes"


COLUMNS = [
    ("layers", "DiT layers"), ("dit_params_m", "DiT params (M)"), ("encoders_params_m", "encoders params (M)"),
    ("audio_s", "audio s"), ("frames", "frames"),
    ("implementation", "implementation"), ("settings", "settings (not default)"),
    ("lora_params_m", "LoRA params (M)"), ("lora_dtype", "LoRA dtype"), ("checkpointed_blocks", "checkpointed layers"),
    ("steps", "timed steps"), ("step_median_s", "step median s"), ("step_min_s", "step min s"),
    ("time_vs_official", "time / official"), ("time_vs_official_paired", "time / official, paired"),
    ("tensor_peak_gb", "tensor peak GB"), ("tensor_peak_vs_official", "tensor peak / official"),
    ("goal_met", "goal (time <= 0.8x, peak <= 0.6x)"),
    ("process_peak_rss_gb", "worker peak RSS GB"), ("loss_step1", "loss step 1"),
    ("loss_rel_diff", "loss rel. diff. to official"), ("loss_agrees", "loss agrees"),
]


def build_parser() -> argparse.ArgumentParser:
    from acestep.core.cli_help import make_parser

    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--official_src", default=None,
                        help="checkout of github.com/ace-step/ACE-Step-1.5 with acestep/training_v2 (no default: required)")
    parser.add_argument("--official_python", default=None,
                        help="python of the official side's venv (transformers < 4.58) (no default: required)")
    parser.add_argument("--official_args", default="",
                        help="flags of the official train_fixed CLI, as one string (default: its defaults); only "
                        "those in OFFICIAL_FLAGS and --[no-]gradient-checkpointing")
    parser.add_argument("--ours_args", action="append", default=None,
                        help="our trainer flags, as one string (a single flag as --ours_args=--FLAG); repeat for "
                        "several settings (default: one run with our defaults, base dtype --dtype)")
    parser.add_argument("--size", default="mid", choices=("tiny", "mid"),
                        help="tiny: the tests' tiny model; mid: the published 2B width with --layers DiT layers")
    parser.add_argument("--layers", type=int, default=2, help="DiT layers")
    parser.add_argument("--encoders", default="published", choices=("published", "minimal"),
                        help="mid size: the published condition encoder, audio tokenizer and detokenizer (which the "
                        "official trainer keeps on its device) or one layer each")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio seconds of the song")
    parser.add_argument("--condition_tokens", type=int, default=512,
                        help="condition tokens (prompt, lyrics, timbre after the condition encoder)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed steps per implementation, in turns, after step 1 (the warm-up)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"),
                        help="compute dtype of both sides; fp32 (no autocast) for CPUs without native bf16 and for "
                        "an exact loss check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the batch and the step's draws")
    parser.add_argument("--loss_rtol", type=float, default=None,
                        help=f"largest relative difference of a step-1 loss from the official one (default: "
                        f"{DEFAULT_LOSS_RTOL:g} in bf16, {FP32_LOSS_RTOL:g} in fp32)")
    parser.add_argument("--official_repo", default="github.com/ace-step/ACE-Step-1.5",
                        help="where the checkout came from, recorded in the results (e.g. a mirror's name)")
    parser.add_argument("--official_commit", default=None, help="the checkout's commit, recorded in the results "
                        "(default: read with git from --official_src; 'unknown' for an exported tree)")
    parser.add_argument("--work_dir", default=None, help="folder for the temporary case files (default: the "
                        "system's temporary folder)")
    parser.add_argument("--stem", default=None, help="results file name (default: vs_official_v15_<machine>_...)")
    parser.add_argument("--worker", choices=("official", "ours"), default=None,
                        help="internal: run one implementation's worker process (default: none, i.e. compare)")
    parser.add_argument("--case", default=None, help="internal: the worker's case folder (default: none)")
    return parser


def build_worker_parser() -> argparse.ArgumentParser:
    """The official worker's arguments, parsed without our package (acestep.core.cli_help) being imported."""
    parser = argparse.ArgumentParser(prog="vs_official_v15.py --worker official", add_help=False)
    for flag in ("--worker", "--case", "--official_src", "--dtype", "--official_args", "--ours_args"):
        parser.add_argument(flag, required=flag in ("--worker", "--case", "--official_src", "--dtype"))
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Path]:
    """The arguments and the checked official checkout; BenchError for a bad one."""
    args = build_parser().parse_args(argv)
    official_src = check_official_src(args.official_src)
    args.ours_args = args.ours_args or [""]
    if args.worker is None:
        args.official_python = check_official_python(args.official_python)
        official_options(args.official_args)  # refuse a bad flag before minutes of setup
        for ours_args in args.ours_args:
            ours_options(ours_args, args.dtype)
        if args.repeats < 1 or args.layers < 1 or args.seconds <= 0:
            raise BenchError("--repeats and --layers must be at least 1, --seconds positive")
    return args, official_src


def official_commit(args: argparse.Namespace, official_src: Path) -> str:
    if args.official_commit is not None:
        return args.official_commit
    git = subprocess.run(["git", "-C", str(official_src), "rev-parse", "--show-toplevel", "HEAD"],
                         capture_output=True, text=True)
    lines = git.stdout.split()
    own = git.returncode == 0 and len(lines) == 2 and Path(lines[0]).resolve() == official_src
    return lines[1] if own else "unknown (not a git checkout)"


def recorded_command(argv: list[str]) -> str:
    """The command line with the machine's paths replaced by the flags' placeholders (no paths in the repo)."""
    placeholders = {"--official_src": "DIR", "--official_python": "PY", "--work_dir": "TMP"}
    out, skip = [], False
    for i, item in enumerate(argv):
        if skip:
            skip = False
            continue
        flag, eq, _ = item.partition("=")
        if flag in placeholders:
            out += [flag, placeholders[flag]]
            skip = not eq and i + 1 < len(argv)
            continue
        out.append(item)
    return "python bench/vs_official_v15.py " + shlex.join(out)


def notes_for(args: argparse.Namespace, official_src: Path, argv: list[str], rows: list[dict]) -> list[str]:
    info = rows[0]
    return [
        "command: " + recorded_command(argv),
        f"official: {args.official_repo}, commit {official_commit(args, official_src)}, acestep/training_v2 "
        "FixedLoRAModule "
        "with its CLI defaults unless 'settings' says otherwise, in its own venv (transformers < 4.58); what it runs "
        "and the CPU changes: module docstring of bench/vs_official_v15.py.",
        f"ours: the trainer's 1.5 step (V15Step, LoraTrainingModule, its optimizer and schedule) with the trainer "
        f"flags in 'settings' (base dtype {args.dtype} unless given), loaded by acestep/families/v15/checkpoint.py.",
        f"same case for both: random weights in the official layout (bf16) written once, each side loading it with "
        f"its own code; one song of {info['frames']} latent frames, {args.condition_tokens} condition tokens; the "
        f"same t ({info['t']:.4f}), noise and condition-drop decision ({'dropped' if info['dropped'] else 'kept'}), "
        f"seed {args.seed}.",
        "encoders: the official trainer loads the whole model (DiT, condition encoder, audio tokenizer and "
        "detokenizer; the published 2B's encoders hold 818 M parameters, 1.64 GB in bf16) and keeps it on its "
        "device; ours keeps the DiT and null_condition_emb only. 'published' cases carry the published encoders "
        "beside a DiT of a few layers (so their tensor-peak ratio favours ours more than the full model's would), "
        "'minimal' ones one layer each (the DiT step alone).",
        "one worker process per implementation, all loaded first, then stepped in turns (official, ours, "
        "official, ours...): other work on this shared machine slows both alike, which makes the times "
        "comparable; absolute times are not. 'time / official' divides the medians, 'paired' is the median of the "
        f"per-round ratios. {args.repeats} timed steps each after step 1 (warm-up; creates the optimizer state).",
        "tensor peak: our TensorMemoryTracker in both workers, one extra step: weights, LoRA factors, gradients, "
        "optimizer state, batch and activations. Worker peak RSS adds the interpreter, libraries, the allocator's "
        "cache and the loading. On the CPU both sides' attention builds masks and scores that flash attention on "
        "a GPU would not hold.",
        "goal (issue 24) at equal settings: time <= 0.8x (paired) and tensor peak <= 0.6x the official step. The "
        "official defaults and ours train the same LoRA (r 64, alpha 128, dropout 0.1, the four attention "
        "projections of self- and cross-attention) with every layer checkpointed; the official holds the LoRA "
        "factors and their AdamW state in the compute dtype, ours in fp32.",
        f"loss step 1: the loss before any update (LoRA B factors are zero, so the base model's). It agrees "
        f"when within {loss_rtol(args):g} relative: in fp32 both compute the same numbers up to summation order; in "
        "bf16 the official step also rounds x_t and the target x1 - x0 to bf16, ours keeps them in fp32.",
    ]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:2] == ["--worker", "official"]:  # in the official venv, before anything imports our acestep
            worker_args = build_worker_parser().parse_args(argv)
            return official_worker(Path(worker_args.case), check_official_src(worker_args.official_src),
                                   worker_args.dtype, worker_args.official_args or "")
        sys.path.insert(0, str(REPO))
        args, official_src = parse_args(argv)
        if args.worker == "ours":
            return ours_worker(Path(args.case), args.ours_args[0], args.dtype)
        run(args, official_src, argv)
    except BenchError as error:
        raise SystemExit(f"error: {error}") from None


def run(args: argparse.Namespace, official_src: Path, argv: list[str]) -> None:
    from bench.common import bf16_warning, machine_description, machine_tag, write_results

    warning = bf16_warning(args.dtype, "cpu")
    if warning:
        print(f"warning: {warning}", flush=True)
    rows = run_case(args, official_src)
    machine = {**machine_description(), "device": "cpu", "dtype": args.dtype}
    encoders = f"-{args.encoders}-encoders" if args.size == "mid" else ""
    stem = args.stem or (f"vs_official_v15_{machine_tag(machine, 'cpu')}_{args.size}-{args.layers}layers{encoders}-"
                         f"{args.seconds:g}s-{args.dtype}")
    json_path, md_path = write_results(stem, rows, COLUMNS, machine, "Our ACE-Step 1.5 LoRA training step against "
                                       f"the official training_v2 step, cpu {args.dtype}, in turns",
                                       notes_for(args, official_src, argv, rows))
    print(f"wrote {json_path} and {md_path}")
    disagree = [f"{r['implementation']} {r['settings']}: {r['loss_rel_diff']:.2e}" for r in rows
                if not r["loss_agrees"]]
    if disagree:
        raise BenchError(f"step-1 losses differ from the official one by more than {loss_rtol(args):g}: "
                         + "; ".join(disagree))


if __name__ == "__main__":
    main()
