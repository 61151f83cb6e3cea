"""LoRA hyper-parameters as one dataclass, read from our config JSON, a PEFT config or a file header."""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from acestep.core.errors import AcestepError, InputError

ADAPTER_TYPES = ("lora", "dora", "loha", "lokr")  # the config's adapter_type; all trained through PEFT
LOKR_OPTIONS = ("decompose_both", "decompose_factor")  # LoKrConfig's own names
PEFT_TYPES = {"LOHA": "loha", "LOKR": "lokr"}  # adapter_config.json's peft_type -> adapter_type


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
    adapter_type: str = "lora"  # lora, dora (PEFT use_dora), loha, lokr (PEFT LoHaConfig / LoKrConfig)
    decompose_both: bool = False  # LoKr: factor the small Kronecker matrix w1 too (else only w2, when r is small)
    decompose_factor: int = -1  # LoKr: split each dimension into a factor near this and the rest; -1: near sqrt

    def __post_init__(self) -> None:
        """Combinations PEFT would take but train something else than the config says are refused in one line."""
        if self.adapter_type not in ADAPTER_TYPES:
            raise AcestepError(f"unknown adapter_type {self.adapter_type!r}; choose one of {', '.join(ADAPTER_TYPES)}")
        if self.adapter_type in ("loha", "lokr") and (self.use_rslora or self.lora_dropout):
            raise AcestepError(f"adapter_type {self.adapter_type} has no use_rslora or lora_dropout (its scale is "
                               "alpha / r): set them to false / 0")
        if self.adapter_type != "lokr" and (self.decompose_both or self.decompose_factor != -1):
            raise AcestepError("decompose_both and decompose_factor are LoKr options; set adapter_type to lokr")

    @property
    def scale(self) -> float:
        return self.scale_for(self.r, self.lora_alpha)

    def scale_for(self, rank: int, alpha: float) -> float:
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)

    def module_rank(self, module: str) -> int:
        """The rank PEFT gives one module (rank_pattern, else r): LoKr's full matrices do not show it."""
        from peft.utils.other import get_pattern_key  # peft (and torch) load on use, not with `--help`

        key = get_pattern_key(list(self.rank_pattern), module)
        return self.rank_pattern.get(key, self.r)

    def module_scale(self, module: str, rank: int) -> float:
        """Scale of one module; its rank comes from the tensor shapes, its alpha from alpha_pattern if listed."""
        from peft.utils.other import get_pattern_key

        key = get_pattern_key(list(self.alpha_pattern), module)  # PEFT's own regex match
        return self.scale_for(rank, self.alpha_pattern.get(key, self.lora_alpha))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSettings:
        try:
            targets = data["target_modules"]
            kind = data.get("adapter_type") or PEFT_TYPES.get(str(data.get("peft_type")).upper(), None)
            kind = kind or ("dora" if data.get("use_dora") else "lora")
            lokr = {key: data[key] for key in LOKR_OPTIONS if key in data and kind == "lokr"}
            return cls(
                r=int(data["r"]),
                lora_alpha=float(data["lora_alpha"] if "lora_alpha" in data else data["alpha"]),
                use_rslora=bool(data.get("use_rslora", False)),
                target_modules=tuple([targets] if isinstance(targets, str) else targets),
                rank_pattern={k: int(v) for k, v in (data.get("rank_pattern") or {}).items()},
                alpha_pattern={k: float(v) for k, v in (data.get("alpha_pattern") or {}).items()},
                lora_dropout=float(data.get("lora_dropout") or 0.0),
                adapter_type=str(kind),
                decompose_both=bool(lokr.get("decompose_both", False)),
                decompose_factor=int(lokr.get("decompose_factor", -1)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise AcestepError(f"LoRA settings need r, lora_alpha and target_modules: {error}") from error

    @classmethod
    def from_json(cls, path: str | Path) -> LoraSettings:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(path, f"cannot read LoRA config: {error}") from error
        try:
            if isinstance(data, dict) and "peft_type" not in data:  # PEFT writes every field it has; we read ours
                check_known_keys(data)
            return cls.from_dict(data)
        except AcestepError as error:
            raise InputError(path, str(error)) from error

    def to_dict(self) -> dict[str, Any]:
        """What our headers record: LoraConfig's arguments for plain LoRA (as before adapter types existed), every
        field with its adapter_type for the others."""
        if self.adapter_type == "lora":
            return self.to_peft_kwargs()
        return {**asdict(self), "target_modules": list(self.target_modules)}

    def to_peft_kwargs(self) -> dict[str, Any]:
        """Arguments for the PEFT config class of the adapter type (LoraConfig, LoHaConfig, LoKrConfig)."""
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        kind = data.pop("adapter_type")
        lokr = {key: data.pop(key) for key in LOKR_OPTIONS}
        if kind == "dora":
            data["use_dora"] = True
        if kind in ("loha", "lokr"):
            data["alpha"] = data.pop("lora_alpha")
            del data["use_rslora"], data["lora_dropout"]
        if kind == "lokr":
            data.update(lokr)
        return data

    def peft_config(self, **extra: Any) -> Any:
        """The PEFT config object that attaches this adapter (`extra`: e.g. base_model_name_or_path)."""
        from peft import LoHaConfig, LoKrConfig, LoraConfig

        config_class = {"loha": LoHaConfig, "lokr": LoKrConfig}.get(self.adapter_type, LoraConfig)
        return config_class(**self.to_peft_kwargs(), **extra)
