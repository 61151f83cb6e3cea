"""Reading and writing LoRA files; our metadata rides in the safetensors header under `acestep_` keys.

The trainer's adapter is a PEFT-standard folder (docs/formats.md, step folder layout):
  adapter/adapter_model.safetensors   keys `base_model.model.<module>.lora_A.weight`, un-baked (true scale)
  adapter/adapter_config.json         PeftModel.from_pretrained reads r, lora_alpha, use_rslora from it
The header also carries `lora_adapter_metadata`, which diffusers' load_lora_adapter reads for the same scale.
Readers also take older run folders (a top-level un-baked `pytorch_lora_weights.safetensors`, bare keys).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from acestep.core.atomic import atomic_write_bytes, atomic_write_json
from acestep.core.errors import AcestepError, InputError

from .keys import adapter_kind, detect_family, detect_style, model_names, module_path, split_key
from .settings import LoraSettings

if TYPE_CHECKING:  # torch loads with the first tensor, not with `--help`
    import torch

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_FILE = Path("adapter") / "adapter_model.safetensors"
META_SETTINGS = "acestep_lora_settings"
META_BASE_MODEL = "acestep_base_model"
META_STEP = "acestep_step"
META_BAKED_SCALE = "acestep_lora_baked_scale"
META_TRIGGER = "acestep_trigger"  # the trigger tag the training prompts held (stage 3 --trigger)
META_FAMILY = "acestep_family"  # the family's NAME (LAYOUT.md)
DIFFUSERS_METADATA = "lora_adapter_metadata"
HEADER_SIZE_BYTES = 8  # safetensors: little-endian u64 header length, then the JSON header
HEADER_ALIGNMENT = 8  # the header is padded with spaces so tensor data starts 8-byte aligned


ADAPTER_DIR = "adapter"
DIFFUSERS_DIR = "diffusers"  # ACE-Step 1.5 step folders: the baked file AceStepPipeline.load_lora_weights reads
OFFICIAL_DIR = "official"  # ACE-Step 1.5 step folders: the PEFT adapter on the original decoder names (official app)
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_KEY_PREFIX = "base_model.model."
META_PEFT_CONFIG = "acestep_peft_adapter_config"  # set by load_adapter from a sibling adapter_config.json


def weights_path(path: str | Path) -> Path:
    """Where a tool writes for `path`: the file itself, or pytorch_lora_weights.safetensors inside a folder."""
    path = Path(path)
    return path / WEIGHTS_NAME if path.is_dir() else path


def find_lora_file(path: str | Path) -> Path:
    """The LoRA file a reader takes for `path`: the file itself; in a folder, a step folder's adapter/, a PEFT
    adapter folder's adapter_model.safetensors, or (older runs, diffusers folders) pytorch_lora_weights."""
    path = Path(path)
    if not path.is_dir():
        return path
    candidates = [path / ADAPTER_DIR / PEFT_WEIGHTS_NAME, path / PEFT_WEIGHTS_NAME, path / WEIGHTS_NAME]
    return next((c for c in candidates if c.is_file()), path / WEIGHTS_NAME)


def bare_peft_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`base_model.model.` removed: the names a diffusers model with add_adapter (no PeftModel wrapper) uses."""
    return {key.removeprefix(PEFT_KEY_PREFIX): value for key, value in tensors.items()}


def check_output_file(src: str | Path, dst: str | Path, overwrite: bool) -> Path:
    """The file a tool will write for `dst`; never the input itself, and an existing file only with `overwrite`."""
    out, source = weights_path(dst), find_lora_file(src).resolve()
    if out.resolve() == source or (Path(dst).is_dir() and find_lora_file(dst).resolve() == source):
        raise AcestepError(f"{dst}: is or holds the input; write the result to a new file (the input keeps the "
                           "trained scale our tools need)")
    if out.exists() and not overwrite:
        raise AcestepError(f"{out}: already exists; pass --overwrite to replace it")
    return out


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write next to the target, then rename: a crash never leaves a half-written adapter.

    Serialized in memory with a canonical header (the same tensors and metadata give the same bytes) and
    written by atomic_write_bytes, so the file gets the umask's mode (safetensors' own writer makes it 0600).
    """
    from safetensors.torch import save

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(Path(path), canonical_header(save(cpu, metadata=metadata)))
    return Path(path)


def stamp_trigger(path: Path, trigger: str) -> None:
    """Add the trigger tag to a safetensors header (rewritten atomically; tensors unchanged)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    save_safetensors_atomic(tensors, Path(path), {**metadata, META_TRIGGER: trigger})


def trigger_note(path: str | Path, prompt: str) -> str | None:
    """A note when a LoRA trained with a trigger tag is loaded without that tag in the prompt (else None)."""
    trigger = load_adapter(path)[1].get(META_TRIGGER)
    if not trigger or trigger.lower() in prompt.lower():
        return None
    return f"note: {Path(path).name} was trained with the trigger tag {trigger!r}; add it to --prompt to call it up"


def canonical_header(data: bytes) -> bytes:
    """safetensors bytes with the metadata keys sorted: its writer orders them differently on every call, which
    would make two identical runs give different files. The tensor bytes and their offsets are unchanged."""
    size = int.from_bytes(data[:HEADER_SIZE_BYTES], "little")
    header = json.loads(data[HEADER_SIZE_BYTES : HEADER_SIZE_BYTES + size])
    metadata = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    text = json.dumps({**ordered, **header}, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    return len(text).to_bytes(HEADER_SIZE_BYTES, "little") + text + data[HEADER_SIZE_BYTES + size :]


def save_adapter(
    state_dict: dict[str, torch.Tensor],
    folder: str | Path,
    settings: LoraSettings,
    base_model: str = "ACE-Step/ACE-Step-v1-3.5B",
    step: int | None = None,
    family: str | None = None,
) -> Path:
    """Write the PEFT-standard adapter folder (un-baked, as trained): `folder/adapter_model.safetensors` with
    our metadata and diffusers' config in its header, and `folder/adapter_config.json`. Returns the weights file.

    `state_dict` has PEFT's bare names (`transformer_blocks.0.attn.to_q.lora_A.weight`).
    """
    folder = Path(folder)
    kwargs = settings.to_peft_kwargs()
    # diffusers keeps only the metadata keys under the prefix it loads with (prefix="base_model.model").
    diffusers_config = {PEFT_KEY_PREFIX + key: value for key, value in kwargs.items()}
    metadata = adapter_metadata(settings, base_model, step, family)
    if settings.adapter_type in ("lora", "dora"):  # diffusers loads these two types only
        metadata[DIFFUSERS_METADATA] = json.dumps(diffusers_config, sort_keys=True)
    tensors = {PEFT_KEY_PREFIX + key.removeprefix(PEFT_KEY_PREFIX): value for key, value in state_dict.items()}
    weights = save_safetensors_atomic(tensors, folder / PEFT_WEIGHTS_NAME, metadata)
    atomic_write_json(folder / PEFT_CONFIG_NAME, peft_adapter_config(settings, base_model))
    return weights


def adapter_metadata(settings: LoraSettings, base_model: str, step: int | None, family: str | None) -> dict[str, str]:
    """Our header of an un-baked adapter: its settings (so every tool knows the scale), base model, step, family."""
    metadata = {
        "format": "pt",
        META_SETTINGS: json.dumps(settings.to_dict(), sort_keys=True),
        META_BASE_MODEL: base_model,
    }
    if step is not None:
        metadata[META_STEP] = str(step)
    if family is not None:
        metadata[META_FAMILY] = family
    return metadata


def peft_adapter_config(settings: LoraSettings, base_model: str) -> dict:
    """adapter_config.json as PEFT writes it (every LoraConfig field), so PeftModel.from_pretrained loads it."""
    config = settings.peft_config(base_model_name_or_path=base_model).to_dict()
    return json.loads(json.dumps(config, sort_keys=True, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def load_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a LoRA file or folder; clear error when it is missing or unreadable.

    A PEFT adapter_config.json beside the file is added to the metadata (under META_PEFT_CONFIG) when the header
    names no settings, so adapters saved by PEFT itself load at their scale too.
    """
    file = find_lora_file(path)
    if not file.is_file():
        raise InputError(file, "LoRA file not found")
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # noqa: BLE001 - safetensors raises several error types for bad files
        raise InputError(file, f"not a readable safetensors LoRA file: {error}") from error
    config = file.with_name(PEFT_CONFIG_NAME)
    if file.name == PEFT_WEIGHTS_NAME and config.is_file() and not {META_SETTINGS, DIFFUSERS_METADATA} & set(metadata):
        metadata[META_PEFT_CONFIG] = config.read_text(encoding="utf-8-sig")
    return tensors, metadata


def settings_from_metadata(metadata: dict[str, str]) -> LoraSettings | None:
    """Our own settings if we wrote the file, else diffusers' `lora_adapter_metadata`, else PEFT's
    adapter_config.json beside it, else None."""
    for key in (META_SETTINGS, DIFFUSERS_METADATA, META_PEFT_CONFIG):
        if key in metadata:
            return LoraSettings.from_dict(without_key_prefix(json.loads(metadata[key])))
    return None


def without_key_prefix(config: dict) -> dict:
    """diffusers may store its LoRA config under the model's prefix (`transformer.r`); bare keys back."""
    if "r" in config:
        return config
    prefix = next((key[:-1] for key in config if key.endswith(".r")), "")
    return {key.removeprefix(prefix): value for key, value in config.items() if key.startswith(prefix)}


@dataclass
class LoraModule:
    """One adapted layer: dW = scale * up @ down (flattened for conv layers)."""

    down: torch.Tensor  # lora_A [r, in, *kernel]
    up: torch.Tensor  # lora_B [out, r, *1]
    alpha: float | None = None  # from a `<key>.alpha` tensor (ComfyUI's alpha / rank), if the file has one

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self, scale: float = 1.0) -> torch.Tensor:
        """scale * up @ down in fp32, with shape [out, in * kernel]."""
        return scale * (self.up.float().flatten(1) @ self.down.float().flatten(1))


@dataclass
class LoraFile:
    path: Path
    modules: dict[str, LoraModule]
    metadata: dict[str, str]
    style: str

    @property
    def baked(self) -> bool:
        return META_BAKED_SCALE in self.metadata

    @property
    def base_model(self) -> str | None:
        return self.metadata.get(META_BASE_MODEL)

    @property
    def trigger(self) -> str | None:
        return self.metadata.get(META_TRIGGER)

    @property
    def family(self) -> str | None:
        """The model family from the header, else from the module names (None when neither tells)."""
        return self.metadata.get(META_FAMILY) or detect_family(self.modules)


def read_lora(path: str | Path, kohya_lookup: dict[str, str] | None = None) -> LoraFile:
    """Any supported key spelling -> module path -> factors; a clear error for keys we cannot use.

    `kohya_lookup` maps kohya names to module paths (default: the published transformer's modules).
    """
    tensors, metadata = load_adapter(path)
    file = find_lora_file(path)
    kind = adapter_kind(tensors)
    if kind != "lora":
        raise InputError(file, f"a {kind} adapter, not a plain LoRA: bake, convert and resize handle LoRA only "
                         "(inspect, merge and generate.py --lora take every adapter type)")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        split = split_key(key)
        if split is None:
            raise InputError(file, f"unsupported tensor {key!r} (only LoRA down/up factors and .alpha are handled)")
        stem, role = split
        module = module_path(stem, kohya_lookup)
        if module is None:
            raise InputError(file, f"{key!r} names no module of the ACE-Step transformer")
        parts.setdefault(module, {})[role] = tensor
    parts = model_names(parts, metadata.get(META_FAMILY))  # e.g. original names -> the model's
    modules = {}
    for module, roles in parts.items():
        if "down" not in roles or "up" not in roles:
            raise InputError(file, f"{module}: needs both LoRA factors, found only {sorted(roles)}")
        down, up = roles["down"], roles["up"]
        if up.shape[1] != down.shape[0]:
            raise InputError(file, f"{module}: factor shapes {tuple(up.shape)} x {tuple(down.shape)} do not chain")
        alpha = roles.get("alpha")
        modules[module] = LoraModule(down, up, None if alpha is None else float(alpha.float().item()))
    if not modules:
        raise InputError(file, "no LoRA factors in the file")
    return LoraFile(file, modules, metadata, detect_style(tensors))
