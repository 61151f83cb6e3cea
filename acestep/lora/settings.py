"""LoRA hyper-parameters as one dataclass, read from our config JSON, a PEFT config or a file header."""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from peft.utils.other import get_pattern_key

from ..errors import AcestepError, InputError


def check_known_keys(data: dict[str, Any]) -> None:
    """A misspelt key would silently fall back to its default (use_rlsora -> no rsLoRA): name it instead."""
    known = [f.name for f in fields(LoraSettings)]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise AcestepError(f"unknown key {key!r} in the LoRA config{hint}")


@dataclass(frozen=True)
class LoraSettings:
    """What decides the trained delta: dW = scale * B @ A with scale = alpha / sqrt(r) (rsLoRA) or alpha / r."""

    r: int = 64
    lora_alpha: float = 1.0
    use_rslora: bool = True
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    lora_dropout: float = 0.0  # dropout on the LoRA input during training (ACE-Step 1.5's official 0.1)

    @property
    def scale(self) -> float:
        return self.scale_for(self.r, self.lora_alpha)

    def scale_for(self, rank: int, alpha: float) -> float:
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)

    def module_scale(self, module: str, rank: int) -> float:
        """Scale of one module; its rank comes from the tensor shapes, its alpha from alpha_pattern if listed."""
        key = get_pattern_key(list(self.alpha_pattern), module)  # PEFT's own regex match
        return self.scale_for(rank, self.alpha_pattern.get(key, self.lora_alpha))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSettings:
        try:
            targets = data["target_modules"]
            return cls(
                r=int(data["r"]),
                lora_alpha=float(data["lora_alpha"]),
                use_rslora=bool(data.get("use_rslora", False)),
                target_modules=tuple([targets] if isinstance(targets, str) else targets),
                rank_pattern={k: int(v) for k, v in (data.get("rank_pattern") or {}).items()},
                alpha_pattern={k: float(v) for k, v in (data.get("alpha_pattern") or {}).items()},
                lora_dropout=float(data.get("lora_dropout") or 0.0),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise AcestepError(f"LoRA settings need r, lora_alpha and target_modules: {error}") from error

    @classmethod
    def from_json(cls, path: str | Path) -> LoraSettings:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(path, f"cannot read LoRA config: {error}") from error
        try:
            if isinstance(data, dict) and "peft_type" not in data:  # PEFT writes every field it has; we read ours
                check_known_keys(data)
            return cls.from_dict(data)
        except AcestepError as error:
            raise InputError(path, str(error)) from error

    def to_peft_kwargs(self) -> dict[str, Any]:
        """Arguments for `peft.LoraConfig`."""
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data
