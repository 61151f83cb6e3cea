"""Our LoRA training step against the fork's own (woct0rdho/ACE-Step trainer_new.py), side by side on one machine.

`python bench/vs_fork.py --fork_src DIR [--blocks 2,4] [--seconds 10,30] [--ours_args "" --ours_args "--base_dtype fp8"]`

DIR is a checkout of github.com/woct0rdho/ACE-Step (e.g. `git archive HEAD acestep config trainer_new.py`);
nothing of it is copied here. The parent writes one case to a temporary folder: a random transformer of mid size
(published width 2560, `--blocks` blocks) saved as a diffusers model folder in the published layout (bf16), one
synthetic micro-batch (prompt states, lyric ids, MERT/mHuBERT targets) and the draws of a step (the logit-normal
timestep index and the noise). Each implementation then runs in its own worker process (both packages are called
`acestep`; a worker puts only its own on sys.path and checks which one it imported), loads the same folder with
its own `from_pretrained`, and steps when the parent says so: fork, ours, fork, ours... (A,B,A,B), so load from
other work on the machine falls on both alike. Reported per implementation: the median step time, the tensor peak
(our TensorMemoryTracker in both workers: weights, LoRA factors, gradients, optimizer state, batch and
activations), the worker's peak RSS, and the loss of step 1, which must agree with the fork's.

The fork's step, as trainer_new.py (with pytorch_lightning, precision "bf16-mixed") runs it: the transformer
from `from_pretrained(torch_dtype=bf16)`, moved to bf16, train mode, diffusers' `enable_gradient_checkpointing`
(every block, and the lyric Conformer's layers); LoRA through diffusers' `add_adapter` with the fork's
config/lora_config_transformer_only.json (PEFT decides the factors' dtype); float32 batch tensors cast to bf16;
noise in the batch dtype; sigma looked up in the shift-3 FlowMatchEulerDiscreteScheduler of the fork (its own
scheduler class) and the timestep passed in bf16; forward, the x0 preconditioning (pred * -sigma + noisy) and
its masked MSE under bf16 autocast, plus the mean of the MERT/mHuBERT projection losses times ssl_coeff 1.0;
backward; clip_grad_norm_ 1.0 (its --gradient_clip_val); AdamW (lr 1e-4, weight decay 1e-2, betas 0.8/0.9);
zero_grad; its warm-up/decay LambdaLR step.

Changed to run the fork on CPU (nothing else):
- accelerator: the CPU, autocast("cpu", bf16) for Lightning's bf16-mixed, and bf16 chosen directly (the fork
  picks bf16 or fp16 with torch.cuda.is_bf16_supported()); the step runs without Lightning, as ours does.
- torch.get_autocast_gpu_dtype, which the fork's attention processor reads to clip fp16 outputs, answers with
  the CPU autocast dtype (bf16): on its GPU the question names the autocast device, on the CPU it would say fp16
  and add a clip the GPU run does not do.
- only the transformer (acestep/models) and the scheduler (acestep/schedulers) are imported: not
  pipeline_ace_step (text encoder, DCAE, torchaudio) nor the dataset code; no imports are stubbed.
- the noise, timestep index and batch come from the parent instead of torch.randn_like / its dataloader.

Our step is acestep.families.v1.probe.TrainingStepProbe (the trainer's step without Lightning) on the same folder,
loaded as the trainer loads a checkpoint. `--ours_args` takes trainer_new.py flags (repeat it to compare several
settings in one run); a flag whose name is a TrainingStepProbe parameter is passed straight through, the others it
knows are mapped (OPTION_TO_PROBE), and any other flag given is refused rather than ignored. Our base dtype
defaults to `--dtype` here (the trainer's `auto` picks fp32 on the CPU) so both sides compute alike. `--dtype fp32`
is for CPUs without native bf16 (see cpu_native_bf16 in the machine line): both sides then hold fp32 weights and
run without autocast, which the fork itself never does (it picks fp16 on GPUs without bf16).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FORK_FILES = ("trainer_new.py", "acestep/models/ace_step_transformer.py", "config/lora_config_transformer_only.json")
REPLY = "@@vs_fork "  # workers' protocol lines on stdout start with this; everything else goes to stderr
# TrainConfig fields the benchmark applies itself (the micro-batch, objective and optimizer are the defaults')
STEP_FIELDS = {"dataset_path", "lora_config_path", "use_ssl", "shift", "num_train_timesteps", "loss_reduction"}
# trainer flag -> (TrainingStepProbe parameter, value); used when the probe has that parameter
SWITCH_VALUES = {True: True, False: False, "all": True, "none": False}  # "all"/"none": checkpointing as a mode


def _switch(flag: str) -> Any:
    """A trainer on/off flag as the probe's bool; any other value (e.g. a mode) needs its own entry here."""
    def convert(value: Any) -> bool:
        if not isinstance(value, bool) and value not in SWITCH_VALUES:
            raise BenchError(f"--{flag} {value}: TrainingStepProbe takes only on/off for it; map the value to the "
                             "probe's parameters in bench/vs_fork.py OPTION_TO_PROBE")
        return SWITCH_VALUES[value]
    return convert


OPTION_TO_PROBE = {
    "release_unused_weights": ("release_unused", _switch("release_unused_weights")),
    "base_dtype": ("fp8_base", lambda value: value == "fp8"),
}
# trainer flags the ours worker applies itself: auto is sized by the planner for the case's model and crop,
# --compile compiles the probe's blocks as the trainer does
WORKER_FIELDS = {"gradient_checkpointing", "vram_gb", "compile"}


def checkpointing_arguments(value: str | bool) -> dict[str, Any]:
    """The trainer's --gradient_checkpointing (all, none, N or auto) as the probe's arguments; auto's block count
    is filled in by the worker, which knows the model and the crop."""
    if isinstance(value, bool) or value in SWITCH_VALUES:
        return {"checkpointing": SWITCH_VALUES[value]}
    if value == "auto":
        return {"checkpointing": True}
    return {"checkpointing": True, "checkpointed_blocks": int(value)}
DEFAULT_LOSS_RTOL = 0.01


class BenchError(Exception):
    """A problem with the command line or the fork checkout, shown as one line."""


def check_fork_src(path: str | None) -> Path:
    """The fork checkout's root, or a one-line reason it is not one."""
    if not path:
        raise BenchError("--fork_src is required: a checkout of github.com/woct0rdho/ACE-Step")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BenchError(f"--fork_src {path}: no such folder")
    missing = [name for name in FORK_FILES if not (root / name).is_file()]
    if missing:
        raise BenchError(f"--fork_src {path}: not a checkout of woct0rdho/ACE-Step (missing {', '.join(missing)})")
    return root.resolve()


def trainer_flags(ours_args: str, dtype: str) -> tuple[Any, dict[str, Any]]:
    """(TrainConfig of `--ours_args`, the flags given that differ from the trainer's defaults); a flag the trainer
    does not know is a BenchError. The base dtype defaults to the run's `--dtype` (the trainer's `auto` would mean
    fp32 on the CPU). bench/vs_official_v15.py reads its `--ours_args` with it too."""
    import dataclasses

    from acestep.training.config import TrainConfig, build_parser

    argv = ["--dataset_path", "-", "--base_dtype", dtype, *shlex.split(ours_args)]
    parser = build_parser()
    parser.exit_on_error = False
    try:
        namespace, unknown = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit) as error:
        raise BenchError(f"--ours_args {ours_args!r}: {error}") from None
    if unknown:
        raise BenchError(f"--ours_args {ours_args!r}: unknown trainer flags {' '.join(unknown)}")
    config = TrainConfig(**vars(namespace))
    defaults = TrainConfig(dataset_path="-")
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if getattr(config, f.name) != getattr(defaults, f.name) and f.name != "dataset_path"}
    return config, changed


def ours_options(ours_args: str, dtype: str = "bf16") -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(TrainConfig, probe keyword arguments, the flags given that differ from the trainer's defaults)."""
    import dataclasses
    import inspect

    from acestep.families.v1.probe import TrainingStepProbe

    config, changed = trainer_flags(ours_args, dtype)
    accepted = set(inspect.signature(TrainingStepProbe.__init__).parameters)
    kwargs: dict[str, Any] = checkpointing_arguments(config.gradient_checkpointing)
    for name, (target, convert) in OPTION_TO_PROBE.items():
        if target in accepted and name not in accepted:
            kwargs[target] = convert(getattr(config, name))
    for f in dataclasses.fields(config):
        if f.name in accepted:
            kwargs[f.name] = getattr(config, f.name)
    applied = STEP_FIELDS | WORKER_FIELDS | set(OPTION_TO_PROBE) | accepted
    refused = sorted(set(changed) - applied)
    if refused:
        raise BenchError(f"--ours_args {ours_args!r}: the benchmark's step (TrainingStepProbe) does not apply "
                         + ", ".join(f"--{name}" for name in refused))
    return config, kwargs, changed


# ---------------------------------------------------------------- the case both workers load

def write_case(folder: Path, blocks: int, seconds: float, lyric_tokens: int, text_tokens: int, seed: int) -> dict:
    """Random weights (published layout, bf16), one micro-batch and one step's draws, as safetensors."""
    import torch
    from safetensors.torch import save_file

    from acestep.families.v1.objective import FlowMatchingObjective
    from acestep.families.v1.probe import random_transformer, synthetic_batch
    from acestep.families.v1.songs import frames_for_seconds
    from bench.train_step import size_config

    config = size_config("mid", blocks)
    frames = frames_for_seconds(seconds)
    model = random_transformer(config, torch.bfloat16, "cpu")
    model.save_pretrained(folder / "transformer", safe_serialization=True)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    batch = synthetic_batch(config, frames, 1, lyric_tokens, text_tokens, True, "cpu")
    tensors = dict(batch.tensors)
    for group, songs in enumerate(batch.ssl or []):
        for song, features in enumerate(songs):
            tensors[f"ssl.{group}.{song}"] = features
    generator = torch.Generator().manual_seed(seed)
    tensors["draw.index"] = FlowMatchingObjective().sample_indices(1, generator)  # the fork's rule, on the CPU
    tensors["draw.noise"] = torch.randn(batch.tensors["target_latents"].shape, generator=generator)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "batch.safetensors"))
    return {"blocks": blocks, "audio_s": seconds, "frames": frames, "params_m": parameters / 1e6}


def read_batch(folder: Path) -> tuple[dict, list[list], Any, Any]:
    """(batch tensors, SSL targets [model][song], timestep index, noise) as written by `write_case`."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "batch.safetensors"))
    index, noise = tensors.pop("draw.index"), tensors.pop("draw.noise")
    ssl: dict[int, dict[int, Any]] = {}
    for key in [k for k in tensors if k.startswith("ssl.")]:
        _, group, song = key.split(".")
        ssl.setdefault(int(group), {})[int(song)] = tensors.pop(key)
    groups = [[songs[i] for i in sorted(songs)] for _, songs in sorted(ssl.items())]
    return tensors, groups, index, noise


# ---------------------------------------------------------------- workers

class Worker:
    """One implementation in its own process, stepping when told (commands on stdin, replies on stdout)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._reply()

    def _reply(self) -> dict:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        code = self.process.wait()
        raise BenchError(f"the {self.name} worker stopped (exit code {code}); its messages are above")

    def ask(self, command: str) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self) -> dict:
        reply = self.ask("quit")
        self.process.wait(timeout=120)
        return reply

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def tensor_peak(memory: Any, step: Any, model: Any, optimizer: Any, tensors: list) -> int:
    """The tensor peak of one `step` (our TensorMemoryTracker from `memory`): the model's parameters, gradients and
    buffers, the optimizer state, `tensors` (batch and draws) and everything the step allocates."""
    tracker = memory.TensorMemoryTracker()
    tracker.track_module(model)
    tracker.track_optimizer(optimizer)
    tracker.track(*tensors)
    with tracker:
        step()
    return tracker.peak


def serve(step: Any, measure_memory: Any, loss_parts: dict) -> None:
    """The worker's loop: step 1 (warm-up, its loss reported), then `step`, `memory` and `quit` commands."""
    import torch

    from_parent, to_parent = sys.stdin, sys.stdout
    sys.stdout = sys.stderr  # library prints must not mix with the replies

    def reply(value: dict) -> None:
        to_parent.write(REPLY + json.dumps(value) + "\n")
        to_parent.flush()

    started = time.perf_counter()
    loss = step()
    reply({"loss_step1": loss, "warmup_s": time.perf_counter() - started, **loss_parts,
           "torch_threads": torch.get_num_threads()})
    for line in from_parent:
        command = line.strip()
        if command == "step":
            started = time.perf_counter()
            step()
            reply({"seconds": time.perf_counter() - started})
        elif command == "memory":
            reply({"tensor_peak_bytes": measure_memory()})
        elif command == "quit":
            from acestep_memory_for_bench import peak_rss_gb

            reply({"process_peak_rss_gb": peak_rss_gb()})
            return


def load_our_memory_module() -> Any:
    """Our acestep/training/memory.py (torch only) under a name of its own, usable beside the fork's acestep."""
    spec = importlib.util.spec_from_file_location("acestep_memory_for_bench", REPO / "acestep/training/memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _imported_from(package: Any, root: Path) -> None:
    if not Path(package.__file__).resolve().is_relative_to(root):
        raise BenchError(f"imported {package.__file__}, expected the acestep of {root}")


def fork_worker(case: Path, fork_src: Path, dtype_name: str) -> None:
    """The fork's trainer_new.py step (see the module docstring for what differs on the CPU)."""
    sys.path.insert(0, str(fork_src))
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig

    import acestep

    _imported_from(acestep, fork_src)
    from acestep.models.ace_step_transformer import ACEStepTransformer2DModel
    from acestep.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

    memory = load_our_memory_module()
    torch.get_autocast_gpu_dtype = lambda: torch.get_autocast_dtype("cpu")
    dtype, device = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name], torch.device("cpu")
    model, info = ACEStepTransformer2DModel.from_pretrained(str(case / "transformer"), torch_dtype=dtype,
                                                            output_loading_info=True)
    unloaded = {key: names for key, names in info.items() if key != "error_msgs" and names}
    if unloaded:  # diffusers only warns; the comparison needs every weight from the case
        raise BenchError(f"the fork's model does not load the case's weights: {unloaded}")
    model = model.to(device, dtype)
    model.train()
    model.enable_gradient_checkpointing()
    lora = json.loads((fork_src / "config/lora_config_transformer_only.json").read_text(encoding="utf-8"))
    model.add_adapter(adapter_config=LoraConfig(**lora), adapter_name="lora_adapter")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2, betas=(0.8, 0.9))
    warmup, max_steps = 10, 10000
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, 1.0 - (s - warmup) / (max_steps - warmup)))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    tensors, ssl, index, noise = read_batch(case)

    def loss_of_step() -> Any:
        batch = {k: v.to(dtype) if v.dtype == torch.float32 else v for k, v in tensors.items()}
        latents, frame_mask = batch["target_latents"], batch["attention_mask"]
        timesteps = scheduler.timesteps[index].to(device)
        positions = [int((scheduler.timesteps == t).nonzero()) for t in timesteps]
        sigmas = scheduler.sigmas.to(device, dtype)[positions].view(-1, 1, 1, 1)
        noisy = sigmas * noise.to(dtype) + (1.0 - sigmas) * latents
        targets = [torch.stack(songs).to(dtype) for songs in ssl]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            output = model(
                hidden_states=noisy, attention_mask=frame_mask,
                encoder_text_hidden_states=batch["encoder_text_hidden_states"],
                text_attention_mask=batch["text_attention_mask"], speaker_embeds=batch["speaker_embeds"],
                lyric_token_idx=batch["lyric_token_idx"], lyric_mask=batch["lyric_mask"],
                timestep=timesteps.to(device, dtype), ssl_hidden_states=targets,
            )
            predicted = output.sample * (-sigmas) + noisy
            size = latents.shape[0]
            mask = frame_mask[:, None, None, :].expand(-1, latents.shape[1], latents.shape[2], -1)
            error = F.mse_loss((predicted * mask).reshape(size, -1), (latents * mask).reshape(size, -1),
                               reduction="none")
            loss = (error.mean(1) * mask.reshape(size, -1).mean(1)).mean()
            projections = [value for _, value in output.proj_losses]
            if projections:
                loss = loss + sum(projections) / len(projections) * 1.0
        return loss

    def step() -> float:
        loss = loss_of_step()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        return float(loss.detach())

    def measure_memory() -> int:
        return tensor_peak(memory, step, model, optimizer, [*tensors.values(), *(t for songs in ssl for t in songs),
                                                             index, noise])

    serve(step, measure_memory, {"lora_dtype": str(params[0].dtype), "lora_params_m": sum(p.numel() for p in params) / 1e6})


def ours_worker(case: Path, ours_args: str, dtype_name: str) -> None:
    """Our trainer's step (TrainingStepProbe) on the case, with the draws the parent wrote."""
    sys.path.insert(0, str(REPO))
    import torch

    import acestep

    _imported_from(acestep, REPO)
    load_our_memory_module()  # the worker loop reads peak RSS from it, as the fork's worker does
    from acestep.families.v1.models import ACEStepTransformer2DModel
    from acestep.families.v1.objective import FlowMatchingObjective, NoisedBatch
    from acestep.families.v1.probe import SyntheticBatch, TrainingStepProbe
    from acestep.lora import LoraSettings
    from acestep.training.model import resolve_base_dtype

    config, kwargs, _ = ours_options(ours_args, dtype_name)
    dtype = resolve_base_dtype(config.base_dtype, on_gpu=False)
    model = ACEStepTransformer2DModel.from_pretrained(str(case / "transformer"), torch_dtype=dtype)
    tensors, ssl, index, noise = read_batch(case)
    batch = SyntheticBatch(tensors, ssl if config.use_ssl else None)
    lora_path = Path(config.lora_config_path or REPO / "config/lora_config_transformer_only.json")
    autocast = None if dtype == torch.float32 else dtype

    class ParentDraws(FlowMatchingObjective):
        """The parent's timestep index and noise instead of the generator's (a fresh noise tensor each step)."""

        def add_noise(self, latents: Any, generator: Any, frame_mask: Any = None) -> NoisedBatch:
            sigmas = self.sigmas[index].to(latents.device, latents.dtype).view(-1, 1, 1, 1)
            noisy = sigmas * noise.to(latents.device, latents.dtype, copy=True) + (1.0 - sigmas) * latents
            if frame_mask is not None:
                noisy = noisy * frame_mask[:, None, None, :].to(noisy.dtype)
            return NoisedBatch(noisy=noisy, sigmas=sigmas, timesteps=self.timesteps[index].to(latents.device))

    class RecordingProbe(TrainingStepProbe):
        last_loss = float("nan")

        def loss(self, seed: int) -> Any:
            value = super().loss(seed)
            self.last_loss = float(value.detach())
            return value

    if config.gradient_checkpointing == "auto":
        import dataclasses

        from acestep.families.v1.plan import request_for_run
        from acestep.families.v1.songs import LATENT_FRAMES_PER_SECOND
        from acestep.training.checkpointing import DTYPE_NAMES, card_gb, resolve_auto

        crop = tensors["target_latents"].shape[-1] / LATENT_FRAMES_PER_SECOND
        cropped = dataclasses.replace(config, max_duration=crop)
        request = request_for_run(dict(model.config), batch.ssl is not None, cropped, card_gb(config, False), "cpu",
                                  "fp8" if config.base_dtype == "fp8" else DTYPE_NAMES[dtype])
        resolved, line = resolve_auto(cropped, request)
        kwargs["checkpointed_blocks"] = int(resolved.gradient_checkpointing)
        print(line, file=sys.stderr, flush=True)
    probe = RecordingProbe(model, LoraSettings.from_json(lora_path), batch, autocast_dtype=autocast, **kwargs)
    if config.compile:
        from acestep.families.v1.blocks import BLOCKS
        from acestep.training.compile import compile_blocks

        compile_blocks(BLOCKS.blocks(model), "cpu", warn=lambda line: print(line, file=sys.stderr, flush=True))
    probe.objective = ParentDraws(config.num_train_timesteps, config.shift, loss_reduction=config.loss_reduction)

    def step() -> float:
        probe.run(track_memory=False)
        return probe.last_loss

    params = probe.params
    blocks = model.config["num_layers"]
    checkpointed = kwargs.get("checkpointed_blocks", blocks) if kwargs.get("checkpointing", True) else 0
    serve(step, lambda: probe.run(track_memory=True).tensor_peak_bytes,
          {"lora_dtype": str(params[0].dtype), "lora_params_m": sum(p.numel() for p in params) / 1e6,
           "checkpointed_blocks": f"{checkpointed} of {blocks}"})


# ---------------------------------------------------------------- the parent

def worker_argv(kind: str, case: Path, fork_src: Path, dtype: str, ours_args: str = "") -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--case", str(case),
            "--fork_src", str(fork_src), "--dtype", dtype, f"--ours_args={ours_args}"]  # "=": a lone flag is a value


def worker_env() -> dict[str, str]:
    """This environment without PYTHONPATH, so each worker imports only the acestep it puts on sys.path."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def step_in_turns(runs: list[tuple[str, list[str]]], repeats: int, label: str, desc: str) -> list[dict[str, Any]]:
    """One worker per (name, argv), all loaded (and past step 1) first, then stepped in turns for `repeats` rounds,
    then asked for their tensor peak and peak RSS; per worker {"name", "ready", "times", "peak", "rss"} in order.
    Workers are killed whatever happens."""
    from acestep.core.progress import progress

    workers: list[Worker] = []
    try:
        for name, argv in runs:
            print(f"{label} starting {name} (load + step 1) ...", flush=True)
            workers.append(Worker(name, argv, worker_env()))
        times: dict[str, list[float]] = {worker.name: [] for worker in workers}
        for _ in progress(range(repeats), desc=desc, unit="round"):
            for worker in workers:
                times[worker.name].append(worker.ask("step")["seconds"])
        peaks = {worker.name: worker.ask("memory")["tensor_peak_bytes"] for worker in workers}
        rss = {worker.name: worker.close()["process_peak_rss_gb"] for worker in workers}
    finally:
        for worker in workers:
            worker.kill()
    return [{"name": worker.name, "ready": worker.ready, "times": times[worker.name], "peak": peaks[worker.name],
             "rss": rss[worker.name]} for worker in workers]


def measured(run: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """A result row's measured columns for one worker of `step_in_turns`; `reference`: the reference's (first) run."""
    times, loss, reference_loss = run["times"], run["ready"]["loss_step1"], reference["ready"]["loss_step1"]
    return {
        "lora_params_m": run["ready"]["lora_params_m"],
        "lora_dtype": run["ready"]["lora_dtype"].replace("torch.", ""),
        "checkpointed_blocks": run["ready"].get("checkpointed_blocks", "all (diffusers)"),
        "steps": len(times),
        "step_times_s": times,
        "step_median_s": statistics.median(times),
        "step_min_s": min(times),
        "tensor_peak_gb": run["peak"] / 1e9,
        "process_peak_rss_gb": run["rss"],
        "loss_step1": loss,
        "loss_rel_diff": abs(loss - reference_loss) / abs(reference_loss),
    }


def ratios(row: dict[str, Any], reference: dict[str, Any], name: str) -> dict[str, float]:
    """time_vs_NAME (medians), time_vs_NAME_paired and tensor_peak_vs_NAME of a row against the reference row."""
    return {
        f"time_vs_{name}": row["step_median_s"] / reference["step_median_s"],
        f"time_vs_{name}_paired": paired_ratio(row["step_times_s"], reference["step_times_s"]),
        f"tensor_peak_vs_{name}": row["tensor_peak_gb"] / reference["tensor_peak_gb"],
    }


def print_row(label: str, name: str, width: int, row: dict[str, Any], reference: str) -> None:
    print(f"{label} {name:<{width}} median {row['step_median_s']:6.2f} s  tensor peak {row['tensor_peak_gb']:.3f} GB  "
          f"peak RSS {row['process_peak_rss_gb']:.2f} GB  loss(step 1) {row['loss_step1']:.6f} (rel. diff. to "
          f"{reference} {row['loss_rel_diff']:.2e})", flush=True)


def run_case(args: argparse.Namespace, fork_src: Path, blocks: int, seconds: float) -> list[dict]:
    """All implementations on one case, stepped in turns; one result row each (the fork's first)."""
    label = f"[{blocks} blocks {seconds:g} s]"
    with tempfile.TemporaryDirectory(prefix="vs_fork_", dir=args.work_dir) as tmp:
        case = Path(tmp)
        print(f"{label} writing random weights and a batch to {case} ...", flush=True)
        info = write_case(case, blocks, seconds, args.lyric_tokens, args.text_tokens, args.seed)
        names = ["fork", *[f"ours {a}".strip() for a in args.ours_args]]
        argvs = [worker_argv("fork", case, fork_src, args.dtype)]
        argvs += [worker_argv("ours", case, fork_src, args.dtype, a) for a in args.ours_args]
        runs = step_in_turns(list(zip(names, argvs)), args.repeats, label,
                             f"{blocks} blocks {seconds:g} s, steps in turns")
    rows: list[dict] = []
    for run, ours_args in zip(runs, [None, *args.ours_args]):
        row = {
            **info,
            "implementation": "fork" if ours_args is None else "ours",
            "ours_args": ours_args,
            "options": None if ours_args is None else json.dumps(ours_options(ours_args, args.dtype)[2], sort_keys=True),
            **measured(run, runs[0]),
        }
        if rows:
            row.update(ratios(row, rows[0], "fork"))
        row["loss_agrees"] = row["loss_rel_diff"] <= args.loss_rtol
        print_row(label, run["name"], 24, row, "the fork")
        rows.append(row)
    return rows


def paired_ratio(times: list[float], fork_times: list[float]) -> float:
    """Median over the rounds of (our step / the fork's step of the same round): load that drifts between rounds
    cancels within a round, so this is steadier than the ratio of the medians on a shared machine."""
    return statistics.median(ours / fork for ours, fork in zip(times, fork_times))


COLUMNS = [
    ("blocks", "blocks"), ("params_m", "params (M)"), ("audio_s", "audio s"), ("frames", "frames"),
    ("implementation", "implementation"), ("options", "our options (not default)"),
    ("lora_params_m", "LoRA params (M)"), ("lora_dtype", "LoRA dtype"), ("checkpointed_blocks", "checkpointed blocks"),
    ("steps", "timed steps"),
    ("step_median_s", "step median s"), ("step_min_s", "step min s"), ("time_vs_fork", "time / fork"),
    ("time_vs_fork_paired", "time / fork, paired"),
    ("tensor_peak_gb", "tensor peak GB"), ("tensor_peak_vs_fork", "tensor peak / fork"),
    ("process_peak_rss_gb", "worker peak RSS GB"), ("loss_step1", "loss step 1"),
    ("loss_rel_diff", "loss rel. diff. to fork"), ("loss_agrees", "loss agrees"),
]


def build_parser() -> argparse.ArgumentParser:
    from acestep.core.cli_help import make_parser

    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--fork_src", default=None, help="checkout of github.com/woct0rdho/ACE-Step; required (no default)")
    parser.add_argument("--blocks", default="2,4", help="transformer blocks of the mid size (published width), "
                        "comma-separated")
    parser.add_argument("--seconds", default="10,30", help="audio seconds per song, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per implementation, in turns, after "
                        "step 1 (the warm-up)")
    parser.add_argument("--ours_args", action="append", default=None,
                        help="trainer_new.py flags of our step, as one string (a single flag as --ours_args=--FLAG); "
                        "repeat for several settings "
                        "(default: one run with our defaults, base dtype --dtype)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"),
                        help="compute dtype of both sides; fp32 (no autocast, fp32 base) for CPUs without native "
                        "bf16, where bf16 is emulated and its times mislead (the fork itself never runs fp32)")
    parser.add_argument("--lyric_tokens", type=int, default=512, help="lyric tokens per song")
    parser.add_argument("--text_tokens", type=int, default=64, help="prompt tokens per song")
    parser.add_argument("--seed", type=int, default=0, help="seed of the step's timestep and noise")
    parser.add_argument("--loss_rtol", type=float, default=DEFAULT_LOSS_RTOL,
                        help="largest relative difference of a step-1 loss from the fork's")
    parser.add_argument("--fork_commit", default=None, help="the fork's commit, recorded in the results (default: "
                        "read with git from --fork_src; 'unknown' for an exported tree)")
    parser.add_argument("--work_dir", default=None, help="folder for the temporary case files (default: the "
                        "system's temporary folder)")
    parser.add_argument("--stem", default=None, help="results file name (default: vs_fork_<machine>)")
    parser.add_argument("--worker", choices=("fork", "ours"), default=None,
                        help="internal: run one implementation's worker process (started by this script, which "
                        "passes it first; default: none, i.e. run the comparison)")
    parser.add_argument("--case", default=None, help="internal: the worker's case folder (default: none)")
    return parser


def build_worker_parser() -> argparse.ArgumentParser:
    """The fork worker's arguments, parsed without our package (acestep.core.cli_help) being imported."""
    parser = argparse.ArgumentParser(prog="vs_fork.py --worker fork", add_help=False)
    for flag in ("--worker", "--case", "--fork_src", "--dtype", "--ours_args"):
        parser.add_argument(flag, required=flag != "--ours_args")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Path]:
    """The arguments and the checked fork checkout; BenchError for a bad one."""
    args = build_parser().parse_args(argv)
    fork_src = check_fork_src(args.fork_src)
    args.ours_args = args.ours_args or [""]
    if args.worker is None:
        for ours_args in args.ours_args:
            ours_options(ours_args, args.dtype)  # refuse a bad flag before minutes of setup
        if args.repeats < 1:
            raise BenchError("--repeats must be at least 1")
    return args, fork_src


def notes_for(args: argparse.Namespace, fork_src: Path) -> list[str]:
    from bench.common import portable_command

    commit = args.fork_commit
    if commit is None:
        git = subprocess.run(["git", "-C", str(fork_src), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True)
        lines = git.stdout.split()
        own = git.returncode == 0 and len(lines) == 2 and Path(lines[0]).resolve() == fork_src  # not a repo around it
        commit = lines[1] if own else "unknown (not a git checkout)"
    return [
        "command: " + portable_command("bench/vs_fork.py", sys.argv[1:]),
        f"fork: github.com/woct0rdho/ACE-Step, commit {commit}; its step as trainer_new.py runs it (module "
        "docstring of bench/vs_fork.py: what it does and the CPU changes).",
        f"ours: acestep.families.v1.probe.TrainingStepProbe with the trainer flags in `ours_args` (base dtype "
        f"{args.dtype} unless given); 'our options' lists the flags that differ from the trainer's defaults.",
        "same case for all: random weights of the published layout (bf16) written once, loaded by each side's "
        f"from_pretrained; one song, {args.lyric_tokens} lyric tokens, {args.text_tokens} prompt tokens, MERT + "
        "mHuBERT targets; the same timestep index and noise (seed "
        f"{args.seed}); the fork's LoRA config (r 64, alpha 1, rsLoRA, to_q/to_k/to_v/to_out.0) on both.",
        "one worker process per implementation, all loaded first, then stepped in turns (fork, ours, fork, "
        "ours...): other work on this shared machine (other helpers use the same 2 cores) slows both alike, which "
        "is what makes the times comparable; absolute times are not. 'time / fork' divides the medians, 'paired' is "
        "the median of the per-round ratios (steadier when the load drifts). "
        f"{args.repeats} timed steps each after step 1 (warm-up; creates the optimizer state).",
        "LoRA dtype: diffusers' add_adapter (PEFT) creates the fork's factors in the base dtype, so they and their "
        "AdamW state are bf16; ours holds them in fp32 (acestep.training.model.attach_lora).",
        "tensor peak: our TensorMemoryTracker in both workers, one extra step: weights, LoRA factors, gradients, "
        "optimizer state, batch and activations. Worker peak RSS adds the interpreter, libraries and the CPU "
        "allocator's cache (and the loading).",
        f"loss step 1: the loss before any update (LoRA B factors are zero, so the base model's). It agrees "
        f"when within {args.loss_rtol:g} relative: both compute in bf16 but round at different places (the fork "
        "casts the batch, noise, sigma and the timestep to bf16 before the forward, ours keeps them fp32 and "
        "lets autocast round inside), which moves a bf16 loss by parts per thousand, not by percent; an fp8 "
        "base adds its quantization error.",
    ]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:2] == ["--worker", "fork"]:  # before anything imports our acestep
            worker_args = build_worker_parser().parse_args(argv)
            return fork_worker(Path(worker_args.case), check_fork_src(worker_args.fork_src), worker_args.dtype)
        sys.path.insert(0, str(REPO))
        args, fork_src = parse_args(argv)
        if args.worker == "ours":
            return ours_worker(Path(args.case), args.ours_args[0], args.dtype)
        run(args, fork_src)
    except BenchError as error:
        raise SystemExit(f"error: {error}") from None


def run(args: argparse.Namespace, fork_src: Path) -> None:
    from bench.common import bf16_warning, machine_description, machine_tag, write_results

    warning = bf16_warning(args.dtype, "cpu")
    if warning:
        print(f"warning: {warning}", flush=True)
    rows = []
    for blocks in [int(b) for b in args.blocks.split(",")]:
        for seconds in [float(s) for s in args.seconds.split(",")]:
            rows += run_case(args, fork_src, blocks, seconds)
    machine = {**machine_description(), "device": "cpu", "dtype": args.dtype}
    stem = args.stem or f"vs_fork_{machine_tag(machine, 'cpu')}"
    json_path, md_path = write_results(stem, rows, COLUMNS, machine, "Our LoRA training step against the fork's, "
                                       f"cpu {args.dtype}, in turns", notes_for(args, fork_src))
    print(f"wrote {json_path} and {md_path}")
    disagree = [f"{r['blocks']} blocks {r['audio_s']:g} s {r['implementation']} {r['ours_args']!r}: "
                f"{r['loss_rel_diff']:.2e}" for r in rows if not r["loss_agrees"]]
    if disagree:
        raise BenchError(f"step-1 losses differ from the fork's by more than {args.loss_rtol:g}: "
                         + "; ".join(disagree))


if __name__ == "__main__":
    main()
