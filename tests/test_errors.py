"""Bad input through the public API, on CPU ([ERR-UNSUPPORTED], [FP8-OUT]).

Every refused call raises lowbit.UnsupportedError (no backend can take it: the message names each
unmet constraint per backend and an "Alternative:") or ValueError (malformed: mismatched shapes or
buffers) - never AssertionError, RuntimeError or IndexError. The message names the constraint.
Nothing is written before the checks pass: out= buffers prefilled with a sentinel come back
byte-identical, and so does the input.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from oracles import packed_strides, storage_u8

import lowbit

Unsupported = lowbit.UnsupportedError
E4M3, E2M1, E8M0 = torch.float8_e4m3fn, torch.float4_e2m1fn_x2, torch.float8_e8m0fnu
OUT_HEAD = "lowbit.quantize_fp8_group_packed(out=...): the buffers do not fit this input"
OUT_TAIL = "Allocate them as docs/SPEC.md [FP8-OUT] says"


# --- helpers ------------------------------------------------------------------------------------

def randn(*shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def q_buf(*shape, dtype=E4M3) -> torch.Tensor:
    """A q buffer prefilled with the byte 0xA5."""
    t = torch.empty(shape, dtype=dtype)
    t.view(torch.uint8).fill_(0xA5)
    return t


def s_buf(*shape, strides=None, dtype=torch.int32, offset=0, extra=0) -> torch.Tensor:
    """A scale buffer of `shape` with `strides` (default: the packed [FP8-PACK] ones), over a
    storage of exactly the words it spans (+ `extra`), prefilled with the bytes 0x5A."""
    *lead, mn, words = shape
    strides = packed_strides(tuple(lead), mn, words) if strides is None else strides
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
    base = torch.empty(offset + span + extra, dtype=dtype)
    base.view(torch.uint8).fill_(0x5A)
    return base.as_strided(shape, strides, offset)


def meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


@dataclass
class Case:
    """A refused call: `make` returns (call, tensors that must come back unchanged)."""

    id: str
    kind: type  # Unsupported or ValueError, exactly
    needles: tuple[str, ...]
    make: Callable[[], tuple[Callable[[], object], tuple[torch.Tensor, ...]]]
    env: dict = field(default_factory=dict)


def check_refused(case: Case, monkeypatch) -> None:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    call, watched = case.make()
    watched = [t for t in watched if t.device.type != "meta"]
    before = [storage_u8(t) for t in watched]
    try:
        call()
    except Exception as exc:
        error = exc
    else:
        pytest.fail(f"{case.id}: the call did not raise")
    assert type(error) is case.kind, f"{case.id}: {type(error).__name__}: {error}"
    message = str(error)
    for needle in case.needles:
        assert needle in message, f"{case.id}: {needle!r} not in:\n{message}"
    if case.kind is Unsupported:
        assert re.search(r"^Alternative: \S", message, re.MULTILINE), f"{case.id}: no alternative in:\n{message}"
        assert re.search(r"^  - \S+: \S", message, re.MULTILINE), f"{case.id}: no per-backend reason in:\n{message}"
    for i, (t, b) in enumerate(zip(watched, before)):
        assert torch.equal(storage_u8(t), b), f"{case.id}: tensor {i} was written before the error"


def _unsupported_dtype_line(dtype: torch.dtype, accepted: str) -> str:
    return f"  - cpu: input dtype {str(dtype).removeprefix('torch.')} is not one of {accepted}"


# --- quantize_mxfp4 ----------------------------------------------------------------------------------

MX_DTYPES = "float32, float16, bfloat16"


def _mx(x_fn, **kwargs):
    def make():
        x = x_fn()
        return (lambda: lowbit.quantize_mxfp4(x, **kwargs)), (x,)
    return make


MX_CASES = [
    *[Case(f"mx-dtype-{dt}", Unsupported,
           (_unsupported_dtype_line(dt, MX_DTYPES), "Alternative: cast the input to float32"),
           _mx(lambda dt=dt: torch.zeros(4, 64, dtype=dt)))
      for dt in (torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool, torch.float64,
                 torch.complex64, E4M3)],
    *[Case(f"mx-k{k}", Unsupported,
           (f"  - cpu: last dim {k} is not a multiple of the block size 32",
            "Alternative: pad the last dim with zeros to a multiple of 32"),
           _mx(lambda k=k: randn(3, k)))
      for k in (1, 16, 33, 48, 80)],
    Case("mx-k48-3d-bf16", Unsupported, ("last dim 48 is not a multiple of the block size 32",),
         _mx(lambda: randn(2, 3, 48, dtype=torch.bfloat16))),
    Case("mx-0d", Unsupported, ("  - cpu: input has 0 dims; needs at least 1",
                                "Alternative: reshape the input to 1 or more dims"),
         _mx(lambda: torch.tensor(1.0))),
    *[Case(f"mx-rule-{rule or 'empty'}", Unsupported,
           (f"  - cpu: scale_rule {rule!r} is not one of 'rceil', 'floor'", "Alternative: pass scale_rule='rceil'"),
           _mx(lambda: randn(4, 64), scale_rule=rule))
      for rule in ("nearest", "RCEIL", "", "ceil", "floor ")],
    Case("mx-int32-and-k40", Unsupported,
         (_unsupported_dtype_line(torch.int32, MX_DTYPES), "last dim 40 is not a multiple of the block size 32",
          "Alternative: cast the input to float32; or pad the last dim"),
         _mx(lambda: torch.zeros(4, 40, dtype=torch.int32))),
    Case("mx-backend-nope", Unsupported,
         ("backend 'nope' (forced) cannot run it", "  - nope: no backend is named 'nope' (known: cuda, xpu, cpu)",
          "Alternative: backend='cpu' can run this call"),
         _mx(lambda: randn(4, 64), backend="nope")),
    Case("mx-backend-CPU", Unsupported, ("no backend is named 'CPU' (known: cuda, xpu, cpu)",),
         _mx(lambda: randn(4, 64), backend="CPU")),
    Case("mx-env-backend-nope", Unsupported, ("backend 'nope' (forced) cannot run it",),
         _mx(lambda: randn(4, 64)), env={"LOWBIT_BACKEND": "nope"}),
    Case("mx-forced-cpu-int32", Unsupported,
         ("backend 'cpu' (forced) cannot run it", _unsupported_dtype_line(torch.int32, MX_DTYPES)),
         _mx(lambda: torch.zeros(4, 64, dtype=torch.int32), backend="cpu")),
]


# --- dequantize_mxfp4 --------------------------------------------------------------------------------

def _mx_pair(rows=4, k=64):
    return lowbit.quantize_mxfp4(randn(rows, k, seed=1))


def _mxdq(q_fn, s_fn, **kwargs):
    def make():
        q, s = q_fn(), s_fn()
        return (lambda: lowbit.dequantize_mxfp4(q, s, **kwargs)), (q, s)
    return make


MXDQ_MISMATCH = "do not match; need q (..., K/2) and scales (..., K/32)"

MXDQ_CASES = [
    *[Case(f"mxdq-q-{dt}", Unsupported,
           (_unsupported_dtype_line(dt, "float4_e2m1fn_x2, uint8"),),
           _mxdq(lambda dt=dt: torch.zeros(4, 32, dtype=dt), lambda: _mx_pair()[1]))
      for dt in (torch.float32, torch.bfloat16, torch.int32, torch.int8, torch.bool, E4M3)],
    *[Case(f"mxdq-scales-{dt}", ValueError,
           (f"lowbit.dequantize_mxfp4: scales dtype {dt} is not float8_e8m0fnu or uint8",),
           _mxdq(lambda: _mx_pair()[0], lambda dt=dt: torch.zeros(4, 2, dtype=dt)))
      for dt in (torch.float32, torch.int32, torch.int8, E4M3)],
    Case("mxdq-scales-blocks", ValueError, ("q (4, 32) and scales (4, 3) " + MXDQ_MISMATCH,),
         _mxdq(lambda: _mx_pair()[0], lambda: torch.zeros(4, 3, dtype=E8M0))),
    Case("mxdq-rows", ValueError, ("q (4, 32) and scales (5, 2) " + MXDQ_MISMATCH,),
         _mxdq(lambda: _mx_pair()[0], lambda: torch.zeros(5, 2, dtype=E8M0))),
    Case("mxdq-ndim", ValueError, ("q (2, 4, 32) and scales (4, 2) " + MXDQ_MISMATCH,),
         _mxdq(lambda: _mx_pair(8)[0].view(2, 4, 32), lambda: _mx_pair()[1])),
    Case("mxdq-q-half-block", ValueError, ("q (4, 8) and scales (4, 1) " + MXDQ_MISMATCH,),
         _mxdq(lambda: torch.zeros(4, 8, dtype=torch.uint8), lambda: torch.zeros(4, 1, dtype=torch.uint8))),
    Case("mxdq-0d", ValueError, ("q () and scales () " + MXDQ_MISMATCH,),
         _mxdq(lambda: torch.tensor(0, dtype=torch.uint8), lambda: torch.tensor(0, dtype=torch.uint8))),
    *[Case(f"mxdq-out-{dt}", Unsupported,
           (f"  - cpu: output dtype {str(dt).removeprefix('torch.')} is not one of bfloat16, float16, float32",
            "Alternative: pass dtype=torch.bfloat16"),
           _mxdq(lambda: _mx_pair()[0], lambda: _mx_pair()[1], dtype=dt))
      for dt in (torch.int32, torch.float64, E4M3)],
    Case("mxdq-scales-on-meta", ValueError, ("lowbit.dequantize_mxfp4: q is on cpu and scales on meta",),
         _mxdq(lambda: _mx_pair()[0], lambda: meta(_mx_pair()[1]))),
    Case("mxdq-backend-nope", Unsupported, ("no backend is named 'nope' (known: cuda, xpu, cpu)",),
         _mxdq(lambda: _mx_pair()[0], lambda: _mx_pair()[1], backend="nope")),
]


# --- quantize_fp8_group_packed -----------------------------------------------------------------------

FP8_DTYPES = "float32, float16, bfloat16"


def _fp8(x_fn, **kwargs):
    def make():
        x = x_fn()
        return (lambda: lowbit.quantize_fp8_group_packed(x, **kwargs)), (x,)
    return make


def _divide(g, k):
    return (f"  - cpu: group_size {g} does not divide the last dim {k}",
            "Alternative: pick a group size that divides the last dim")


FP8_CASES = [
    *[Case(f"fp8-dtype-{dt}", Unsupported,
           (_unsupported_dtype_line(dt, FP8_DTYPES), "Alternative: cast the input to float32"),
           _fp8(lambda dt=dt: torch.zeros(4, 128, dtype=dt)))
      for dt in (torch.int32, torch.int8, torch.uint8, torch.bool, torch.float64, E4M3)],
    Case("fp8-1d", Unsupported, ("  - cpu: input has 1 dims; needs at least 2",
                                 "Alternative: reshape the input to 2 or more dims"),
         _fp8(lambda: randn(128))),
    Case("fp8-0d", Unsupported, ("  - cpu: input has 0 dims; needs at least 2",),
         _fp8(lambda: torch.tensor(1.0))),
    *[Case(f"fp8-group{g}-k{k}", Unsupported, _divide(g, k), _fp8(lambda k=k: randn(4, k), group_size=g))
      for g, k in ((0, 128), (-1, 128), (-128, 256), (64, 96), (100, 256), (256, 128))],
    Case("fp8-default-group-k100", Unsupported, _divide(128, 100), _fp8(lambda: randn(2, 3, 100))),
    *[Case(f"fp8-eps-{eps}", ValueError, (f"lowbit.quantize_fp8_group_packed: eps={eps} must be finite and >= 0",),
           _fp8(lambda: randn(4, 128), eps=eps))
      for eps in (float("nan"), float("inf"), float("-inf"), -1e-3, -1e-30, 1e39, 3.5e38)],
    Case("fp8-backend-nope", Unsupported, ("backend 'nope' (forced) cannot run it",
                                           "no backend is named 'nope' (known: cuda, xpu, cpu)",
                                           "Alternative: backend='cpu' can run this call"),
         _fp8(lambda: randn(4, 128), backend="nope")),
    Case("fp8-forced-cpu-float64", Unsupported, ("backend 'cpu' (forced) cannot run it",
                                                 _unsupported_dtype_line(torch.float64, FP8_DTYPES)),
         _fp8(lambda: randn(4, 128, dtype=torch.float64), backend="cpu")),
]


# --- quantize_fp8_group_packed(out=...) ----------------------------------------------------------------
# x (5, 256), group_size 32: G = 8 groups, 2 words per row, A = 8 rows; s_buf strides (1, 8).

def _out(x_fn, q_fn, s_fn, group_size=32, **kwargs):
    def make():
        x, q, s = x_fn(), q_fn(), s_fn()
        return (lambda: lowbit.quantize_fp8_group_packed(x, group_size=group_size, out=(q, s), **kwargs)), (x, q, s)
    return make


def _x2():
    return randn(5, 256, seed=2)


def _x3():
    return randn(2, 5, 256, seed=3)


def _good_q2():
    return q_buf(5, 256)


def _good_s2():
    return s_buf(5, 2)


def _shrunk(t: torch.Tensor, nbytes: int) -> torch.Tensor:
    t.untyped_storage().resize_(nbytes)
    return t


def _bad(problem: str, shape: str = "(5, 256)") -> tuple[str, ...]:
    return f"{OUT_HEAD} ({shape}, group_size 32): ", problem, OUT_TAIL


OUT_CASES = [
    Case("out-q-uint8", ValueError, _bad("q_buf dtype is torch.uint8, needs torch.float8_e4m3fn"),
         _out(_x2, lambda: q_buf(5, 256, dtype=torch.uint8), _good_s2)),
    Case("out-q-bfloat16", ValueError, _bad("q_buf dtype is torch.bfloat16, needs torch.float8_e4m3fn"),
         _out(_x2, lambda: q_buf(5, 256, dtype=torch.bfloat16), _good_s2)),
    Case("out-s-float32", ValueError, _bad("s_buf dtype is torch.float32, needs torch.int32"),
         _out(_x2, _good_q2, lambda: s_buf(5, 2, dtype=torch.float32))),
    Case("out-s-int64", ValueError, _bad("s_buf dtype is torch.int64, needs torch.int32"),
         _out(_x2, _good_q2, lambda: s_buf(5, 2, dtype=torch.int64))),
    Case("out-s-uint32", ValueError, _bad("s_buf dtype is torch.uint32, needs torch.int32"),
         _out(_x2, _good_q2, lambda: s_buf(5, 2, dtype=torch.uint32))),
    Case("out-q-on-meta", ValueError, _bad("q_buf is on meta, the input on cpu"),
         _out(_x2, lambda: meta(q_buf(5, 256)), _good_s2)),
    Case("out-s-on-meta", ValueError, _bad("s_buf is on meta, the input on cpu"),
         _out(_x2, _good_q2, lambda: meta(s_buf(5, 2)))),
    Case("out-R-below-mn", ValueError, _bad("q_buf shape is (4, 256), needs ('R', 256) with 5 <= R <= 8"),
         _out(_x2, lambda: q_buf(4, 256), _good_s2)),
    Case("out-R-above-A", ValueError, _bad("q_buf shape is (9, 256), needs ('R', 256) with 5 <= R <= 8"),
         _out(_x2, lambda: q_buf(9, 256), _good_s2)),
    Case("out-q-wrong-k", ValueError, _bad("q_buf shape is (5, 128), needs ('R', 256)"),
         _out(_x2, lambda: q_buf(5, 128), _good_s2)),
    Case("out-q-3d-for-2d", ValueError, _bad("q_buf shape is (1, 5, 256)"),
         _out(_x2, lambda: q_buf(1, 5, 256), _good_s2)),
    Case("out-q-lead-mismatch", ValueError, _bad("q_buf shape is (3, 5, 256), needs (2, 'R', 256)", "(2, 5, 256)"),
         _out(_x3, lambda: q_buf(3, 5, 256), lambda: s_buf(2, 5, 2))),
    Case("out-q-transposed", ValueError, _bad("q_buf strides (1, 5) are not contiguous"),
         _out(_x2, lambda: q_buf(256, 5).t(), _good_s2)),
    Case("out-q-row-strided", ValueError, _bad("q_buf strides (512, 1) are not contiguous"),
         _out(_x2, lambda: q_buf(5, 512)[:, :256], _good_s2)),
    *[Case(f"out-s-shape-{'x'.join(map(str, shape))}", ValueError,
           _bad(f"s_buf shape is {shape}, needs (5, 2)"),
           _out(_x2, _good_q2, lambda shape=shape: s_buf(*shape)))
      for shape in ((5, 1), (5, 3), (4, 2), (8, 2), (1, 5, 2))],
    Case("out-s-contiguous", ValueError, _bad("s_buf strides are (2, 1), needs (1, 8) (word (r, c) at c*A + r, A = 8)"),
         _out(_x2, _good_q2, lambda: s_buf(5, 2, strides=(2, 1)))),
    Case("out-s-unpadded-rows", ValueError, _bad("s_buf strides are (1, 5), needs (1, 8)"),
         _out(_x2, _good_q2, lambda: s_buf(5, 2, strides=(1, 5)))),
    Case("out-s-batch-stride", ValueError, _bad("s_buf strides are (20, 1, 8), needs (16, 1, 8)", "(2, 5, 256)"),
         _out(_x3, lambda: q_buf(2, 5, 256), lambda: s_buf(2, 5, 2, strides=(20, 1, 8)))),
    Case("out-s-batch-contiguous", ValueError, _bad("s_buf strides are (10, 2, 1), needs (16, 1, 8)", "(2, 5, 256)"),
         _out(_x3, lambda: q_buf(2, 5, 256), lambda: s_buf(2, 5, 2, strides=(10, 2, 1)))),
    # mn + (words - 1) * A = 5 + 8 = 13 words are needed
    Case("out-s-storage-12-words", ValueError, _bad("s_buf storage holds 12 elements from its offset, its view needs 13"),
         _out(_x2, _good_q2, lambda: _shrunk(s_buf(5, 2), 12 * 4))),
    Case("out-s-storage-after-offset", ValueError, _bad("s_buf storage holds 12 elements from its offset, its view needs 13"),
         _out(_x2, _good_q2, lambda: _shrunk(s_buf(5, 2, offset=4, extra=3), 16 * 4))),
    Case("out-s-storage-3d", ValueError, _bad("s_buf storage holds 28 elements from its offset, its view needs 29", "(2, 5, 256)"),
         _out(_x3, lambda: q_buf(2, 5, 256), lambda: _shrunk(s_buf(2, 5, 2), 28 * 4))),
    Case("out-two-problems", ValueError,
         _bad("q_buf dtype is torch.uint8, needs torch.float8_e4m3fn") + ("s_buf strides are (2, 1), needs (1, 8)",),
         _out(_x2, lambda: q_buf(5, 256, dtype=torch.uint8), lambda: s_buf(5, 2, strides=(2, 1)))),
    # refused by the capability check (the input), with good buffers: still nothing written
    Case("out-int32-input", Unsupported, (_unsupported_dtype_line(torch.int32, FP8_DTYPES), "out= given"),
         _out(lambda: torch.zeros(5, 256, dtype=torch.int32), _good_q2, _good_s2)),
    Case("out-group0", Unsupported, _divide(0, 256), _out(_x2, _good_q2, _good_s2, group_size=0)),
    Case("out-group-negative", Unsupported, _divide(-32, 256), _out(_x2, _good_q2, _good_s2, group_size=-32)),
    Case("out-1d-input", Unsupported, ("input has 1 dims; needs at least 2",),
         _out(lambda: randn(256), lambda: q_buf(256), lambda: torch.zeros(2, dtype=torch.int32))),
    Case("out-eps-nan", ValueError, ("eps=nan must be finite and >= 0",),
         _out(_x2, _good_q2, _good_s2, eps=float("nan"))),
    Case("out-backend-nope", Unsupported, ("no backend is named 'nope' (known: cuda, xpu, cpu)",),
         _out(_x2, _good_q2, _good_s2, backend="nope")),
]


# --- dequantize_fp8_group_packed -----------------------------------------------------------------------

def _fp8_pair(shape=(4, 128), group_size=128):
    return lowbit.quantize_fp8_group_packed(randn(*shape, seed=4), group_size=group_size)


def _fp8dq(q_fn, s_fn, **kwargs):
    def make():
        q, s = q_fn(), s_fn()
        return (lambda: lowbit.dequantize_fp8_group_packed(q, s, **kwargs)), (q, s)
    return make


FP8DQ_CASES = [
    *[Case(f"fp8dq-q-{dt}", Unsupported, (_unsupported_dtype_line(dt, "float8_e4m3fn, uint8"),
                                          "Alternative: cast the input to float8_e4m3fn"),
           _fp8dq(lambda dt=dt: torch.zeros(4, 128, dtype=dt), lambda: _fp8_pair()[1]))
      for dt in (torch.bfloat16, torch.float32, torch.int32, torch.bool, torch.float8_e5m2)],
    *[Case(f"fp8dq-scales-{dt}", ValueError,
           (f"lowbit.dequantize_fp8_group_packed: packed scales dtype {dt} is not int32",),
           _fp8dq(lambda: _fp8_pair()[0], lambda dt=dt: torch.zeros(4, 1, dtype=dt)))
      for dt in (torch.int64, torch.float32, torch.uint8, torch.uint32)],
    Case("fp8dq-scales-words", ValueError,
         ("q (4, 128) with group_size 128 needs packed scales of shape (4, 1), got (4, 2)",),
         _fp8dq(lambda: _fp8_pair()[0], lambda: _fp8_pair((4, 640))[1])),  # G = 5: 2 words
    Case("fp8dq-scales-rows", ValueError, ("needs packed scales of shape (4, 1), got (5, 1)",),
         _fp8dq(lambda: _fp8_pair()[0], lambda: _fp8_pair((5, 128))[1])),
    Case("fp8dq-scales-lead", ValueError, ("q (2, 4, 128) with group_size 128 needs packed scales of shape "
                                           "(2, 4, 1), got (4, 1)",),
         _fp8dq(lambda: _fp8_pair((2, 4, 128))[0], lambda: _fp8_pair()[1])),
    Case("fp8dq-group-mismatch", ValueError,
         ("q (4, 128) with group_size 16 needs packed scales of shape (4, 2), got (4, 1)",),
         _fp8dq(lambda: _fp8_pair()[0], lambda: _fp8_pair()[1], group_size=16)),
    Case("fp8dq-1d", Unsupported, ("  - cpu: input has 1 dims; needs at least 2",),
         _fp8dq(lambda: torch.zeros(128, dtype=E4M3), lambda: torch.zeros(1, dtype=torch.int32))),
    Case("fp8dq-0d", Unsupported, ("  - cpu: input has 0 dims; needs at least 2",),
         _fp8dq(lambda: torch.tensor(0, dtype=torch.uint8), lambda: torch.tensor(0, dtype=torch.int32))),
    *[Case(f"fp8dq-group{g}", Unsupported, _divide(g, 128),
           _fp8dq(lambda: _fp8_pair()[0], lambda: _fp8_pair()[1], group_size=g))
      for g in (0, -1, -128, 96, 100)],
    *[Case(f"fp8dq-out-{dt}", Unsupported,
           (f"  - cpu: output dtype {str(dt).removeprefix('torch.')} is not one of bfloat16, float16, float32",
            "Alternative: pass dtype=torch.bfloat16"),
           _fp8dq(lambda: _fp8_pair()[0], lambda: _fp8_pair()[1], dtype=dt))
      for dt in (torch.int32, torch.float64, E4M3)],
    Case("fp8dq-scales-on-meta", ValueError, ("q is on cpu and scales on meta",),
         _fp8dq(lambda: _fp8_pair()[0], lambda: meta(_fp8_pair()[1]))),
    Case("fp8dq-backend-nope", Unsupported, ("no backend is named 'nope' (known: cuda, xpu, cpu)",),
         _fp8dq(lambda: _fp8_pair()[0], lambda: _fp8_pair()[1], backend="nope")),
]

ALL_CASES = [*MX_CASES, *MXDQ_CASES, *FP8_CASES, *OUT_CASES, *FP8DQ_CASES]


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_refused(case: Case, monkeypatch):
    check_refused(case, monkeypatch)


def test_case_ids_are_unique():
    ids = [c.id for c in ALL_CASES]
    assert len(ids) == len(set(ids))


def test_unsupported_error_is_a_value_error():
    assert issubclass(Unsupported, ValueError)


# --- the buffers the refusals are measured against are accepted --------------------------------------
# (so that the out= cases above fail for the one thing each changes)

@pytest.mark.parametrize("rows", ("mn", "A"))
@pytest.mark.parametrize("shape", ((5, 256), (2, 5, 256)), ids=("2d", "3d"))
def test_out_accepts_the_spec_buffers(shape, rows):
    x = randn(*shape, seed=5)
    *lead, mn, k = shape
    r = mn if rows == "mn" else 8
    q = q_buf(*lead, r, k)
    s = s_buf(*lead, mn, 2)  # exactly vLLM's minimal storage
    got = lowbit.quantize_fp8_group_packed(x, group_size=32, out=(q, s))
    assert got[0] is q and got[1] is s
    want_q, want_s = lowbit.quantize_fp8_group_packed(x, group_size=32)
    assert torch.equal(q[..., :mn, :].view(torch.uint8), want_q.view(torch.uint8))
    assert not q[..., mn:, :].view(torch.uint8).any()  # [FP8-OUT]: rows >= mn written as 0
    assert torch.equal(s, want_s)


def test_out_accepts_exactly_enough_storage_after_an_offset():
    x = randn(5, 256, seed=6)
    s = _shrunk(s_buf(5, 2, offset=4, extra=3), 17 * 4)  # 4 + 13 words
    lowbit.quantize_fp8_group_packed(x, group_size=32, out=(q_buf(5, 256), s))
    assert torch.equal(s, lowbit.quantize_fp8_group_packed(x, group_size=32)[1])


@pytest.mark.parametrize("rows", (5, 8), ids=("R=mn", "R=A"))
def test_out_q_buf_storage_too_small_is_refused(rows):
    """[FP8-OUT]: "storage too small" raises before anything is written - for q_buf as for s_buf.
    Run in a child process: without the check the kernel writes past the end of q_buf's storage."""
    script = textwrap.dedent(f"""
        import json, torch, lowbit
        x = torch.randn(5, 256)
        q = torch.empty({rows}, 256, dtype=torch.float8_e4m3fn)
        q.view(torch.uint8).fill_(0xA5)
        q.untyped_storage().resize_(256)       # 1 row of the 8 the buffer claims
        s = torch.empty_strided((5, 2), (1, 8), dtype=torch.int32)
        s.fill_(0x5A5A5A5A)
        left = torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage())
        try:
            lowbit.quantize_fp8_group_packed(x, group_size=32, out=(q, s))
            result = {{"raised": None}}
        except Exception as exc:
            result = {{"raised": type(exc).__name__, "message": str(exc)}}
        result["q_untouched"] = bool((left == 0xA5).all())
        result["s_untouched"] = bool((s == 0x5A5A5A5A).all())
        print("RESULT " + json.dumps(result))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"the child process died (rc {proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["raised"] == "ValueError", result
    assert "q_buf" in result["message"] and "storage" in result["message"], result
    assert result["q_untouched"] and result["s_untouched"], result


# --- lowbit.supports on meta tensors, for a device this machine lacks ----------------------------------

def test_supports_meta_cuda_without_an_arch_falls_back_to_cpu():
    x = torch.empty(8, 64, device="meta")
    v = lowbit.supports("quantize_mxfp4", x, device="cuda")  # this machine cannot tell the arch
    assert (v.ok, v.backend, v.fallback) == (True, "cpu", True)
    assert v.reasons == {"cuda/ptx": ["needs {sm_100, sm_103, sm_110, sm_120, sm_121} and cannot tell this cuda "
                                      "device's arch"],
                         "cuda/triton": ["needs sm_80+ and cannot tell this cuda device's arch"]}
    for arch, variant in (("sm_90", "triton"), ((10, 0), "ptx")):
        v = lowbit.supports("quantize_mxfp4", x, device="cuda", arch=arch)
        assert (v.ok, v.backend, v.variant, v.fallback) == (True, "cuda", variant, False)


def test_supports_meta_cuda_refusal_names_the_constraint():
    v = lowbit.supports("quantize_mxfp4", torch.empty(8, 60, device="meta"), device="cuda", arch="sm_90")
    assert (v.ok, v.backend) == (False, None)
    assert v.reasons == {"cuda/ptx": ["needs {sm_100, sm_103, sm_110, sm_120, sm_121}, not sm_90",
                                      "last dim 60 is not a multiple of the block size 32"],
                         "cuda/triton": ["last dim 60 is not a multiple of the block size 32"],
                         "cpu": ["last dim 60 is not a multiple of the block size 32"]}
    assert "on cuda" in v.explain() and "Alternative: pad the last dim" in v.explain()


def test_supports_meta_xpu_fp8_group_size():
    v = lowbit.supports("quantize_fp8_group_packed", torch.empty(4, 96, device="meta", dtype=torch.bfloat16),
                        group_size=64, device="xpu")
    assert (v.ok, v.backend) == (False, None)
    # the xpu record (group 128 only) and the reference both name the group that does not divide K
    assert v.reasons == {"xpu/triton": ["group_size 64 does not divide the last dim 96"],
                         "cpu": ["group_size 64 does not divide the last dim 96"]}


def test_supports_meta_dequantize_dtypes():
    q = torch.empty(4, 128, dtype=torch.bfloat16, device="meta")
    s = torch.empty_strided((4, 1), (1, 4), dtype=torch.int32, device="meta")
    v = lowbit.supports("dequantize_fp8_group_packed", q, s, dtype=torch.float64, device="cuda")
    assert not v.ok
    assert v.reasons == {"cpu": ["input dtype bfloat16 is not one of float8_e4m3fn, uint8",
                                 "output dtype float64 is not one of bfloat16, float16, float32"]}


def test_supports_meta_forced_unknown_backend():
    v = lowbit.supports("quantize_mxfp4", torch.empty(8, 64, device="meta"), device="cuda", backend="nope")
    assert (v.ok, v.backend) == (False, None)
    assert v.reasons == {"nope": ["no backend is named 'nope' (known: cuda, xpu, cpu)"]}


def test_supports_meta_without_device_is_a_value_error():
    with pytest.raises(ValueError, match="meta tensors carry no device; pass device="):
        lowbit.supports("quantize_mxfp4", torch.empty(8, 64, device="meta"))


def test_supports_meta_mismatched_out_buffers_is_a_value_error():
    x = torch.empty(5, 256, device="meta")
    q = torch.empty(9, 256, dtype=E4M3, device="meta")
    s = torch.empty_strided((5, 2), (1, 8), dtype=torch.int32, device="meta")
    with pytest.raises(ValueError) as info:
        lowbit.supports("quantize_fp8_group_packed", x, group_size=32, out=(q, s), device="cuda")
    assert type(info.value) is ValueError
    assert "q_buf shape is (9, 256), needs ('R', 256) with 5 <= R <= 8" in str(info.value)


def test_supports_unknown_op_is_a_value_error():
    with pytest.raises(ValueError, match="unknown op 'quantize_mxfp8'"):
        lowbit.supports("quantize_mxfp8", torch.empty(8, 64))


# --------------------------------------------------------------------------------------------
# Wrongly typed arguments: a ValueError naming the argument, not torch's schema RuntimeError
# --------------------------------------------------------------------------------------------

_X32 = torch.randn(2, 128)


@pytest.mark.parametrize("call, needle", [
    (lambda: lowbit.quantize_mxfp4(_X32, scale_rule=None), "scale_rule=None is of type NoneType, not str"),
    (lambda: lowbit.quantize_mxfp4(_X32, backend=0), "backend=0 is of type int, not str"),
    (lambda: lowbit.quantize_fp8_group_packed(_X32, group_size=True), "group_size=True is of type bool, not int"),
    (lambda: lowbit.quantize_fp8_group_packed(_X32, group_size=128.0), "group_size=128.0 is of type float"),
    (lambda: lowbit.quantize_fp8_group_packed(_X32, eps="1e-10"), "eps='1e-10' is of type str"),
    (lambda: lowbit.quantize_fp8_group_packed(_X32, out=torch.empty(2, 128)), "out= must be a pair of tensors"),
    (lambda: lowbit.dequantize_mxfp4(*lowbit.quantize_mxfp4(_X32), dtype="bfloat16"), "dtype='bfloat16' is of type str"),
    (lambda: lowbit.dequantize_fp8_group_packed(*lowbit.quantize_fp8_group_packed(_X32), group_size=None),
     "group_size=None is of type NoneType, not int"),
])
def test_wrongly_typed_arguments_name_the_argument(call, needle):
    with pytest.raises(ValueError) as error:
        call()
    assert type(error.value) is ValueError and needle in str(error.value)


# --------------------------------------------------------------------------------------------
# [ERR-UNSUPPORTED]
# --------------------------------------------------------------------------------------------


def test_err_unsupported_names_every_unmet_constraint_per_backend_and_an_alternative():
    x = torch.zeros(40, dtype=torch.int32)  # wrong dtype and K = 40 not a multiple of 32, at once
    with pytest.raises(lowbit.UnsupportedError) as error:
        lowbit.quantize_mxfp4(x)
    assert isinstance(error.value, ValueError)
    assert str(error.value).splitlines() == [
        "lowbit.quantize_mxfp4 for int32 input, ndim 1, last dim 40, scale_rule 'rceil', on cpu: no backend can run it:",
        "  - cpu: input dtype int32 is not one of float32, float16, bfloat16",
        "  - cpu: last dim 40 is not a multiple of the block size 32",
        "Alternative: cast the input to float32; or pad the last dim with zeros to a multiple of 32",
    ]


def test_err_unsupported_is_raised_before_anything_is_written():
    x = torch.randn(4, 256, dtype=torch.float64)  # float64: refused
    q_buf = torch.full((4, 256), 0x11, dtype=torch.uint8).view(torch.float8_e4m3fn)
    s_buf = torch.full((8,), 0x22222222, dtype=torch.int32).as_strided((4, 2), (1, 4))
    with pytest.raises(lowbit.UnsupportedError, match="input dtype float64"):
        lowbit.quantize_fp8_group_packed(x, group_size=32, out=(q_buf, s_buf))
    assert (q_buf.view(torch.uint8) == 0x11).all() and (s_buf == 0x22222222).all()


# --- non-tensor arguments and wrongly typed options: the call and supports() say the same ----------

_X = lambda: torch.randn(4, 64)  # noqa: E731
_XQ = lambda: torch.empty(4, 32, dtype=torch.uint8)  # noqa: E731
_XS = lambda: torch.empty(4, 2)  # noqa: E731
ALIKE = {
    # name: (op, args, kwargs, error type, text)
    "mx-x-list": ("quantize_mxfp4", lambda: ([1.0] * 32,), {}, TypeError,
                  "lowbit.quantize_mxfp4: x must be a tensor, not list"),
    "mx-scale-rule-none": ("quantize_mxfp4", lambda: (_X(),), {"scale_rule": None}, ValueError,
                           "lowbit.quantize_mxfp4: scale_rule=None is of type NoneType, not str"),
    "gq-x-float": ("per_token_group_quant_mxfp4", lambda: (1.0, _XQ(), _XS()), {}, TypeError,
                   "lowbit.per_token_group_quant_mxfp4: x must be a tensor, not float"),
    "gq-xs-none": ("per_token_group_quant_mxfp4", lambda: (_X(), _XQ(), None), {}, TypeError,
                   "lowbit.per_token_group_quant_mxfp4: x_s must be a tensor, not NoneType"),
    "gq-group-float": ("per_token_group_quant_mxfp4", lambda: (_X(), _XQ(), _XS()), {"group_size": 32.0}, ValueError,
                       "lowbit.per_token_group_quant_mxfp4: group_size=32.0 is of type float, not int"),
    "gq-eps-str": ("per_token_group_quant_mxfp4", lambda: (_X(), _XQ(), _XS()), {"eps": "x"}, ValueError,
                   "lowbit.per_token_group_quant_mxfp4: eps='x' is of type str, not float or int"),
    "dmx-q-list": ("dequantize_mxfp4", lambda: ([0] * 32, torch.empty(1, 2, dtype=torch.uint8)), {}, TypeError,
                   "lowbit.dequantize_mxfp4: q must be a tensor, not list"),
    "fp8-x-tuple": ("quantize_fp8_group_packed", lambda: ((1.0,) * 128,), {}, TypeError,
                    "lowbit.quantize_fp8_group_packed: x must be a tensor, not tuple"),
    "fp8-group-float": ("quantize_fp8_group_packed", lambda: (torch.randn(4, 128),), {"group_size": 128.0}, ValueError,
                        "lowbit.quantize_fp8_group_packed: group_size=128.0 is of type float, not int"),
    "fp8-group-str": ("quantize_fp8_group_packed", lambda: (torch.randn(4, 128),), {"group_size": "128"}, ValueError,
                      "lowbit.quantize_fp8_group_packed: group_size='128' is of type str, not int"),
    "dfp8-scales-int": ("dequantize_fp8_group_packed", lambda: (torch.empty(4, 128, dtype=torch.uint8), 3), {},
                        TypeError, "lowbit.dequantize_fp8_group_packed: packed_scales must be a tensor, not int"),
}


@pytest.mark.parametrize("name", ALIKE)
def test_non_tensors_and_wrong_option_types_are_refused_by_the_call_and_supports_alike(name):
    op, args, kwargs, error, text = ALIKE[name]
    with pytest.raises(error) as real:
        getattr(lowbit, op)(*args(), **kwargs)
    assert str(real.value).startswith(text) and "pass e.g." in str(real.value)
    with pytest.raises(error) as asked:
        lowbit.supports(op, *args(), **kwargs)
    assert str(asked.value) == str(real.value)


# --- [ERR-OVERLAP]: buffers that share storage bytes with each other or the input -------------------

def _workspace_buffers(op, overlap):
    """(x, buffers carved from one uint8 workspace) for `op`; with `overlap` the scale buffer starts 16
    bytes inside the element buffer, else right after it."""
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(1))
    q_bytes = 4 * 128 if op == "per_token_group_quant_mxfp4" else 4 * 256
    s_shape, s_dtype = {"per_token_group_quant_mxfp4": ((4, 8), torch.float32),
                        "quantize_fp8_group": ((4, 2), torch.float32)}.get(op, ((1, 4), torch.int32))
    s_bytes = 4 * s_shape[0] * s_shape[1]
    work = torch.full((q_bytes + s_bytes,), 0x5A, dtype=torch.uint8)
    start = q_bytes - 16 if overlap else q_bytes
    q = work[:q_bytes]
    q = q.view(4, 128) if op == "per_token_group_quant_mxfp4" else q.view(torch.float8_e4m3fn).view(4, 256)
    s = work[start:start + s_bytes].view(s_dtype).view(s_shape)
    return x, work, q, s.t() if op == "quantize_fp8_group_packed" else s


def _call_with_buffers(op, x, q, s):
    if op == "per_token_group_quant_mxfp4":
        return lambda: lowbit.per_token_group_quant_mxfp4(x, q, s)
    return lambda: getattr(lowbit, op)(x, out=(q, s))


def _supports_with_buffers(op, x, q, s):
    if op == "per_token_group_quant_mxfp4":
        return lambda: lowbit.supports(op, x, q, s)
    return lambda: lowbit.supports(op, x, out=(q, s))


OVERLAP_OPS = ["per_token_group_quant_mxfp4", "quantize_fp8_group_packed", "quantize_fp8_group"]


@pytest.mark.parametrize("op", OVERLAP_OPS)
def test_err_overlap_buffers_sharing_bytes_are_refused_alike_before_anything_is_written(op):
    x, work, q, s = _workspace_buffers(op, overlap=True)
    before = work.clone()
    with pytest.raises(ValueError, match="q_buf and s_buf share storage|x_q and x_s share storage") as real:
        _call_with_buffers(op, x, q, s)()
    assert torch.equal(work, before)
    with pytest.raises(ValueError) as asked:
        _supports_with_buffers(op, x, q, s)()
    assert str(asked.value) == str(real.value)


@pytest.mark.parametrize("op", OVERLAP_OPS)
def test_err_overlap_buffers_written_over_the_input_are_refused(op):
    _, _, q, s = _workspace_buffers(op, overlap=False)
    x = torch.randn(4, 256)
    before = x.clone()
    first_bytes = x.view(torch.uint8).reshape(-1)[:s.numel() * s.element_size()].view(s.dtype)
    with pytest.raises(ValueError, match="and x share storage"):
        _call_with_buffers(op, x, q, first_bytes.as_strided(s.shape, s.stride()))()
    assert torch.equal(x, before)


@pytest.mark.parametrize("op", OVERLAP_OPS)
def test_err_overlap_disjoint_buffers_of_one_workspace_are_taken(op):
    x, _, q, s = _workspace_buffers(op, overlap=False)
    _call_with_buffers(op, x, q, s)()
    x2, _, q2, s2 = _workspace_buffers(op, overlap=False)
    q2, s2 = torch.empty_like(q2), torch.empty_strided(s2.shape, s2.stride(), dtype=s2.dtype)
    _call_with_buffers(op, x2, q2, s2)()
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)
