"""ACE-Step v1's memory planner terms: an estimate of training memory, and what to change when it does not fit.

`python -m acestep.plan --duration 360 --rank 64 [--batch_size 1] [--gpu_gb 10] [--optimizer adamw] [--devices 2]`
(the CLI: acestep/plan/cli.py)

With --devices N (DDP), every GPU holds all of it (a full copy of the base, the LoRA, its optimizer state, one
micro-batch) plus DDP's gradient buckets; what N multiplies is the songs per optimizer step, not the crop length.

Parameter counts come from the model config (the model is built on the meta device, the LoRA attached by PEFT
exactly as the trainer does). Activation terms are counted per token from the operations of a training step
(bf16 autocast, gradient checkpointing per block): what each phase holds at its peak is listed in
`activation_terms`. bench/train_step.py measures the same step with `TensorMemoryTracker` and puts both side by
side (bench/results/). The GPU adds its own overhead on top of tensor memory (CUDA context, cuBLAS workspace,
allocator cache): `CUDA_CONTEXT_GB` and `ALLOCATOR_SLACK` are assumptions, not measurements.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from acestep.core.errors import AcestepError
from acestep.data.generate_args import MAX_DURATION_S
from acestep.data.sizing import MERT, MHUBERT, SAMPLE_RATE, ssl_frames
from acestep.families.v1.blocks import BLOCKS
from acestep.families.v1.lyrics.tokenizer import MAX_TRAINING_TOKENS
from acestep.families.v1.models.attention import CrossAttention
from acestep.families.v1.songs import LATENT_FRAMES_PER_SECOND, frames_for_seconds
from acestep.lora import LoraSettings
from acestep.training.fp8 import SCALE_BYTES, is_quantizable
from acestep.training.planner import (
    DEFAULT_DURATION,
    DTYPE_BYTES,
    FP8,
    OPTIMIZER_STATE_BYTES,
    DeviceFit,
    checkpointing_text,
    compute_bytes,
    ddp_line,
    ddp_parts,
    fix_lines,
)

DEFAULT_LORA_CONFIG = Path(__file__).resolve().parents[3] / "config" / "lora_config_transformer_only.json"
BASE_DTYPES = (*DTYPE_BYTES, FP8)
# Input bounds: far above any real run, low enough that every answer is immediate.
MAX_GPU_GB = 4096.0
MAX_BATCH_SIZE = 1024
MAX_RANK = 4096
MAX_TEXT_TOKENS = 4096
MAX_DEVICES = 4096
# Per token and channel, bytes at the backward peak of one recomputed block in 16-bit (its forward tensors kept
# for backward: normalised input, q/k/v and their rotated fp32 copies, the linear-attention products, the
# GLUMBConv hidden states, plus the gradients being formed). Not derived op by op: it is the per-token slope of
# the backward peak measured with TensorMemoryTracker at widths 64 and 2560 (96.8), rounded; less the 3 copies of
# the hidden states PEFT's input cast made for the LoRA layers, which the trainer no longer makes (6 bytes; the
# peak at width 2560 and 645 tokens fell by that, bf16 and fp8 alike: acestep.training.model.attach_lora).
BLOCK_RECOMPUTE_BYTES_PER_CHANNEL = 90
# Per token and channel, bytes in 16-bit that a block run without checkpointing keeps for backward (its input
# included), and the transient gradients of its backward on top. Measured like the above: each block taken out
# of checkpointing raised the tensor peak by 87-93 (widths 512 and 1024, 30 and 60 s; ~99 at width 128), and
# the first one by 3-18 more than the recomputation it replaced, and without checkpointing at width 2560 (2 and
# 4 blocks, 30 s) 1 % above the estimate that counted 24; so 32, held from the start of backward on.
BLOCK_SAVED_BYTES_PER_CHANNEL = 100
BLOCK_BACKWARD_BYTES_PER_CHANNEL = 32
# Per token, fp32 tensors of the latent-space loss (latents, noise, noisy input, prediction, error, mask):
# each in_channels x patch height values.
LOSS_TENSORS = 4
PATCH_EMBED_CHANNELS_PER_INPUT = 256  # the patch embedding widens 8 channels x 16 rows to 2048 before projecting
MODELS = ("v1", "2b", "xl")


@dataclass(frozen=True)
class ParameterCounts:
    """Base weights by role: `unused` are the checkpoint's cross-attention add_* layers no forward pass reads."""

    blocks: int
    unused: int
    ssl_projectors: int
    lyric_encoder: int
    other: int
    buffer_bytes_fp32: int
    # per role: (weights, output channels) that --base_dtype fp8 stores in fp8 (acestep.training.fp8)
    fp8: dict[str, tuple[int, int]] = field(default_factory=dict)
    fp8_largest: int = 0  # weights of the largest such layer: its 16-bit copy exists while it runs

    @property
    def total(self) -> int:
        return self.blocks + self.unused + self.ssl_projectors + self.lyric_encoder + self.other


@dataclass(frozen=True)
class LoraCounts:
    """Trainable parameters, split so a lower rank can be planned without attaching again."""

    per_rank: int  # parameters per unit of rank of the modules without a rank_pattern entry
    fixed: int  # parameters of modules whose rank is fixed by rank_pattern
    rank: int
    in_lyric_encoder: bool
    # LoRA layers of one block that read the latent tokens (not the conditions): each keeps a rank-wide product
    # per token for backward when its block runs without checkpointing
    token_layers_per_block: int = 0

    def at_rank(self, rank: int) -> int:
        return self.per_rank * rank + self.fixed


@dataclass(frozen=True)
class PlanRequest:
    duration: float = 360.0
    rank: int | None = None  # None: the LoRA config's r
    batch_size: int = 1
    gpu_gb: float = 10.0
    optimizer: str = "adamw"
    base_dtype: str = "bf16"
    lora_config: str | Path = DEFAULT_LORA_CONFIG
    ssl: bool = True
    lyric_tokens: int = 1024
    text_tokens: int = 64
    device: str = "cuda"
    release_unused_weights: bool = True  # the trainer's default: add_* layers (and projectors without SSL) freed
    transformer_config: dict | None = None  # None: the published model
    devices: int = 1  # GPUs training together (DDP); the estimate is per GPU
    checkpointed_blocks: int | None = None  # gradient checkpointing of the first N blocks (None: all of them)

    @property
    def frames(self) -> int:
        return frames_for_seconds(self.duration)

    @property
    def block_count(self) -> int:
        return _config(self)["num_layers"]

    def plan(self) -> MemoryPlan:
        return estimate(self)


def request_for_run(transformer_config: dict, ssl: bool, config: Any, gpu_gb: float, device: str,
                    base_dtype: str) -> PlanRequest:
    """The v1 request for a training run (its TrainConfig) on the model of `transformer_config`."""
    lora = {"lora_config": config.lora_config_path} if config.lora_config_path else {}
    return PlanRequest(duration=config.max_duration or DEFAULT_DURATION, batch_size=config.batch_size, gpu_gb=gpu_gb,
                       optimizer=config.optimizer, base_dtype=base_dtype, ssl=ssl, device=device,
                       release_unused_weights=config.release_unused_weights,
                       transformer_config={k: v for k, v in transformer_config.items() if not k.startswith("_")},
                       **lora)


@dataclass
class MemoryPlan(DeviceFit):
    request: PlanRequest
    parameters: ParameterCounts
    lora_parameters: int
    parts: dict[str, int] = field(default_factory=dict)  # bytes of each term of the peak
    peak_phase: str = ""

    @property
    def tokens_per_step(self) -> int:
        return self.request.batch_size * self.request.frames

    def text(self) -> str:
        return format_plan(self)


def _config(request: PlanRequest) -> dict:
    from acestep.families.v1.models.configs import PUBLISHED_TRANSFORMER_CONFIG

    return dict(request.transformer_config or PUBLISHED_TRANSFORMER_CONFIG)


def _meta_model(config: dict) -> torch.nn.Module:
    from acestep.families.v1.models import ACEStepTransformer2DModel

    with torch.device("meta"):
        return ACEStepTransformer2DModel(**config)


def count_parameters(config: dict) -> ParameterCounts:
    """Parameter counts by role, from the model built on the meta device (no memory, no weights needed)."""
    return _parameters_cached(json.dumps(config, sort_keys=True))


def _group(name: str) -> str:
    """The role of a parameter or module by its name (the `unused` add_* layers are told apart by identity)."""
    if name.startswith("transformer_blocks."):
        return "blocks"
    if name.startswith("projectors."):
        return "ssl_projectors"
    if name.startswith(("lyric_encoder.", "lyric_embs.")):
        return "lyric_encoder"
    return "other"


@lru_cache(maxsize=8)
def _parameters_cached(config_key: str) -> ParameterCounts:
    """Keyed by the config's JSON: planning a run estimates many variants of the same model."""
    model = _meta_model(json.loads(config_key))
    unused = {
        id(param)
        for module in model.modules() if isinstance(module, CrossAttention)
        for layer in CrossAttention.UNUSED_LAYERS for param in getattr(module, layer).parameters()
    }
    groups = {"blocks": 0, "unused": 0, "ssl_projectors": 0, "lyric_encoder": 0, "other": 0}
    for name, param in model.named_parameters():
        if id(param) in unused:
            groups["unused"] += param.numel()
        else:
            groups[_group(name)] += param.numel()
    fp8 = {group: (0, 0) for group in groups}
    largest = 0
    for name, module in model.named_modules():
        if is_quantizable(name, module, BLOCKS.fp8_prefixes):
            largest = max(largest, module.weight.numel())
            group = "unused" if id(module.weight) in unused else _group(name)
            weights, rows = fp8[group]
            fp8[group] = (weights + module.weight.numel(), rows + module.weight.shape[0])
    buffers = sum(b.numel() * 4 for b in model.buffers())
    return ParameterCounts(**groups, buffer_bytes_fp32=buffers, fp8=fp8, fp8_largest=largest)


@lru_cache(maxsize=8)
def _lora_counts_cached(config_key: str, settings_key: str) -> LoraCounts:
    from acestep.training.model import attach_lora

    config, settings = json.loads(config_key), LoraSettings.from_dict(json.loads(settings_key))
    model = _meta_model(config)
    attach_lora(model, settings, "plan")
    if settings.adapter_type != "lora":  # DoRA, LoHa, LoKr: every trainable tensor as PEFT made it, at this r
        trainable = [(name, p.numel()) for name, p in model.named_parameters() if p.requires_grad]
        return LoraCounts(per_rank=0, fixed=sum(n for _, n in trainable), rank=settings.r,
                          in_lyric_encoder=any(name.startswith("lyric_encoder.") for name, _ in trainable))
    per_rank = fixed = token_layers = 0
    in_lyric = False
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or "plan" not in lora_a:
            continue
        reads_conditions = any(f"cross_attn.{n}" in name for n in ("to_k", "to_v", "add_"))
        token_layers += name.startswith("transformer_blocks.0.") and not reads_conditions
        rank, fan_in = lora_a["plan"].weight.shape
        fan_out = module.lora_B["plan"].weight.shape[0]
        in_lyric |= name.startswith("lyric_encoder.")
        if rank == settings.r:
            per_rank += fan_in + fan_out
        else:
            fixed += rank * (fan_in + fan_out)
    return LoraCounts(per_rank=per_rank, fixed=fixed, rank=settings.r, in_lyric_encoder=in_lyric,
                      token_layers_per_block=token_layers)


def count_lora_parameters(config: dict, settings: LoraSettings) -> LoraCounts:
    """Trainable LoRA parameters as PEFT creates them on the model built from `config`."""
    settings_dict = dataclasses.asdict(settings)
    settings_dict["target_modules"] = list(settings.target_modules)
    return _lora_counts_cached(json.dumps(config, sort_keys=True), json.dumps(settings_dict, sort_keys=True))


def activation_terms(request: PlanRequest, config: dict, lora: LoraCounts,
                     params: ParameterCounts | None = None) -> dict[str, dict[str, int]]:
    """Bytes each phase of one step holds beyond weights, LoRA state and the batch, term by term.

    The phases peak at different moments, so the step's peak is the largest phase, not their sum: the lyric
    encoder (attention scores of one Conformer layer), the patch embedding's 2048-wide intermediate, the end of
    the forward pass (block inputs kept by checkpointing, SSL projector states and their fp32 loss copies), and
    the backward pass (all LoRA gradients, the block inputs, one block's recomputation). Cross-attention runs in
    fused SDPA kernels (CUDA and CPU alike), which never hold the [heads, tokens, context] score matrix.
    """
    e = compute_bytes(request.base_dtype)
    batch, frames = request.batch_size, request.frames
    tokens = batch * frames
    width = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = config["num_layers"]
    lyric_dim = config["lyric_hidden_size"]
    lyric_heads = config.get("lyric_encoder_heads", 16)
    lyric_layers = config.get("lyric_encoder_num_blocks", 6)
    lyrics, context = request.lyric_tokens, 1 + request.text_tokens + request.lyric_tokens
    patch_values = config["in_channels"] * config["patch_size"][0]

    checkpointed = blocks if request.checkpointed_blocks is None else request.checkpointed_blocks
    if not 0 <= checkpointed <= blocks:
        raise AcestepError(f"the model has {blocks} blocks: cannot checkpoint {checkpointed}")
    block_inputs = checkpointed * tokens * width * e
    rank = request.rank or lora.rank
    saved_per_token = width * BLOCK_SAVED_BYTES_PER_CHANNEL * e // 2 + lora.token_layers_per_block * rank * e
    saved = (blocks - checkpointed) * tokens * saved_per_token
    context_states = batch * context * width * e
    loss_tensors = tokens * patch_values * 4 * LOSS_TENSORS
    lyric_peak = batch * (6 * e * lyric_heads * lyrics**2 + 9 * e * lyrics * lyric_dim)
    lyric_inputs = lyric_layers * batch * lyrics * lyric_dim * e if lora.in_lyric_encoder else 0
    patch_embed = tokens * config["in_channels"] * PATCH_EMBED_CHANNELS_PER_INPUT * (e + 2)
    ssl_states = 0
    if request.ssl:
        samples = round(request.duration * SAMPLE_RATE)
        for model, dim in zip((MERT, MHUBERT), config["ssl_latent_dims"]):
            # four 2*width activations of the projector MLP, and two fp32 copies of the resampled prediction
            ssl_states += 4 * tokens * 2 * width * e + 2 * batch * ssl_frames(samples, model) * dim * 4
    recompute = tokens * width * BLOCK_RECOMPUTE_BYTES_PER_CHANNEL * e // 2
    lora_grads = lora.at_rank(request.rank or lora.rank) * 4
    phases = {
        "lyric encoder": {"one Conformer layer": lyric_peak, "its layer inputs (checkpoints)": lyric_inputs},
        "patch embedding": {"2048-wide intermediate": patch_embed, "conditions": context_states},
        "end of forward": {
            "block inputs (checkpoints)": block_inputs,
            "SSL projector states": ssl_states,
            "conditions": context_states,
            "loss tensors": loss_tensors,
        },
        "backward": {
            "LoRA gradients": lora_grads,
            "block inputs (checkpoints)": block_inputs,
            "one block recomputed": recompute,
            "conditions": context_states,
            "loss tensors": loss_tensors,
        },
    }
    if saved:  # blocks without checkpointing (the last ones): their backward comes first, before any recomputation
        backward = phases.pop("backward")
        first_backward = tokens * width * BLOCK_BACKWARD_BYTES_PER_CHANNEL * e // 2
        # the backward pass starts while the SSL projector states are still held
        phases["end of forward"].update({"saved activations of uncheckpointed blocks": saved,
                                         "one block's backward": first_backward})
        phases["backward"] = {
            "LoRA gradients": lora_grads, "block inputs (checkpoints)": block_inputs,
            "saved activations of uncheckpointed blocks": saved, "one block's backward": first_backward,
            "conditions": context_states, "loss tensors": loss_tensors,
        }
        if checkpointed:
            phases["backward (checkpointed blocks)"] = backward
    if request.base_dtype == FP8 and params is not None:  # one layer's weight dequantized at a time
        for phase in ("end of forward", "backward", "backward (checkpointed blocks)"):
            if phase in phases:
                phases[phase]["one dequantized fp8 layer"] = params.fp8_largest * e
    if lora.in_lyric_encoder:  # its backward comes last: every LoRA gradient exists, one layer is recomputed
        phases["backward (lyric encoder)"] = {
            "LoRA gradients": lora_grads, "one Conformer layer": lyric_peak,
            "its layer inputs (checkpoints)": lyric_inputs, "conditions": context_states,
        }
    return phases


def _batch_bytes(request: PlanRequest, config: dict) -> int:
    """The micro-batch on the device: fp32 latents and masks, prompt states, lyric ids and SSL targets."""
    batch, frames = request.batch_size, request.frames
    patch_values = config["in_channels"] * config["patch_size"][0]
    size = batch * (frames * (patch_values + 1) * 4 + request.text_tokens * (config["text_embedding_dim"] + 1) * 4)
    size += batch * request.lyric_tokens * (8 + 4)
    if request.ssl:
        samples = round(request.duration * SAMPLE_RATE)
        size += sum(batch * ssl_frames(samples, m) * d * 4 for m, d in zip((MERT, MHUBERT), config["ssl_latent_dims"]))
    return size


# name: (lowest, highest, unit); a float lowest is excluded (0 itself is no duration or memory)
BOUNDS: dict[str, tuple[float, float, str]] = {
    "duration": (0.0, MAX_DURATION_S, "seconds"),
    "gpu_gb": (0.0, MAX_GPU_GB, "GB"),
    "batch_size": (1, MAX_BATCH_SIZE, ""),
    "rank": (1, MAX_RANK, ""),
    "lyric_tokens": (1, MAX_TRAINING_TOKENS, ""),
    "text_tokens": (1, MAX_TEXT_TOKENS, ""),
    "condition_tokens": (1, MAX_TRAINING_TOKENS, ""),
    "devices": (1, MAX_DEVICES, "GPUs"),
}


def check_bounds(request: Any) -> None:
    """Every number of a v1 or 1.5 request within what a training run can be (nan and inf included), so the
    answer comes at once. A rank of None means the LoRA config's."""
    for name, (low, high, unit) in BOUNDS.items():
        value = getattr(request, name, None)
        if value is None:
            continue
        positive_only = isinstance(low, float)
        if not math.isfinite(value) or value > high or (value <= low if positive_only else value < low):
            bound = f"more than {low:g}" if positive_only else f"at least {low}"
            raise AcestepError(f"--{name} must be {bound} and at most {high:g}{' ' + unit if unit else ''}, "
                               f"not {value}")


def fp8_savings(request: PlanRequest, params: ParameterCounts) -> int:
    """Bytes --base_dtype fp8 saves on the base weights: 1 of 2 bytes a quantized weight, less its row scales."""
    if request.base_dtype != FP8:
        return 0
    released = {"unused", *(() if request.ssl else ("ssl_projectors",))} if request.release_unused_weights else set()
    return sum(weights - rows * SCALE_BYTES for group, (weights, rows) in params.fp8.items() if group not in released)


def estimate(request: PlanRequest) -> MemoryPlan:
    """Peak training memory for `request`: weights + LoRA state + the largest phase of one step."""
    if request.optimizer not in OPTIMIZER_STATE_BYTES:
        raise AcestepError(f"--optimizer must be one of {sorted(OPTIMIZER_STATE_BYTES)}, not {request.optimizer!r}")
    if request.base_dtype not in BASE_DTYPES:
        raise AcestepError(f"--base_dtype must be one of {sorted(BASE_DTYPES)}, not {request.base_dtype!r}")
    check_bounds(request)
    config = _config(request)
    params = count_parameters(config)
    settings = LoraSettings.from_json(request.lora_config)
    if request.rank and settings.adapter_type != "lora":  # counted at the rank itself (not linear in r)
        settings = replace(settings, r=request.rank)
    lora = count_lora_parameters(config, settings)
    lora_params = lora.at_rank(request.rank or lora.rank)
    e = compute_bytes(request.base_dtype)
    held = params.total
    if request.release_unused_weights:
        held -= params.unused + (0 if request.ssl else params.ssl_projectors)
    # Buffers (the rotary tables) follow the base dtype, as from_pretrained(torch_dtype=...) converts them.
    parts = {
        "base weights": held * e + params.buffer_bytes_fp32 * e // 4 - fp8_savings(request, params),
        "LoRA weights (fp32)": lora_params * 4,
        "optimizer state": lora_params * OPTIMIZER_STATE_BYTES[request.optimizer],
        "LoRA 16-bit copies (autocast)": lora_params * e if e == 2 else 0,
        "micro-batch": _batch_bytes(request, config),
        **ddp_parts(request.devices, lora_params),
    }
    phases = {name: sum(terms.values()) for name, terms in activation_terms(request, config, lora, params).items()}
    phase = max(phases, key=phases.get)
    parts[f"activations ({phase})"] = phases[phase]
    return MemoryPlan(request=request, parameters=params, lora_parameters=lora_params, parts=parts, peak_phase=phase)


def format_plan(plan: MemoryPlan) -> str:
    r = plan.request
    rank = r.rank or LoraSettings.from_json(r.lora_config).r
    lines = [
        f"Training plan: {r.duration:g} s crops ({r.frames} latent frames), batch {r.batch_size}, LoRA rank {rank}, "
        f"{r.optimizer}, base {r.base_dtype}, SSL {'on' if r.ssl else 'off'}, {r.lyric_tokens} lyric tokens",
        f"Tokens per step: {plan.tokens_per_step} ({LATENT_FRAMES_PER_SECOND:.4f} per second of audio per song)",
        f"Base parameters: {plan.parameters.total:,} ({plan.parameters.unused:,} never used by the forward pass, "
        f"{plan.parameters.ssl_projectors:,} in the SSL projectors; "
        f"{'unused ones released' if r.release_unused_weights else 'all kept'}); "
        f"LoRA parameters: {plan.lora_parameters:,}",
    ]
    lines += ddp_line(r.devices, r.batch_size)
    lines.append(f"Gradient checkpointing: {checkpointing_text(r)} (the first ones)")
    lines += plan.breakdown_lines(36)
    lines += fix_lines(plan)
    return "\n".join(lines)
