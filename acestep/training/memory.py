"""Peak memory of the training process: GPU memory allocated on CUDA, peak resident memory (RSS) on the CPU."""

from __future__ import annotations

import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


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


class TensorMemoryTracker(TorchDispatchMode):
    """Live and peak bytes of tensor storages, on any device (CPU, CUDA, or fake tensors for planning).

    Every storage an operator returns inside the `with` block is counted until it is freed; tensors that exist
    before (weights, optimizer state) are counted through `track`. This is the tensor memory a caching
    allocator must hold at least: it excludes the allocator's cache, fragmentation, the CUDA context and, on the
    CPU, the interpreter and libraries that RSS includes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def track(self, *tensors: torch.Tensor | None) -> None:
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)

    def track_module(self, module: torch.nn.Module) -> None:
        """Parameters, their gradients and buffers."""
        for param in module.parameters():
            self.track(param, param.grad)
        self.track(*module.buffers())

    def track_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        for state in optimizer.state.values():
            self.track(*(v for v in state.values() if isinstance(v, torch.Tensor)))

    def reset_peak(self) -> None:
        self.peak = self.current

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if any(result.alias_info is not None for result in func._schema.returns):
            return out  # a view or an in-place result: its storage belongs to an input
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)
        return out
