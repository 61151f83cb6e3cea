"""A CUDA device asked of a torch that has none: one line that says which torch is installed and how to get
a CUDA one (setup.sh installs the CPU build unless TORCH_SPEC names another), instead of torch's assertion."""

from __future__ import annotations

import torch

from acestep.core.errors import AcestepError

CUDA_INDEX = "https://download.pytorch.org/whl/cu128"  # the README's example


def wants_cuda(device: str | None) -> bool:
    return bool(device) and str(device).split(":")[0] in ("cuda", "gpu")


def check_cuda(flag: str, value: str, cpu_choice: str) -> None:
    """Refuse `flag value` (e.g. --device cuda) in one line when this torch cannot reach a CUDA GPU."""
    if not wants_cuda(value) or torch.cuda.is_available():
        return
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        version = torch.__version__.split("+")[0]
        raise AcestepError(
            f"{flag} {value}: the installed torch {torch.__version__} is the CPU-only build setup.sh installs by "
            f"default; for a CUDA build delete .venv and run setup again with TORCH_SPEC=\"torch=={version} "
            f"--index-url {CUDA_INDEX}\" (README, install), or use {cpu_choice}")
    raise AcestepError(f"{flag} {value}: torch {torch.__version__} is a CUDA build but sees no GPU (no driver, or "
                       f"CUDA_VISIBLE_DEVICES hides it); use {cpu_choice}")
