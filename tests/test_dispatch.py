"""Dispatch: priority within a device type, forcing, env overrides, fallback warnings, strict mode,
caching, lazy loading and entry points."""

import dataclasses
import logging
import subprocess
import sys

import pytest
import torch
from lowbit.backends.cpu import mxfp4 as cpu_mxfp4
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import dispatch, registry
from lowbit.backend import Backend, Kernel
from lowbit.capability import ArchRange


def fast_backend(calls, name="fast", priority=20, **capability_changes):
    """A stand-in backend for quantize_mxfp4 that records its calls and writes the reference bits.
    Priority 20 puts it ahead of the built-in cuda backend (10)."""
    reference = lowbit.backends.cpu.BACKEND.kernel("quantize_mxfp4")
    capability = dataclasses.replace(reference.capability, backend=name, devices=("cpu", "cuda"),
                                     any_device=False, dtypes=(torch.bfloat16,), fidelity="bit-exact to SPEC",
                                     **capability_changes)

    def run(x, q, scales, *, scale_rule):
        calls.append(tuple(x.shape))
        cpu_mxfp4.quantize(x, q, scales, scale_rule=scale_rule)

    return Backend(name=name, priority=priority, summary="test stand-in", kernels=(Kernel(capability, run),))


def test_import_loads_no_backend_and_probes_no_device():
    code = ("import sys, lowbit; from lowbit import devices;"
            "print([m for m in sys.modules if m.startswith('lowbit.backends')], devices.device_arch.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] 0"


def test_highest_priority_backend_whose_check_passes_wins():
    calls = []
    registry.register(fast_backend(calls))
    x = torch.randn(4, 64).bfloat16()
    q, s = lowbit.quantize_mxfp4(x)
    assert calls == [(4, 64)]
    assert lowbit.supports("quantize_mxfp4", x).backend == "fast"


def test_fallback_logs_one_warning_with_the_reason(caplog):
    calls = []
    registry.register(fast_backend(calls))
    x = torch.randn(4, 64)  # float32: the stand-in takes bfloat16 only
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        lowbit.quantize_mxfp4(x)
        lowbit.quantize_mxfp4(torch.randn(9, 64))  # other rows, same decision: no second warning
    assert calls == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "lowbit"]
    assert len(warnings) == 1
    assert "falls back to backend 'cpu'" in warnings[0]
    assert "fast: input dtype float32 is not one of bfloat16" in warnings[0]


def test_strict_mode_turns_a_fallback_into_an_error(monkeypatch):
    registry.register(fast_backend([]))
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    with pytest.raises(lowbit.UnsupportedError, match="LOWBIT_STRICT=1 refuses fallbacks") as err:
        lowbit.quantize_mxfp4(torch.randn(4, 64))
    assert "fast: input dtype float32" in str(err.value)
    assert "backend='cpu'" in str(err.value)  # the alternative: accept the reference explicitly
    lowbit.quantize_mxfp4(torch.randn(4, 64), backend="cpu")  # forced: not a fallback


def test_forced_backend_runs_even_when_another_has_priority():
    calls = []
    registry.register(fast_backend(calls))
    lowbit.quantize_mxfp4(torch.randn(4, 64).bfloat16(), backend="cpu")
    assert calls == []


def test_env_backend_replaces_auto_but_not_an_explicit_choice(monkeypatch):
    calls = []
    registry.register(fast_backend(calls))
    monkeypatch.setenv("LOWBIT_BACKEND", "cpu")
    x = torch.randn(4, 64).bfloat16()
    lowbit.quantize_mxfp4(x)
    assert calls == []
    lowbit.quantize_mxfp4(x, backend="fast")
    assert calls == [(4, 64)]


def test_forced_backend_that_cannot_run_names_the_constraint_and_an_alternative():
    registry.register(fast_backend([]))
    with pytest.raises(lowbit.UnsupportedError) as err:
        lowbit.quantize_mxfp4(torch.randn(4, 64), backend="fast")
    text = str(err.value)
    assert "backend 'fast' (forced) cannot run it" in text
    assert "input dtype float32 is not one of bfloat16" in text
    assert "Alternative: backend='cpu' can run this call" in text


def test_unknown_backend_name_lists_the_known_ones():
    with pytest.raises(lowbit.UnsupportedError, match=r"no backend is named 'nope' \(known: cuda, cpu\)"):
        lowbit.quantize_mxfp4(torch.randn(4, 64), backend="nope")


def test_decisions_are_cached_across_row_counts():
    dispatch.select.cache_clear()
    for rows in (1, 7, 300):
        lowbit.quantize_mxfp4(torch.randn(rows, 64))
    info = dispatch.select.cache_info()
    assert info.misses == 1 and info.hits == 2


def test_registering_a_backend_invalidates_cached_decisions():
    x = torch.randn(4, 64).bfloat16()
    assert lowbit.supports("quantize_mxfp4", x).backend == "cpu"
    registry.register(fast_backend([]))
    assert lowbit.supports("quantize_mxfp4", x).backend == "fast"


def test_reference_is_the_fallback_on_devices_without_a_native_backend(caplog):
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        q, s = lowbit.quantize_mxfp4(torch.empty(4, 64, device="cuda"))
    assert q.device.type == "cuda"
    [message] = [r.getMessage() for r in caplog.records if r.name == "lowbit"]
    assert "no installed backend for cuda takes it; 'cpu' is the pure-PyTorch fallback" in message


def test_native_backend_is_preferred_on_its_device():
    registry.register(fast_backend([]))
    x = torch.empty(4, 64, dtype=torch.bfloat16, device="meta")
    verdict = lowbit.supports("quantize_mxfp4", x, device="cuda")
    assert (verdict.ok, verdict.backend, verdict.fallback) == (True, "fast", False)


def test_arch_range_is_checked_and_an_unknown_arch_is_said(monkeypatch):
    registry.register(fast_backend([], archs={"cuda": ArchRange(90)}))
    x = torch.empty(4, 64, dtype=torch.bfloat16, device="meta")
    assert lowbit.supports("quantize_mxfp4", x, device="cuda", arch="sm_90").backend == "fast"
    old = lowbit.supports("quantize_mxfp4", x, device="cuda", arch=(8, 0))  # the next backend takes it
    assert old.backend == "cuda" and old.reasons["fast"] == ["needs sm_90+, not sm_80"]
    monkeypatch.setattr(lowbit.query, "device_arch", lambda device: None)  # as on a machine without the GPU
    unknown = lowbit.supports("quantize_mxfp4", x, device="cuda")
    assert "cannot tell this cuda device's arch" in unknown.reasons["fast"][0]


def test_a_backend_that_cannot_load_says_why():
    backend = dataclasses.replace(fast_backend([]), unavailable=lambda: "needs triton")
    registry.register(backend)
    verdict = lowbit.supports("quantize_mxfp4", torch.randn(4, 64).bfloat16())
    assert verdict.backend == "cpu"
    assert verdict.reasons["fast"] == ["cannot load here: needs triton"]


class _EntryPoint:
    def __init__(self, name, value, obj):
        self.name, self.value, self._obj = name, value, obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def test_entry_point_backends_are_discovered(monkeypatch, caplog):
    calls = []
    points = [_EntryPoint("plugin", "plugin:BACKEND", lambda: fast_backend(calls, name="plugin")),
              _EntryPoint("broken", "broken:BACKEND", ImportError("no module named broken"))]
    monkeypatch.setattr(registry.importlib.metadata, "entry_points",
                        lambda group: points if group == "lowbit.backends" else [])
    registry._discovered.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="lowbit"):
            names = [b.name for b in registry.backends()]
        assert names == ["plugin", "cuda", "cpu"]
        assert registry.load_problems() == ("entry point 'broken' (broken:BACKEND) did not load: "
                                            "no module named broken",)
        dispatch.clear_cache()
        lowbit.quantize_mxfp4(torch.randn(2, 32).bfloat16())
        assert calls == [(2, 32)]
    finally:
        registry._discovered.cache_clear()
        dispatch.clear_cache()


def test_a_kernel_registered_under_another_backends_name_is_refused():
    kernel = lowbit.backends.cpu.BACKEND.kernel("quantize_mxfp4")
    with pytest.raises(ValueError, match="declares backend 'cpu'"):
        Backend(name="other", priority=1, summary="", kernels=(kernel,))
