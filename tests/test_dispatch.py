"""Dispatch: priority within a device type, forcing, env overrides, fallback warnings, strict mode,
caching, lazy loading and entry points."""

import dataclasses
import logging
import re
import subprocess
import sys

import pytest
import torch
from lowbit.backends.cpu import mxfp4 as cpu_mxfp4
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import devices, dispatch, registry
from lowbit.backend import Backend, Kernel
from lowbit.capability import ArchRange


def fast_backend(calls, name="fast", priority=20, **capability_changes):
    """A stand-in backend for quantize_mxfp4 that records its calls and writes the reference bits.
    Priority 20 puts it ahead of the built-in cuda backend (10)."""
    reference = lowbit.backends.cpu.BACKEND.kernel("quantize_mxfp4")
    capability = dataclasses.replace(reference.capability, backend=name, devices=("cpu", "cuda"),
                                     any_device=False, dtypes=(torch.bfloat16,), fidelity="bit-exact to SPEC",
                                     **capability_changes)

    def run(x, q, scales, *, scale_rule, swizzled):
        calls.append(tuple(x.shape))
        cpu_mxfp4.quantize(x, q, scales, scale_rule=scale_rule)

    return Backend(name=name, priority=priority, summary="test stand-in", kernels=(Kernel(capability, run),))


def test_import_loads_no_backend_and_probes_no_device():
    code = ("import sys, lowbit; from lowbit import devices;"
            "print([m for m in sys.modules if m.startswith('lowbit.backends')], devices.probed_arch.cache_info().currsize)")
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
    with pytest.raises(lowbit.UnsupportedError, match=r"no backend is named 'nope' \(known: cuda, xpu, cpu\)"):
        lowbit.quantize_mxfp4(torch.randn(4, 64), backend="nope")


def test_decisions_are_made_once_across_row_counts():
    dispatch.select.cache_clear()
    for rows in (1, 7, 300):
        lowbit.quantize_mxfp4(torch.randn(rows, 64))
    info = dispatch.select.cache_info()
    assert info.misses == 1 and info.hits == 0  # later calls of the kind never ask: the kernel is remembered


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


@pytest.fixture
def two_gpus(monkeypatch):
    """torch sees two NVIDIA GPUs, cuda:0 an sm_90 and cuda:1 an sm_80, with cuda:0 current; the
    fixture's value makes another one current (torch.cuda.set_device)."""
    current = [0]
    archs = {0: (9, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    # torch reads a device without an index as the current one
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: archs[current[0] if device is None or device.index is None
                                                  else device.index])
    devices.probed_arch.cache_clear()
    yield lambda index: current.__setitem__(0, index)
    devices.probed_arch.cache_clear()  # nothing learned from the stand-in GPUs outlives the test


def test_a_bare_cuda_device_is_the_current_one_whenever_it_is_asked(two_gpus):
    x = torch.empty(4, 64, dtype=torch.bfloat16, device="meta")
    assert lowbit.supports("quantize_mxfp4", x, device="cuda").call.arch == 90
    two_gpus(1)  # torch.cuda.set_device(1): "cuda" is now the sm_80, not the arch first cached for "cuda"
    assert lowbit.supports("quantize_mxfp4", x, device="cuda").call.arch == 80
    assert lowbit.supports("quantize_mxfp4", x, device="cuda:0").call.arch == 90


def test_a_call_takes_the_arch_of_its_inputs_device_not_the_current_one(two_gpus):
    with FakeTensorMode():
        x = torch.empty(4, 64, dtype=torch.bfloat16, device="cuda:1")
        assert lowbit.supports("quantize_mxfp4", x).call.arch == 80
        assert lowbit.supports("quantize_mxfp4", x.to("cuda:0")).call.arch == 90


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
        assert names == ["plugin", "cuda", "xpu", "cpu"]
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


# --- variants behind an opt-in (generic: a test backend, not xpu's vendor op) ---------------------

SETTING = "LOWBIT_TEST_PROVIDER"
OPT_IN_FIDELITY = "ties toward zero, not bit-exact to SPEC"
SKIPPED = f"auto-dispatch uses it only with {SETTING}=fast (fidelity: {OPT_IN_FIDELITY})"


@dataclasses.dataclass
class OptInBackend:
    """What the test backend "opt" saw: the variant of each run, and how often "fast"'s
    `unavailable` hook was asked; `missing` is what that hook answers."""

    runs: list = dataclasses.field(default_factory=list)
    probes: int = 0
    missing: str | None = None


@pytest.fixture
def opt(monkeypatch):
    """Registers backend "opt" (priority 20, cpu and cuda, quantize_mxfp4 on bfloat16) with two
    variants: "fast" (opt-in LOWBIT_TEST_PROVIDER=fast, needs a contiguous input; its library loads)
    and "exact". `opt.missing = "why"` makes "fast"'s library fail to load."""
    monkeypatch.delenv(SETTING, raising=False)
    seen = OptInBackend()
    reference = lowbit.backends.cpu.BACKEND.kernel("quantize_mxfp4").capability
    common = dict(backend="opt", devices=("cpu", "cuda"), any_device=False, dtypes=(torch.bfloat16,))

    def runner(variant):
        def run(x, q, scales, *, scale_rule, swizzled):
            seen.runs.append(variant)
            cpu_mxfp4.quantize(x, q, scales, scale_rule=scale_rule)
        return run

    def fast_unavailable():
        seen.probes += 1
        return seen.missing

    fast = dataclasses.replace(reference, variant="fast", opt_in=f"{SETTING}=fast", contiguous=True,
                               fidelity=OPT_IN_FIDELITY, **common)
    exact = dataclasses.replace(reference, variant="exact", fidelity="bit-exact to SPEC", **common)
    registry.register(Backend(name="opt", priority=20, summary="test backend with an opt-in variant",
                              kernels=(Kernel(fast, runner("fast"), unavailable=fast_unavailable),
                                       Kernel(exact, runner("exact"))),
                              settings={SETTING: ("exact", "fast")}))
    return seen


def bf16(*shape):
    return torch.randn(*shape).bfloat16()


def test_auto_dispatch_skips_an_opt_in_variant_without_the_setting(opt):
    verdict = lowbit.supports("quantize_mxfp4", bf16(4, 64))
    assert (verdict.backend, verdict.variant, verdict.fallback, verdict.opt_in_passed_over) == (
        "opt", "exact", False, False)
    assert verdict.reasons == {"opt/fast": [SKIPPED]}
    lowbit.quantize_mxfp4(bf16(4, 64))
    assert opt.runs == ["exact"]


def test_forcing_the_backend_by_name_also_skips_the_opt_in_variant(opt, monkeypatch):
    lowbit.quantize_mxfp4(bf16(4, 64), backend="opt")
    monkeypatch.setenv("LOWBIT_BACKEND", "opt")
    lowbit.quantize_mxfp4(bf16(4, 64))
    assert opt.runs == ["exact", "exact"]
    assert lowbit.supports("quantize_mxfp4", bf16(4, 64), backend="opt").reasons == {"opt/fast": [SKIPPED]}


def test_the_setting_opts_in_for_auto_and_the_forced_backend_and_is_read_per_call(opt, monkeypatch):
    monkeypatch.setenv(SETTING, "fast")
    lowbit.quantize_mxfp4(bf16(4, 64))
    lowbit.quantize_mxfp4(bf16(4, 64), backend="opt")
    monkeypatch.setenv(SETTING, "exact")  # a declared value that opts into nothing
    lowbit.quantize_mxfp4(bf16(4, 64))
    monkeypatch.setenv(SETTING, "")  # empty: unset
    lowbit.quantize_mxfp4(bf16(4, 64))
    monkeypatch.setenv(SETTING, "fast")
    lowbit.quantize_mxfp4(bf16(4, 64))
    assert opt.runs == ["fast", "fast", "exact", "exact", "fast"]
    verdict = lowbit.supports("quantize_mxfp4", bf16(4, 64))
    assert (verdict.variant, verdict.rejected, verdict.opt_in_passed_over) == ("fast", (), False)


def test_naming_the_variant_runs_it_without_the_setting(opt):
    lowbit.quantize_mxfp4(bf16(4, 64), backend="opt/fast")
    assert opt.runs == ["fast"]
    verdict = lowbit.supports("quantize_mxfp4", bf16(4, 64), backend="opt/fast")
    assert (verdict.backend, verdict.variant, verdict.rejected) == ("opt", "fast", ())
    assert f"fidelity: {OPT_IN_FIDELITY}" in verdict.explain()


@pytest.mark.parametrize("value", ["slow", "FAST", "fast "])
def test_a_setting_value_no_backend_declares_is_a_value_error(opt, monkeypatch, value):
    monkeypatch.setenv(SETTING, value)
    message = (f"lowbit.quantize_mxfp4: {SETTING}={value!r} is not one of 'exact', 'fast'; use one of those, or "
               f"unset {SETTING} for the default")
    with pytest.raises(ValueError) as raised:
        lowbit.quantize_mxfp4(bf16(4, 64))
    assert str(raised.value) == message and not isinstance(raised.value, lowbit.UnsupportedError)
    with pytest.raises(ValueError, match=re.escape(message)):
        lowbit.supports("quantize_mxfp4", bf16(4, 64))
    assert opt.runs == []


def test_the_opt_in_variants_hook_is_not_asked_until_opted_in_then_once(opt, monkeypatch):
    for shape in ((4, 64), (9, 64), (4, 128)):  # (4, 128): another Call, another decision
        lowbit.quantize_mxfp4(bf16(*shape))
        lowbit.quantize_mxfp4(bf16(*shape), backend="opt")
        lowbit.supports("quantize_mxfp4", bf16(*shape))
    lowbit.quantize_mxfp4(bf16(64, 4).t())  # refused by "fast" anyway: still not probed
    assert (opt.probes, opt.runs) == (0, ["exact"] * 7)
    monkeypatch.setenv(SETTING, "fast")
    for shape in ((4, 64), (9, 64), (4, 128), (2, 3, 32)):
        lowbit.quantize_mxfp4(bf16(*shape))
        lowbit.quantize_mxfp4(bf16(*shape), backend="opt")
        lowbit.quantize_mxfp4(bf16(*shape), backend="opt/fast")
        lowbit.explain("quantize_mxfp4", bf16(*shape))
    assert opt.probes == 1 and opt.runs[7:] == ["fast"] * 12


def test_an_opt_in_variant_that_cannot_load_says_why_and_the_next_variant_runs(opt, monkeypatch):
    opt.missing = "libfast is not installed"
    monkeypatch.setenv(SETTING, "fast")
    verdict = lowbit.supports("quantize_mxfp4", bf16(4, 64))
    assert (verdict.backend, verdict.variant, verdict.fallback, verdict.opt_in_passed_over) == (
        "opt", "exact", False, True)
    assert verdict.reasons == {"opt/fast": ["cannot load here: libfast is not installed"]}
    forced = lowbit.supports("quantize_mxfp4", bf16(4, 64), backend="opt/fast")
    assert not forced.ok and forced.reasons == {"opt/fast": ["cannot load here: libfast is not installed"]}
    assert "Alternative: backend='opt' can run this call" in forced.explain()
    with pytest.raises(lowbit.UnsupportedError, match="cannot load here: libfast is not installed"):
        lowbit.quantize_mxfp4(bf16(4, 64), backend="opt/fast")
    assert opt.probes == 1


def test_passing_over_an_opted_in_variant_warns_once_and_strict_mode_allows_it(opt, monkeypatch, caplog):
    """Not a fallback (the same backend runs the call, with the SPEC's bits), but not what the
    setting asked for: one warning per decision, and LOWBIT_STRICT=1 does not refuse it."""
    opt.missing = "libfast is not installed"
    monkeypatch.setenv(SETTING, "fast")
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        for rows in (4, 9, 1):
            lowbit.quantize_mxfp4(bf16(rows, 64))
        lowbit.quantize_mxfp4(bf16(4, 64), backend="opt")  # forced by name: its own decision, its own warning
    assert opt.runs == ["exact"] * 4
    warnings = [r.getMessage() for r in caplog.records if r.name == "lowbit"]
    assert [w.splitlines()[0] for w in warnings] == [
        "lowbit.quantize_mxfp4 for bfloat16 input, ndim 2, last dim 64, scale_rule 'rceil', on cpu: "
        "runs on backend 'opt' (exact)",
        "lowbit.quantize_mxfp4 for bfloat16 input, ndim 2, last dim 64, scale_rule 'rceil', on cpu: "
        "runs on backend 'opt' (exact) (forced)"]
    assert all("  - opt/fast: cannot load here: libfast is not installed" in w for w in warnings)
    assert all("LOWBIT_STRICT" not in w and "falls back" not in w for w in warnings)


def test_without_the_setting_skipping_the_opt_in_variant_is_silent(opt, caplog):
    with caplog.at_level(logging.DEBUG, logger="lowbit"):
        lowbit.quantize_mxfp4(bf16(4, 64))
        lowbit.quantize_mxfp4(bf16(4, 64), backend="opt")
    assert [r for r in caplog.records if r.name == "lowbit"] == []


def test_a_contiguous_record_refuses_a_transposed_input_and_takes_a_contiguous_one(opt, monkeypatch, caplog):
    monkeypatch.setenv(SETTING, "fast")
    transposed, rows_with_gaps = bf16(64, 4).t(), bf16(4, 128)[:, :64]
    for x, said in ((transposed, "last dim strided"), (rows_with_gaps, "input not contiguous")):
        verdict = lowbit.supports("quantize_mxfp4", x)
        assert (verdict.variant, verdict.opt_in_passed_over) == ("exact", True)
        assert verdict.reasons == {"opt/fast": ["needs a contiguous input"]}
        assert f"{said}, on cpu" in verdict.explain()
        with pytest.raises(lowbit.UnsupportedError) as raised:
            lowbit.quantize_mxfp4(x, backend="opt/fast")
        assert "  - opt/fast: needs a contiguous input" in str(raised.value)
        assert "backend 'opt/fast' (forced) cannot run it" in str(raised.value)
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        lowbit.quantize_mxfp4(transposed)  # auto: the next variant takes it, with the one warning
    assert opt.runs == ["exact"] and len([r for r in caplog.records if r.name == "lowbit"]) == 1
    for x in (transposed.contiguous(), rows_with_gaps.contiguous()):
        assert lowbit.supports("quantize_mxfp4", x).variant == "fast"
        lowbit.quantize_mxfp4(x, backend="opt/fast")
    assert opt.runs == ["exact", "fast", "fast"]


def _opt_in_kernel(opt_in):
    reference = lowbit.backends.cpu.BACKEND.kernel("quantize_mxfp4")
    cap = dataclasses.replace(reference.capability, backend="opt", variant="fast", opt_in=opt_in)
    return Kernel(cap, reference.run)


@pytest.mark.parametrize(("opt_in", "settings"), [
    ("LOWBIT_TEST_PROVIDER=fast", {}),  # no such setting
    ("LOWBIT_TEST_PROVIDER=fast", {"LOWBIT_TEST_PROVIDER": ("exact",)}),  # a value it does not declare
    ("LOWBIT_OTHER=fast", {"LOWBIT_TEST_PROVIDER": ("exact", "fast")}),  # another setting's name
    ("LOWBIT_TEST_PROVIDER", {"LOWBIT_TEST_PROVIDER": ("exact", "fast")}),  # no value
], ids=["undeclared-setting", "undeclared-value", "other-setting", "no-value"])
def test_a_backend_refuses_a_record_whose_opt_in_it_does_not_declare(opt_in, settings):
    with pytest.raises(ValueError, match=re.escape(
            f"lowbit.Backend: opt/fast opts in with {opt_in!r}, which backend 'opt' does not declare in settings=; "
            "pass settings=")):
        Backend(name="opt", priority=1, summary="", kernels=(_opt_in_kernel(opt_in),), settings=settings)
    Backend(name="opt", priority=1, summary="", kernels=(_opt_in_kernel("LOWBIT_TEST_PROVIDER=fast"),),
            settings={"LOWBIT_TEST_PROVIDER": ("exact", "fast")})  # declared: accepted


# --- the eager fast path: a kind's kernel is remembered, and nothing else is ------------------------

def _attention_call(rows):
    """unified_attention on the reference: `rows` sequences of one new token over 20 cached tokens."""
    pages = 2 * rows
    q = torch.randn(rows, 4, 32).bfloat16()
    cache = torch.randn(pages, 16, 2, 32).bfloat16()
    table = torch.arange(pages, dtype=torch.int32).reshape(rows, 2)
    return lambda: lowbit.unified_attention(
        q, cache, cache, cu_seqlens_q=torch.arange(rows + 1, dtype=torch.int32),
        seqused_k=torch.full((rows,), 20, dtype=torch.int32), block_table=table, max_seqlen_q=1, max_seqlen_k=20)


def _quantize_mxfp4_call(rows):
    x = torch.randn(rows, 64)
    return lambda: lowbit.quantize_mxfp4(x)


def _group_quant_call(rows):
    x = torch.randn(rows, 64)
    return lambda: lowbit.per_token_group_quant_mxfp4(x, torch.empty(rows, 32, dtype=torch.uint8),
                                                      torch.empty(rows, 2))


def _dequantize_mxfp4_call(rows):
    q, s = lowbit.quantize_mxfp4(torch.randn(rows, 64))
    return lambda: lowbit.dequantize_mxfp4(q, s)


def _quantize_mxfp8_call(rows):
    x = torch.randn(rows, 64)
    return lambda: lowbit.quantize_mxfp8(x, scale_layout="swizzled")


def _dequantize_mxfp8_call(rows):
    q, s = lowbit.quantize_mxfp8(torch.randn(rows, 64), scale_layout="swizzled")
    return lambda: lowbit.dequantize_mxfp8(q, s, scale_layout="swizzled")


def _fp8_call(rows):
    x = torch.randn(rows, 256)
    return lambda: lowbit.quantize_fp8_group_packed(x)


def _fp8_out_call(rows):
    x = torch.randn(rows, 256)
    q, s = lowbit.quantize_fp8_group_packed(x)
    return lambda: lowbit.quantize_fp8_group_packed(x, out=(torch.empty_like(q), torch.empty_strided(
        s.shape, s.stride(), dtype=s.dtype)))


def _dequantize_fp8_call(rows):
    q, s = lowbit.quantize_fp8_group_packed(torch.randn(rows, 256))
    return lambda: lowbit.dequantize_fp8_group_packed(q, s)


FAST_PATH_CALLS = {
    "quantize_mxfp4": _quantize_mxfp4_call,
    "per_token_group_quant_mxfp4": _group_quant_call,
    "dequantize_mxfp4": _dequantize_mxfp4_call,
    "quantize_mxfp8": _quantize_mxfp8_call,
    "dequantize_mxfp8": _dequantize_mxfp8_call,
    "quantize_fp8_group_packed": _fp8_call,
    "quantize_fp8_group_packed out=": _fp8_out_call,
    "dequantize_fp8_group_packed": _dequantize_fp8_call,
    "unified_attention": _attention_call,
}


@pytest.fixture(name="counted")
def _counted(monkeypatch):
    """Counts of the calls that make a decision: describing a call, choosing, checking a record."""
    from collections import Counter

    from lowbit.capability import Capability

    counts = Counter()

    def count(owner, name):
        real = getattr(owner, name)

        def counting(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)
        counting.cache_clear = getattr(real, "cache_clear", None)  # dispatch.select's, for registry.forget()
        monkeypatch.setattr(owner, name, counting)

    count(dispatch, "call_for")
    count(dispatch, "resolve")
    count(dispatch, "select")
    count(Capability, "unmet")
    return counts


@pytest.mark.parametrize("op", FAST_PATH_CALLS)
def test_a_later_call_of_a_kind_describes_nothing_and_checks_no_record(op, counted):
    make = FAST_PATH_CALLS[op]
    make(3)()
    assert counted["resolve"] >= 1 and counted["unmet"] >= 1
    counted.clear()
    for rows in (3, 5, 40):  # the row count is not part of a kind
        make(rows)()
    assert counted == {}


def test_another_kind_is_decided_afresh(counted):
    lowbit.quantize_mxfp4(torch.randn(4, 64))
    for x, rule in ((torch.randn(4, 128), "rceil"), (torch.randn(4, 64), "floor"), (torch.randn(4, 64).bfloat16(),
                                                                                    "rceil"),
                    (torch.randn(64, 4).t(), "rceil"), (torch.randn(2, 4, 64), "rceil")):
        counted.clear()
        lowbit.quantize_mxfp4(x, scale_rule=rule)
        assert counted["resolve"] == 1, (tuple(x.shape), rule)


def test_a_kind_names_everything_its_call_is_made_of():
    """Exhaustively over small shapes, dtypes and layouts: tensors of one kind have one Call."""
    calls_by_kind = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for shape in ((), (0,), (1,), (2,), (32,), (3, 1), (1, 3), (2, 32), (3, 64), (0, 64), (2, 3, 32), (2, 1, 2)):
            base = torch.zeros(shape, dtype=dtype)
            views = [base]
            if base.dim() >= 1:
                views += [base[..., ::2], base.flip(-1), base.unsqueeze(-1).expand(*shape, 3)[..., 0]]
            if base.dim() >= 2:
                views += [base.transpose(-1, -2), base.transpose(-1, -2).contiguous().transpose(-1, -2), base[::2]]
            for x in views:
                for rule in ("rceil", "floor"):
                    key = dispatch.kind("quantize_mxfp4", x, rule, "auto")
                    calls_by_kind.setdefault(key, set()).add(dispatch.call_for("quantize_mxfp4", x, scale_rule=rule))
    assert len(calls_by_kind) > 100
    assert all(len(calls) == 1 for calls in calls_by_kind.values()), \
        [calls for calls in calls_by_kind.values() if len(calls) > 1]


def test_strict_mode_set_after_a_remembered_fallback_refuses_the_next_call(monkeypatch):
    registry.register(fast_backend([]))
    lowbit.quantize_mxfp4(torch.randn(4, 64))  # float32: falls back to the reference, remembered
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    with pytest.raises(lowbit.UnsupportedError, match="LOWBIT_STRICT=1 refuses fallbacks"):
        lowbit.quantize_mxfp4(torch.randn(4, 64))
    monkeypatch.delenv("LOWBIT_STRICT")
    lowbit.quantize_mxfp4(torch.randn(4, 64))


def test_the_backend_variable_takes_effect_at_the_next_call_of_a_remembered_kind(monkeypatch):
    calls = []
    registry.register(fast_backend(calls))
    x = torch.randn(4, 64).bfloat16()
    lowbit.quantize_mxfp4(x)
    monkeypatch.setenv("LOWBIT_BACKEND", "cpu")
    lowbit.quantize_mxfp4(x)
    monkeypatch.delenv("LOWBIT_BACKEND")
    lowbit.quantize_mxfp4(x)
    assert calls == [(4, 64), (4, 64)]


def test_bad_buffers_of_a_remembered_kind_are_refused_before_anything_is_written():
    x = torch.randn(4, 64)
    lowbit.per_token_group_quant_mxfp4(x, torch.empty(4, 32, dtype=torch.uint8), torch.empty(4, 2))
    for x_q, x_s, what in ((torch.zeros(5, 32, dtype=torch.uint8), torch.zeros(4, 2), "x_q has shape"),
                           (torch.zeros(4, 32, dtype=torch.uint8), torch.zeros(4, 4)[:, ::2], "x_s must be contiguous")):
        with pytest.raises(ValueError, match=what):
            lowbit.per_token_group_quant_mxfp4(x, x_q, x_s)
        assert not x_q.any() and not x_s.any()
    q, s = lowbit.quantize_mxfp4(x)
    with pytest.raises(ValueError, match="do not match"):
        lowbit.dequantize_mxfp4(q[:3], s)


def test_calls_that_need_torch_library_still_go_through_it(monkeypatch):
    """An input that requires grad, fake tensors and meta tensors go through the torch.library op, also
    for a remembered kind (autograd off around it: [ERR-GRAD])."""
    x = torch.randn(4, 64)
    lowbit.quantize_mxfp4(x)
    seen, without_grad = [], dispatch.without_grad
    monkeypatch.setattr(dispatch, "without_grad", lambda op, *args: seen.append(op) or without_grad(op, *args))
    q, _ = lowbit.quantize_mxfp4(x.clone().requires_grad_())
    assert seen == [torch.ops.lowbit.quantize_mxfp4] and not q.requires_grad
    with FakeTensorMode() as mode:
        q, s = lowbit.quantize_mxfp4(mode.from_tensor(x))
    assert type(q).__name__ == "FakeTensor"
    q, s = lowbit.quantize_mxfp4(torch.empty(4, 64, device="meta"))
    assert q.device.type == "meta" and q.shape == (4, 32)
