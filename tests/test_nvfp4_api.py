"""lowbit's NVFP4 functions as an API (docs/SPEC.md, "NVFP4"): quantize_nvfp4, nvfp4_global_scale,
dequantize_nvfp4 and scaled_fp4_quant. Fakes, refusals, the eager fast path, opcheck, torch.compile,
supports/explain and `python -m lowbit info`. The bits themselves are tests/test_spec_nvfp4.py's.

* Fake outputs (FakeTensorMode, on fake cpu, cuda and xpu tensors) have the shapes, dtypes and
  strides of the real CPU outputs, which are the SPEC's: q float4_e2m1fn_x2 (..., K/2); block scales
  float8_e4m3fn (..., K/16) linear or (round_up(R, 128), round_up(K/16, 4)) swizzled; a computed
  global scale float32 () or x.shape[:-1]; a given global scale returned as the very tensor given.
  On fake cuda the kernel is picked by arch (cuda/ptx on sm_100, cuda/triton on sm_90; the cpu
  fallback, with one warning, where the arch cannot be told); on fake xpu it is xpu/triton, silently.
* Refused calls: tests/test_refusals.py runs each through the real call, the fake and lowbit.supports.
* The eager fast path (lowbit/dispatch.py, `kernel_for`) refuses what a first call refuses, and runs
  the kernel the torch.library op runs.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest
import torch
from oracles import NO_SCHEMA_CHECK, E, caught, fake_like, layout, outputs, randn, round_up
from preambles import DEVICES, FAKE_DEVICE
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import dispatch, registry

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
E2M1, E4M3, U8 = torch.float4_e2m1fn_x2, torch.float8_e4m3fn, torch.uint8
QUANTIZE, GLOBAL, DEQUANTIZE, VLLM = "quantize_nvfp4", "nvfp4_global_scale", "dequantize_nvfp4", "scaled_fp4_quant"
NV_OPS = (QUANTIZE, GLOBAL, DEQUANTIZE)


# --- helpers --------------------------------------------------------------------------------------

def special(*shape, dtype=BF16, seed=0, nan=True) -> torch.Tensor:
    """randn with NaN (unless `nan` is False), ±Inf, -0 and an all-zero block mixed in."""
    x = randn(*shape, seed=seed)
    flat = x.view(-1)
    flat[3] = float("nan") if nan else 1e30
    flat[21], flat[40], flat[77] = float("inf"), -float("inf"), -0.0
    flat[96:112] = 0.0
    return x.to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(U8) if t.dim() else t.reshape(1).view(U8)


def spec_layouts(x_shape, *, per_row: bool, scale_layout: str, given=None) -> list[tuple]:
    """The SPEC's output layouts of quantize_nvfp4 for an input of x_shape, written out here
    ([NV-PACK], [NV-LINEAR], [NV-SWIZZLE], [NV-GLOBAL]); all contiguous."""
    *lead, k = x_shape
    rows = 1
    for n in lead:
        rows *= n

    def dense(shape, dtype):
        strides, step = [], 1
        for n in reversed(shape):
            strides.insert(0, step)
            step *= max(n, 1)
        return tuple(shape), dtype, tuple(strides), 0

    scales = (round_up(rows, 128), round_up(k // 16, 4)) if scale_layout == "swizzled" else (*lead, k // 16)
    gs = layout(given, storage=False) if given is not None else dense(tuple(lead) if per_row else (), F32)
    return [dense((*lead, k // 2), E2M1), dense(scales, E4M3), gs]


# --- fakes: outputs -------------------------------------------------------------------------------

INPUTS = {
    "2d_f32": lambda: randn(5, 64),
    "1d_bf16": lambda: randn(32, dtype=BF16, seed=1),
    "3d_f16": lambda: randn(2, 3, 48, dtype=F16, seed=2),
    "130rows_k80": lambda: randn(130, 80, dtype=BF16, seed=3),  # swizzled: two row tiles, C = 5 -> 8
    "0rows": lambda: randn(0, 32),
    "0rows_3d": lambda: randn(2, 0, 32),
    "k0": lambda: randn(3, 0),
    "last_dim_strided": lambda: randn(64, 6, seed=4).t(),
    "batch_transposed": lambda: randn(3, 4, 32, dtype=BF16, seed=5).transpose(0, 1),
    "storage_offset": lambda: randn(10, 64, seed=6)[3:7],
}

# global-scale sources: (per_row, the given scale as a function of x, or None)
SCALE_SOURCES = {
    "computed": (False, None),
    "computed_per_row": (True, None),
    "given_0d": (False, lambda x: torch.tensor(17.0)),
    "given_1": (False, lambda x: torch.tensor([300.0])),
    "given_rows": (False, lambda x: torch.full(x.shape[:-1], 5.0)),
    "given_rows_per_row": (True, lambda x: torch.full(x.shape[:-1], 2.0**-3)),
}
EVERY_SOURCE_INPUTS = ("2d_f32", "1d_bf16", "3d_f16", "130rows_k80", "0rows_3d", "last_dim_strided")


def _quantize_layout_cases():
    for name in INPUTS:
        for source in SCALE_SOURCES if name in EVERY_SOURCE_INPUTS else ("computed", "given_rows_per_row"):
            if name == "1d_bf16" and source == "given_1":  # 1-D: rows () and (1,) are one scale either way
                continue
            for scale_layout in ("linear", "swizzled"):
                yield f"{name}-{source}-{scale_layout}", (name, source, scale_layout)


QUANTIZE_LAYOUT_CASES = dict(_quantize_layout_cases())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", QUANTIZE_LAYOUT_CASES)
def test_fake_quantize_outputs_match_real_layout(case, device):
    name, source, scale_layout = QUANTIZE_LAYOUT_CASES[case]
    x = INPUTS[name]()
    per_row, make_scale = SCALE_SOURCES[source]
    given = None if make_scale is None else make_scale(x)
    real = lowbit.quantize_nvfp4(x, given, per_row=per_row, scale_layout=scale_layout)
    want = spec_layouts(tuple(x.shape), per_row=per_row, scale_layout=scale_layout, given=given)
    assert [layout(t, storage=False) for t in real] == want
    if given is not None:
        assert real[2] is given
    with FakeTensorMode():
        fx = fake_like(x, device)
        fgiven = None if given is None else fake_like(given, device)
        fake = lowbit.quantize_nvfp4(fx, fgiven, per_row=per_row, scale_layout=scale_layout)
        got = [layout(t, storage=False) for t in fake]
        devices = {t.device.type for t in fake}
        if fgiven is not None:
            assert fake[2] is fgiven
    assert devices == {device}
    assert got == want


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_row", [False, True], ids=["per_tensor", "per_row"])
@pytest.mark.parametrize("name", ["2d_f32", "1d_bf16", "3d_f16", "0rows", "k0", "last_dim_strided"])
def test_fake_global_scale_matches_real_layout(name, per_row, device):
    x = INPUTS[name]()
    real = lowbit.nvfp4_global_scale(x, per_row=per_row)
    assert layout(real, storage=False) == spec_layouts(tuple(x.shape), per_row=per_row, scale_layout="linear")[2]
    with FakeTensorMode():
        fake = lowbit.nvfp4_global_scale(fake_like(x, device), per_row=per_row)
        got, got_device = layout(fake, storage=False), fake.device.type
    assert (got, got_device) == (layout(real, storage=False), device)


def _dequantize_case(name, per_row, scale_layout, raw, dtype):
    def build():
        q, s, g = lowbit.quantize_nvfp4(INPUTS[name](), per_row=per_row, scale_layout=scale_layout)
        if raw:
            q, s = q.view(U8), s.view(U8)
        return (q, s, g), {"scale_layout": scale_layout, "dtype": dtype}
    return build


DEQUANTIZE_LAYOUT_CASES = {
    f"{name}-{'per_row' if per_row else 'per_tensor'}-{scale_layout}-{'uint8' if raw else 'native'}-{dtype_id}":
        _dequantize_case(name, per_row, scale_layout, raw, dtype)
    for name, per_row, dtype_id, dtype in (("2d_f32", False, "bf16", BF16), ("3d_f16", True, "f16", F16),
                                           ("130rows_k80", True, "f32", F32), ("0rows", False, "bf16", BF16),
                                           ("1d_bf16", True, "f32", F32))
    for scale_layout in ("linear", "swizzled")
    for raw in (False, True)
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", DEQUANTIZE_LAYOUT_CASES)
def test_fake_dequantize_output_matches_real_layout(case, device):
    args, kwargs = DEQUANTIZE_LAYOUT_CASES[case]()
    real = lowbit.dequantize_nvfp4(*args, **kwargs)
    q = args[0]
    assert layout(real, storage=False) == (
        (*q.shape[:-1], 2 * q.shape[-1]), kwargs["dtype"], torch.empty(*q.shape[:-1], 2 * q.shape[-1]).stride(), 0)
    with FakeTensorMode():
        fake = lowbit.dequantize_nvfp4(*(fake_like(a, device) for a in args), **kwargs)
        got, got_device = layout(fake, storage=False), fake.device.type
    assert (got, got_device) == (layout(real, storage=False), device)


VLLM_LAYOUT_CASES = {
    "5x64-swizzled-0d": (lambda: randn(5, 64), lambda: torch.tensor(100.0), True),
    "5x64-linear-1": (lambda: randn(5, 64, dtype=BF16), lambda: torch.tensor([100.0]), False),
    "130x80-swizzled": (lambda: randn(130, 80, dtype=F16, seed=7), lambda: torch.tensor(3.0), True),
    "0x32-swizzled": (lambda: randn(0, 32), lambda: torch.tensor(1.0), True),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", VLLM_LAYOUT_CASES)
def test_fake_scaled_fp4_quant_matches_real_layout(case, device):
    make_x, make_scale, swizzled = VLLM_LAYOUT_CASES[case]
    x, gs = make_x(), make_scale()
    real = lowbit.scaled_fp4_quant(x, gs, swizzled)
    m, n = x.shape
    scales = (round_up(m, 128), round_up(n // 16, 4)) if swizzled else (m, n // 16)
    assert [(tuple(t.shape), t.dtype) for t in real] == [((m, n // 2), U8), (scales, E4M3)]
    with FakeTensorMode():
        fake = lowbit.scaled_fp4_quant(fake_like(x, device), fake_like(gs, device), swizzled)
        got, got_devices = [layout(t, storage=False) for t in fake], {t.device.type for t in fake}
    assert (got, got_devices) == ([layout(t, storage=False) for t in real], {device})


def test_scaled_fp4_quant_gives_quantize_nvfp4s_bits():
    x, gs = randn(5, 64, dtype=BF16, seed=8), torch.tensor(40.0)
    for swizzled, scale_layout in ((True, "swizzled"), (False, "linear")):
        q, s = lowbit.scaled_fp4_quant(x, gs, is_sf_swizzled_layout=swizzled)
        want_q, want_s, _ = lowbit.quantize_nvfp4(x, gs, scale_layout=scale_layout)
        assert torch.equal(q, want_q.view(U8)) and torch.equal(s.view(U8), want_s.view(U8))


# --- fakes on fake accelerators: which kernel -------------------------------------------------------

def _accelerator_calls(d):
    """op: (args, kwargs) on device d, tensors holding no data."""
    return {
        QUANTIZE: ((E(5, 64, dtype=BF16, d=d),), {"per_row": True, "scale_layout": "swizzled"}),
        f"{QUANTIZE}-given": ((E(5, 64, dtype=BF16, d=d), E(5, d=d)), {}),
        GLOBAL: ((E(5, 64, d=d),), {}),
        DEQUANTIZE: ((E(5, 32, dtype=E2M1, d=d), E(5, 4, dtype=E4M3, d=d), E((), d=d)), {}),
    }


def _needs_cuda_backend():
    if registry.unavailable("cuda") is not None:
        pytest.skip(f"the cuda backend cannot load here: {registry.unavailable('cuda')}")


@FAKE_DEVICE["cuda"]
@pytest.mark.parametrize(("arch", "quantize_label"), [(90, "cuda/triton"), (100, "cuda/ptx"), (120, "cuda/ptx")])
@pytest.mark.parametrize("call", ["quantize_nvfp4", "quantize_nvfp4-given", GLOBAL, DEQUANTIZE])
def test_fake_cuda_resolves_by_arch_without_a_warning(call, arch, quantize_label, fake_arch, resolved, caplog,
                                                      monkeypatch):
    _needs_cuda_backend()
    fake_arch(arch)
    monkeypatch.setenv("LOWBIT_STRICT", "1")  # not a fallback: strict lets it through
    with caplog.at_level(logging.DEBUG, logger="lowbit"), FakeTensorMode():
        for _ in range(2):
            args, kwargs = _accelerator_calls("cuda")[call]
            result = outputs(getattr(lowbit, call.removesuffix("-given"))(*args, **kwargs))
            assert {t.device.type for t in result} == {"cuda"}
    label = quantize_label if call.startswith(QUANTIZE) else "cuda/triton"
    assert resolved == [label, label]
    assert [r for r in caplog.records if r.name == "lowbit"] == []


@FAKE_DEVICE["cuda"]
@pytest.mark.parametrize("call", ["quantize_nvfp4", "quantize_nvfp4-given", GLOBAL, DEQUANTIZE])
def test_fake_cuda_below_sm80_falls_back_to_cpu_with_one_warning(call, fake_arch, resolved, caplog):
    _needs_cuda_backend()
    fake_arch(75)
    dispatch.clear_cache()
    op = call.removesuffix("-given")
    margs, mkwargs = _accelerator_calls("meta")[call]
    expected = lowbit.explain(op, *margs, device="cuda", arch="sm_75", **mkwargs)
    assert "falls back to backend 'cpu'" in expected and "needs sm_80+, not sm_75" in expected
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        for _ in range(3):
            args, kwargs = _accelerator_calls("cuda")[call]
            getattr(lowbit, op)(*args, **kwargs)
    assert resolved == ["cpu"] * 3
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "lowbit"] == [(logging.WARNING, expected)]


@FAKE_DEVICE["cuda"]
@pytest.mark.parametrize("call", ["quantize_nvfp4", GLOBAL, DEQUANTIZE])
def test_fake_cuda_of_unknown_arch_falls_back_and_strict_refuses(call, resolved, caplog, monkeypatch):
    """This machine cannot tell a fake cuda device's arch: the reference runs, with the one warning
    explain() gives for cuda; LOWBIT_STRICT=1 refuses it."""
    dispatch.clear_cache()
    op = call
    margs, mkwargs = _accelerator_calls("meta")[call]
    expected = lowbit.explain(op, *margs, device="cuda", **mkwargs)
    assert "falls back to backend 'cpu'" in expected and "cannot tell this cuda device's arch" in expected
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        args, kwargs = _accelerator_calls("cuda")[call]
        getattr(lowbit, op)(*args, **kwargs)
    assert resolved == ["cpu"]
    assert [r.getMessage() for r in caplog.records if r.name == "lowbit"] == [expected]
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    with FakeTensorMode():
        args, kwargs = _accelerator_calls("cuda")[call]
        with pytest.raises(lowbit.UnsupportedError, match="LOWBIT_STRICT=1 refuses fallbacks"):
            getattr(lowbit, op)(*args, **kwargs)


@FAKE_DEVICE["xpu"]
@pytest.mark.parametrize("call", ["quantize_nvfp4", "quantize_nvfp4-given", GLOBAL, DEQUANTIZE])
def test_fake_xpu_resolves_to_xpu_triton_without_a_warning(call, resolved, caplog, monkeypatch):
    if registry.unavailable("xpu") is not None:
        pytest.skip(f"the xpu backend cannot load here: {registry.unavailable('xpu')}")
    op = call.removesuffix("-given")
    margs, mkwargs = _accelerator_calls("meta")[call]
    verdict = lowbit.supports(op, *margs, device="xpu", **mkwargs)
    assert (verdict.backend, verdict.variant, verdict.fallback, verdict.reasons) == ("xpu", "triton", False, {})
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    with caplog.at_level(logging.DEBUG, logger="lowbit"), FakeTensorMode():
        for _ in range(2):
            args, kwargs = _accelerator_calls("xpu")[call]
            result = outputs(getattr(lowbit, op)(*args, **kwargs))
            assert {t.device.type for t in result} == {"xpu"}
    assert resolved == ["xpu/triton", "xpu/triton"]
    assert [r for r in caplog.records if r.name == "lowbit"] == []


# --- refusals (tests/test_refusals.py has every refused call): tensors on two real devices --------------

@FAKE_DEVICE["cuda"]
@pytest.mark.parametrize("op", [QUANTIZE, DEQUANTIZE, VLLM])
@pytest.mark.parametrize(("x_device", "scale_device"), [("cpu", "cuda"), ("cuda", "cpu")])
def test_fake_global_scale_on_another_device_is_refused(op, x_device, scale_device):
    with FakeTensorMode():
        gs = E((), d=scale_device)
        if op == DEQUANTIZE:
            args = (E(4, 32, dtype=E2M1, d=x_device), E(4, 4, dtype=E4M3, d=x_device), gs)
        else:
            args = (E(4, 64, d=x_device), gs)
        x_where, gs_where = str(args[0].device), str(gs.device)
        with pytest.raises(ValueError) as info:
            getattr(lowbit, op)(*args)
    arg, fix = {QUANTIZE: ("global_scale", "global_scale=None to compute it on the device"),
                DEQUANTIZE: ("global_scale", "the global_scale quantize_nvfp4 returned"),
                VLLM: ("input_global_scale", "e.g. torch.tensor(2688 / amax, dtype=torch.float32, device=x.device)")}[op]
    assert str(info.value) == (
        f"lowbit.{op}: {arg} (float32, shape (), on {gs_where}) must be float32 on {x_where} with shape () or (1,) "
        f"(one scale), or (4,) (one per row); pass {fix}")


# --- the eager fast path ---------------------------------------------------------------------------

def _cold_error(fn) -> BaseException:
    dispatch.clear_cache()
    exc = caught(fn)
    assert exc is not None, "the first call did not raise"
    return exc


def test_fast_path_serves_a_second_call_of_a_kind_without_resolving(resolved):
    x = randn(4, 64)
    lowbit.quantize_nvfp4(x)
    lowbit.quantize_nvfp4(randn(4, 64, seed=1))
    lowbit.quantize_nvfp4(x, torch.tensor(3.0))
    lowbit.quantize_nvfp4(x, torch.tensor([3.0]))  # a given scale: its shape is checked per call
    assert resolved == ["cpu", "cpu"]  # one per kind: computed / given


# (per_row, warm-up scale, bad scale): bad scales of every kind the fast path must still check
FAST_PATH_BAD_SCALES = {
    "shape-2": (False, lambda: torch.tensor(3.0), lambda: torch.ones(2)),
    "shape-4x1": (False, lambda: torch.ones(4), lambda: torch.ones(4, 1)),
    "float64": (False, lambda: torch.tensor(3.0), lambda: torch.tensor(3.0, dtype=F64)),
    "bfloat16": (False, lambda: torch.tensor(3.0), lambda: torch.tensor(3.0, dtype=BF16)),
    "per-row-given-0d": (True, lambda: torch.ones(4), lambda: torch.tensor(3.0)),
    "per-row-given-1": (True, lambda: torch.ones(4), lambda: torch.ones(1)),
    "on-meta": (False, lambda: torch.tensor(3.0), lambda: E((), d="meta")),
    "rows-on-meta": (True, lambda: torch.ones(4), lambda: E(4, d="meta")),
    "float": (False, lambda: torch.tensor(3.0), lambda: 3.0),
}


@pytest.mark.parametrize("bad", FAST_PATH_BAD_SCALES)
def test_fast_path_refuses_a_bad_global_scale_like_a_first_call(bad):
    per_row, good, make_bad = FAST_PATH_BAD_SCALES[bad]
    x = randn(4, 64)
    first = _cold_error(lambda: lowbit.quantize_nvfp4(x, make_bad(), per_row=per_row))
    for scale_layout in ("linear", "swizzled"):
        lowbit.quantize_nvfp4(x, good(), per_row=per_row, scale_layout=scale_layout)  # remembers the kind
        again = caught(lambda layout=scale_layout: lowbit.quantize_nvfp4(x, make_bad(), per_row=per_row,
                                                                         scale_layout=layout))
        assert (type(again), str(again)) == (type(first), str(first))
    lowbit.quantize_nvfp4(x, good(), per_row=per_row)  # the refusal left the kind usable


def test_fast_path_scaled_fp4_quant_refuses_a_bad_scale_like_a_first_call():
    x = randn(4, 64)
    first = _cold_error(lambda: lowbit.scaled_fp4_quant(x, torch.ones(3)))
    lowbit.scaled_fp4_quant(x, torch.tensor(1.0))
    again = caught(lambda: lowbit.scaled_fp4_quant(x, torch.ones(3)))
    assert (type(again), str(again)) == (type(first), str(first))


FAST_PATH_BAD_DEQUANTIZE = {
    "scales-too-few": lambda q, s, g: (q, s[:, :3], g),
    "scales-rows": lambda q, s, g: (q, torch.cat([s, s[:1]]), g),
    "gs-shape-2": lambda q, s, g: (q, s, torch.ones(2)),
    "gs-float64": lambda q, s, g: (q, s, g.double()),
    "gs-on-meta": lambda q, s, g: (q, s, E((), d="meta")),
    "scales-on-meta": lambda q, s, g: (q, E(*s.shape, dtype=s.dtype, d="meta"), g),
}


@pytest.mark.parametrize("bad", FAST_PATH_BAD_DEQUANTIZE)
def test_fast_path_dequantize_refuses_like_a_first_call(bad):
    q, s, g = lowbit.quantize_nvfp4(randn(4, 64))
    first = _cold_error(lambda: lowbit.dequantize_nvfp4(*FAST_PATH_BAD_DEQUANTIZE[bad](q, s, g)))
    lowbit.dequantize_nvfp4(q, s, g)
    again = caught(lambda: lowbit.dequantize_nvfp4(*FAST_PATH_BAD_DEQUANTIZE[bad](q, s, g)))
    assert (type(again), str(again)) == (type(first), str(first))


def test_fast_path_dequantize_refuses_scales_of_the_other_layout_like_a_first_call():
    q, s, g = lowbit.quantize_nvfp4(randn(4, 64), scale_layout="swizzled")
    first = _cold_error(lambda: lowbit.dequantize_nvfp4(q, s, g))  # swizzled scales, read as linear
    lowbit.dequantize_nvfp4(q, s, g, scale_layout="swizzled")
    lowbit.dequantize_nvfp4(q, s[:4, :4].contiguous(), g)  # the linear kind, warm
    again = caught(lambda: lowbit.dequantize_nvfp4(q, s, g))
    assert (type(again), str(again)) == (type(first), str(first))


@pytest.mark.parametrize("op", [QUANTIZE, GLOBAL])
def test_fast_path_refuses_a_non_bool_per_row_like_a_first_call(op):
    x = randn(4, 64)
    fn = getattr(lowbit, op)
    first = _cold_error(lambda: fn(x, per_row=1))
    fn(x, per_row=True)
    again = caught(lambda: fn(x, per_row=1))
    assert (type(again), str(again)) == (type(first), str(first))


def _op_and_eager_results(x, gs_given):
    ops = torch.ops.lowbit
    pairs = []
    for per_row in (False, True):
        for scale_layout in ("linear", "swizzled"):
            pairs.append((lowbit.quantize_nvfp4(x, per_row=per_row, scale_layout=scale_layout),
                          ops.quantize_nvfp4_dynamic(x, per_row, scale_layout, "auto")))
            gs = gs_given if not per_row else torch.full(x.shape[:-1], 7.0)
            q, s, _ = lowbit.quantize_nvfp4(x, gs, per_row=per_row, scale_layout=scale_layout)
            pairs.append(((q, s), ops.quantize_nvfp4(x, gs, per_row, scale_layout, "auto")))
        pairs.append(((lowbit.nvfp4_global_scale(x, per_row=per_row),), (ops.nvfp4_global_scale(x, per_row, "auto"),)))
    q, s, g = lowbit.quantize_nvfp4(x, per_row=True, scale_layout="swizzled")
    pairs.append(((lowbit.dequantize_nvfp4(q, s, g, scale_layout="swizzled", dtype=F32),),
                  (ops.dequantize_nvfp4(q.view(U8), s, g, "swizzled", F32, "auto"),)))
    return pairs


def test_fast_path_runs_the_kernel_the_op_runs(resolved):
    x = special(3, 2, 64, seed=9)
    # the exact call of the brief first: a plain quantize, eagerly (twice: cold, then the fast path) and as the op
    eager_cold = lowbit.quantize_nvfp4(x)
    eager_warm = lowbit.quantize_nvfp4(x)
    op = torch.ops.lowbit.quantize_nvfp4_dynamic(x, False, "linear", "auto")
    for cold, warm, via_op in zip(eager_cold, eager_warm, op, strict=True):
        assert torch.equal(bits(cold), bits(via_op)) and torch.equal(bits(warm), bits(via_op))
    for i, (eager, via_op) in enumerate(_op_and_eager_results(x, torch.tensor(123.0))):
        for e, o in zip(eager, via_op, strict=True):
            assert (e.dtype, e.shape) == (o.dtype, o.shape), i
            assert torch.equal(bits(e), bits(o)), f"pair {i} differs"
    assert set(resolved) == {"cpu"}


# --- torch.library.opcheck ---------------------------------------------------------------------------

# No NaN in the inputs: opcheck compares outputs with torch.testing.assert_close, which calls the
# NaN block scale (0x7F, [NV-NAN]) of two identical runs unequal (equal_nan=False).


def _opcheck_cases():
    ops = torch.ops.lowbit
    x = special(2, 5, 64, dtype=BF16, seed=10, nan=False)
    x2 = randn(7, 48, seed=11)
    q, s, g = lowbit.quantize_nvfp4(x, per_row=True)
    qz, sz, gz = lowbit.quantize_nvfp4(x2, scale_layout="swizzled")
    return {
        "quantize-given-0d-linear": (ops.quantize_nvfp4.default, (x, torch.tensor(40.0), False, "linear", "auto"),
                                     None),
        "quantize-given-1-swizzled": (ops.quantize_nvfp4.default, (x2, torch.tensor([9.0]), False, "swizzled", "auto"),
                                      None),
        "quantize-given-rows-per-row-swizzled": (
            ops.quantize_nvfp4.default, (x, torch.full((2, 5), 3.0), True, "swizzled", "auto"), None),
        "quantize-given-last-dim-strided": (
            ops.quantize_nvfp4.default, (randn(64, 6, seed=12).t(), torch.tensor(2.0), False, "linear", "auto"), None),
        "dynamic-per-tensor-linear": (ops.quantize_nvfp4_dynamic.default, (x, False, "linear", "auto"), None),
        "dynamic-per-tensor-swizzled": (ops.quantize_nvfp4_dynamic.default, (x2, False, "swizzled", "auto"), None),
        "dynamic-per-row-linear": (ops.quantize_nvfp4_dynamic.default, (x2, True, "linear", "auto"), None),
        "dynamic-per-row-swizzled": (ops.quantize_nvfp4_dynamic.default, (x, True, "swizzled", "auto"), None),
        "global-scale-per-tensor": (ops.nvfp4_global_scale.default, (x, False, "auto"), None),
        "global-scale-per-row": (ops.nvfp4_global_scale.default, (x2, True, "auto"), None),
        "dequantize-uint8-linear-per-row": (
            ops.dequantize_nvfp4.default, (q.view(U8), s.view(U8), g, "linear", F32, "auto"), None),
        "dequantize-uint8-swizzled": (
            ops.dequantize_nvfp4.default, (qz.view(U8), sz.view(U8), gz, "swizzled", BF16, "auto"), None),
        "dequantize-native-linear": (ops.dequantize_nvfp4.default, (q, s, g, "linear", F16, "auto"), NO_SCHEMA_CHECK),
        "dequantize-native-swizzled": (
            ops.dequantize_nvfp4.default, (qz, sz, gz, "swizzled", F32, "auto"), NO_SCHEMA_CHECK),
    }


OPCHECK_CASES = _opcheck_cases()


@pytest.mark.parametrize("name", OPCHECK_CASES)
def test_opcheck(name):
    op, args, test_utils = OPCHECK_CASES[name]
    kwargs = {} if test_utils is None else {"test_utils": test_utils}
    result = torch.library.opcheck(op, args, **kwargs)
    assert result and set(result.values()) == {"SUCCESS"}, result


def test_opcheck_covers_every_nvfp4_op():
    covered = {op.name() for op, _, _ in OPCHECK_CASES.values()}
    assert covered == {"lowbit::quantize_nvfp4", "lowbit::quantize_nvfp4_dynamic", "lowbit::nvfp4_global_scale",
                       "lowbit::dequantize_nvfp4"}


def test_op_schemas_mutate_nothing():
    for name in ("quantize_nvfp4", "quantize_nvfp4_dynamic", "nvfp4_global_scale", "dequantize_nvfp4"):
        schema = getattr(torch.ops.lowbit, name).default._schema
        assert not any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments), name


# --- torch.compile(fullgraph=True) on CPU --------------------------------------------------------------

def nvfp4_all(x, gs, rows_gs):
    q, s, g = lowbit.quantize_nvfp4(x)
    qr, sr, gr = lowbit.quantize_nvfp4(x, per_row=True, scale_layout="swizzled")
    qg, sg, _ = lowbit.quantize_nvfp4(x, gs)
    qrg, srg, _ = lowbit.quantize_nvfp4(x, rows_gs, per_row=True, scale_layout="swizzled")
    dq = lowbit.dequantize_nvfp4(q, s, g, dtype=F32)
    dqr = lowbit.dequantize_nvfp4(qr, sr, gr, scale_layout="swizzled")
    gs_rows = lowbit.nvfp4_global_scale(x, per_row=True)
    vq, vs = lowbit.scaled_fp4_quant(x.reshape(-1, x.shape[-1]), gs)
    return q, s, g, qr, sr, gr, qg, sg, qrg, srg, dq, dqr, gs_rows, vq, vs


def _check_compiled(compiled, x):
    gs, rows_gs = torch.tensor(50.0), torch.full(x.shape[:-1], 4.0)
    got, want = compiled(x, gs, rows_gs), nvfp4_all(x, gs, rows_gs)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert (g.dtype, tuple(g.shape), g.stride()) == (w.dtype, tuple(w.shape), w.stride()), i
        assert torch.equal(bits(g), bits(w)), f"output {i} differs from eager"


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    compiled = torch.compile(nvfp4_all, fullgraph=True, dynamic=False)
    _check_compiled(compiled, special(2, 5, 64, seed=13))


def test_compile_fullgraph_dynamic_rows_match_eager():
    torch._dynamo.reset()
    compiled = torch.compile(nvfp4_all, fullgraph=True, dynamic=True)
    for rows, seed in ((9, 14), (5, 15), (130, 16)):  # 130: the swizzled scales gain a row tile
        _check_compiled(compiled, special(rows, 48, seed=seed))


# --- supports / explain on meta tensors ----------------------------------------------------------------

def _meta_calls():
    m = lambda *shape, dtype=BF16: E(*shape, dtype=dtype, d="meta")
    return {
        QUANTIZE: ((m(5, 64),), {}),
        "quantize_nvfp4-per-row-swizzled": ((m(2, 5, 64),), {"per_row": True, "scale_layout": "swizzled"}),
        "quantize_nvfp4-given": ((m(5, 64), m(5, dtype=F32)), {"per_row": True}),
        GLOBAL: ((m(5, 64),), {"per_row": True}),
        DEQUANTIZE: ((m(5, 32, dtype=E2M1), m(128, 4, dtype=E4M3), m((), dtype=F32)),
                     {"scale_layout": "swizzled", "dtype": F16}),
        "dequantize_nvfp4-uint8": ((m(5, 32, dtype=U8), m(5, 4, dtype=U8), m(5, dtype=F32)), {}),
    }


META_CALLS = list(_meta_calls())


def _op(name):
    return next(op for op in NV_OPS if name.startswith(op))


@pytest.mark.parametrize(("arch", "variant"), [("sm_90", "triton"), ("sm_80", "triton"), ("sm_100", "ptx"),
                                               ("sm_120", "ptx"), ((10, 3), "ptx"), (89, "triton")])
@pytest.mark.parametrize("name", META_CALLS)
def test_supports_cuda_by_arch(name, arch, variant):
    _needs_cuda_backend()
    args, kwargs = _meta_calls()[name]
    op = _op(name)
    verdict = lowbit.supports(op, *args, device="cuda", arch=arch, **kwargs)
    want = variant if op == QUANTIZE else "triton"  # only quantize has a PTX variant
    assert (verdict.ok, verdict.backend, verdict.variant, verdict.fallback) == (True, "cuda", want, False)
    text = lowbit.explain(op, *args, device="cuda", arch=arch, **kwargs)
    assert f"runs on backend 'cuda' ({want})" in text.splitlines()[0]
    assert "fidelity: bit-exact to SPEC" in text
    if op == QUANTIZE and want == "triton":
        assert verdict.reasons == {"cuda/ptx": [f"needs {{sm_100, sm_103, sm_110, sm_120, sm_121}}, not "
                                                f"sm_{verdict.call.arch}"]}
    else:
        assert verdict.reasons == {}


@pytest.mark.parametrize("name", META_CALLS)
def test_supports_cuda_sm75_refuses_naming_sm80_and_offers_the_cpu_fallback(name, monkeypatch):
    _needs_cuda_backend()
    args, kwargs = _meta_calls()[name]
    op = _op(name)
    verdict = lowbit.supports(op, *args, device="cuda", arch="sm_75", **kwargs)
    assert "needs sm_80+, not sm_75" in verdict.reasons["cuda/triton"]
    if op == QUANTIZE:
        assert verdict.reasons["cuda/ptx"] == ["needs {sm_100, sm_103, sm_110, sm_120, sm_121}, not sm_75"]
    assert (verdict.ok, verdict.backend, verdict.fallback) == (True, "cpu", True)
    text = verdict.explain()
    assert "on cuda sm_75: falls back to backend 'cpu'" in text.splitlines()[0]
    assert "  - cuda/triton: needs sm_80+, not sm_75" in text.splitlines()
    assert text.splitlines()[-1] == "Alternative: pass backend='cpu' to choose the slower backend explicitly"
    forced = lowbit.supports(op, *args, device="cuda", arch="sm_75", backend="cuda", **kwargs)
    assert not forced.ok and "needs sm_80+, not sm_75" in forced.explain()
    assert "backend='cpu' can run this call" in forced.explain()


def test_supports_cuda_without_an_arch_names_what_it_needs():
    _needs_cuda_backend()
    args, kwargs = _meta_calls()[QUANTIZE]
    verdict = lowbit.supports(QUANTIZE, *args, device="cuda", **kwargs)
    assert verdict.reasons["cuda/triton"] == ["needs sm_80+ and cannot tell this cuda device's arch"]
    assert verdict.fallback and verdict.backend == "cpu"


@pytest.mark.parametrize("name", META_CALLS)
def test_supports_xpu_runs_xpu_triton(name):
    if registry.unavailable("xpu") is not None:
        pytest.skip(f"the xpu backend cannot load here: {registry.unavailable('xpu')}")
    args, kwargs = _meta_calls()[name]
    op = _op(name)
    verdict = lowbit.supports(op, *args, device="xpu", **kwargs)
    assert (verdict.ok, verdict.backend, verdict.variant, verdict.fallback, verdict.reasons) == (
        True, "xpu", "triton", False, {})
    assert lowbit.explain(op, *args, device="xpu", **kwargs).splitlines()[0].endswith(
        "on xpu: runs on backend 'xpu' (triton)")


@pytest.mark.parametrize("name", META_CALLS)
def test_supports_cpu_runs_the_reference(name):
    args, kwargs = _meta_calls()[name]
    op = _op(name)
    verdict = lowbit.supports(op, *args, device="cpu", **kwargs)
    assert (verdict.ok, verdict.backend, verdict.fallback) == (True, "cpu", False)
    assert "fidelity: bit-exact (the SPEC's reference)" in verdict.explain()


def test_explain_describes_dequantize_by_its_output():
    args, kwargs = _meta_calls()[DEQUANTIZE]
    first = lowbit.explain(DEQUANTIZE, *args, device="cpu", **kwargs).splitlines()[0]
    assert first == ("lowbit.dequantize_nvfp4 for float4_e2m1fn_x2 input, ndim 2, last dim 64, scale_layout "
                     "'swizzled', output float16, on cpu: runs on backend 'cpu'")


def test_capability_records():
    records = {(c.op, c.label): c for c in lowbit.capabilities() if c.op in NV_OPS}
    assert set(records) >= {(op, "cpu") for op in NV_OPS}
    for cap in records.values():
        assert cap.block_size == 16 and cap.min_ndim == 1 and cap.compile_safe
    assert set(records[(DEQUANTIZE, "cpu")].dtypes) == {E2M1, U8}
    assert set(records[(QUANTIZE, "cpu")].dtypes) == {F32, F16, BF16}
    if (QUANTIZE, "cuda/ptx") in records:
        assert [label for op, label in records if op == QUANTIZE] == ["cuda/ptx", "cuda/triton", "xpu/triton", "cpu"]
        assert [label for op, label in records if op == GLOBAL] == ["cuda/triton", "xpu/triton", "cpu"]
        assert [label for op, label in records if op == DEQUANTIZE] == ["cuda/triton", "xpu/triton", "cpu"]


# --- python -m lowbit info --------------------------------------------------------------------------

def _info_rows(text: str, op: str) -> dict[str, dict[str, str]]:
    """The table of `op` in info's text: per backend label, its cells by column name."""
    section = text[text.index(f"\n{op}: ") + 1:].split("\n\n")[0].splitlines()  # title, header, rows
    header = re.split(r"\s{2,}", section[1].strip())
    rows = [re.split(r"\s{2,}", line.strip()) for line in section[2:] if not line.startswith("  on ")]
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in rows}


def test_info_lists_the_nvfp4_ops():
    result = subprocess.run([sys.executable, "-m", "lowbit", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for op in NV_OPS:
        assert f"\n{op}: " in text
        section = text[text.index(f"\n{op}: ") + 1:].split("\n\n")[0]
        assert "[docs/SPEC.md: NVFP4]" in section.splitlines()[0]
        assert "\n  on cpu: cpu" in section
        rows = _info_rows(text, op)
        assert rows["cpu"]["here"] == "yes" and rows["cpu"]["sizes"] == "block 16"
        assert rows["cpu"]["fidelity"] == "bit-exact (the SPEC's reference)"
        assert all(row["auto"] == "yes" for row in rows.values())
        if registry.unavailable("cuda") is None and registry.unavailable("xpu") is None:
            cuda = ["cuda/ptx", "cuda/triton"] if op == QUANTIZE else ["cuda/triton"]
            assert list(rows) == [*cuda, "xpu/triton", "cpu"]
            assert rows["cuda/triton"]["arch"] == "cuda sm_80+"
    assert _info_rows(text, DEQUANTIZE)["cpu"]["dtypes"] == "float4_e2m1fn_x2/uint8"
