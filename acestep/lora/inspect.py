"""What is in a LoRA file: modules, ranks, alpha, the scale a loader should use, and how big each delta W is."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from acestep.core.errors import InputError

from .adapters import TYPE_NAMES, file_kind, read_adapter
from .bake import module_scales
from .io import DIFFUSERS_METADATA, LoraModule, read_lora
from .settings import LoraSettings

METADATA_WIDTH = 100


@dataclass(frozen=True)
class ModuleReport:
    module: str
    rank: int | None  # None: a LoKr module whose two Kronecker factors are full matrices
    in_features: int
    out_features: int
    alpha: float | None  # the `.alpha` tensor, if any
    scale: float | None  # None when the file does not say (un-baked, no header, no config given)
    delta_norm: float  # Frobenius norm of scale * B @ A (of B @ A when the scale is unknown)
    factor: tuple[int, int] | None = None  # LoKr: the shape of w1, the small Kronecker factor


@dataclass(frozen=True)
class LoraReport:
    path: Path
    style: str
    baked: bool
    dtype: str
    modules: list[ModuleReport]
    metadata: dict[str, str]
    family: str | None = None
    kind: str = "lora"

    @property
    def ranks(self) -> list[int]:
        return [row.rank for row in self.modules if row.rank is not None]


def product_norm(module: LoraModule) -> float:
    """||B @ A||_F from the r x r Gram matrices: tr((B^T B)(A A^T)), without forming the out x in product."""
    down = module.down.double().flatten(1)
    up = module.up.double().flatten(1)
    return float(((up.T @ up) * (down @ down.T)).sum().clamp_min(0).sqrt())


def inspect_adapter(path: str | Path) -> LoraReport:
    """A DoRA / LoHa / LoKr file: each module's change at strength 1 as ComfyUI rebuilds it."""
    adapter = read_adapter(path)
    rows = []
    for name in sorted(adapter.modules, key=natural_key):
        change = adapter.modules[name]
        delta = change.change()
        rows.append(ModuleReport(
            module=name, rank=change.rank, in_features=delta.shape[1], out_features=delta.shape[0],
            alpha=change.alpha, scale=1.0 if change.alpha is None or change.rank is None else change.alpha / change.rank,
            delta_norm=float(delta.norm()), factor=change.factor if adapter.kind == "lokr" else None,
        ))
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for m in adapter.modules.values() for t in m.parts.values()})
    return LoraReport(adapter.path, adapter.style, True, ",".join(dtypes), rows, adapter.metadata, adapter.family,
                      adapter.kind)


def inspect_lora(path: str | Path, settings: LoraSettings | None = None) -> LoraReport:
    if file_kind(path) != "lora":
        return inspect_adapter(path)
    lora = read_lora(path)
    try:
        scales: dict[str, float | None] = dict(module_scales(lora, settings))
    except InputError:
        scales = dict.fromkeys(lora.modules)
    rows = []
    for name in sorted(lora.modules, key=natural_key):
        module = lora.modules[name]
        scale = scales[name]
        rows.append(ModuleReport(
            module=name, rank=module.rank, in_features=module.down.flatten(1).shape[1],
            out_features=module.up.shape[0], alpha=module.alpha, scale=scale,
            delta_norm=abs(scale if scale is not None else 1.0) * product_norm(module),
        ))
    dtypes = sorted({str(m.down.dtype).removeprefix("torch.") for m in lora.modules.values()})
    return LoraReport(lora.path, lora.style, lora.baked, ",".join(dtypes), rows, lora.metadata, lora.family)


def natural_key(name: str) -> list:
    """transformer_blocks.2 before transformer_blocks.10."""
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def format_report(report: LoraReport) -> str:
    ranks = report.ranks
    scales = {row.scale for row in report.modules}
    lines = [
        f"file:     {report.path}",
        f"model:    {report.family or 'unknown'}",
        f"type:     {TYPE_NAMES[report.kind]}",
        f"keys:     {report.style} style, {len(report.modules)} modules, dtype {report.dtype}",
    ]
    if ranks:
        lines.append(f"ranks:    min {min(ranks)}, median {statistics.median(ranks):g}, max {max(ranks)}")
    factors = sorted({row.factor for row in report.modules if row.factor is not None})
    if factors:
        lines.append(f"factor:   w1 {', '.join(f'{a}x{b}' for a, b in factors)} (LoKr's small Kronecker factor)")
    if report.kind == "dora":
        lines.append("|dW|:     DoRA's low-rank change before its magnitude rescale (that depends on the base weights)")
    lines.append(f"baked:    {'yes (load at strength 1.0)' if report.baked else 'no'}")
    if None in scales:
        lines.append("scale:    unknown (no .alpha, no settings in the header): pass --lora_config_path")
    elif len(scales) == 1:
        product = "B @ A" if report.kind in ("lora", "dora") else "the rebuilt product"
        lines.append(f"scale:    {scales.pop():.6g} (applied on top of {product})")
    lines.append("metadata:")
    for key, value in sorted(report.metadata.items()):
        if key == DIFFUSERS_METADATA:
            value = json.dumps({k: v for k, v in json.loads(value).items() if k in ("r", "lora_alpha", "use_rslora")})
        shown = value if len(value) <= METADATA_WIDTH else value[: METADATA_WIDTH - 3] + "..."
        lines.append(f"  {key}: {shown}")
    width = max(len(row.module) for row in report.modules)
    lines.append("")
    lines.append(f"{'module':<{width}}  {'rank':>4}  {'in':>6}  {'out':>6}  {'alpha':>8}  {'scale':>9}  {'|dW|_F':>10}")
    for row in report.modules:
        alpha = "-" if row.alpha is None else f"{row.alpha:g}"
        scale = "?" if row.scale is None else f"{row.scale:.6g}"
        rank = "-" if row.rank is None else row.rank
        lines.append(f"{row.module:<{width}}  {rank:>4}  {row.in_features:>6}  {row.out_features:>6}  "
                     f"{alpha:>8}  {scale:>9}  {row.delta_norm:>10.4g}")
    return "\n".join(lines)
