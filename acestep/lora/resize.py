"""Shrink a LoRA's rank by SVD of its delta W, per module: a fixed rank, or the smallest rank that keeps a target.

Dynamic methods follow kohya's resize_lora: sv_ratio keeps singular values above s_max / target; sv_fro keeps the
smallest rank whose Frobenius norm fraction sqrt(sum s_i^2 / sum s^2) reaches target; sv_cumulative the smallest
rank whose sum s_i / sum s reaches target. The result is baked (scale in the weights, loads at strength 1).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from acestep.core.errors import AcestepError
from acestep.core.progress import progress

from .bake import module_scales, provenance, save_baked, style_for
from .io import LoraModule, check_output_file, read_lora
from .settings import LoraSettings

METHODS = ("rank", "sv_ratio", "sv_fro", "sv_cumulative")


@dataclass(frozen=True)
class ResizedModule:
    module: str
    old_rank: int
    new_rank: int
    kept_fro: float  # ||dW_new||_F / ||dW||_F: the fraction of the delta's Frobenius norm that was kept


def product_svd(module: LoraModule, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of scale * B @ A through QR of the factors: exact, and only r x r work instead of out x in."""
    up = module.up.double().flatten(1) * scale
    down = module.down.double().flatten(1)
    q_up, r_up = torch.linalg.qr(up)
    q_down, r_down = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(r_up @ r_down.T)
    return q_up @ u, s, vh @ q_down.T


def choose_rank(singular: torch.Tensor, method: str, target: float | None, max_rank: int | None) -> int:
    """Smallest rank meeting the target (kohya's rules), capped by max_rank, at least 1."""
    full = len(singular)
    if method == "rank":
        if max_rank is None:
            raise AcestepError("resize by rank needs --rank")
        chosen = max_rank
    else:
        if target is None:
            raise AcestepError(f"{method} needs --target")
        total = float(singular.sum())
        if total <= 0:
            chosen = 1
        elif method == "sv_ratio":
            chosen = int((singular > singular[0] / target).sum())
        elif method == "sv_fro":
            fraction = (singular.pow(2).cumsum(0) / singular.pow(2).sum()).sqrt()
            chosen = int((fraction < target - 1e-12).sum()) + 1
        elif method == "sv_cumulative":
            chosen = int((singular.cumsum(0) / total < target - 1e-12).sum()) + 1
        else:
            raise AcestepError(f"unknown resize method {method!r}; choose one of {', '.join(METHODS)}")
        if max_rank is not None:
            chosen = min(chosen, max_rank)
    return max(1, min(chosen, full))


def resize_module(
    name: str, module: LoraModule, scale: float, method: str, target: float | None, max_rank: int | None
) -> tuple[LoraModule, ResizedModule]:
    u, s, vh = product_svd(module, scale)
    rank = choose_rank(s, method, target, max_rank)
    total = float(s.pow(2).sum())
    kept = math.sqrt(float(s[:rank].pow(2).sum()) / total) if total > 0 else 1.0
    root = s[:rank].sqrt()
    up = (u[:, :rank] * root).reshape(module.up.shape[0], rank, *module.up.shape[2:])
    down = (root[:, None] * vh[:rank]).reshape(rank, *module.down.shape[1:])
    resized = LoraModule(down=down.to(module.down.dtype), up=up.to(module.up.dtype))
    return resized, ResizedModule(name, module.rank, rank, kept)


def resize_file(
    src: str | Path,
    dst: str | Path,
    method: str = "rank",
    rank: int | None = None,
    target: float | None = None,
    settings: LoraSettings | None = None,
    style: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, list[ResizedModule]]:
    """Write the resized, baked LoRA; `rank` is the fixed rank (method 'rank') or the cap of a dynamic method."""
    if method not in METHODS:
        raise AcestepError(f"unknown resize method {method!r}; choose one of {', '.join(METHODS)}")
    check_output_file(src, dst, overwrite)
    lora = read_lora(src)
    style = style_for(lora, style)
    scales = module_scales(lora, settings)
    resized, reports = {}, []
    for name in progress(lora.modules, desc="resize", unit="module"):
        resized[name], report = resize_module(name, lora.modules[name], scales[name], method, target, rank)
        reports.append(report)
    record = provenance(lora, scales, f"resize {method} rank={rank} target={target}", settings)
    record["kept_fro_min"] = min(r.kept_fro for r in reports)
    return save_baked(resized, dst, style, record, lora.base_model, lora.family), reports


def rank_advice(reports: list[ResizedModule]) -> str:
    """The summary users act on: which rank to train with next time."""
    ranks = [r.new_rank for r in reports]
    kept = [r.kept_fro for r in reports]
    suggestion = 1 << (max(ranks) - 1).bit_length()  # next power of two >= the largest chosen rank
    return (f"chosen ranks: min {min(ranks)}, median {statistics.median(ranks):g}, max {max(ranks)} "
            f"(was {max(r.old_rank for r in reports)}); kept norm fraction: min {min(kept):.4f}, "
            f"median {statistics.median(kept):.4f}. Next time, r={suggestion} should be enough for this data.")


def format_resize_table(reports: list[ResizedModule]) -> str:
    width = max(len(r.module) for r in reports)
    lines = [f"{'module':<{width}}  {'rank':>4}  {'new':>4}  {'kept |dW|_F':>11}"]
    lines += [f"{r.module:<{width}}  {r.old_rank:>4}  {r.new_rank:>4}  {r.kept_fro:>11.4f}" for r in reports]
    return "\n".join(lines)
