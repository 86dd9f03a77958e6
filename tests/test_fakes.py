"""The fake (meta) implementations of every lowbit op, and torch.compile / opcheck support.

* Fake outputs (FakeTensorMode, on fake cpu, cuda and xpu tensors) have exactly the shapes, dtypes,
  strides, storage offsets and storage sizes of the real outputs computed on CPU.
* Refused calls: tests/test_refusals.py runs each through the real call, the fake and lowbit.supports.
* Where only the CPU reference takes a call (every op on fake cuda tensors, whose arch this machine
  cannot tell; the MXFP4 and FP8 dequantize ops and FP8 groups other than 128 on xpu), dispatch falls back
  to it (one warning), and LOWBIT_STRICT=1 turns the fallback into lowbit.UnsupportedError.
* On fake xpu tensors quantize_mxfp4, per_token_group_quant_mxfp4, both MXFP8 ops, quantize_fp8_group_packed
  and unified_attention resolve to backend "xpu" (triton) without a warning; LOWBIT_XPU_PROVIDER=vendor
  without vllm-xpu-kernels still runs triton, with one warning that says why.
* torch.library.opcheck passes on every op; torch.compile(fullgraph=True) gives the eager bits.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from oracles import NO_SCHEMA_CHECK, as_fake, fake_like, layout, outputs, packed_strides, randn
from preambles import DEVICES, FAKE_DEVICE
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import dispatch, spec

VENDOR_NOT_INSTALLED = pytest.mark.skipif(
    importlib.util.find_spec("vllm_xpu_kernels") is not None,
    reason="vllm_xpu_kernels is installed here: these tests are about a machine without it")


# tests/conftest.py clears LOWBIT_BACKEND / LOWBIT_STRICT and the dispatch cache around each test.


# --- helpers ------------------------------------------------------------------------------------

E = torch.empty
F32, BF16 = torch.float32, torch.bfloat16
E4M3, E2M1, E8M0 = torch.float8_e4m3fn, torch.float4_e2m1fn_x2, torch.float8_e8m0fnu


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def out_buffers(x: torch.Tensor, group_size: int, rows: str = "mn", device=None):
    """(q_buf, s_buf) as docs/SPEC.md [FP8-OUT] allows: q_buf with R = mn or R = A rows, s_buf
    with exactly vLLM's minimal storage (empty_strided)."""
    device = x.device if device is None else device
    *lead, mn, k = x.shape
    a = -(-mn // 4) * 4
    words = -(-(k // group_size) // 4)
    r = mn if rows == "mn" else a
    q_buf = torch.empty((*lead, r, k), dtype=torch.float8_e4m3fn, device=device)
    s_buf = torch.empty_strided((*lead, mn, words), packed_strides(tuple(lead), mn, words),
                                dtype=torch.int32, device=device)
    return q_buf, s_buf


def run_op(op: str, args, kwargs):
    return getattr(lowbit, op)(*args, **kwargs)


# --- real inputs for the layout comparison ------------------------------------------------------

MX_INPUTS = {
    "2d_f32": lambda: randn(4, 64),
    "1d_bf16": lambda: randn(64, dtype=torch.bfloat16),
    "3d_bf16": lambda: randn(2, 3, 256, dtype=torch.bfloat16, seed=1),
    "4d_f16": lambda: randn(2, 1, 3, 32, dtype=torch.float16, seed=2),
    "0rows": lambda: randn(0, 64),
    "0batch_3d": lambda: randn(0, 2, 64),
    "0rows_3d": lambda: randn(2, 0, 64),
    "k0": lambda: randn(3, 0),
    "last_dim_strided": lambda: randn(64, 6, seed=3).t(),
    "rows_strided": lambda: randn(4, 128, seed=4)[:, :64],
    "batch_transposed": lambda: randn(3, 4, 64, dtype=torch.bfloat16, seed=5).transpose(0, 1),
    "storage_offset": lambda: randn(10, 64, seed=6)[3:7],
}

# (input, group_size)
FP8_INPUTS = {
    "2d_g128": (lambda: randn(4, 256), 128),
    "2d_g128_padded_mn5": (lambda: randn(5, 256, dtype=torch.bfloat16, seed=1), 128),
    "2d_g128_G5_mn6": (lambda: randn(6, 640, seed=15), 128),
    "3d_g32_padded_mn7": (lambda: randn(2, 7, 256, dtype=torch.float16, seed=2), 32),
    "4d_g32_G10": (lambda: randn(2, 1, 3, 320, seed=3), 32),
    "g48_k96_mn6": (lambda: randn(6, 96, seed=4), 48),
    "g48_k96_mn5": (lambda: randn(5, 96, dtype=torch.bfloat16, seed=5), 48),
    "g48_k96_3d_mn3": (lambda: randn(2, 3, 96, seed=6), 48),
    "mn1": (lambda: randn(1, 128, seed=7), 128),
    "0rows": (lambda: randn(0, 128), 128),
    "0rows_3d": (lambda: randn(2, 0, 128), 128),
    "0batch_3d": (lambda: randn(0, 3, 128), 128),
    "k0": (lambda: randn(4, 0), 128),
    "last_dim_strided": (lambda: randn(128, 5, seed=8).t(), 32),
    "rows_strided": (lambda: randn(5, 256, seed=9)[:, :128], 32),
    "batch_transposed": (lambda: randn(5, 2, 128, dtype=torch.bfloat16, seed=10).transpose(0, 1), 64),
    "storage_offset": (lambda: randn(11, 128, seed=11)[2:9], 128),
}


@dataclass(frozen=True)
class LayoutCase:
    id: str
    op: str
    build: Callable[[], tuple[tuple, dict]]  # real CPU (args, kwargs)


def _mx_quantize_cases():
    for name, make in MX_INPUTS.items():
        for rule in ("rceil", "floor"):
            yield LayoutCase(f"quantize_mxfp4-{name}-{rule}", "quantize_mxfp4",
                             lambda make=make, rule=rule: ((make(),), {"scale_rule": rule}))


def _mx_dequantize_cases():
    out_dtypes = (torch.bfloat16, torch.float16, torch.float32)
    for i, (name, make) in enumerate(MX_INPUTS.items()):
        dtype = out_dtypes[i % 3]

        def build(make=make, dtype=dtype, raw=False):
            q, s = lowbit.quantize_mxfp4(make())
            if raw:
                q, s = q.view(torch.uint8), s.view(torch.uint8)
            return (q, s), {"dtype": dtype}

        yield LayoutCase(f"dequantize_mxfp4-{name}", "dequantize_mxfp4", build)
        yield LayoutCase(f"dequantize_mxfp4-{name}-uint8", "dequantize_mxfp4",
                         lambda build=build: build(raw=True))

    def strided_q():  # q and scales whose rows are not adjacent
        q, s = lowbit.quantize_mxfp4(randn(8, 128, seed=12))
        return (q[::2], s[::2]), {"dtype": torch.float32}

    yield LayoutCase("dequantize_mxfp4-rows_strided_q", "dequantize_mxfp4", strided_q)


def _fp8_quantize_cases():
    for name, (make, gs) in FP8_INPUTS.items():
        yield LayoutCase(f"quantize_fp8_group_packed-{name}", "quantize_fp8_group_packed",
                         lambda make=make, gs=gs: ((make(),), {"group_size": gs}))


def _fp8_out_cases():
    for name, (make, gs) in FP8_INPUTS.items():
        for rows in ("mn", "A"):
            def build(make=make, gs=gs, rows=rows):
                x = make()
                return (x,), {"group_size": gs, "out": out_buffers(x, gs, rows)}

            yield LayoutCase(f"quantize_fp8_group_packed_out-{name}-R{rows}", "quantize_fp8_group_packed", build)

    def full_storage_with_offset():  # s_buf: a view of a larger allocation, at an offset
        x = randn(5, 256, seed=13)
        base = torch.zeros(3 + 2 * 8 + 7, dtype=torch.int32)
        s_buf = base.as_strided((5, 2), (1, 8), 3)
        q_buf = torch.empty(8, 256, dtype=torch.float8_e4m3fn)
        return (x,), {"group_size": 32, "out": (q_buf, s_buf)}

    yield LayoutCase("quantize_fp8_group_packed_out-s_buf_offset", "quantize_fp8_group_packed",
                     full_storage_with_offset)


def _fp8_dequantize_cases():
    out_dtypes = (torch.bfloat16, torch.float16, torch.float32)
    for i, (name, (make, gs)) in enumerate(FP8_INPUTS.items()):
        dtype = out_dtypes[i % 3]

        def build(make=make, gs=gs, dtype=dtype, raw=False):
            q, s = lowbit.quantize_fp8_group_packed(make(), group_size=gs)
            if raw:
                q = q.view(torch.uint8)
            return (q, s), {"group_size": gs, "dtype": dtype}

        yield LayoutCase(f"dequantize_fp8_group_packed-{name}", "dequantize_fp8_group_packed", build)
        yield LayoutCase(f"dequantize_fp8_group_packed-{name}-uint8", "dequantize_fp8_group_packed",
                         lambda build=build: build(raw=True))

    def contiguous_scales():  # the scales are read through their strides, so any layout is valid
        q, s = lowbit.quantize_fp8_group_packed(randn(6, 512, seed=14), group_size=32)
        return (q, s.contiguous()), {"group_size": 32, "dtype": torch.float32}

    yield LayoutCase("dequantize_fp8_group_packed-contiguous_scales", "dequantize_fp8_group_packed",
                     contiguous_scales)


LAYOUT_CASES = [*_mx_quantize_cases(), *_mx_dequantize_cases(), *_fp8_quantize_cases(),
                *_fp8_out_cases(), *_fp8_dequantize_cases()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=lambda c: c.id)
def test_fake_outputs_match_real_layout(case: LayoutCase, device: str):
    args, kwargs = case.build()
    real = outputs(run_op(case.op, args, kwargs))
    with FakeTensorMode():
        fargs, fkwargs = as_fake(args, device), {k: as_fake(v, device) for k, v in kwargs.items()}
        fake = outputs(run_op(case.op, fargs, fkwargs))
        fake_layouts = [layout(t) for t in fake]
        fake_devices = [t.device.type for t in fake]
        if "out" in fkwargs:  # out=: the call returns the caller's buffers, not new tensors
            assert all(f is b for f, b in zip(fake, fkwargs["out"]))
    if "out" in kwargs:
        assert all(r is b for r, b in zip(real, kwargs["out"]))
    assert fake_devices == [device] * len(real)
    assert fake_layouts == [layout(t) for t in real]


def test_fp8_fake_scales_own_the_padded_storage():
    """[FP8-STORAGE] on the fake path too: mn = 5 → A = 8; G = 10 → 3 words; 2 batches: the scale
    tensor's storage holds 2*3*8 words, its strides are (24, 1, 8)."""
    with FakeTensorMode():
        x = torch.empty(2, 5, 320, device="cpu")
        _, s = lowbit.quantize_fp8_group_packed(x, group_size=32)
        got = (tuple(s.shape), s.stride(), s.storage_offset(), s.untyped_storage().nbytes() // 4)
    assert got == ((2, 5, 3), (24, 1, 8), 0, 48)


def _group_quant_buffers(x, q_dtype=torch.uint8, s_dtype=F32, offset=0):
    """(x_q, x_s) for x: contiguous, at storage offset `offset` of their allocations, holding a
    sentinel (0xA5 bytes, or -7.0 in a float32 x_s) so that a write shows."""
    *lead, k = x.shape

    def buffer(shape, dtype):
        n = math.prod(shape)
        if dtype == F32:
            return torch.full((offset + n,), -7.0)[offset:].view(shape)
        return torch.full((offset + n,), 0xA5, dtype=torch.uint8)[offset:].view(shape).view(dtype)

    return buffer((*lead, k // 2), q_dtype), buffer((*lead, k // 32), s_dtype)


GROUP_QUANT_INPUTS = {  # name: (x, x_q dtype, x_s dtype, storage offset of the buffers)
    "2d_f32_scales": (lambda: randn(4, 64), torch.uint8, F32, 0),
    "3d_bf16_e8m0_scales": (lambda: randn(2, 3, 256, dtype=BF16, seed=1), E2M1, E8M0, 0),
    "4d_f16_uint8_scales": (lambda: randn(2, 1, 3, 32, dtype=torch.float16, seed=2), torch.uint8, torch.uint8, 0),
    "1d": (lambda: randn(64, seed=3), torch.uint8, F32, 0),
    "0rows": (lambda: randn(0, 64), torch.uint8, F32, 0),
    "0rows_3d": (lambda: randn(2, 0, 64), E2M1, E8M0, 0),
    "k0": (lambda: randn(3, 0), torch.uint8, F32, 0),
    "last_dim_strided_input": (lambda: randn(64, 6, seed=4).t(), torch.uint8, F32, 0),
    "rows_strided_input": (lambda: randn(4, 128, seed=5)[:, :64], E2M1, E8M0, 0),
    "buffers_at_an_offset": (lambda: randn(5, 96, dtype=BF16, seed=6), torch.uint8, F32, 3),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GROUP_QUANT_INPUTS)
def test_fake_group_quant_runs_and_keeps_the_buffers(name, device):
    """per_token_group_quant_mxfp4 under FakeTensorMode returns None, like the real call, and leaves
    x_q and x_s as they were: same shape, dtype, strides, offset and storage (it writes in place)."""
    make, q_dtype, s_dtype, offset = GROUP_QUANT_INPUTS[name]
    x = make()
    x_q, x_s = _group_quant_buffers(x, q_dtype, s_dtype, offset)
    before = [layout(t) for t in (x_q, x_s)]
    assert lowbit.per_token_group_quant_mxfp4(x, x_q, x_s) is None
    assert [layout(t) for t in (x_q, x_s)] == before
    with FakeTensorMode():
        fx, fq, fs = (fake_like(t, device) for t in (x, x_q, x_s))
        result = lowbit.per_token_group_quant_mxfp4(fx, fq, fs)
        fake_layouts = [layout(t) for t in (fq, fs)]
        fake_devices = {t.device.type for t in (fq, fs)}
    assert result is None and fake_devices == {device}
    assert fake_layouts == before


# --- fallback warning and LOWBIT_STRICT ----------------------------------------------------------

def _meta_args(device):
    """One valid call per op, tensors on `device` (call inside FakeTensorMode for cuda/xpu)."""
    x = torch.empty(5, 256, device=device)
    q4 = torch.empty(5, 128, dtype=torch.float4_e2m1fn_x2, device=device)
    s4 = torch.empty(5, 8, dtype=torch.float8_e8m0fnu, device=device)
    x_q = torch.empty(5, 128, dtype=torch.uint8, device=device)
    x_s = torch.empty(5, 8, dtype=torch.float32, device=device)
    q8 = torch.empty(5, 256, dtype=torch.float8_e4m3fn, device=device)
    s8 = torch.empty_strided((5, 2), (1, 8), dtype=torch.int32, device=device)
    qb = torch.empty(8, 256, dtype=torch.float8_e4m3fn, device=device)
    sb = torch.empty_strided((5, 2), (1, 8), dtype=torch.int32, device=device)
    s_swizzled = torch.empty(128, 8, dtype=torch.float8_e8m0fnu, device=device)
    return {
        "quantize_mxfp4": ((x,), {"scale_rule": "floor"}),
        "per_token_group_quant_mxfp4": ((x, x_q, x_s), {}),
        "dequantize_mxfp4": ((q4, s4), {"dtype": torch.float16}),
        "quantize_mxfp8": ((x,), {"scale_rule": "floor", "scale_layout": "swizzled"}),
        "dequantize_mxfp8": ((q8, s_swizzled), {"scale_layout": "swizzled", "dtype": torch.float32}),
        "quantize_fp8_group_packed": ((x,), {"group_size": 32}),
        "quantize_fp8_group_packed_out": ((x,), {"group_size": 32, "out": (qb, sb)}),
        "dequantize_fp8_group_packed": ((q8, s8), {"group_size": 32}),
    }


OP_VARIANTS = ("quantize_mxfp4", "per_token_group_quant_mxfp4", "dequantize_mxfp4", "quantize_mxfp8", "dequantize_mxfp8",
               "quantize_fp8_group_packed", "quantize_fp8_group_packed_out", "dequantize_fp8_group_packed")
# The _meta_args calls only the reference takes on fake xpu tensors: xpu has no MXFP4 or FP8 dequantize kernels,
# and its FP8 record takes group 128 only (the calls use 32). On fake cuda tensors every call falls back:
# every cuda record needs an arch and this machine cannot tell a fake cuda device's.
XPU_FALLBACKS = ("quantize_fp8_group_packed", "quantize_fp8_group_packed_out",
                 "dequantize_fp8_group_packed")
FALLBACKS = [pytest.param(device, variant, id=f"{device}-{variant}", marks=FAKE_DEVICE[device])
             for device, variants in (("cuda", OP_VARIANTS), ("xpu", XPU_FALLBACKS)) for variant in variants]


def _public(variant: str) -> str:
    return variant.removesuffix("_out")


def written(variant: str, args, result) -> tuple:
    """The tensors a call produced: its outputs, or the buffers an in-place op wrote."""
    return args[1:] if variant == "per_token_group_quant_mxfp4" else outputs(result)


@pytest.mark.parametrize(("device", "variant"), FALLBACKS)
def test_fake_fallback_logs_one_warning(variant, device, caplog):
    dispatch.clear_cache()  # forget warnings earlier tests triggered
    expected = lowbit.explain(_public(variant), *_meta_args("meta")[variant][0], device=device,
                              **_meta_args("meta")[variant][1])
    assert "falls back to backend 'cpu'" in expected
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        for _ in range(3):
            args, kwargs = _meta_args(device)[variant]
            run_op(_public(variant), args, kwargs)
    records = [r for r in caplog.records if r.name == "lowbit"]
    assert [(r.levelno, r.getMessage()) for r in records] == [(logging.WARNING, expected)]


@pytest.mark.parametrize("variant", OP_VARIANTS)
def test_fake_cpu_logs_no_warning(variant, caplog):
    dispatch.clear_cache()
    with caplog.at_level(logging.DEBUG, logger="lowbit"), FakeTensorMode():
        args, kwargs = _meta_args("cpu")[variant]
        run_op(_public(variant), args, kwargs)
    assert [r for r in caplog.records if r.name == "lowbit"] == []


@pytest.mark.parametrize(("device", "variant"), FALLBACKS)
def test_strict_refuses_fake_fallback(variant, device, monkeypatch):
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    decision = lowbit.explain(_public(variant), *_meta_args("meta")[variant][0], device=device,
                              **_meta_args("meta")[variant][1])
    assert re.search(rf"on {device}( \S+)?: falls back to backend 'cpu'", decision)  # the arch is known on a GPU machine
    with FakeTensorMode():
        args, kwargs = _meta_args(device)[variant]
        with pytest.raises(lowbit.UnsupportedError) as info:
            run_op(_public(variant), args, kwargs)
    # the error is the fallback decision (every line of it, reasons and alternative included) plus
    # a note naming LOWBIT_STRICT
    lines = str(info.value).splitlines()
    notes = [line for line in lines if "LOWBIT_STRICT=1" in line]
    assert len(notes) == 1 and "refuses fallbacks" in notes[0]
    assert [line for line in lines if line not in notes] == decision.splitlines()
    assert any(line.startswith("Alternative: ") for line in lines)


@pytest.mark.parametrize("variant", OP_VARIANTS)
def test_strict_accepts_fake_cpu(variant, monkeypatch):
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    with FakeTensorMode():
        args, kwargs = _meta_args("cpu")[variant]
        result = written(variant, args, run_op(_public(variant), args, kwargs))
        assert result and all(t.device.type == "cpu" for t in result)


# --- fake xpu tensors: the xpu backend's portable Triton kernels ---------------------------------

def _attention_call(d):
    """A unified_attention call (tensors hold no data): 7 tokens, 8 query / 2 KV heads of 128, pages of 16."""
    args = (E(7, 8, 128, dtype=BF16, device=d), E(12, 16, 2, 128, dtype=BF16, device=d),
            E(12, 16, 2, 128, dtype=BF16, device=d))
    return args, dict(cu_seqlens_q=E(4, dtype=torch.int32, device=d), seqused_k=E(3, dtype=torch.int32, device=d),
                      block_table=E(3, 7, dtype=torch.int32, device=d), max_seqlen_q=4, max_seqlen_k=100)


def _s_buf(lead, mn, words, d, dtype=torch.int32):
    return torch.empty_strided((*lead, mn, words), packed_strides(tuple(lead), mn, words), dtype=dtype, device=d)


def _xpu_native_calls(d):
    """name: (op, args, kwargs, the layouts of what the call writes), for calls the xpu records take."""
    x = E(5, 256, device=d)
    return {
        "quantize_mxfp4": ("quantize_mxfp4", (x,), {"scale_rule": "rceil"},
                           [((5, 128), E2M1, (128, 1)), ((5, 8), E8M0, (8, 1))]),
        "per_token_group_quant_mxfp4": ("per_token_group_quant_mxfp4",
                                        (x, E(5, 128, dtype=torch.uint8, device=d), E(5, 8, device=d)), {},
                                        [((5, 128), torch.uint8, (128, 1)), ((5, 8), F32, (8, 1))]),
        "quantize_fp8_group_packed": ("quantize_fp8_group_packed", (x,), {},  # group 128
                                      [((5, 256), E4M3, (256, 1)), ((5, 1), torch.int32, (1, 8))]),
        "quantize_fp8_group_packed_out": ("quantize_fp8_group_packed", (x,), {"out": (
            E(8, 256, dtype=E4M3, device=d), _s_buf((), 5, 1, d))},
            [((8, 256), E4M3, (256, 1)), ((5, 1), torch.int32, (1, 8))]),
        "unified_attention": ("unified_attention", *_attention_call(d), [((7, 8, 128), BF16, (1024, 128, 1))]),
        "quantize_mxfp8": ("quantize_mxfp8", (x,), {"scale_layout": "swizzled"},
                           [((5, 256), E4M3, (256, 1)), ((128, 8), E8M0, (8, 1))]),
        "dequantize_mxfp8": ("dequantize_mxfp8", (E(5, 256, dtype=E4M3, device=d), E(5, 8, dtype=E8M0, device=d)),
                             {}, [((5, 256), BF16, (256, 1))]),
    }


XPU_NATIVE = ("quantize_mxfp4", "per_token_group_quant_mxfp4", "quantize_fp8_group_packed",
              "quantize_fp8_group_packed_out", "unified_attention", "quantize_mxfp8", "dequantize_mxfp8")
XPU_VENDOR_SKIPPED = ("auto-dispatch uses it only with LOWBIT_XPU_PROVIDER=vendor (fidelity: ties toward zero, "
                      "not bit-exact to SPEC)")


@FAKE_DEVICE["xpu"]
@pytest.mark.parametrize("name", XPU_NATIVE)
def test_fake_xpu_resolves_to_xpu_triton_without_a_warning(name, monkeypatch, caplog, resolved):
    """The fake on fake xpu tensors resolves to the xpu backend's portable kernel: no fallback, so
    no warning and nothing for LOWBIT_STRICT=1 to refuse. Fails if the xpu records stop taking these calls."""
    op, margs, mkwargs, _ = _xpu_native_calls("meta")[name]
    verdict = lowbit.supports(op, *margs, device="xpu", **mkwargs)
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("xpu", "triton", False)
    vendor = op in ("quantize_mxfp4", "per_token_group_quant_mxfp4")  # its vendor record waits for the opt-in
    assert verdict.reasons == ({"xpu/vendor": [XPU_VENDOR_SKIPPED]} if vendor else {})
    assert "runs on backend 'xpu' (triton)" in verdict.explain()
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    chosen = resolved
    with caplog.at_level(logging.DEBUG, logger="lowbit"), FakeTensorMode():
        for _ in range(2):
            op, args, kwargs, want = _xpu_native_calls("xpu")[name]
            result = run_op(op, args, kwargs)
            got = written(name, args, result)
            assert [(tuple(t.shape), t.dtype, t.stride()) for t in got] == want
            assert all(t.device.type == "xpu" for t in got)
    assert chosen == ["xpu/triton", "xpu/triton"]
    assert [r for r in caplog.records if r.name == "lowbit"] == []


@FAKE_DEVICE["xpu"]
@VENDOR_NOT_INSTALLED
@pytest.mark.parametrize("op", ["quantize_mxfp4", "per_token_group_quant_mxfp4"])
def test_fake_xpu_vendor_opt_in_without_its_library_runs_triton_with_one_warning(op, monkeypatch, caplog, resolved):
    """LOWBIT_XPU_PROVIDER=vendor where vllm-xpu-kernels is missing: the vendor record cannot load,
    triton (the SPEC's bits, same backend) runs, one warning says why; not a fallback, so strict allows it."""
    monkeypatch.setenv("LOWBIT_XPU_PROVIDER", "vendor")
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    chosen = resolved
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        for rows in (5, 9, 1):  # one decision for every row count
            x = E(rows, 256, dtype=BF16, device="xpu")
            buffers = (E(rows, 128, dtype=torch.uint8, device="xpu"), E(rows, 8, dtype=E8M0, device="xpu"))
            run_op(op, (x, *buffers) if op == "per_token_group_quant_mxfp4" else (x,), {})
    assert chosen == ["xpu/triton"] * 3
    [warning] = [r.getMessage() for r in caplog.records if r.name == "lowbit"]
    assert warning.splitlines()[0].endswith("on xpu: runs on backend 'xpu' (triton)")
    assert warning.splitlines()[1:] == [
        "  - xpu/vendor: cannot load here: vllm-xpu-kernels is not installed (pip install vllm-xpu-kernels)",
        "  fidelity: bit-exact to SPEC"]


@FAKE_DEVICE["xpu"]
@VENDOR_NOT_INSTALLED
@pytest.mark.parametrize("layout", ["transposed", "rows_with_gaps"])
def test_fake_xpu_vendor_opt_in_with_a_non_contiguous_input_runs_triton_and_says_why(layout, monkeypatch, caplog, resolved):
    monkeypatch.setenv("LOWBIT_XPU_PROVIDER", "vendor")
    chosen = resolved
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        strides = (1, 5) if layout == "transposed" else (512, 1)  # slicing a fake xpu tensor is not supported
        x = E(5 * 512, device="xpu").as_strided((5, 256), strides)
        q, s = lowbit.quantize_mxfp4(x)
        assert (q.shape, s.shape, q.device.type) == ((5, 128), (5, 8), "xpu")
    assert chosen == ["xpu/triton"]
    [warning] = [r.getMessage() for r in caplog.records if r.name == "lowbit"]
    said = "last dim strided" if layout == "transposed" else "input not contiguous"
    assert f"{said}, on xpu: runs on backend 'xpu' (triton)" in warning.splitlines()[0]
    assert "  - xpu/vendor: needs a contiguous input" in warning.splitlines()


# --- torch.library.opcheck -------------------------------------------------------------------------

def _opcheck_cases():
    x3 = randn(2, 5, 256, dtype=torch.bfloat16, seed=20)
    q4, s4 = lowbit.quantize_mxfp4(x3)
    qz, sz = lowbit.quantize_mxfp4(randn(130, 96, seed=29), scale_layout="swizzled")
    q8, s8 = lowbit.quantize_fp8_group_packed(x3, group_size=32)
    x96 = randn(5, 96, dtype=torch.float16, seed=21)
    q96, s96 = lowbit.quantize_fp8_group_packed(x96, group_size=48)
    x8 = randn(2, 8, 320, seed=22)
    ops = torch.ops.lowbit
    group_quant = ops.per_token_group_quant_mxfp4.default
    return {
        "per_token_group_quant_mxfp4-f32-scales": (
            group_quant, (x3, *_group_quant_buffers(x3, torch.uint8, F32), 32, 1e-10, "linear", "auto"), None),
        "per_token_group_quant_mxfp4-uint8-scales-eps0-last_dim_strided": (
            group_quant, (randn(64, 6, seed=27).t(), *_group_quant_buffers(randn(6, 64), torch.uint8, torch.uint8),
                          32, 0.0, "linear", "auto"), None),
        # float8_e8m0fnu / float4_e2m1fn_x2 buffers: no test_schema (see NO_SCHEMA_CHECK)
        "per_token_group_quant_mxfp4-e8m0-scales": (
            group_quant, (x3, *_group_quant_buffers(x3, torch.uint8, E8M0), 32, 1e-10, "linear", "auto"),
            NO_SCHEMA_CHECK),
        "per_token_group_quant_mxfp4-e2m1-e8m0": (
            group_quant, (x3, *_group_quant_buffers(x3, E2M1, E8M0), 32, 1e-3, "linear", "auto"), NO_SCHEMA_CHECK),
        "per_token_group_quant_mxfp4-uint8-swizzled": (
            group_quant, (x3, torch.empty(*x3.shape[:-1], x3.shape[-1] // 2, dtype=torch.uint8),
                          torch.empty(spec.swizzled_scale_shape(x3.numel() // x3.shape[-1], x3.shape[-1] // 32),
                                      dtype=torch.uint8), 32, 1e-10, "swizzled", "auto"), None),
        "quantize_mxfp4-rceil": (ops.quantize_mxfp4.default, (x3, "rceil", "linear", "auto"), None),
        "quantize_mxfp4-floor-f32": (
            ops.quantize_mxfp4.default, (randn(7, 96, seed=23), "floor", "linear", "auto"), None),
        "quantize_mxfp4-swizzled": (ops.quantize_mxfp4.default, (randn(130, 96, seed=28), "rceil", "swizzled", "auto"),
                                    None),
        "quantize_mxfp4-batch_transposed": (
            ops.quantize_mxfp4.default, (randn(3, 4, 64, seed=24).transpose(0, 1), "rceil", "linear", "auto"), None),
        "quantize_mxfp4-last_dim_strided": (
            ops.quantize_mxfp4.default, (randn(64, 6, seed=25).t(), "rceil", "linear", "auto"), None),
        # quantize_mxfp8 and dequantize_mxfp8: more cases in tests/test_mxfp8_api.py
        "quantize_mxfp8-floor-swizzled": (ops.quantize_mxfp8.default, (x3, "floor", "swizzled", "auto"), None),
        "dequantize_mxfp8-uint8": (
            ops.dequantize_mxfp8.default, (*(t.view(torch.uint8) for t in lowbit.quantize_mxfp8(x3)), torch.float32,
                                           "linear", "auto"), None),
        "dequantize_mxfp4-uint8": (
            ops.dequantize_mxfp4.default, (q4.view(torch.uint8), s4.view(torch.uint8), torch.float32, "linear", "auto"),
            None),
        "dequantize_mxfp4-e2m1": (
            ops.dequantize_mxfp4.default, (q4, s4, torch.bfloat16, "linear", "auto"), NO_SCHEMA_CHECK),
        "dequantize_mxfp4-uint8-swizzled": (
            ops.dequantize_mxfp4.default, (qz.view(torch.uint8), sz.view(torch.uint8), torch.float32, "swizzled", "auto"),
            None),
        "quantize_fp8-g32-3d-padded": (ops.quantize_fp8_group_packed.default, (x3, 32, 1e-10, "auto"), None),
        "quantize_fp8-g48-k96": (ops.quantize_fp8_group_packed.default, (x96, 48, 0.0, "auto"), None),
        "quantize_fp8-last_dim_strided": (
            ops.quantize_fp8_group_packed.default, (randn(128, 6, seed=26).t(), 32, 1e-10, "auto"), None),
        "dequantize_fp8-uint8": (
            ops.dequantize_fp8_group_packed.default, (q8.view(torch.uint8), s8, 32, torch.float32, "auto"), None),
        "dequantize_fp8-uint8-g48": (
            ops.dequantize_fp8_group_packed.default, (q96.view(torch.uint8), s96, 48, torch.bfloat16, "auto"), None),
        "dequantize_fp8-e4m3": (
            ops.dequantize_fp8_group_packed.default, (q8, s8, 32, torch.float16, "auto"), NO_SCHEMA_CHECK),
        # q_buf is float8_e4m3fn, so no test_schema (see NO_SCHEMA_CHECK); mn = 8 = A: s_buf is dense
        "quantize_fp8_out-dense": (
            ops.quantize_fp8_group_packed_out.default, (x8, *out_buffers(x8, 32), 32, 1e-10, "auto"), NO_SCHEMA_CHECK),
        # mn = 5 < A = 8: s_buf's storage has TMA padding rows, so it is not dense. opcheck's
        # test_aot_dispatch_dynamic calls the op on `torch.clone` of every input (generate_tests.py,
        # safe_aot_autograd_check), and clone of a non-dense tensor is contiguous: strides (5, 1, 5)
        # instead of (8, 1, 8), which [FP8-OUT] rightly refuses. A harness limitation (torch.compile
        # of the same call works: test_compile_*), so that sub-test is left out for this case.
        "quantize_fp8_out-padded": (
            ops.quantize_fp8_group_packed_out.default, (x3, *out_buffers(x3, 32, "A"), 32, 1e-10, "auto"),
            ("test_autograd_registration", "test_faketensor")),
    }


OPCHECK_CASES = _opcheck_cases()


@pytest.mark.parametrize("name", OPCHECK_CASES)
def test_opcheck(name):
    op, args, test_utils = OPCHECK_CASES[name]
    kwargs = {} if test_utils is None else {"test_utils": test_utils}
    result = torch.library.opcheck(op, args, **kwargs)
    assert result and set(result.values()) == {"SUCCESS"}, result


def test_opcheck_covers_every_op():
    covered = {op.name() for op, _, _ in OPCHECK_CASES.values()}
    assert covered == {f"lowbit::{n}" for n in OP_VARIANTS}


def test_out_op_schema_mutates_exactly_the_buffers():
    """What test_schema would check for quantize_fp8_group_packed_out, done by hand: the schema
    declares q_buf and s_buf (only) as written, and the input is not written."""
    schema = torch.ops.lowbit.quantize_fp8_group_packed_out.default._schema
    written = [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    assert written == ["q_buf", "s_buf"]
    assert len(schema.returns) == 0
    x = randn(2, 5, 256, seed=27)
    before = x.clone()
    q_buf, s_buf = out_buffers(x, 32, "A")
    torch.ops.lowbit.quantize_fp8_group_packed_out(x, q_buf, s_buf, 32, 1e-10, "auto")
    assert torch.equal(x.view(torch.int32), before.view(torch.int32))
    q, s = lowbit.quantize_fp8_group_packed(x, group_size=32)
    assert torch.equal(q_buf[:, :5].view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(s_buf, s)


# --- torch.compile(fullgraph=True) on CPU ---------------------------------------------------------

def _bits(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int32 else t.view(torch.uint8)


def _special_input(*shape, seed) -> torch.Tensor:
    x = randn(*shape, seed=seed)
    flat = x.view(-1)
    flat[3], flat[40], flat[77] = float("nan"), float("inf"), -0.0
    flat[128:160] = 0.0  # an all-zero block / group
    return x.to(torch.bfloat16)


def quantize_all(x, q_buf, s_buf):
    q, s = lowbit.quantize_mxfp4(x)
    qf, sf = lowbit.quantize_mxfp4(x, scale_rule="floor")
    dq = lowbit.dequantize_mxfp4(q, s, dtype=torch.float32)
    q8, s8 = lowbit.quantize_fp8_group_packed(x, group_size=32)
    lowbit.quantize_fp8_group_packed(x, group_size=64, out=(q_buf, s_buf))
    dq8 = lowbit.dequantize_fp8_group_packed(q8, s8, group_size=32, dtype=torch.float32)
    return q, s, qf, sf, dq, q8, s8, dq8


def _check_compiled(compiled, x, rows="A"):
    q_buf, s_buf = out_buffers(x, 64, rows)
    q_buf.view(torch.uint8).fill_(0xA5)
    s_buf.fill_(0x5A5A5A5A)
    got = compiled(x, q_buf, s_buf)
    e_q_buf, e_s_buf = out_buffers(x, 64, rows)
    want = quantize_all(x, e_q_buf, e_s_buf)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert (g.dtype, g.shape) == (w.dtype, w.shape), i
        assert torch.equal(_bits(g), _bits(w)), f"output {i} differs from eager"
    # the packed scales keep their MN-major layout and padded storage through compile
    assert got[6].stride() == want[6].stride()
    assert got[6].untyped_storage().nbytes() == want[6].untyped_storage().nbytes()
    assert torch.equal(_bits(q_buf), _bits(e_q_buf)) and torch.equal(s_buf, e_s_buf)


def test_compile_fullgraph_static_matches_eager():
    torch._dynamo.reset()
    compiled = torch.compile(quantize_all, fullgraph=True, dynamic=False)
    _check_compiled(compiled, _special_input(2, 5, 256, seed=30))  # mn = 5: padded packed layout


def test_compile_fullgraph_dynamic_rows_match_eager():
    torch._dynamo.reset()
    compiled = torch.compile(quantize_all, fullgraph=True, dynamic=True)
    for mn, seed in ((8, 31), (5, 32), (13, 33), (2, 34)):
        _check_compiled(compiled, _special_input(mn, 256, seed=seed), rows="mn")


def test_compile_fullgraph_dynamic_last_dim_strided_input():
    """An input whose last dim is not contiguous (any strides are valid) under dynamic shapes."""
    torch._dynamo.reset()

    def f(x):
        return (*lowbit.quantize_mxfp4(x), *lowbit.quantize_fp8_group_packed(x, group_size=32))

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for rows, seed in ((6, 35), (9, 36)):
        x = randn(128, rows, seed=seed).t()
        got, want = compiled(x), f(x)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(_bits(g), _bits(w))


def group_quant_all(x, q1, s1, q2, s2, q3, s3):
    """per_token_group_quant_mxfp4 three ways: float32 scales with the default eps, E8M0 bytes
    with eps 0, float32 scales with an eps large enough to floor most blocks."""
    lowbit.per_token_group_quant_mxfp4(x, q1, s1)
    lowbit.per_token_group_quant_mxfp4(x, q2, s2, eps=0.0)
    lowbit.per_token_group_quant_mxfp4(x, q3, s3, 32, 0.25)


def _group_quant_targets(x):
    """Fresh (x_q, x_s) pairs for group_quant_all, holding sentinels."""
    return (*_group_quant_buffers(x, torch.uint8, F32), *_group_quant_buffers(x, E2M1, torch.uint8),
            *_group_quant_buffers(x, torch.uint8, F32, offset=5))


def _check_group_quant_compiled(compiled, x):
    got, want = _group_quant_targets(x), _group_quant_targets(x)
    assert compiled(x, *got) is None
    group_quant_all(x, *want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert layout(g) == layout(w), i
        assert torch.equal(g.view(torch.uint8), w.view(torch.uint8)), f"buffer {i} differs from eager"
    assert not torch.equal(want[1], _group_quant_targets(x)[1])  # eager wrote the buffers: the check can fail


def test_compile_fullgraph_group_quant_static_matches_eager():
    torch._dynamo.reset()
    compiled = torch.compile(group_quant_all, fullgraph=True, dynamic=False)
    _check_group_quant_compiled(compiled, _special_input(2, 5, 256, seed=40))


def test_compile_fullgraph_group_quant_dynamic_rows_match_eager():
    torch._dynamo.reset()
    compiled = torch.compile(group_quant_all, fullgraph=True, dynamic=True)
    for mn, seed in ((8, 41), (5, 42), (1, 43)):
        _check_group_quant_compiled(compiled, _special_input(mn, 256, seed=seed))
    x = randn(64, 7, seed=44).t().to(torch.bfloat16)  # an input whose last dim is strided
    _check_group_quant_compiled(compiled, x)


E8M0_MUTATION_LIMITATION = (
    "pytorch limitation (cf. pytorch/pytorch#189522): inductor's decompose_auto_functionalized pass skips a node with "
    "a float8_e8m0fnu argument, then asserts 'auto_functionalized_v2 was not removed'; any custom op that mutates a "
    "float8_e8m0fnu tensor hits it (lowbit could pass x_s.view(torch.uint8) to the torch.library op)")


def test_compile_fullgraph_group_quant_into_e8m0_scales_matches_eager():
    """Bits as eager where this torch's inductor compiles it; an expected failure (said as such) on
    the known inductor limitation, and a plain failure on anything else."""
    def into_e8m0(x, x_q, x_s):
        lowbit.per_token_group_quant_mxfp4(x, x_q, x_s)

    torch._dynamo.reset()
    x = _special_input(4, 256, seed=45)
    got, want = _group_quant_buffers(x, torch.uint8, E8M0), _group_quant_buffers(x, torch.uint8, E8M0)
    try:
        torch.compile(into_e8m0, fullgraph=True)(x, *got)
    except Exception as error:
        if type(error).__name__ == "InductorError" and "auto_functionalized_v2 was not removed" in str(error):
            pytest.xfail(E8M0_MUTATION_LIMITATION)
        raise
    into_e8m0(x, *want)
    assert all(torch.equal(g.view(torch.uint8), w.view(torch.uint8)) for g, w in zip(got, want, strict=True))
