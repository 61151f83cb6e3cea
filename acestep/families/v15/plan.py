"""Will an ACE-Step 1.5 LoRA run fit? Training memory of the 2B and XL 4B DiTs, and a measured step to check it.

Parameter counts come from diffusers' AceStepTransformer1DModel (and AceStepConditionEncoder, when the dataset
stores the encoder's inputs and it runs in the step) built on the meta device, the LoRA attached by PEFT as the
trainer does. Activation terms are counted per token of one step (bf16 autocast, gradient checkpointing per
layer); `measure_step` runs the same step on random weights with TensorMemoryTracker (tests, bench/).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from acestep.core.errors import AcestepError
from acestep.lora import LoraSettings
from acestep.training.fp8 import SCALE_BYTES, is_quantizable
from acestep.training.planner import (
    DEFAULT_DURATION,
    FP8,
    OPTIMIZER_STATE_BYTES,
    DeviceFit,
    checkpointing_text,
    compute_bytes,
    ddp_line,
    ddp_parts,
    fix_lines,
)

from .blocks import BLOCKS, LATENT_FRAMES_PER_SECOND
from .objective import TimestepSampler, V15Step

DEFAULT_LORA_CONFIG = Path(__file__).resolve().parents[3] / "config" / "lora_config_v15.json"
# diffusers' AceStepTransformer1DModel defaults are the 2B; the XL 4B as its published config.json has it.
MODELS: dict[str, dict[str, Any]] = {
    "2b": {},
    "xl": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 128, "encoder_hidden_size": 2048},
}
ENCODER_CONFIG = {"hidden_size": 2048, "intermediate_size": 6144, "num_attention_heads": 16, "num_key_value_heads": 8,
                  "head_dim": 128}  # the condition encoder of both (the XL's is as narrow as the 2B's)
LATENT_CHANNELS = 64
# fp32 tensors over [frames, 64] the step holds at its peak: latents, noise, x_t, target, prediction and error
LOSS_TENSORS = 6
# Per token of one recomputed layer at the backward peak (its forward tensors kept for backward plus the gradients
# being formed, in 16-bit): bytes per hidden channel and per MLP channel. Not derived op by op: the slope of
# TensorMemoryTracker peaks of CPU steps at widths 512 and 1024 (about 65 bytes per hidden channel with MLP 3x),
# split between the two widths; tests/test_v15_plan.py keeps the whole estimate within 15 % of measured steps.
RECOMPUTE_BYTES_PER_HIDDEN = 20
RECOMPUTE_BYTES_PER_MLP = 15
# A layer run without checkpointing keeps this share of a recomputed layer's bytes until its backward, and its
# backward's transient gradients take BACKWARD_SHARE on top (fitted to TensorMemoryTracker peaks of CPU steps
# with 0, 1 and all layers checkpointed at widths 256-512; tests/test_v15_plan.py checks the whole estimate).
SAVED_SHARE = 0.9
BACKWARD_SHARE = 0.1
BASE_DTYPES = ("bf16", "fp16", "fp32", FP8)
# fp32 copies of the DiT's input and output over frames: context ++ x_t (192 channels) and the 64-channel output,
# concatenated, padded and transposed around the patch convolutions (about one of each left at the peak)
IO_COPIES = 1


@dataclass(frozen=True)
class V15PlanRequest:
    model: str = "2b"
    duration: float = 120.0
    rank: int | None = None
    batch_size: int = 1
    gpu_gb: float = 10.0
    optimizer: str = "adamw"
    base_dtype: str = "bf16"
    lora_config: str | Path = DEFAULT_LORA_CONFIG
    condition_tokens: int = 512  # prompt + lyrics + timbre tokens after the condition encoder
    device: str = "cuda"
    transformer_config: dict | None = None  # None: the published model of `model`
    devices: int = 1  # GPUs training together (DDP); the estimate is per GPU
    checkpointed_blocks: int | None = None  # gradient checkpointing of the first N layers (None: all of them)

    @property
    def block_count(self) -> int:
        return full_config(self.config)["num_hidden_layers"]

    def plan(self) -> V15Plan:
        return estimate(self)

    @property
    def frames(self) -> int:
        return max(1, math.ceil(self.duration * LATENT_FRAMES_PER_SECOND))

    @property
    def config(self) -> dict:
        if self.transformer_config is not None:
            return dict(self.transformer_config)
        if self.model not in MODELS:
            raise AcestepError(f"unknown ACE-Step 1.5 model {self.model!r}; choose one of {', '.join(MODELS)}")
        return dict(MODELS[self.model])


@dataclass
class V15Plan(DeviceFit):
    request: V15PlanRequest
    base_parameters: int
    lora_parameters: int
    parts: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        return format_plan(self)


def _meta_dit(config: dict) -> torch.nn.Module:
    from diffusers import AceStepTransformer1DModel

    with torch.device("meta"):
        return AceStepTransformer1DModel(**config)


def full_config(config: dict) -> dict:
    """The DiT's whole config (diffusers' defaults filled in)."""
    return dict(_full_config_cached(json.dumps(config, sort_keys=True)))


@lru_cache(maxsize=8)
def _full_config_cached(config_key: str) -> dict:
    return dict(_meta_dit(json.loads(config_key)).config)


@lru_cache(maxsize=8)
def _counts(config_key: str, settings_key: str) -> tuple[int, int, int]:
    """(base parameters, LoRA parameters per unit of rank, LoRA parameters of rank_pattern modules)."""
    from acestep.training.model import attach_lora

    model = _meta_dit(json.loads(config_key))
    base = sum(p.numel() for p in model.parameters())
    settings = LoraSettings.from_dict(json.loads(settings_key))
    attach_lora(model, settings, "plan")
    if settings.adapter_type != "lora":  # DoRA, LoHa, LoKr: every trainable tensor as PEFT made it, at this r
        return base, 0, sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_rank = fixed = 0
    for module in model.modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or "plan" not in lora_a:
            continue
        rank, fan_in = lora_a["plan"].weight.shape
        fan_out = module.lora_B["plan"].weight.shape[0]
        if rank == settings.r:
            per_rank += fan_in + fan_out
        else:
            fixed += rank * (fan_in + fan_out)
    return base, per_rank, fixed


@lru_cache(maxsize=8)
def fp8_counts(config_key: str) -> tuple[int, int, int]:
    """(weights, output channels, weights of the largest layer) that --base_dtype fp8 stores in fp8 (BLOCKS)."""
    model = _meta_dit(json.loads(config_key))
    layers = [m for name, m in model.named_modules() if is_quantizable(name, m, BLOCKS.fp8_prefixes)]
    return (sum(m.weight.numel() for m in layers), sum(m.weight.shape[0] for m in layers),
            max((m.weight.numel() for m in layers), default=0))


def parameter_counts(config: dict, settings: LoraSettings, rank: int | None) -> tuple[int, int]:
    """(base DiT parameters, trainable LoRA parameters at `rank` or the config's r)."""
    if rank and settings.adapter_type != "lora":  # counted at the rank itself (not linear in r)
        settings = dataclasses.replace(settings, r=rank)
    settings_dict = dataclasses.asdict(settings)
    settings_dict["target_modules"] = list(settings.target_modules)
    base, per_rank, fixed = _counts(json.dumps(config, sort_keys=True), json.dumps(settings_dict, sort_keys=True))
    return base, per_rank * (rank or settings.r) + fixed


def activation_terms(request: V15PlanRequest, config: dict, lora_parameters: int) -> dict[str, int]:
    """Bytes of the backward peak beyond weights, LoRA state and the batch. A checkpointed layer keeps its input;
    a layer run without checkpointing (the last ones) keeps its forward tensors for backward. Backward starts
    with the uncheckpointed layers, so the peak holds all their tensors plus the transient gradients of one
    layer's backward; with every layer checkpointed, one recomputed layer instead. On CUDA attention runs in fused
    SDPA kernels that never hold the [heads, tokens, tokens] scores; on the CPU the sliding-window layers' masked
    SDPA does (one such matrix)."""
    e = compute_bytes(request.base_dtype)
    hidden, mlp, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    checkpointed = layers if request.checkpointed_blocks is None else request.checkpointed_blocks
    if not 0 <= checkpointed <= layers:
        raise AcestepError(f"the model has {layers} blocks: cannot checkpoint {checkpointed}")
    tokens = request.batch_size * math.ceil(request.frames / config["patch_size"])
    frames = request.batch_size * request.frames
    conditions = request.batch_size * request.condition_tokens
    sequence = math.ceil(request.frames / config["patch_size"])
    scores = request.batch_size * config["num_attention_heads"] * sequence**2 * e if request.device == "cpu" else 0
    layer = tokens * (RECOMPUTE_BYTES_PER_HIDDEN * hidden + RECOMPUTE_BYTES_PER_MLP * mlp) * e // 2
    if request.base_dtype == FP8:  # measured: an fp8 layer keeps one MLP-wide 16-bit tensor less for backward
        layer -= tokens * mlp * e
    saved = (layers - checkpointed) * int(layer * SAVED_SHARE)
    terms = {
        "attention scores (CPU only)": scores,
        "DiT input/output copies (fp32)": frames * (3 * LATENT_CHANNELS + LATENT_CHANNELS) * 4 * IO_COPIES,
        "layer inputs (checkpoints)": checkpointed * tokens * hidden * e,
    }
    if saved + int(layer * BACKWARD_SHARE) > layer:  # the backward of the uncheckpointed layers is the peak
        terms["saved by uncheckpointed layers"] = saved
        terms["one layer's backward"] = int(layer * BACKWARD_SHARE)
    else:  # the recomputation of a checkpointed layer, once the uncheckpointed ones are done
        terms["one layer recomputed"] = layer
    if request.base_dtype == FP8:  # one layer's weight dequantized at a time
        terms["one dequantized fp8 layer"] = fp8_counts(json.dumps(request.config, sort_keys=True))[2] * e
    terms.update({
        "conditions (projected)": conditions * hidden * e,
        "sliding-window mask": sequence**2 * e,
        "loss tensors (fp32)": frames * LATENT_CHANNELS * 4 * LOSS_TENSORS,
        "LoRA gradients": lora_parameters * 4,
    })
    return terms


def estimate(request: V15PlanRequest) -> V15Plan:
    if request.optimizer not in OPTIMIZER_STATE_BYTES:
        raise AcestepError(f"--optimizer must be one of {sorted(OPTIMIZER_STATE_BYTES)}, not {request.optimizer!r}")
    if request.base_dtype not in BASE_DTYPES:
        raise AcestepError(f"--base_dtype must be one of {sorted(BASE_DTYPES)}, not {request.base_dtype!r}")
    if request.duration <= 0 or request.batch_size < 1 or (request.rank is not None and request.rank < 1):
        raise AcestepError("--duration must be positive, --batch_size and --rank at least 1")
    config = full_config(request.config)
    settings = LoraSettings.from_json(request.lora_config)
    base, lora = parameter_counts(request.config, settings, request.rank)
    e = compute_bytes(request.base_dtype)
    fp8_saved = 0
    if request.base_dtype == FP8:  # 1 of 2 bytes per quantized weight, less one fp32 scale per output channel
        weights, rows, _ = fp8_counts(json.dumps(request.config, sort_keys=True))
        fp8_saved = weights - rows * SCALE_BYTES
    encoder_width = config.get("encoder_hidden_size") or config["hidden_size"]
    batch = request.batch_size * (request.frames * (LATENT_CHANNELS * 3 + 1) + request.condition_tokens
                                  * (encoder_width + 1)) * 4
    parts = {
        "base weights": base * e - fp8_saved,
        "LoRA weights (fp32)": lora * 4,
        "optimizer state": lora * OPTIMIZER_STATE_BYTES[request.optimizer],
        "LoRA 16-bit copies (autocast)": lora * e if e == 2 else 0,
        "micro-batch": batch,
        **ddp_parts(request.devices, lora),
    }
    parts.update({f"activations: {k}": v for k, v in activation_terms(request, config, lora).items()})
    return V15Plan(request=request, base_parameters=base, lora_parameters=lora, parts=parts)


def request_for_checkpoint(checkpoint: Any) -> V15PlanRequest:
    """The request for the DiT of a resolved 1.5 checkpoint, either layout (config.json only)."""
    from .checkpoint import _read_json, component_configs

    if checkpoint.dit is None:
        config = _read_json(checkpoint.root / "transformer" / "config.json")
    else:
        config = component_configs(_read_json(checkpoint.dit / "config.json"))["transformer"]
    model_config = {k: v for k, v in config.items() if not k.startswith("_")}
    return V15PlanRequest(model="xl" if model_config.get("hidden_size", 2048) > 2048 else "2b",
                          transformer_config=model_config)


def request_for_run(config: Any, gpu_gb: float, device: str, base_dtype: str,
                    transformer_config: dict | None = None) -> V15PlanRequest:
    """The 1.5 request for a training run (its TrainConfig) on the DiT of `transformer_config`."""
    model_config = {k: v for k, v in (transformer_config or {}).items() if not k.startswith("_")}
    wide = model_config.get("hidden_size", 2048) > 2048
    lora = {"lora_config": config.lora_config_path} if config.lora_config_path else {}
    return V15PlanRequest(model="xl" if wide else "2b", duration=config.max_duration or DEFAULT_DURATION,
                          batch_size=config.batch_size, gpu_gb=gpu_gb, optimizer=config.optimizer,
                          base_dtype=base_dtype, device=device, transformer_config=model_config or None, **lora)


def format_plan(plan: V15Plan) -> str:
    r = plan.request
    rank = r.rank or LoraSettings.from_json(r.lora_config).r
    lines = [
        f"ACE-Step 1.5 {r.model.upper()} training plan: {r.duration:g} s crops ({r.frames} latent frames), batch "
        f"{r.batch_size}, LoRA rank {rank}, {r.optimizer}, base {r.base_dtype}, {r.condition_tokens} condition tokens",
        f"Base parameters (DiT): {plan.base_parameters:,}; LoRA parameters: {plan.lora_parameters:,}",
    ]
    lines += ddp_line(r.devices, r.batch_size)
    lines.append(f"Gradient checkpointing: {checkpointing_text(r)} (the first ones)")
    lines += plan.breakdown_lines(44)
    lines += fix_lines(plan)
    return "\n".join(lines)


def random_dit(config: dict, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> torch.nn.Module:
    """The DiT of `config` with random weights, allocated once in `dtype` (no fp32 copy of a 4B model), with the
    row-major residual stream our loader gives it (layout.py)."""
    from .layout import contiguous_residual_stream

    model = _meta_dit(config).to(dtype)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    contiguous_residual_stream(model)
    return model


@dataclass
class StepMeasurement:
    seconds: float
    tensor_peak_bytes: int


class StepProbe:
    """One optimizer step as the trainer runs it (fp8 base, LoRA, checkpointing of the first N layers, autocast in
    the compute dtype, AdamW) on random weights and a synthetic batch; `run` times it and tracks its tensor peak.
    One model serves several checkpointing settings in turn (bench/v15_train_step.py compares them side by side)."""

    def __init__(self, request: V15PlanRequest, model: torch.nn.Module | None = None) -> None:
        from acestep.training.fp8 import quantize_base
        from acestep.training.model import DTYPES, attach_lora

        self.dtype = DTYPES["bf16" if request.base_dtype == FP8 else request.base_dtype]
        config = request.config
        self.model = model if model is not None else random_dit(config, self.dtype)
        if request.base_dtype == FP8:
            quantize_base(self.model, self.dtype, BLOCKS.fp8_prefixes)
        settings = LoraSettings.from_json(request.lora_config)
        if request.rank is not None:
            settings = dataclasses.replace(settings, r=request.rank)
        attach_lora(self.model, dataclasses.replace(settings, lora_dropout=0.0), "probe")
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.8, 0.9))
        width = full_config(config).get("encoder_hidden_size") or full_config(config)["hidden_size"]
        g = torch.Generator().manual_seed(1)
        b, frames = request.batch_size, request.frames
        self.batch = {
            "target_latents": torch.randn(b, frames, LATENT_CHANNELS, generator=g),
            "attention_mask": torch.ones(b, frames),
            "context_latents": torch.randn(b, frames, 2 * LATENT_CHANNELS, generator=g),
            "encoder_hidden_states": torch.randn(b, request.condition_tokens, width, generator=g),
            "encoder_attention_mask": torch.ones(b, request.condition_tokens),
        }
        self.step = V15Step(TimestepSampler("turbo"), None, 0.0)

    def run(self, checkpointed: int | None, track: bool = True) -> StepMeasurement:
        """One step with the first `checkpointed` layers checkpointed (None: all); the tensor peak when `track`."""
        from acestep.training.checkpointing import checkpoint_first_blocks
        from acestep.training.memory import TensorMemoryTracker

        checkpoint_first_blocks(self.model, BLOCKS.blocks(self.model), checkpointed)
        tracker = TensorMemoryTracker()
        if track:
            tracker.track_module(self.model)
            tracker.track_optimizer(self.optimizer)
            tracker.track(*self.batch.values())
        started = time.perf_counter()
        with tracker if track else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype != torch.float32):
                generators = [torch.Generator().manual_seed(i) for i in range(self.batch["target_latents"].shape[0])]
                loss, _ = self.step(self.model, self.batch, generators)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return StepMeasurement(seconds=time.perf_counter() - started, tensor_peak_bytes=tracker.peak if track else 0)


def measure_step(request: V15PlanRequest, model: torch.nn.Module | None = None) -> StepMeasurement:
    """The request's step (StepProbe), tracked after a first untracked step that creates AdamW's state."""
    probe = StepProbe(request, model)
    probe.run(request.checkpointed_blocks, track=False)
    return probe.run(request.checkpointed_blocks)
