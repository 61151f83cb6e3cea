"""Peak memory of the training process: GPU memory allocated on CUDA, peak resident memory (RSS) on the CPU."""

from __future__ import annotations

import sys

import torch


def peak_rss_gb() -> float:
    """Highest resident set size of this process so far, in GB (1e9 bytes)."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil
        except ImportError:
            return float("nan")
        return psutil.Process().memory_info().peak_wset / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return peak_rss_gb()
