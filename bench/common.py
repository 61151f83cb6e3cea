"""Shared by the benchmarks: a description of the machine that ran them, and atomic JSON + Markdown results,
so numbers from different machines can be compared and nothing half-written lands in bench/results/."""

from __future__ import annotations

import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acestep.core.atomic import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    """The marketing name from /proc/cpuinfo on Linux; platform's (vaguer) answer elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gb() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return round(psutil.virtual_memory().total / 2**30, 1)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 matmul instructions


def native_bf16_in_cpuinfo(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists bf16 instructions. Without them torch emulates bf16 matmuls, which
    can be 100x slower than fp32 (an AVX2-only EPYC: 12.7 s against 30.7 ms for 322x2560 @ 2560x2560)."""
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[-1].split()}
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def cpu_native_bf16() -> bool | None:
    """True / False from /proc/cpuinfo on Linux; None (unknown) elsewhere."""
    try:
        return native_bf16_in_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def bf16_warning(dtype: str, device: str) -> str | None:
    """One line for a bf16 CPU run on a CPU without bf16 instructions: its timings mislead."""
    if dtype == "bf16" and device == "cpu" and cpu_native_bf16() is False:
        return ("this CPU has no native bf16 (no avx512_bf16/amx_bf16): bf16 timings are emulated and misleading; "
                "rerun with --dtype fp32")
    return None


def machine_description() -> dict:
    """CPU, cores, memory, load, software versions, the GPU (if any) and the date; callers add device and dtype.

    The load average tells whether other work shared the machine, which slows every number here."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cpu": _cpu_model(),
        "cpu_native_bf16": cpu_native_bf16(),  # None: unknown (not Linux)
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": _memory_gb(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,  # shared machine?
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def release(device: torch.device) -> None:
    """Free what the last measurement left, so the next one starts from the same memory."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|\bcpu\b|@.*", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def machine_tag(machine: dict, device: str) -> str:
    """A short file-name tag: the GPU name for CUDA runs, else the CPU name and core count."""
    if device.startswith("cuda") and machine.get("gpu"):
        return _slug(machine["gpu"])
    return f"cpu-{_slug(machine['cpu'])}-{machine['logical_cores']}c"


def format_cell(value: Any) -> str:
    """Numbers to about three significant digits without exponents; None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value).replace("|", "\\|")
    if isinstance(value, int):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100 or value == 0:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A pipe table; columns holding only numbers are right-aligned."""
    def numeric(key: str) -> bool:
        values = [row.get(key) for row in rows if row.get(key) is not None]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    lines = [
        "| " + " | ".join(header for _, header in columns) + " |",
        "|" + "|".join("---:" if numeric(key) else "---" for key, _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(format_cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(machine: dict) -> str:
    return "; ".join(f"{key}: {value}" for key, value in machine.items() if value is not None)


def write_results(
    stem: str,
    rows: list[dict],
    columns: list[tuple[str, str]],
    machine: dict,
    title: str,
    notes: list[str],
) -> tuple[Path, Path]:
    """bench/results/<stem>.json (every row key) and <stem>.md (title, machine line, table, notes as bullets)."""
    json_path = RESULTS_DIR / f"{stem}.json"
    md_path = RESULTS_DIR / f"{stem}.md"
    atomic_write_json(
        json_path,
        {
            "title": title,
            "machine": machine,
            "columns": [{"key": key, "header": header} for key, header in columns],
            "rows": rows,
            "notes": notes,
        },
    )
    parts = [f"# {title}", f"**Machine:** {machine_line(machine)}", markdown_table(rows, columns)]
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes))
    atomic_write_text(md_path, "\n\n".join(parts) + "\n")
    return json_path, md_path


def portable_command(script: str, argv: list[str]) -> str:
    """The command line as results record it: absolute paths of this machine become <name> (no machine paths in
    the repo)."""
    import shlex

    def strip(arg: str) -> str:
        flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if os.path.isabs(value):
            value = f"<{Path(value).name}>"
        return flag + eq + value

    return f"python {script} " + shlex.join(strip(arg) for arg in argv)
