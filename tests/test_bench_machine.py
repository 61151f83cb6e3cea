"""Benchmarks record whether the CPU has native bf16 and warn before timing emulated bf16."""

from __future__ import annotations

import pytest

from bench import common

EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse avx avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


@pytest.mark.parametrize(("cpuinfo", "native"), [(EPYC_AVX2, False), (SAPPHIRE_RAPIDS, True),
                                                  ("flags : avx512f amx_bf16\n", True), ("", False)])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert common.native_bf16_in_cpuinfo(cpuinfo) is native


def test_bf16_on_a_cpu_without_it_is_warned_and_fp32_is_not(monkeypatch):
    monkeypatch.setattr(common, "cpu_native_bf16", lambda: False)
    assert "--dtype fp32" in common.bf16_warning("bf16", "cpu")
    assert common.bf16_warning("fp32", "cpu") is None
    assert common.bf16_warning("bf16", "cuda") is None
    monkeypatch.setattr(common, "cpu_native_bf16", lambda: True)
    assert common.bf16_warning("bf16", "cpu") is None


def test_machine_description_records_the_flag():
    machine = common.machine_description()
    assert machine["cpu_native_bf16"] in (True, False, None)
    assert machine["cpu_native_bf16"] == common.cpu_native_bf16()
