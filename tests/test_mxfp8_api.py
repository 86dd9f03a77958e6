"""lowbit's MXFP8 functions as an API (docs/SPEC.md, "MXFP8"): quantize_mxfp8 and dequantize_mxfp8. Fakes,
the eager fast path, opcheck, torch.compile, supports/explain and `python -m lowbit info`. The bits
themselves are tests/test_spec_mxfp8.py's; every refused call is in tests/test_refusals.py.

* Fake outputs (FakeTensorMode, on fake cpu, cuda and xpu tensors) have the shapes, dtypes and strides of
  the real CPU outputs, which are the SPEC's: q float8_e4m3fn of x's shape; scales float8_e8m0fnu
  (..., K/32) linear or (round_up(R, 128), round_up(K/32, 4)) swizzled; dequantize (..., K) in the dtype asked.
  On fake cuda the kernel is picked by arch (cuda/triton from sm_89, the cpu fallback with one warning below
  it and where the arch cannot be told); on fake xpu it is xpu/triton, silently.
* The eager fast path (lowbit/dispatch.py, `kernel_for`) refuses what a first call refuses, and runs the
  kernel the torch.library op runs.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import dispatch, registry

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
E4M3, E8M0, U8 = torch.float8_e4m3fn, torch.float8_e8m0fnu, torch.uint8
QUANTIZE, DEQUANTIZE = "quantize_mxfp8", "dequantize_mxfp8"
MX8_OPS = (QUANTIZE, DEQUANTIZE)
LAYOUTS = ("linear", "swizzled")


def _fake_tensors_unavailable(device: str) -> str:
    """Why this torch cannot make fake `device` tensors here ('' if it can); see tests/test_fakes.py."""
    try:
        with FakeTensorMode():
            torch.empty(1, device=device)
    except (AssertionError, RuntimeError) as error:
        return f"this torch cannot make fake {device} tensors here: {error}"
    return ""


FAKE_DEVICE = {d: pytest.mark.skipif(bool(_fake_tensors_unavailable(d)), reason=_fake_tensors_unavailable(d) or "-")
               for d in ("cuda", "xpu")}
DEVICES = ("cpu", *(pytest.param(d, marks=mark) for d, mark in FAKE_DEVICE.items()))


# --- helpers --------------------------------------------------------------------------------------

def randn(*shape, dtype=F32, seed=0) -> torch.Tensor:
    """Normal values with a spread of exponents, so block scales differ."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-6, 7, shape, generator=g).float())
    return x.to(dtype)


def special(*shape, dtype=BF16, seed=0, nan=True) -> torch.Tensor:
    """randn with NaN (unless `nan` is False), ±Inf, -0 and an all-zero block mixed in."""
    x = randn(*shape, seed=seed)
    flat = x.view(-1)
    flat[3] = float("nan") if nan else 1e30
    flat[40], flat[77], flat[100] = float("inf"), -float("inf"), -0.0
    flat[128:160] = 0.0
    return x.to(dtype)


def E(*shape, dtype=F32, d="cpu") -> torch.Tensor:
    if len(shape) == 1 and isinstance(shape[0], tuple):
        shape = shape[0]
    return torch.empty(tuple(shape), dtype=dtype, device=d)


def fake_like(t: torch.Tensor, device: str) -> torch.Tensor:
    """A tensor on `device` (call inside FakeTensorMode) with t's shape, dtype, strides, storage offset."""
    numel = t.untyped_storage().nbytes() // t.element_size()
    return torch.empty(numel, dtype=t.dtype, device=device).as_strided(t.shape, t.stride(), t.storage_offset())


def layout(t: torch.Tensor) -> tuple:
    """Everything of a tensor but its values and device."""
    return tuple(t.shape), t.dtype, tuple(t.stride()), t.storage_offset()


def dense(shape, dtype) -> tuple:
    strides, step = [], 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= max(n, 1)
    return tuple(shape), dtype, tuple(strides), 0


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(U8) if t.element_size() == 1 else t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def caught(fn) -> BaseException | None:
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def spec_layouts(x_shape, scale_layout) -> list[tuple]:
    """The SPEC's output layouts of quantize_mxfp8 for an input of x_shape ([MX8-ELEMENT, MX8-LINEAR,
    MX8-SWIZZLE]), written out here; all contiguous."""
    *lead, k = x_shape
    rows = 1
    for n in lead:
        rows *= n
    scales = (-(-rows // 128) * 128, -(-(k // 32) // 4) * 4) if scale_layout == "swizzled" else (*lead, k // 32)
    return [dense(x_shape, E4M3), dense(scales, E8M0)]


# --- fakes: outputs -------------------------------------------------------------------------------

INPUTS = {
    "2d_f32": lambda: randn(5, 64),
    "1d_bf16": lambda: randn(32, dtype=BF16, seed=1),
    "3d_f16": lambda: randn(2, 3, 96, dtype=F16, seed=2),
    "130rows_k160": lambda: randn(130, 160, dtype=BF16, seed=3),  # swizzled: two row tiles, C = 5 -> 8
    "0rows": lambda: randn(0, 64),
    "0rows_3d": lambda: randn(2, 0, 32),
    "k0": lambda: randn(3, 0),
    "last_dim_strided": lambda: randn(64, 6, seed=4).t(),
    "batch_transposed": lambda: randn(3, 4, 32, dtype=BF16, seed=5).transpose(0, 1),
    "storage_offset": lambda: randn(10, 64, seed=6)[3:7],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale_layout", LAYOUTS)
@pytest.mark.parametrize("rule", ["rceil", "floor"])
@pytest.mark.parametrize("name", INPUTS)
def test_fake_quantize_outputs_match_real_layout(name, rule, scale_layout, device):
    x = INPUTS[name]()
    real = lowbit.quantize_mxfp8(x, scale_rule=rule, scale_layout=scale_layout)
    want = spec_layouts(tuple(x.shape), scale_layout)
    assert [layout(t) for t in real] == want
    with FakeTensorMode():
        fake = lowbit.quantize_mxfp8(fake_like(x, device), scale_rule=rule, scale_layout=scale_layout)
        got, devices = [layout(t) for t in fake], {t.device.type for t in fake}
    assert (got, devices) == (want, {device})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("raw", [False, True], ids=["native", "uint8"])
@pytest.mark.parametrize("scale_layout", LAYOUTS)
@pytest.mark.parametrize(("name", "dtype"), [("2d_f32", BF16), ("3d_f16", F16), ("130rows_k160", F32),
                                             ("0rows", BF16), ("1d_bf16", F32), ("last_dim_strided", BF16)])
def test_fake_dequantize_output_matches_real_layout(name, dtype, scale_layout, raw, device):
    q, s = lowbit.quantize_mxfp8(INPUTS[name](), scale_layout=scale_layout)
    if raw:
        q, s = q.view(U8), s.view(U8)
    real = lowbit.dequantize_mxfp8(q, s, dtype=dtype, scale_layout=scale_layout)
    assert layout(real) == dense(tuple(q.shape), dtype)
    with FakeTensorMode():
        fake = lowbit.dequantize_mxfp8(fake_like(q, device), fake_like(s, device), dtype=dtype,
                                       scale_layout=scale_layout)
        got = (layout(fake), fake.device.type)
    assert got == (layout(real), device)


# --- fakes on fake accelerators: which kernel -------------------------------------------------------

def _accelerator_calls(d):
    """op: (args, kwargs) on device d, tensors holding no data."""
    return {
        QUANTIZE: ((E(5, 64, dtype=BF16, d=d),), {"scale_rule": "floor", "scale_layout": "swizzled"}),
        DEQUANTIZE: ((E(5, 64, dtype=E4M3, d=d), E(5, 2, dtype=E8M0, d=d)), {"dtype": F32}),
    }


def _needs_backend(name):
    if registry.unavailable(name) is not None:
        pytest.skip(f"the {name} backend cannot load here: {registry.unavailable(name)}")


@pytest.fixture(name="fake_arch")
def _fake_arch(monkeypatch):
    """Set the arch dispatch sees for (fake) cuda tensors: this CPU-only machine cannot tell it."""
    def set_arch(arch):
        monkeypatch.setattr(dispatch, "device_arch", lambda device: arch if device.type == "cuda" else None)
    return set_arch


@FAKE_DEVICE["cuda"]
@pytest.mark.parametrize("arch", [89, 90, 100, 120])
@pytest.mark.parametrize("op", MX8_OPS)
def test_fake_cuda_from_sm89_resolves_to_cuda_triton_without_a_warning(op, arch, fake_arch, resolved, caplog,
                                                                       monkeypatch):
    _needs_backend("cuda")
    fake_arch(arch)
    monkeypatch.setenv("LOWBIT_STRICT", "1")  # not a fallback: strict lets it through
    with caplog.at_level(logging.DEBUG, logger="lowbit"), FakeTensorMode():
        for _ in range(2):
            args, kwargs = _accelerator_calls("cuda")[op]
            result = getattr(lowbit, op)(*args, **kwargs)
            assert {t.device.type for t in (result if isinstance(result, tuple) else (result,))} == {"cuda"}
    assert resolved == ["cuda/triton", "cuda/triton"]
    assert [r for r in caplog.records if r.name == "lowbit"] == []


@FAKE_DEVICE["cuda"]
@pytest.mark.parametrize("arch", [80, 86, None])
@pytest.mark.parametrize("op", MX8_OPS)
def test_fake_cuda_below_sm89_or_of_unknown_arch_falls_back_to_cpu_with_one_warning(op, arch, fake_arch, resolved,
                                                                                     caplog, monkeypatch):
    _needs_backend("cuda")
    fake_arch(arch)
    margs, mkwargs = _accelerator_calls("meta")[op]
    where = {} if arch is None else {"arch": arch}
    expected = lowbit.explain(op, *margs, device="cuda", **where, **mkwargs)
    need = "needs sm_89+ and cannot tell this cuda device's arch" if arch is None else f"needs sm_89+, not sm_{arch}"
    assert "falls back to backend 'cpu'" in expected and f"  - cuda/triton: {need}" in expected.splitlines()
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        for _ in range(3):
            args, kwargs = _accelerator_calls("cuda")[op]
            getattr(lowbit, op)(*args, **kwargs)
    assert resolved == ["cpu"] * 3
    assert [r.getMessage() for r in caplog.records if r.name == "lowbit"] == [expected]
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    dispatch.clear_cache()
    with FakeTensorMode(), pytest.raises(lowbit.UnsupportedError, match="LOWBIT_STRICT=1 refuses fallbacks"):
        args, kwargs = _accelerator_calls("cuda")[op]
        getattr(lowbit, op)(*args, **kwargs)


@FAKE_DEVICE["xpu"]
@pytest.mark.parametrize("op", MX8_OPS)
def test_fake_xpu_resolves_to_xpu_triton_without_a_warning(op, resolved, caplog, monkeypatch):
    _needs_backend("xpu")
    margs, mkwargs = _accelerator_calls("meta")[op]
    verdict = lowbit.supports(op, *margs, device="xpu", **mkwargs)
    assert (verdict.backend, verdict.variant, verdict.fallback, verdict.reasons) == ("xpu", "triton", False, {})
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    with caplog.at_level(logging.DEBUG, logger="lowbit"), FakeTensorMode():
        for _ in range(2):
            args, kwargs = _accelerator_calls("xpu")[op]
            getattr(lowbit, op)(*args, **kwargs)
    assert resolved == ["xpu/triton", "xpu/triton"]
    assert [r for r in caplog.records if r.name == "lowbit"] == []


# --- the eager fast path ---------------------------------------------------------------------------

def test_fast_path_serves_a_second_call_of_a_kind_without_resolving(resolved):
    x = randn(4, 64)
    for seed in (0, 1):
        q, s = lowbit.quantize_mxfp8(randn(4, 64, seed=seed))
        lowbit.dequantize_mxfp8(q, s)
    lowbit.quantize_mxfp8(x, scale_layout="swizzled")  # another kind
    lowbit.quantize_mxfp8(randn(9, 64), scale_layout="swizzled")
    assert resolved == ["cpu", "cpu", "cpu"]


def _cold_error(fn) -> BaseException:
    dispatch.clear_cache()
    exc = caught(fn)
    assert exc is not None, "the first call did not raise"
    return exc


def cat(*tensors) -> torch.Tensor:
    """torch.cat by the bytes: the one-byte float dtypes have no CPU cat or copy kernels."""
    return torch.cat([t.view(U8) for t in tensors]).view(tensors[0].dtype)


FAST_PATH_BAD_DEQUANTIZE = {  # (q, s) of a (4, 64) quantize in each layout -> the bad call's arguments
    "scales-too-few": lambda q, s, layout: (q, s[:, :1] if layout == "linear" else s[:64]),
    "scales-rows": lambda q, s, layout: (q, cat(s, s[:1])),
    "q-rows": lambda q, s, layout: (q[:3] if layout == "linear" else cat(*[q] * 33), s),
    "scales-on-meta": lambda q, s, layout: (q, E(*s.shape, dtype=s.dtype, d="meta")),
}


@pytest.mark.parametrize("scale_layout", LAYOUTS)
@pytest.mark.parametrize("bad", FAST_PATH_BAD_DEQUANTIZE)
def test_fast_path_dequantize_refuses_like_a_first_call(bad, scale_layout):
    q, s = lowbit.quantize_mxfp8(randn(4, 64), scale_layout=scale_layout)
    make_bad = FAST_PATH_BAD_DEQUANTIZE[bad]
    first = _cold_error(lambda: lowbit.dequantize_mxfp8(*make_bad(q, s, scale_layout), scale_layout=scale_layout))
    lowbit.dequantize_mxfp8(q, s, scale_layout=scale_layout)  # remembers the kind
    again = caught(lambda: lowbit.dequantize_mxfp8(*make_bad(q, s, scale_layout), scale_layout=scale_layout))
    assert (type(again), str(again)) == (type(first), str(first))


def test_fast_path_dequantize_refuses_scales_of_the_other_layout_like_a_first_call():
    q, s = lowbit.quantize_mxfp8(randn(4, 64), scale_layout="swizzled")
    first = _cold_error(lambda: lowbit.dequantize_mxfp8(q, s))  # swizzled scales read as linear
    lowbit.dequantize_mxfp8(q, s, scale_layout="swizzled")
    lowbit.dequantize_mxfp8(q, s.view(U8)[:4, :2].contiguous().view(E8M0))  # the linear kind, warm
    again = caught(lambda: lowbit.dequantize_mxfp8(q, s))
    assert (type(again), str(again)) == (type(first), str(first))


@pytest.mark.parametrize(("good", "bad"), [
    ({"scale_rule": "rceil"}, {"scale_rule": "RCEIL"}), ({"scale_layout": "linear"}, {"scale_layout": "Linear"}),
    ({"scale_layout": "swizzled"}, {"scale_layout": 1}), ({"scale_rule": "floor"}, {"scale_rule": None})])
def test_fast_path_quantize_refuses_like_a_first_call(good, bad):
    x = randn(4, 64)
    first = _cold_error(lambda: lowbit.quantize_mxfp8(x, **bad))
    lowbit.quantize_mxfp8(x, **good)
    again = caught(lambda: lowbit.quantize_mxfp8(x, **bad))
    assert (type(again), str(again)) == (type(first), str(first))


def test_fast_path_runs_the_kernel_the_op_runs(resolved):
    x = special(3, 2, 64, seed=9)
    ops = torch.ops.lowbit
    for rule in ("rceil", "floor"):
        for scale_layout in LAYOUTS:
            cold = lowbit.quantize_mxfp8(x, scale_rule=rule, scale_layout=scale_layout)
            warm = lowbit.quantize_mxfp8(x, scale_rule=rule, scale_layout=scale_layout)
            via_op = ops.quantize_mxfp8(x, rule, scale_layout, "auto")
            for c, w, o in zip(cold, warm, via_op, strict=True):
                assert torch.equal(bits(c), bits(o)) and torch.equal(bits(w), bits(o))
            for dtype in (BF16, F32):
                eager = lowbit.dequantize_mxfp8(*cold, dtype=dtype, scale_layout=scale_layout)
                op = ops.dequantize_mxfp8(cold[0].view(U8), cold[1], dtype, scale_layout, "auto")
                assert torch.equal(bits(eager), bits(op))
    assert set(resolved) == {"cpu"}


# --- torch.library.opcheck ---------------------------------------------------------------------------

# SchemaCheckMode (opcheck's test_schema) compares arguments with torch.allclose, which has no CPU kernel
# for float8_e4m3fn / float8_e8m0fnu (tests/test_fakes.py): dequantize runs test_schema on the uint8 views
# it also takes, and without it on the native dtypes. No NaN in the inputs: opcheck compares outputs with
# assert_close, which calls the NaN scale (0xFF, [MX8-NAN]) of two identical runs unequal.
NO_SCHEMA_CHECK = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _opcheck_cases():
    ops = torch.ops.lowbit
    x = special(2, 5, 64, dtype=BF16, seed=10, nan=False)
    x2 = randn(130, 96, seed=11)
    q, s = lowbit.quantize_mxfp8(x)
    qz, sz = lowbit.quantize_mxfp8(x2, scale_rule="floor", scale_layout="swizzled")
    return {
        "quantize-rceil-linear": (ops.quantize_mxfp8.default, (x, "rceil", "linear", "auto"), None),
        "quantize-floor-swizzled": (ops.quantize_mxfp8.default, (x2, "floor", "swizzled", "auto"), None),
        "quantize-last-dim-strided-swizzled": (
            ops.quantize_mxfp8.default, (randn(64, 6, seed=12).t(), "rceil", "swizzled", "auto"), None),
        "quantize-batch-transposed": (
            ops.quantize_mxfp8.default, (randn(3, 4, 32, seed=13).transpose(0, 1), "floor", "linear", "auto"), None),
        "dequantize-uint8-linear": (ops.dequantize_mxfp8.default, (q.view(U8), s.view(U8), F32, "linear", "auto"), None),
        "dequantize-uint8-swizzled": (
            ops.dequantize_mxfp8.default, (qz.view(U8), sz.view(U8), BF16, "swizzled", "auto"), None),
        "dequantize-native-linear": (ops.dequantize_mxfp8.default, (q, s, F16, "linear", "auto"), NO_SCHEMA_CHECK),
        "dequantize-native-swizzled": (
            ops.dequantize_mxfp8.default, (qz, sz, F32, "swizzled", "auto"), NO_SCHEMA_CHECK),
    }


OPCHECK_CASES = _opcheck_cases()


@pytest.mark.parametrize("name", OPCHECK_CASES)
def test_opcheck(name):
    op, args, test_utils = OPCHECK_CASES[name]
    kwargs = {} if test_utils is None else {"test_utils": test_utils}
    result = torch.library.opcheck(op, args, **kwargs)
    assert result and set(result.values()) == {"SUCCESS"}, result


def test_opcheck_covers_both_ops_and_the_schemas_mutate_nothing():
    assert {op.name() for op, _, _ in OPCHECK_CASES.values()} == {f"lowbit::{op}" for op in MX8_OPS}
    for op in MX8_OPS:
        schema = getattr(torch.ops.lowbit, op).default._schema
        assert not any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments), op


# --- torch.compile(fullgraph=True) on CPU --------------------------------------------------------------

def mxfp8_all(x):
    q, s = lowbit.quantize_mxfp8(x)
    qf, sf = lowbit.quantize_mxfp8(x, scale_rule="floor", scale_layout="swizzled")
    return (q, s, qf, sf, lowbit.dequantize_mxfp8(q, s, dtype=F32),
            lowbit.dequantize_mxfp8(qf, sf, scale_layout="swizzled"))


def _check_compiled(compiled, x):
    got, want = compiled(x), mxfp8_all(x)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert (g.dtype, tuple(g.shape), g.stride()) == (w.dtype, tuple(w.shape), w.stride()), i
        assert torch.equal(bits(g), bits(w)), f"output {i} differs from eager"


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    _check_compiled(torch.compile(mxfp8_all, fullgraph=True, dynamic=False), special(2, 5, 64, seed=14))


def test_compile_fullgraph_dynamic_rows_match_eager():
    torch._dynamo.reset()
    compiled = torch.compile(mxfp8_all, fullgraph=True, dynamic=True)
    for rows, seed in ((9, 15), (5, 16), (130, 17)):  # 130: the swizzled scales gain a row tile
        _check_compiled(compiled, special(rows, 96, seed=seed))


# --- supports / explain on meta tensors ----------------------------------------------------------------

def _meta_calls():
    m = lambda *shape, dtype=BF16: E(*shape, dtype=dtype, d="meta")
    return {
        QUANTIZE: ((m(5, 64),), {}),
        "quantize_mxfp8-floor-swizzled": ((m(2, 5, 64),), {"scale_rule": "floor", "scale_layout": "swizzled"}),
        DEQUANTIZE: ((m(5, 64, dtype=E4M3), m(128, 4, dtype=E8M0)), {"scale_layout": "swizzled", "dtype": F16}),
        "dequantize_mxfp8-uint8": ((m(5, 64, dtype=U8), m(5, 2, dtype=U8)), {}),
    }


META_CALLS = list(_meta_calls())


def _op(name):
    return next(op for op in MX8_OPS if name.startswith(op))


@pytest.mark.parametrize("arch", ["sm_89", "sm_90", (10, 0), "sm_120"])
@pytest.mark.parametrize("name", META_CALLS)
def test_supports_cuda_from_sm89_runs_cuda_triton(name, arch):
    _needs_backend("cuda")
    args, kwargs = _meta_calls()[name]
    verdict = lowbit.supports(_op(name), *args, device="cuda", arch=arch, **kwargs)
    assert (verdict.ok, verdict.backend, verdict.variant, verdict.fallback, verdict.reasons) == (
        True, "cuda", "triton", False, {})
    assert "fidelity: bit-exact to SPEC" in verdict.explain()


@pytest.mark.parametrize("name", META_CALLS)
def test_supports_cuda_sm80_falls_back_naming_sm89_and_forcing_cuda_refuses(name):
    _needs_backend("cuda")
    args, kwargs = _meta_calls()[name]
    op = _op(name)
    verdict = lowbit.supports(op, *args, device="cuda", arch="sm_80", **kwargs)
    assert (verdict.ok, verdict.backend, verdict.fallback) == (True, "cpu", True)
    assert verdict.reasons == {"cuda/triton": ["needs sm_89+, not sm_80"]}
    assert verdict.explain().splitlines()[-1] == "Alternative: pass backend='cpu' to choose the slower backend explicitly"
    forced = lowbit.supports(op, *args, device="cuda", arch="sm_80", backend="cuda", **kwargs)
    assert not forced.ok and "backend='cpu' can run this call" in forced.explain()


@pytest.mark.parametrize("name", META_CALLS)
def test_supports_xpu_runs_xpu_triton(name):
    _needs_backend("xpu")
    args, kwargs = _meta_calls()[name]
    verdict = lowbit.supports(_op(name), *args, device="xpu", **kwargs)
    assert (verdict.ok, verdict.backend, verdict.variant, verdict.fallback) == (True, "xpu", "triton", False)


@pytest.mark.parametrize("name", META_CALLS)
def test_supports_cpu_runs_the_reference(name):
    args, kwargs = _meta_calls()[name]
    verdict = lowbit.supports(_op(name), *args, device="cpu", **kwargs)
    assert (verdict.ok, verdict.backend, verdict.fallback) == (True, "cpu", False)
    assert "fidelity: bit-exact (the SPEC's reference)" in verdict.explain()


def test_explain_describes_both_ops():
    args, kwargs = _meta_calls()["quantize_mxfp8-floor-swizzled"]
    assert lowbit.explain(QUANTIZE, *args, device="cpu", **kwargs).splitlines()[0] == (
        "lowbit.quantize_mxfp8 for bfloat16 input, ndim 3, last dim 64, scale_rule 'floor', scale_layout "
        "'swizzled', on cpu: runs on backend 'cpu'")
    args, kwargs = _meta_calls()[DEQUANTIZE]
    assert lowbit.explain(DEQUANTIZE, *args, device="cpu", **kwargs).splitlines()[0] == (
        "lowbit.dequantize_mxfp8 for float8_e4m3fn input, ndim 2, last dim 64, scale_layout 'swizzled', output "
        "float16, on cpu: runs on backend 'cpu'")


def test_capability_records():
    records = {(c.op, c.label): c for c in lowbit.capabilities() if c.op in MX8_OPS}
    assert set(records) >= {(op, "cpu") for op in MX8_OPS}
    for cap in records.values():
        assert cap.block_size == 32 and cap.min_ndim == 1 and cap.compile_safe
    assert set(records[(DEQUANTIZE, "cpu")].dtypes) == {E4M3, U8}
    assert set(records[(QUANTIZE, "cpu")].dtypes) == {F32, F16, BF16}
    assert records[(QUANTIZE, "cpu")].scale_rules == ("rceil", "floor")
    if registry.unavailable("cuda") is None and registry.unavailable("xpu") is None:
        for op in MX8_OPS:
            assert [label for o, label in records if o == op] == ["cuda/triton", "xpu/triton", "cpu"]
            assert records[(op, "cuda/triton")].graph_safe and records[(op, "xpu/triton")].graph_safe
        assert records[(QUANTIZE, "cuda/triton")].scale_rules == ("rceil", "floor")


# --- python -m lowbit info --------------------------------------------------------------------------

def _info_rows(text: str, op: str) -> dict[str, dict[str, str]]:
    """The table of `op` in info's text: per backend label, its cells by column name."""
    section = text[text.index(f"\n{op}: ") + 1:].split("\n\n")[0].splitlines()  # title, header, rows
    header = re.split(r"\s{2,}", section[1].strip())
    rows = [re.split(r"\s{2,}", line.strip()) for line in section[2:] if not line.startswith("  on ")]
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in rows}


def test_info_lists_the_mxfp8_ops():
    result = subprocess.run([sys.executable, "-m", "lowbit", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for op in MX8_OPS:
        section = text[text.index(f"\n{op}: ") + 1:].split("\n\n")[0]
        assert "[docs/SPEC.md: MXFP8]" in section.splitlines()[0]
        assert "\n  on cpu: cpu" in section
        rows = _info_rows(text, op)
        assert rows["cpu"]["here"] == "yes" and rows["cpu"]["sizes"] == "block 32"
        assert all(row["auto"] == "yes" for row in rows.values())
        if registry.unavailable("cuda") is None and registry.unavailable("xpu") is None:
            assert list(rows) == ["cuda/triton", "xpu/triton", "cpu"]
            assert rows["cuda/triton"]["arch"] == "cuda sm_89+"
    assert _info_rows(text, QUANTIZE)["cpu"]["rules"] == "rceil/floor"
    assert _info_rows(text, DEQUANTIZE)["cpu"]["dtypes"] == "float8_e4m3fn/uint8"
