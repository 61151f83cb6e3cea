"""Will an ACE-Step 1.5 LoRA run fit? Training memory of the 2B and XL 4B DiTs, and a measured step to check it.

Parameter counts come from diffusers' AceStepTransformer1DModel (and AceStepConditionEncoder, when the dataset
stores the encoder's inputs and it runs in the step) built on the meta device, the LoRA attached by PEFT as the
trainer does. Activation terms are counted per token of one step (bf16 autocast, gradient checkpointing per
layer); `measure_step` runs the same step on random weights with TensorMemoryTracker (tests, bench/).
"""

from __future__ import annotations

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
from acestep.training.planner import DTYPE_BYTES, OPTIMIZER_STATE_BYTES, DeviceFit, ddp_line, ddp_parts

from .objective import TimestepSampler, V15Step
from .training import LATENT_FRAMES_PER_SECOND

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


def _meta_dit(config: dict) -> torch.nn.Module:
    from diffusers import AceStepTransformer1DModel

    with torch.device("meta"):
        return AceStepTransformer1DModel(**config)


def full_config(config: dict) -> dict:
    """The DiT's whole config (diffusers' defaults filled in)."""
    return dict(_meta_dit(config).config)


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


def parameter_counts(config: dict, settings: LoraSettings, rank: int | None) -> tuple[int, int]:
    """(base DiT parameters, trainable LoRA parameters at `rank` or the config's r)."""
    if rank and settings.adapter_type != "lora":  # counted at the rank itself (not linear in r)
        settings = dataclasses.replace(settings, r=rank)
    settings_dict = dataclasses.asdict(settings)
    settings_dict["target_modules"] = list(settings.target_modules)
    base, per_rank, fixed = _counts(json.dumps(config, sort_keys=True), json.dumps(settings_dict, sort_keys=True))
    return base, per_rank * (rank or settings.r) + fixed


def activation_terms(request: V15PlanRequest, config: dict, lora_parameters: int) -> dict[str, int]:
    """Bytes of the backward peak beyond weights, LoRA state and the batch (checkpointing keeps one layer's input
    per layer; one layer is recomputed at a time). On CUDA attention runs in fused SDPA kernels that never hold the
    [heads, tokens, tokens] scores; on the CPU the sliding-window layers' masked SDPA does (one such matrix)."""
    e = DTYPE_BYTES[request.base_dtype]
    hidden, mlp, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    tokens = request.batch_size * math.ceil(request.frames / config["patch_size"])
    frames = request.batch_size * request.frames
    conditions = request.batch_size * request.condition_tokens
    sequence = math.ceil(request.frames / config["patch_size"])
    scores = request.batch_size * config["num_attention_heads"] * sequence**2 * e if request.device == "cpu" else 0
    return {
        "attention scores (CPU only)": scores,
        "DiT input/output copies (fp32)": frames * (3 * LATENT_CHANNELS + LATENT_CHANNELS) * 4 * IO_COPIES,
        "layer inputs (checkpoints)": layers * tokens * hidden * e,
        "one layer recomputed": tokens * (RECOMPUTE_BYTES_PER_HIDDEN * hidden + RECOMPUTE_BYTES_PER_MLP * mlp) * e // 2,
        "conditions (projected)": conditions * hidden * e,
        "sliding-window mask": sequence**2 * e,
        "loss tensors (fp32)": frames * LATENT_CHANNELS * 4 * LOSS_TENSORS,
        "LoRA gradients": lora_parameters * 4,
    }


def estimate(request: V15PlanRequest) -> V15Plan:
    if request.optimizer not in OPTIMIZER_STATE_BYTES:
        raise AcestepError(f"--optimizer must be one of {sorted(OPTIMIZER_STATE_BYTES)}, not {request.optimizer!r}")
    if request.duration <= 0 or request.batch_size < 1 or (request.rank is not None and request.rank < 1):
        raise AcestepError("--duration must be positive, --batch_size and --rank at least 1")
    config = full_config(request.config)
    settings = LoraSettings.from_json(request.lora_config)
    base, lora = parameter_counts(request.config, settings, request.rank)
    e = DTYPE_BYTES[request.base_dtype]
    encoder_width = config.get("encoder_hidden_size") or config["hidden_size"]
    batch = request.batch_size * (request.frames * (LATENT_CHANNELS * 3 + 1) + request.condition_tokens
                                  * (encoder_width + 1)) * 4
    parts = {
        "base weights": base * e,
        "LoRA weights (fp32)": lora * 4,
        "optimizer state": lora * OPTIMIZER_STATE_BYTES[request.optimizer],
        "LoRA 16-bit copies (autocast)": lora * e if e == 2 else 0,
        "micro-batch": batch,
        **ddp_parts(request.devices, lora),
    }
    parts.update({f"activations: {k}": v for k, v in activation_terms(request, config, lora).items()})
    return V15Plan(request=request, base_parameters=base, lora_parameters=lora, parts=parts)


def format_plan(plan: V15Plan) -> str:
    r = plan.request
    rank = r.rank or LoraSettings.from_json(r.lora_config).r
    lines = [
        f"ACE-Step 1.5 {r.model.upper()} training plan: {r.duration:g} s crops ({r.frames} latent frames), batch "
        f"{r.batch_size}, LoRA rank {rank}, {r.optimizer}, base {r.base_dtype}, {r.condition_tokens} condition tokens",
        f"Base parameters (DiT): {plan.base_parameters:,}; LoRA parameters: {plan.lora_parameters:,}",
    ]
    lines += ddp_line(r.devices, r.batch_size)
    lines += plan.breakdown_lines(44)
    return "\n".join(lines)


def random_dit(config: dict, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> torch.nn.Module:
    """The DiT of `config` with random weights, allocated once in `dtype` (no fp32 copy of a 4B model)."""
    model = _meta_dit(config).to(dtype)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    return model


@dataclass
class StepMeasurement:
    seconds: float
    tensor_peak_bytes: int


def measure_step(request: V15PlanRequest, model: torch.nn.Module | None = None) -> StepMeasurement:
    """One optimizer step as the trainer runs it (LoRA, checkpointing, autocast in the base dtype, AdamW), on
    random weights and a synthetic batch, its tensor peak tracked; a first untracked step creates AdamW's state."""
    from acestep.training.memory import TensorMemoryTracker
    from acestep.training.model import DTYPES, attach_lora

    dtype = DTYPES[request.base_dtype]
    config = request.config
    model = model if model is not None else random_dit(config, dtype)
    settings = LoraSettings.from_json(request.lora_config)
    if request.rank is not None:
        settings = dataclasses.replace(settings, r=request.rank)
    attach_lora(model, dataclasses.replace(settings, lora_dropout=0.0), "probe")
    model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.8, 0.9))
    width = full_config(config).get("encoder_hidden_size") or full_config(config)["hidden_size"]
    g = torch.Generator().manual_seed(1)
    b, frames = request.batch_size, request.frames
    batch = {
        "target_latents": torch.randn(b, frames, LATENT_CHANNELS, generator=g),
        "attention_mask": torch.ones(b, frames),
        "context_latents": torch.randn(b, frames, 2 * LATENT_CHANNELS, generator=g),
        "encoder_hidden_states": torch.randn(b, request.condition_tokens, width, generator=g),
        "encoder_attention_mask": torch.ones(b, request.condition_tokens),
    }
    step = V15Step(TimestepSampler("turbo"), None, 0.0)
    autocast = dtype != torch.float32

    def once() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            loss, _ = step(model, batch, torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    once()
    tracker = TensorMemoryTracker()
    tracker.track_module(model)
    tracker.track_optimizer(optimizer)
    tracker.track(*batch.values())
    started = time.perf_counter()
    with tracker:
        once()
    return StepMeasurement(seconds=time.perf_counter() - started, tensor_peak_bytes=tracker.peak)
