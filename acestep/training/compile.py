"""`--compile`: `torch.compile` each transformer block in place, or say in one line why not and train uncompiled.

Blocks are compiled one by one (not the whole model): the blocks are where the time goes, and each one is a
small graph that gradient checkpointing recomputes, PEFT wraps and the fp8 layers run inside as they are. The
modules stay where they are, so parameter names, saved adapters and checkpoints do not change.

Compiling needs a toolchain (a C++ compiler for the CPU, triton for CUDA) that not every machine has, and
torch.compile only fails at the first call. So a tiny function is compiled first (forward and backward) to find
out, and a block whose first compiled call still fails makes every block fall back to eager execution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)
BACKEND = "inductor"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def compile_works(device: torch.device | str, backend: str | Callable | None = None) -> str | None:
    """None where torch.compile can build code on `device` (with `backend`, default BACKEND), else the reason in
    one line."""
    def probe(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x * 2.0 + 1.0).sum()

    try:
        x = torch.linspace(-1.0, 1.0, 8, device=device, requires_grad=True)
        torch.compile(probe, backend=backend or BACKEND, dynamic=False)(x).backward()
    except Exception as error:  # noqa: BLE001 - any failure means: train uncompiled
        return f"{type(error).__name__}: {_one_line(error)}"
    finally:
        torch._dynamo.reset()
    return None


class _FallBackOnFirstError:
    """A block's compiled call; when its first call fails, every block of the group goes back to eager."""

    def __init__(self, owner: nn.Module, group: list[nn.Module], warn: Callable[[str], None]) -> None:
        self.owner = owner
        self.compiled = owner._compiled_call_impl
        self.group = group
        self.warn = warn
        self.tested = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.tested:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - a compile error: the eager call below repeats a real one
            for block in self.group:
                block._compiled_call_impl = None
            self.warn(f"--compile: compiling the transformer blocks failed ({type(error).__name__}: "
                      f"{_one_line(error)}); training uncompiled")
            return self.owner._call_impl(*args, **kwargs)
        self.tested = True
        return out


def compile_blocks(blocks: Sequence[nn.Module], device: torch.device | str, backend: str | Callable | None = None,
                   warn: Callable[[str], None] = log.warning) -> bool:
    """Compile each of a model's transformer blocks (the family's `ModelBlocks.blocks(model)`) in place, after LoRA
    and checkpointing are set up; True if compiled. Where compiling cannot work, `warn` gets one line and the model
    stays as it is. In place: module names, and so the adapter's keys, stay the same."""
    reason = compile_works(device, backend)
    if reason is not None:
        warn(f"--compile: torch.compile cannot build code on this machine ({reason}); training uncompiled")
        return False
    blocks = list(blocks)
    for block in blocks:
        block.compile(backend=backend or BACKEND)
        block._compiled_call_impl = _FallBackOnFirstError(block, blocks, warn)
    return True
