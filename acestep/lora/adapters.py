"""Adapter types beyond plain LoRA (DoRA, LoHa, LoKr): their ComfyUI file, and ComfyUI's rule to apply one.

ComfyUI (comfy/weight_adapter/ lora.py, loha.py, lokr.py, and base.py's weight_decompose) rebuilds a module's
change from the tensors under one key stem as c * P and applies W' = W + strength * c * P:
  LoRA  P = lora_B @ lora_A (lora_up @ lora_down),                c = alpha / lora_A.shape[0]
  LoHa  P = (hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b),    c = alpha / hada_w1_b.shape[0]
  LoKr  P = kron(w1, w2), w = lokr_w or lokr_w_a @ lokr_w_b,      c = alpha / dim, dim = the inner size of the
        factored matrix (w2's when both are factored); c = 1 when both are full matrices, whatever alpha says
and c = 1 where the stem has no `.alpha`. A `dora_scale` of shape [out, 1] (the output axis) makes it
  W_c = (W + c * P) * dora_scale / (||W||_row + eps),   W' = W + strength * (W_c - W)
with the row norms of the *base* weight and eps = float32's (ComfyUI patches a float32 copy of the weight).

PEFT (peft 0.21 tuners) trains: LoRA/LoHa/LoKr dW = s * P with s = alpha / r (rsLoRA: alpha / sqrt(r), LoRA only);
DoRA W' = m * (W + s B A) / ||W + s B A||_row. So our ComfyUI file keeps PEFT's tensors and writes `.alpha = s * dim`
(LoHa, factored LoKr), folds s into lokr_w1 (LoKr with two full matrices), bakes s into DoRA's factors as for LoRA,
and writes dora_scale = m * (||W||_row + eps) / ||W + s B A||_row, which is why a DoRA export needs the base weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from acestep.core.errors import AcestepError, InputError

from .io import (
    META_BASE_MODEL,
    META_FAMILY,
    META_TRIGGER,
    LoraModule,
    find_lora_file,
    load_adapter,
    save_safetensors_atomic,
    settings_from_metadata,
)
from .keys import (
    DORA_SCALE,
    HADA,
    LOKR,
    MAGNITUDE,
    PEFT_PREFIX,
    adapter_kind,
    detect_family,
    detect_style,
    factor_keys,
    model_names,
    module_path,
    split_key,
)
from .settings import LoraSettings

EPS = torch.finfo(torch.float32).eps
TYPE_NAMES = {"lora": "LoRA", "dora": "DoRA", "loha": "LoHa", "lokr": "LoKr"}
BaseWeight = Callable[[str], torch.Tensor]  # module path -> its base weight (DoRA's export and rebuild need it)


def file_kind(path: str | Path) -> str:
    tensors, _ = load_adapter(path)
    return adapter_kind(set(tensors))


def group_peft_modules(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT state dict (bare or `base_model.model.` keys) -> module path -> PEFT parameter name -> tensor."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, name = key.removeprefix(PEFT_PREFIX).removesuffix(".weight").rsplit(".", 1)
        modules.setdefault(module, {})[name] = tensor
    return modules


def key_stem(module: str, style: str | None) -> str:
    """The key stem of a module in one of our key styles, None: the bare path (what ComfyUI looks `.alpha`,
    `.hada_w1_a`... up under)."""
    down_key = factor_keys(module, style)[0]
    return down_key.rsplit(".", 2)[0]


def comfyui_tensors(
    state: dict[str, torch.Tensor], settings: LoraSettings, style: str | None, base_weight: BaseWeight | None = None
) -> dict[str, torch.Tensor]:
    """The ComfyUI file's tensors of a DoRA / LoHa / LoKr adapter: strength 1.0 = the trained change (see above)."""
    from .bake import scale_into_factors

    tensors: dict[str, torch.Tensor] = {}
    for module, params in group_peft_modules(state).items():
        stem = key_stem(module, style)
        scale = settings.module_scale(module, settings.module_rank(module))
        if settings.adapter_type == "loha":
            tensors.update({f"{stem}.{name}": params[name] for name in HADA})
            tensors[f"{stem}.alpha"] = torch.tensor(scale * params["hada_w1_b"].shape[0])
        elif settings.adapter_type == "lokr":
            tensors.update({f"{stem}.{name}": value for name, value in params.items()})
            factored = next((params[n] for n in ("lokr_w2_b", "lokr_w1_b") if n in params), None)
            if factored is None:  # ComfyUI ignores alpha here: the scale goes into w1
                tensors[f"{stem}.lokr_w1"] = params["lokr_w1"].float() * scale
                tensors[f"{stem}.alpha"] = torch.tensor(float(settings.module_rank(module)))
            else:
                tensors[f"{stem}.alpha"] = torch.tensor(scale * factored.shape[0])
        elif settings.adapter_type == "dora":
            if base_weight is None:
                raise AcestepError("a DoRA export needs the base weights (its ComfyUI form depends on them)")
            lora = LoraModule(down=params["lora_A"].float(), up=params["lora_B"].float())
            weight = base_weight(module).detach().float().cpu().flatten(1)  # the factors are on the CPU
            merged_norm = (weight + lora.delta(scale)).norm(dim=1, keepdim=True)
            magnitude = params[MAGNITUDE].float().reshape(-1, 1)
            baked = scale_into_factors({module: lora}, {module: scale})[module]
            down_key, up_key, alpha_key = factor_keys(module, style)
            tensors.update({down_key: baked.down, up_key: baked.up,
                            f"{stem}.{DORA_SCALE}": magnitude * (weight.norm(dim=1, keepdim=True) + EPS) / merged_norm})
            if alpha_key is not None:
                tensors[alpha_key] = torch.tensor(float(lora.rank))
        else:
            raise AcestepError(f"{settings.adapter_type}: plain LoRA files are written by bake_file")
    return tensors


def save_comfyui_file(
    state: dict[str, torch.Tensor], dst: Path, settings: LoraSettings, style: str, record: dict,
    base_model: str | None, family: str | None, base_weight: BaseWeight | None = None,
) -> Path:
    """Write the ComfyUI file of a non-LoRA adapter; the header marks it as holding its scale (like a baked LoRA)."""
    import json

    from .io import META_BAKED_SCALE

    metadata = {"format": "pt", META_BAKED_SCALE: json.dumps({**record, "adapter_type": settings.adapter_type},
                                                              sort_keys=True)}
    if base_model:
        metadata[META_BASE_MODEL] = base_model
    if family:
        metadata[META_FAMILY] = family
    return save_safetensors_atomic(comfyui_tensors(state, settings, style, base_weight), dst, metadata)


@dataclass
class WeightChange:
    """One module of a ComfyUI-form adapter file, applied as ComfyUI applies it."""

    kind: str
    parts: dict[str, torch.Tensor]  # lora_A / lora_B (LoRA, DoRA), hada_*, lokr_*, dora_scale
    alpha: float | None

    def _factor(self, name: str) -> torch.Tensor:
        if name in self.parts:
            return self.parts[name].float()
        return self.parts[f"{name}_a"].float() @ self.parts[f"{name}_b"].float()

    @property
    def rank(self) -> int | None:
        """LoRA/DoRA/LoHa rank; LoKr: the inner size of the factored matrix (None when both are full)."""
        if self.kind == "loha":
            return self.parts["hada_w1_b"].shape[0]
        if self.kind == "lokr":
            factored = next((self.parts[n] for n in ("lokr_w2_b", "lokr_w1_b") if n in self.parts), None)
            return None if factored is None else factored.shape[0]
        return self.parts["lora_A"].shape[0]

    @property
    def factor(self) -> tuple[int, int]:
        """LoKr: the shape of w1, the small Kronecker factor (out_l, in_m)."""
        w1 = self.parts.get("lokr_w1")
        return tuple(w1.shape) if w1 is not None else (self.parts["lokr_w1_a"].shape[0], self.parts["lokr_w1_b"].shape[1])

    def change(self) -> torch.Tensor:
        """c * P in float32, [out, in]: the change at strength 1 (for DoRA, before the magnitude rescale)."""
        coefficient = 1.0 if self.alpha is None or self.rank is None else self.alpha / self.rank
        if self.kind == "loha":
            product = (self._factor("hada_w1_a") @ self._factor("hada_w1_b")) * (
                self._factor("hada_w2_a") @ self._factor("hada_w2_b"))
        elif self.kind == "lokr":
            product = torch.kron(self._factor("lokr_w1"), self._factor("lokr_w2"))
        else:
            product = self.parts["lora_B"].float().flatten(1) @ self.parts["lora_A"].float().flatten(1)
        return coefficient * product

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """The new weight (float32) at `strength`, by ComfyUI's rule."""
        base = weight.float().flatten(1)
        change = self.change().to(base.device)  # the file's tensors are on the CPU, the model may be on a GPU
        if DORA_SCALE not in self.parts:
            return (base + strength * change).reshape(weight.shape)
        scale = self.parts[DORA_SCALE].float().to(base.device)
        if scale.shape[0] != base.shape[0]:
            raise AcestepError("dora_scale on the input axis is not supported (our trainer writes the output axis)")
        decomposed = (base + change) * scale.reshape(-1, 1) / (base.norm(dim=1, keepdim=True) + EPS)
        return (base + strength * (decomposed - base)).reshape(weight.shape)

    def out_in(self) -> tuple[int, int]:
        return tuple(self.change().shape)


@dataclass
class AdapterFile:
    path: Path
    kind: str
    modules: dict[str, WeightChange]
    metadata: dict[str, str]
    style: str  # key spelling (naming.key_styles())

    @property
    def family(self) -> str | None:
        return self.metadata.get(META_FAMILY) or detect_family(self.modules)

    @property
    def trigger(self) -> str | None:
        return self.metadata.get(META_TRIGGER)


def split_adapter_key(key: str) -> tuple[str, str] | None:
    """(stem, part) of a key of any adapter type; LoRA factors come back as lora_A / lora_B."""
    split = split_key(key)
    if split is not None:
        stem, role = split
        return stem, {"down": "lora_A", "up": "lora_B", "alpha": "alpha"}[role]
    stem, _, part = key.rpartition(".")
    if part in HADA + LOKR + (DORA_SCALE, MAGNITUDE):
        return stem, part
    return None


def read_adapter(
    path: str | Path, base_weight: BaseWeight | None = None, kohya_lookup: dict[str, str] | None = None
) -> AdapterFile:
    """Any adapter file in ComfyUI form, or one of our PEFT adapter folders (rebuilt into that form from its
    header's settings; DoRA's needs `base_weight`)."""
    tensors, metadata = load_adapter(path)
    file = find_lora_file(path)
    kind = adapter_kind(set(tensors))
    settings = settings_from_metadata(metadata)
    if any(key.endswith(MAGNITUDE) for key in tensors) or (
        kind in ("loha", "lokr") and settings is not None and not any(key.endswith(".alpha") for key in tensors)
    ):
        if settings is None:
            raise InputError(file, f"a PEFT {TYPE_NAMES[kind]} adapter without its settings; load its "
                             "-comfyui.safetensors file instead")
        if kind == "dora" and base_weight is None:
            raise InputError(file, "a PEFT DoRA adapter needs the base model to rebuild; inspect its "
                             "-comfyui.safetensors file instead")
        tensors = comfyui_tensors(tensors, settings, None, base_weight)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        split = split_adapter_key(key)
        if split is None:
            raise InputError(file, f"unsupported tensor {key!r} (not a LoRA, DoRA, LoHa or LoKr key)")
        module = module_path(split[0], kohya_lookup)
        if module is None:
            raise InputError(file, f"{key!r} names no module of the ACE-Step transformer")
        parts.setdefault(module, {})[split[1]] = tensor
    parts = model_names(parts, metadata.get(META_FAMILY))
    modules = {}
    for module, roles in parts.items():
        alpha = roles.pop("alpha", None)
        modules[module] = WeightChange(kind, roles, None if alpha is None else float(alpha.float().item()))
    if not modules:
        raise InputError(file, "no adapter tensors in the file")
    return AdapterFile(file, kind, modules, metadata, detect_style(tensors))


def adapter_family(path: str | Path) -> str | None:
    """The model family of any adapter file: its header's, else its module names' (None when neither tells)."""
    tensors, metadata = load_adapter(path)
    if metadata.get(META_FAMILY):
        return metadata[META_FAMILY]
    stems = {split[0] for key in tensors if (split := split_adapter_key(key)) is not None}
    return detect_family(module for stem in stems if (module := module_path(stem, None)) is not None)


def apply_adapter(
    weights: dict[str, torch.Tensor], adapter: AdapterFile, strength: float
) -> dict[str, torch.Tensor]:
    """New weights (in their own dtypes) of every module the adapter changes; `weights`: module path -> weight."""
    missing = sorted(set(adapter.modules) - set(weights))
    if missing:
        raise InputError(adapter.path, f"modules that are not in the transformer: {', '.join(missing[:3])}")
    changed = {}
    for name, change in adapter.modules.items():
        weight = weights[name]
        if change.out_in() != tuple(weight.flatten(1).shape):
            raise InputError(adapter.path, f"{name} is {tuple(weight.shape)} in the model, the adapter gives "
                             f"{change.out_in()}")
        changed[name] = change.apply(weight, strength).to(weight.dtype)
    return changed
