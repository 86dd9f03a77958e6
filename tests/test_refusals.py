"""Every refused input of every op but unified_attention, one table per op, and what each refusal must do
(issue 15; docs/design.md, "Errors"). A refused input found elsewhere belongs here.

* test_real_call_refuses: the real call on CPU raises exactly the table's exception type, its message holds
  the table's needles, and nothing is written (every byte of every tensor's storage is as it was).
* test_refusal_names_the_op_the_argument_and_a_fix: the message starts with "lowbit.<op>", names the argument
  (an argument check: "lowbit.<op>: <argument> ...") or describes the call and each backend's unmet
  constraints (a dispatch refusal), and says what would work: "; pass ...", "; use ..." or "Alternative: ...".
* test_fake_and_supports_refuse_as_the_call_does: the same call under FakeTensorMode (on cpu, on fake cuda
  tensors of an arch this machine cannot tell and of sm_90, and on fake xpu tensors) and lowbit.supports /
  lowbit.explain (meta tensors with device=; a call mixing devices: the call's own tensors) refuse with the
  real call's exception type and message, the device named where the message names one. Where dispatch
  refuses the call, explain() answers (it does not raise) with the very text the fake raises.

No op here refuses on tensor values (only unified_attention does, under LOWBIT_DEBUG=1; a given NVFP4
global scale out of range is defined, [NV-GLOBAL-GIVEN]), so every refused input can be asked of the fake
and of supports(). Query functions' own arguments (op=, device=, arch=) are refused as QUERY_REFUSALS say.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from oracles import packed_strides
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import dispatch

F32, F16, BF16, F64, I32, U8 = torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.uint8
E4M3, E5M2, E2M1, E8M0 = torch.float8_e4m3fn, torch.float8_e5m2, torch.float4_e2m1fn_x2, torch.float8_e8m0fnu
UE, VE, TE = lowbit.UnsupportedError, ValueError, TypeError
POISON = 0xA5  # every byte of a tensor before a call that must write nothing


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
# (device, arch): arch None is what this machine tells (nothing, for a fake cuda tensor without a GPU)
DEVICES = [pytest.param("cpu", None, id="cpu"),
           pytest.param("cuda", None, id="cuda", marks=FAKE_DEVICE["cuda"]),
           pytest.param("cuda", 90, id="cuda-sm_90", marks=FAKE_DEVICE["cuda"]),
           pytest.param("xpu", None, id="xpu", marks=FAKE_DEVICE["xpu"])]


# --- building calls: tensors hold no data (a refusal never depends on it) ----------------------------------

def E(*shape, dtype=F32, d="cpu") -> torch.Tensor:
    """An empty tensor: E(4, 64), E(()) (0-d)."""
    if len(shape) == 1 and isinstance(shape[0], tuple):
        shape = shape[0]
    return torch.empty(shape, dtype=dtype, device=d)


def strided(shape, strides, dtype=F32, d="cpu", offset=0) -> torch.Tensor:
    """A view of exactly the storage it spans (after `offset`); fake cuda/xpu tensors take as_strided,
    not slicing."""
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
    return torch.empty(offset + span, dtype=dtype, device=d).as_strided(shape, strides, offset)


def short(t: torch.Tensor, missing: int = 1) -> torch.Tensor:
    """t with its storage cut `missing` elements short of what its view spans."""
    t.untyped_storage().resize_(t.untyped_storage().nbytes() - missing * t.element_size())
    return t


def packed(lead, mn, words, d, dtype=I32) -> torch.Tensor:
    """Packed FP8 scales (s_buf) in the [FP8-PACK] strides."""
    return strided((*lead, mn, words), packed_strides(tuple(lead), mn, words), dtype, d)


def grad(t: torch.Tensor) -> torch.Tensor:
    return t.requires_grad_()


def name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Refusal:
    id: str
    op: str
    build: Callable[[str], tuple[tuple, dict]]  # device -> (args, kwargs)
    error: type  # UnsupportedError, ValueError or TypeError: what the real call raises, exactly
    needs: tuple[str, ...] = ()  # in the real call's message
    env: dict = field(default_factory=dict)


def R(id, op, build, error, *needs, env=None) -> Refusal:
    return Refusal(f"{op}-{id}", op, build, error, needs, env or {})


def dtype_line(dtype, accepted: str) -> str:
    """The reference's unmet dtype constraint."""
    return f"  - cpu: input dtype {name(dtype)} is not one of {accepted}"


def divide(group_size, k) -> tuple[str, str]:
    return (f"  - cpu: group_size {group_size} does not divide the last dim {k}",
            "Alternative: pass a group_size that divides the last dim")


FORCED_NOPE = ("backend 'nope' (forced) cannot run it", "  - nope: no backend is named 'nope' (known: cuda, xpu, cpu)",
               "Alternative: backend='cpu' can run this call")
FLOATS = "float32, float16, bfloat16"


def backend_zero(op) -> str:
    return f'lowbit.{op}: backend=0 is of type int, not str; pass e.g. backend="auto"'


# --- quantize_mxfp4 ---------------------------------------------------------------------------------------

QM = "quantize_mxfp4"


def _qm(shape=(4, 64), dtype=F32, **kwargs):
    return lambda d: ((E(*shape, dtype=dtype, d=d),), kwargs)


QUANTIZE_MXFP4 = [
    *[R(name(dt), QM, _qm(dtype=dt), UE, dtype_line(dt, FLOATS), "Alternative: cast the input to float32")
      for dt in (I32, torch.int64, torch.int8, U8, torch.bool, F64, torch.complex64, E4M3)],
    *[R(f"k{k}", QM, _qm((3, k)), UE, f"  - cpu: last dim {k} is not a multiple of the block size 32",
        "Alternative: pad the last dim with zeros to a multiple of 32") for k in (1, 16, 31, 33, 48, 80)],
    R("k16-3d-bf16", QM, _qm((2, 3, 16), BF16), UE, "last dim 16 is not a multiple of the block size 32"),
    R("0d", QM, _qm(()), UE, "  - cpu: input has 0 dims; needs at least 1",
      "Alternative: reshape the input to 1 or more dims"),
    *[R(f"rule-{rule or 'empty'}", QM, _qm(scale_rule=rule), UE,
        f"  - cpu: scale_rule {rule!r} is not one of 'rceil', 'floor'", "Alternative: pass scale_rule='rceil'")
      for rule in ("nearest", "RCEIL", "", "ceil", "floor ")],
    R("int32-k40", QM, _qm((4, 40), I32), UE, dtype_line(I32, FLOATS),
      "  - cpu: last dim 40 is not a multiple of the block size 32",
      "Alternative: cast the input to float32; or pad the last dim with zeros to a multiple of 32"),
    R("backend-nope", QM, _qm(backend="nope"), UE, *FORCED_NOPE),
    R("backend-CPU", QM, _qm(backend="CPU"), UE, "no backend is named 'CPU' (known: cuda, xpu, cpu)"),
    R("env-backend-nope", QM, _qm(), UE, "backend 'nope' (forced) cannot run it", env={"LOWBIT_BACKEND": "nope"}),
    R("env-provider-sycl", QM, _qm(), VE, "lowbit.quantize_mxfp4: LOWBIT_XPU_PROVIDER='sycl' is not one of "
      "'triton', 'vendor'; use one of those, or unset LOWBIT_XPU_PROVIDER", env={"LOWBIT_XPU_PROVIDER": "sycl"}),
    R("forced-cpu-int32", QM, _qm(dtype=I32, backend="cpu"), UE, "backend 'cpu' (forced) cannot run it",
      dtype_line(I32, FLOATS)),
    R("forced-cpu-float64", QM, _qm(dtype=F64, backend="cpu"), UE, "backend 'cpu' (forced) cannot run it"),
    R("x-list", QM, lambda d: (([1.0] * 32,), {}), TE,
      "lowbit.quantize_mxfp4: x must be a tensor, not list; pass e.g. a (..., K) bfloat16 tensor"),
    R("scale_rule-None", QM, _qm(scale_rule=None), VE,
      'lowbit.quantize_mxfp4: scale_rule=None is of type NoneType, not str; pass e.g. scale_rule="rceil"'),
    R("backend-0", QM, _qm(backend=0), VE, backend_zero(QM)),
    *[R(f"layout-{layout}", QM, _qm(scale_layout=layout), VE, f"lowbit.quantize_mxfp4: scale_layout={layout!r} is not "
        "one of 'linear', 'swizzled'; pass scale_layout=\"swizzled\" for the 128x4 tiles")
      for layout in ("tiled", "Swizzled", "")],
    R("layout-int", QM, _qm(scale_layout=1), VE,
      'lowbit.quantize_mxfp4: scale_layout=1 is of type int, not str; pass e.g. scale_layout="linear"'),
]


# --- per_token_group_quant_mxfp4: x (4, 64) float32, x_q (4, 32) uint8, x_s (4, 2) float32 -----------------

GQ = "per_token_group_quant_mxfp4"


def _gq(x=(4, 64), x_dtype=F32, q=None, s=None, args=(), **kwargs):
    """x of shape `x`; x_q and x_s fit it unless `q` / `s` (functions of the device) say otherwise."""
    def build(d):
        lead, k = x[:-1], x[-1]
        x_q = E(*lead, k // 2, dtype=U8, d=d) if q is None else q(d)
        x_s = E(*lead, k // 32, d=d) if s is None else s(d)
        return (E(*x, dtype=x_dtype, d=d), x_q, x_s, *args), kwargs
    return build


def _gq_overlap(d):
    """x_q and x_s carved from one byte workspace, x_s starting 16 bytes inside x_q's 128."""
    work = E(128 + 32, dtype=U8, d=d)
    return (E(4, 64, d=d), work.as_strided((4, 32), (32, 1)), work.view(F32).as_strided((4, 2), (2, 1), 28)), {}


def _gq_over_x(d):
    x = E(4, 64, d=d)
    return (x, E(4, 32, dtype=U8, d=d), x.as_strided((4, 2), (2, 1))), {}


GQ_HEAD = "lowbit.per_token_group_quant_mxfp4: "
Q_DTYPES, S_DTYPES = "uint8, float4_e2m1fn_x2", "float32, float8_e8m0fnu, uint8"

GROUP_QUANT_MXFP4 = [
    *[R(f"x_q-{name(dt)}", GQ, _gq(q=lambda d, dt=dt: E(4, 32, dtype=dt, d=d)), VE,
        f"{GQ_HEAD}x_q dtype {name(dt)} is not one of {Q_DTYPES}; pass e.g. torch.empty((4, 32), dtype=torch.uint8)")
      for dt in (F32, torch.int8, E8M0, E4M3)],
    *[R(f"x_q-shape-{id}", GQ, _gq(x=x, q=lambda d, shape=shape: E(*shape, dtype=U8, d=d)), VE,
        f"{GQ_HEAD}x_q has shape {shape}, x {x} needs {want}; pass e.g. torch.empty({want}, dtype=torch.uint8)")
      for id, x, shape, want in (("k", (4, 64), (4, 64), (4, 32)), ("rows", (4, 64), (5, 32), (4, 32)),
                                 ("short", (4, 64), (4, 31), (4, 32)), ("flat", (4, 64), (128,), (4, 32)),
                                 ("extra-dim", (4, 64), (1, 4, 32), (4, 32)),
                                 ("2d-for-3d", (2, 3, 64), (6, 32), (2, 3, 32)))],
    R("x_q-transposed", GQ, _gq(q=lambda d: E(32, 4, dtype=U8, d=d).t()), VE,
      f"{GQ_HEAD}x_q must be contiguous, not strides (1, 4); pass e.g. torch.empty((4, 32), dtype=torch.uint8)"),
    R("x_q-strided", GQ, _gq(q=lambda d: strided((4, 32), (64, 2), U8, d)), VE,
      "x_q must be contiguous, not strides (64, 2)"),
    R("x_q-on-meta", GQ, _gq(q=lambda d: E(4, 32, dtype=U8, d="meta")), VE,
      f"{GQ_HEAD}x_q is on meta, x on cpu; pass x_q on cpu"),
    *[R(f"x_s-{name(dt)}", GQ, _gq(s=lambda d, dt=dt: E(4, 2, dtype=dt, d=d)), VE,
        f"{GQ_HEAD}x_s dtype {name(dt)} is not one of {S_DTYPES}; pass e.g. torch.empty((4, 2), dtype=torch.float32)")
      for dt in (BF16, F16, F64, E4M3, I32, torch.int8, E2M1)],
    *[R(f"x_s-shape-{id}", GQ, _gq(s=lambda d, shape=shape, dt=dt: E(*shape, dtype=dt, d=d)), VE,
        f"{GQ_HEAD}x_s has shape {shape}, x (4, 64) needs (4, 2)")
      for id, shape, dt in (("groups", (4, 4), F32), ("one", (4, 1), F32), ("rows", (3, 2), E8M0), ("flat", (8,), F32),
                            ("extra-dim", (4, 2, 1), U8))],
    R("x_s-transposed", GQ, _gq(s=lambda d: E(2, 4, d=d).t()), VE,
      f"{GQ_HEAD}x_s must be contiguous, not strides (1, 4); pass e.g. torch.empty((4, 2), dtype=torch.float32)"),
    R("x_s-transposed-e8m0", GQ, _gq(s=lambda d: E(2, 4, dtype=E8M0, d=d).t()), VE, "x_s must be contiguous"),
    R("x_s-strided", GQ, _gq(s=lambda d: strided((4, 2), (4, 2), U8, d)), VE, "x_s must be contiguous"),
    R("x_s-on-meta", GQ, _gq(s=lambda d: E(4, 2, d="meta")), VE, f"{GQ_HEAD}x_s is on meta, x on cpu; pass x_s on cpu"),
    R("x-on-meta", GQ, lambda d: ((E(4, 64, d="meta"), E(4, 32, dtype=U8, d=d), E(4, 2, d=d)), {}), VE,
      f"{GQ_HEAD}x_q is on cpu, x on meta; pass x_q on meta"),
    R("x_s-requires-grad", GQ, _gq(s=lambda d: grad(E(4, 2, d=d))), VE,
      f"{GQ_HEAD}x_s requires grad, and lowbit writes it in place without a gradient; pass x_s.detach()"),
    R("x_q-x_s-overlap", GQ, _gq_overlap, VE, f"{GQ_HEAD}x_q and x_s share storage (bytes 112..127); pass separate tensors"),
    R("x_s-over-x", GQ, _gq_over_x, VE, f"{GQ_HEAD}x_s and x share storage (bytes 0..31); pass separate tensors"),
    *[R(f"group-{g}", GQ, _gq(group_size=g), UE, f"{GQ_HEAD}group_size={g} is not 32: MXFP4 blocks are 32 elements on "
        "every backend (docs/SPEC.md [MX-BUFFERS]); pass group_size=32, or use lowbit.quantize_fp8_group_packed")
      for g in (64, 16, 128, 1)],
    R("group-float", GQ, _gq(group_size=32.0), VE, f"{GQ_HEAD}group_size=32.0 is of type float, not int; pass e.g. "
      "group_size=32"),
    *[R(f"eps-{eps}", GQ, _gq(eps=eps), VE, f"{GQ_HEAD}eps={eps} must be finite and >= 0, and finite as a float32 "
        "(at most 3.4028235e38); pass e.g. eps=1e-10")
      for eps in (-1.0, -1e-30, float("inf"), float("-inf"), float("nan"), 1e39, 2.0**128)],
    R("eps-int-negative", GQ, _gq(eps=-1), VE, f"{GQ_HEAD}eps=-1.0 must be finite and >= 0"),
    # 2^128 - 2^103: the exact tie above the largest float32, which rounds (to even) to inf
    R("eps-rounds-to-inf", GQ, _gq(eps=2.0**128 - 2.0**103), VE, "must be finite and >= 0, and finite as a float32"),
    R("eps-str", GQ, _gq(eps="x"), VE, f"{GQ_HEAD}eps='x' is of type str, not float or int; pass e.g. eps=1e-10"),
    R("k48", GQ, _gq(x=(4, 48), q=lambda d: E(4, 24, dtype=U8, d=d), s=lambda d: E(4, 1, d=d)), UE,
      "  - cpu: last dim 48 is not a multiple of the block size 32"),
    R("k31", GQ, _gq(x=(2, 31), q=lambda d: E(2, 15, dtype=U8, d=d), s=lambda d: E(2, 1, d=d)), UE,
      "last dim 31 is not a multiple of the block size 32"),
    R("int32", GQ, _gq(x_dtype=I32), UE, dtype_line(I32, FLOATS)),
    R("float64-k40", GQ, _gq(x=(4, 40), x_dtype=F64, q=lambda d: E(4, 20, dtype=U8, d=d), s=lambda d: E(4, 1, d=d)),
      UE, dtype_line(F64, FLOATS), "last dim 40 is not a multiple of the block size 32"),
    R("0d", GQ, lambda d: ((E((), d=d), E((), dtype=U8, d=d), E((), d=d)), {}), UE,
      "  - cpu: input has 0 dims; needs at least 1"),
    R("backend-nope", GQ, _gq(backend="nope"), UE, *FORCED_NOPE),
    R("forced-cpu-int32", GQ, _gq(x_dtype=I32, backend="cpu"), UE, "backend 'cpu' (forced) cannot run it"),
    R("backend-0", GQ, _gq(backend=0), VE, backend_zero(GQ)),
    R("eps-negative-and-backend-0", GQ, _gq(eps=-1.0, backend=0), VE, backend_zero(GQ)),
    R("x-float", GQ, lambda d: ((1.0, E(4, 32, dtype=U8, d=d), E(4, 2, d=d)), {}), TE,
      f"{GQ_HEAD}x must be a tensor, not float; pass e.g."),
    R("x_q-list", GQ, lambda d: ((E(4, 64, d=d), [0] * 32, E(4, 2, d=d)), {}), TE,
      f"{GQ_HEAD}x_q must be a tensor, not list; pass e.g."),
    R("x_s-None", GQ, lambda d: ((E(4, 64, d=d), E(4, 32, dtype=U8, d=d), None), {}), TE,
      f"{GQ_HEAD}x_s must be a tensor, not NoneType; pass e.g."),
    # [MX-SWIZZLE]: x_s (128, 4) E8M0 for 4 rows of 2 scales
    R("swizzled-x_s-float32", GQ, _gq(s=lambda d: E(128, 4, d=d), scale_layout="swizzled"), VE,
      f"{GQ_HEAD}x_s dtype float32 is not one of float8_e8m0fnu, uint8; pass e.g. torch.empty((128, 4), "
      "dtype=torch.float8_e8m0fnu)"),
    R("swizzled-x_s-linear-shape", GQ, _gq(s=lambda d: E(4, 2, dtype=U8, d=d), scale_layout="swizzled"), VE,
      f"{GQ_HEAD}x_s has shape (4, 2), x (4, 64) needs (128, 4)"),
    R("linear-x_s-swizzled-shape", GQ, _gq(s=lambda d: E(128, 4, dtype=U8, d=d)), VE,
      f"{GQ_HEAD}x_s has shape (128, 4), x (4, 64) needs (4, 2)"),
    R("layout-tiled", GQ, _gq(scale_layout="tiled"), VE, f"{GQ_HEAD}scale_layout='tiled' is not one of"),
]


# --- dequantize_mxfp4: q (4, 32) float4_e2m1fn_x2, scales (4, 2) float8_e8m0fnu ------------------------------

DM = "dequantize_mxfp4"


def _dm(q=(4, 32), q_dtype=E2M1, s=(4, 2), s_dtype=E8M0, s_device=None, **kwargs):
    return lambda d: ((E(*q, dtype=q_dtype, d=d), E(*s, dtype=s_dtype, d=s_device or d)), kwargs)


DM_MISMATCH = "do not match: q (..., K/2) takes scales (..., K/32); pass the q and scales quantize_mxfp4 returned"

DEQUANTIZE_MXFP4 = [
    *[R(f"q-{name(dt)}", DM, _dm(q_dtype=dt), UE, dtype_line(dt, "float4_e2m1fn_x2, uint8"))
      for dt in (F32, BF16, I32, torch.int8, torch.bool, E4M3)],
    *[R(f"scales-{name(dt)}", DM, _dm(s_dtype=dt), VE, f"lowbit.dequantize_mxfp4: scales dtype {name(dt)} is not "
        "float8_e8m0fnu or uint8; pass the scales quantize_mxfp4 returned") for dt in (F32, I32, torch.int8, E4M3)],
    R("scales-blocks", DM, _dm(s=(4, 3)), VE, "lowbit.dequantize_mxfp4: q (4, 32) and scales (4, 3) " + DM_MISMATCH),
    R("scales-rows", DM, _dm(q_dtype=U8, s=(5, 2), s_dtype=U8), VE, "q (4, 32) and scales (5, 2) " + DM_MISMATCH),
    R("scales-ndim", DM, _dm(q=(2, 4, 32)), VE, "q (2, 4, 32) and scales (4, 2) " + DM_MISMATCH),
    R("q-half-block", DM, _dm(q=(4, 8), q_dtype=U8, s=(4, 1), s_dtype=U8), VE, "q (4, 8) and scales (4, 1) do not match"),
    R("0d", DM, _dm(q=(), q_dtype=U8, s=(), s_dtype=U8), VE, "q () and scales () " + DM_MISMATCH),
    *[R(f"out-{name(dt)}", DM, _dm(dtype=dt), UE,
        f"  - cpu: output dtype {name(dt)} is not one of bfloat16, float16, float32",
        "Alternative: pass dtype=torch.bfloat16") for dt in (I32, F64, E4M3)],
    R("scales-on-meta", DM, _dm(s_device="meta"), VE,
      "lowbit.dequantize_mxfp4: scales is on meta, q on cpu; pass scales on cpu"),
    R("backend-nope", DM, _dm(backend="nope"), UE, "no backend is named 'nope' (known: cuda, xpu, cpu)"),
    R("backend-0", DM, _dm(backend=0), VE, backend_zero(DM)),
    R("q-list", DM, lambda d: (([0] * 32, E(1, 2, dtype=U8, d=d)), {}), TE,
      "lowbit.dequantize_mxfp4: q must be a tensor, not list; pass e.g. the q quantize_mxfp4 returned"),
    R("dtype-str", DM, _dm(dtype="bfloat16"), VE,
      "lowbit.dequantize_mxfp4: dtype='bfloat16' is of type str, not dtype; pass e.g. dtype=torch.bfloat16"),
    R("swizzled-linear-scales", DM, _dm(scale_layout="swizzled"), VE,
      "lowbit.dequantize_mxfp4: q (4, 32) and scales (4, 2) do not match: q (..., K/2) takes swizzled scales "
      "(round_up(R, 128), round_up(K/32, 4)) for its R rows; pass the q and scales "
      "quantize_mxfp4(..., scale_layout=\"swizzled\") returned"),
    R("linear-swizzled-scales", DM, _dm(s=(128, 4)), VE, "q (4, 32) and scales (128, 4) " + DM_MISMATCH),
    R("layout-tiled", DM, _dm(scale_layout="tiled"), VE, "lowbit.dequantize_mxfp4: scale_layout='tiled' is not one of"),
]


# --- quantize_mxfp8: x (4, 64) float32 --------------------------------------------------------------------------

QM8 = "quantize_mxfp8"


def _q8(shape=(4, 64), dtype=F32, **kwargs):
    return lambda d: ((E(*shape, dtype=dtype, d=d),), kwargs)


LAYOUT_NAMES = "'linear', 'swizzled'"

QUANTIZE_MXFP8 = [
    *[R(name(dt), QM8, _q8(dtype=dt), UE, dtype_line(dt, FLOATS), "Alternative: cast the input to float32")
      for dt in (I32, U8, torch.bool, F64, E4M3, E8M0)],
    *[R(f"k{k}", QM8, _q8((3, k)), UE, f"  - cpu: last dim {k} is not a multiple of the block size 32",
        "Alternative: pad the last dim with zeros to a multiple of 32") for k in (1, 16, 48, 80)],
    R("k16-3d-bf16-swizzled", QM8, _q8((2, 3, 16), BF16, scale_layout="swizzled"), UE,
      "last dim 16 is not a multiple of the block size 32"),
    R("0d", QM8, _q8(()), UE, "  - cpu: input has 0 dims; needs at least 1",
      "Alternative: reshape the input to 1 or more dims"),
    *[R(f"rule-{rule or 'empty'}", QM8, _q8(scale_rule=rule), UE,
        f"  - cpu: scale_rule {rule!r} is not one of 'rceil', 'floor'", "Alternative: pass scale_rule='rceil'")
      for rule in ("nearest", "RCEIL", "", "even")],
    R("int32-k40", QM8, _q8((4, 40), I32), UE, dtype_line(I32, FLOATS),
      "  - cpu: last dim 40 is not a multiple of the block size 32",
      "Alternative: cast the input to float32; or pad the last dim with zeros to a multiple of 32"),
    R("backend-nope", QM8, _q8(backend="nope"), UE, *FORCED_NOPE),
    R("env-backend-nope", QM8, _q8(), UE, "backend 'nope' (forced) cannot run it", env={"LOWBIT_BACKEND": "nope"}),
    R("forced-cpu-float64", QM8, _q8(dtype=F64, backend="cpu"), UE, "backend 'cpu' (forced) cannot run it",
      dtype_line(F64, FLOATS)),
    *[R(f"layout-{layout or 'empty'}", QM8, _q8(scale_layout=layout), VE,
        f"lowbit.{QM8}: scale_layout={layout!r} is not one of {LAYOUT_NAMES}; pass scale_layout=\"swizzled\" for the "
        "128x4 tiles cuBLASLt, CUTLASS and torch._scaled_mm read") for layout in ("tiled", "Linear", "")],
    R("layout-tiled-and-k48", QM8, _q8((4, 48), scale_layout="tiled"), VE, "scale_layout='tiled' is not one of"),
    R("layout-int", QM8, _q8(scale_layout=1), VE,
      f'lowbit.{QM8}: scale_layout=1 is of type int, not str; pass e.g. scale_layout="linear"'),
    R("rule-None", QM8, _q8(scale_rule=None), VE,
      f'lowbit.{QM8}: scale_rule=None is of type NoneType, not str; pass e.g. scale_rule="rceil"'),
    R("backend-0", QM8, _q8(backend=0), VE, backend_zero(QM8)),
    R("x-list", QM8, lambda d: (([1.0] * 32,), {}), TE,
      f"lowbit.{QM8}: x must be a tensor, not list; pass e.g. a (..., K) bfloat16 tensor"),
    R("x-None-and-layout-int", QM8, lambda d: ((None,), {"scale_layout": 1}), TE, "x must be a tensor, not NoneType"),
]


# --- dequantize_mxfp8: q (4, 64) float8_e4m3fn, scales (4, 2) float8_e8m0fnu -------------------------------------

DM8 = "dequantize_mxfp8"


def _d8(q=(4, 64), q_dtype=E4M3, s=(4, 2), s_dtype=E8M0, s_device=None, **kwargs):
    return lambda d: ((E(*q, dtype=q_dtype, d=d), E(*s, dtype=s_dtype, d=s_device or d)), kwargs)


DM8_FIX = f"; pass the scales {QM8} returned for this q and scale_layout"

DEQUANTIZE_MXFP8 = [
    *[R(f"q-{name(dt)}", DM8, _d8(q_dtype=dt), UE, dtype_line(dt, "float8_e4m3fn, uint8"),
        "Alternative: cast the input to float8_e4m3fn") for dt in (F32, BF16, E5M2, torch.int8)],
    *[R(f"scales-{name(dt)}", DM8, _d8(s_dtype=dt), VE, f"lowbit.{DM8}: scales dtype {name(dt)} is not "
        f"float8_e8m0fnu or uint8; pass the scales {QM8} returned") for dt in (F32, I32, E4M3)],
    R("scales-too-few", DM8, _d8(s=(4, 1)), VE, f"lowbit.{DM8}: q (4, 64) needs linear scales of shape (4, 2), got "
      "(4, 1)" + DM8_FIX),
    R("scales-rows", DM8, _d8(q_dtype=U8, s=(5, 2), s_dtype=U8), VE, "q (4, 64) needs linear scales of shape (4, 2), "
      "got (5, 2)"),
    R("scales-flat-for-3d", DM8, _d8(q=(2, 3, 64), s=(6, 2)), VE,
      "q (2, 3, 64) needs linear scales of shape (2, 3, 2), got (6, 2)"),
    R("linear-scales-read-as-swizzled", DM8, _d8(scale_layout="swizzled"), VE,
      f"lowbit.{DM8}: q (4, 64) needs swizzled scales of shape (128, 4), got (4, 2)" + DM8_FIX),
    R("swizzled-scales-read-as-linear", DM8, _d8(s=(128, 4)), VE,
      "q (4, 64) needs linear scales of shape (4, 2), got (128, 4)"),
    R("swizzled-scales-short", DM8, _d8(q=(130, 160), s=(130, 8), scale_layout="swizzled"), VE,
      "q (130, 160) needs swizzled scales of shape (256, 8), got (130, 8)"),
    R("q-k48", DM8, _d8(q=(4, 48), s=(4, 1)), UE, "  - cpu: last dim 48 is not a multiple of the block size 32",
      "Alternative: pad the last dim with zeros to a multiple of 32"),
    R("0d", DM8, _d8(q=(), s=()), UE, "  - cpu: input has 0 dims; needs at least 1"),
    *[R(f"out-{name(dt)}", DM8, _d8(dtype=dt), UE,
        f"  - cpu: output dtype {name(dt)} is not one of bfloat16, float16, float32",
        "Alternative: pass dtype=torch.bfloat16") for dt in (I32, F64, E4M3)],
    R("layout-tiled", DM8, _d8(scale_layout="tiled"), VE,
      f"lowbit.{DM8}: scale_layout='tiled' is not one of {LAYOUT_NAMES}; pass scale_layout=\"swizzled\""),
    R("layout-int", DM8, _d8(scale_layout=0), VE, f'lowbit.{DM8}: scale_layout=0 is of type int, not str; pass e.g. '
      'scale_layout="linear"'),
    R("dtype-str", DM8, _d8(dtype="bfloat16"), VE,
      f"lowbit.{DM8}: dtype='bfloat16' is of type str, not dtype; pass e.g. dtype=torch.bfloat16"),
    R("scales-on-meta", DM8, _d8(s_device="meta"), VE, f"lowbit.{DM8}: scales is on meta, q on cpu; pass scales on cpu"),
    R("backend-nope", DM8, _d8(backend="nope"), UE, "no backend is named 'nope' (known: cuda, xpu, cpu)"),
    R("backend-0", DM8, _d8(backend=0), VE, backend_zero(DM8)),
    R("q-list", DM8, lambda d: (([0] * 32, E(1, 1, dtype=E8M0, d=d)), {}), TE,
      f"lowbit.{DM8}: q must be a tensor, not list; pass e.g. the q {QM8} returned"),
    R("scales-None", DM8, lambda d: ((E(4, 64, dtype=E4M3, d=d), None), {}), TE,
      f"lowbit.{DM8}: scales must be a tensor, not NoneType; pass e.g. the scales {QM8} returned"),
]


# --- quantize_fp8_group_packed -------------------------------------------------------------------------------

QP = "quantize_fp8_group_packed"


def _qp(shape=(4, 128), dtype=F32, **kwargs):
    return lambda d: ((E(*shape, dtype=dtype, d=d),), kwargs)


def _qpo(q=None, s=None, x=(5, 256), x_dtype=F32, group_size=32, **kwargs):
    """out=(q_buf, s_buf) for x (5, 256), group_size 32: G = 8, 2 words a row, A = 8; s_buf strides (1, 8).
    `q` / `s` (functions of the device) replace the buffers that fit."""
    def build(d):
        *lead, mn, k = x
        q_buf = E(*lead, mn, k, dtype=E4M3, d=d) if q is None else q(d)
        s_buf = packed(lead, mn, 2, d) if s is None else s(d)
        return (E(*x, dtype=x_dtype, d=d),), {"group_size": group_size, "out": (q_buf, s_buf), **kwargs}
    return build


def _qpo_overlap(d):
    """q_buf and s_buf carved from one byte workspace, s_buf (4, 1) starting 16 bytes inside q_buf's 1024:
    x (4, 256), group_size 128."""
    work = E(1024 + 16, dtype=U8, d=d)
    return (E(4, 256, d=d),), {"out": (work.view(E4M3).as_strided((4, 256), (256, 1)),
                                       work.view(I32).as_strided((4, 1), (1, 4), 252))}


def _qpo_over_x(d):
    x = E(4, 256, d=d)
    return (x,), {"out": (E(4, 256, dtype=E4M3, d=d), x.view(I32).as_strided((4, 1), (1, 4)))}


def out_head(op, x="(5, 256)", group_size=32, layout="") -> str:
    return f"lowbit.{op}: out= buffers do not fit x {x} with group_size {group_size}{layout}: "


QPO_HEAD = out_head(QP)
QPO_TAIL = "; pass buffers allocated as docs/SPEC.md [FP8-OUT] says, or drop out= (lowbit then allocates them)"
NOT_A_PAIR = "out= must be a pair of tensors (q_buf, s_buf), not "

QUANTIZE_FP8_GROUP_PACKED = [
    *[R(name(dt), QP, _qp(dtype=dt), UE, dtype_line(dt, FLOATS), "Alternative: cast the input to float32")
      for dt in (I32, torch.int8, U8, torch.bool, F64, E4M3)],
    R("1d", QP, _qp((128,)), UE, "  - cpu: input has 1 dims; needs at least 2",
      "Alternative: reshape the input to 2 or more dims"),
    R("0d", QP, _qp(()), UE, "  - cpu: input has 0 dims; needs at least 2"),
    *[R(f"group{g}-k{k}", QP, _qp((4, k), group_size=g), UE, *divide(g, k))
      for g, k in ((0, 128), (-1, 128), (-128, 256), (64, 96), (100, 256), (256, 128))],
    R("default-group-k100", QP, _qp((2, 3, 100)), UE, *divide(128, 100)),
    R("default-group-k200", QP, _qp((2, 200)), UE, *divide(128, 200)),
    *[R(f"eps-{eps}", QP, _qp(eps=eps), VE, f"lowbit.{QP}: eps={eps} must be finite and >= 0")
      for eps in (float("nan"), float("inf"), float("-inf"), -1e-3, -1e-30, 1e39, 3.5e38)],
    R("backend-nope", QP, _qp(backend="nope"), UE, *FORCED_NOPE),
    R("forced-cpu-float64", QP, _qp(dtype=F64, backend="cpu"), UE, "backend 'cpu' (forced) cannot run it",
      dtype_line(F64, FLOATS)),
    R("backend-0", QP, _qp(backend=0), VE, backend_zero(QP)),
    R("x-tuple", QP, lambda d: (((1.0,) * 128,), {}), TE, f"lowbit.{QP}: x must be a tensor, not tuple; pass e.g."),
    R("group-float", QP, _qp(group_size=128.0), VE,
      f"lowbit.{QP}: group_size=128.0 is of type float, not int; pass e.g. group_size=128"),
    R("group-str", QP, _qp(group_size="128"), VE, f"lowbit.{QP}: group_size='128' is of type str, not int"),
    R("group-bool", QP, _qp(group_size=True), VE, "group_size=True is of type bool, not int"),
    R("eps-str", QP, _qp(eps="1e-10"), VE, "eps='1e-10' is of type str"),
    # out=
    R("out-tensor", QP, lambda d: ((E(4, 128, d=d),), {"out": E(4, 128, d=d)}), VE,
      f"lowbit.{QP}: {NOT_A_PAIR}Tensor; pass out=(q_buf, s_buf) as docs/SPEC.md [FP8-OUT] says, or drop out="),
    R("out-one", QP, lambda d: ((E(4, 128, d=d),), {"out": (E(4, 128, dtype=E4M3, d=d),)}), VE, NOT_A_PAIR + "tuple"),
    R("out-not-a-pair-and-eps-nan", QP, lambda d: ((E(4, 128, d=d),), {"out": E(4, 128, d=d), "eps": float("nan")}),
      VE, NOT_A_PAIR + "Tensor"),
    *[R(f"out-q-{name(dt)}", QP, _qpo(q=lambda d, dt=dt: E(5, 256, dtype=dt, d=d)), VE,
        QPO_HEAD, f"q_buf dtype is {name(dt)}, needs float8_e4m3fn", QPO_TAIL) for dt in (U8, BF16, E5M2)],
    *[R(f"out-s-{name(dt)}", QP, _qpo(s=lambda d, dt=dt: packed((), 5, 2, d, dt)), VE,
        QPO_HEAD, f"s_buf dtype is {name(dt)}, needs int32") for dt in (F32, torch.int64, torch.uint32)],
    R("out-q-on-meta", QP, _qpo(q=lambda d: E(5, 256, dtype=E4M3, d="meta")), VE, QPO_HEAD, "q_buf is on meta, x on cpu"),
    R("out-s-on-meta", QP, _qpo(s=lambda d: packed((), 5, 2, "meta")), VE, QPO_HEAD, "s_buf is on meta, x on cpu"),
    *[R(f"out-q-shape-{id}", QP, _qpo(q=lambda d, shape=shape: E(*shape, dtype=E4M3, d=d)), VE,
        QPO_HEAD, f"q_buf shape is {shape}, needs ('R', 256) with 5 <= R <= 8")
      for id, shape in (("R-below-mn", (4, 256)), ("R-above-A", (9, 256)), ("k", (5, 128)), ("3d-for-2d", (1, 5, 256)))],
    R("out-q-lead-mismatch", QP, _qpo(x=(2, 5, 256), q=lambda d: E(3, 5, 256, dtype=E4M3, d=d)), VE,
      out_head(QP, "(2, 5, 256)"), "q_buf shape is (3, 5, 256), needs (2, 'R', 256) with 5 <= R <= 8"),
    R("out-q-transposed", QP, _qpo(q=lambda d: E(256, 5, dtype=E4M3, d=d).t()), VE,
      QPO_HEAD, "q_buf strides (1, 5) are not contiguous"),
    R("out-q-row-strided", QP, _qpo(q=lambda d: strided((5, 256), (512, 1), E4M3, d)), VE,
      "q_buf strides (512, 1) are not contiguous"),
    *[R(f"out-s-shape-{'x'.join(map(str, shape))}", QP, _qpo(s=lambda d, shape=shape: packed(shape[:-2], *shape[-2:], d)),
        VE, QPO_HEAD, f"s_buf shape is {shape}, needs (5, 2)") for shape in ((5, 1), (5, 3), (4, 2), (8, 2), (1, 5, 2))],
    R("out-s-contiguous", QP, _qpo(s=lambda d: E(5, 2, dtype=I32, d=d)), VE,
      QPO_HEAD, "s_buf strides are (2, 1), needs (1, 8) (word (r, c) at c*A + r, A = 8)", QPO_TAIL),
    R("out-s-unpadded-rows", QP, _qpo(s=lambda d: strided((5, 2), (1, 5), I32, d)), VE,
      "s_buf strides are (1, 5), needs (1, 8)"),
    R("out-s-batch-stride", QP, _qpo(x=(2, 5, 256), s=lambda d: strided((2, 5, 2), (20, 1, 8), I32, d)), VE,
      out_head(QP, "(2, 5, 256)"), "s_buf strides are (20, 1, 8), needs (16, 1, 8)"),
    R("out-s-batch-contiguous", QP, _qpo(x=(2, 5, 256), s=lambda d: E(2, 5, 2, dtype=I32, d=d)), VE,
      "s_buf strides are (10, 2, 1), needs (16, 1, 8)"),
    # s_buf's view spans mn + (words - 1) * A = 13 words
    R("out-s-storage-short", QP, _qpo(s=lambda d: short(packed((), 5, 2, d))), VE,
      QPO_HEAD, "s_buf storage holds 12 elements from its offset, its view needs 13"),
    R("out-s-storage-short-after-offset", QP, _qpo(s=lambda d: short(strided((5, 2), (1, 8), I32, d, offset=4))), VE,
      "s_buf storage holds 12 elements from its offset, its view needs 13"),
    R("out-s-storage-short-3d", QP, _qpo(x=(2, 5, 256), s=lambda d: short(packed((2,), 5, 2, d))), VE,
      "s_buf storage holds 28 elements from its offset, its view needs 29"),
    R("out-q-storage-short", QP, _qpo(q=lambda d: short(E(8, 256, dtype=E4M3, d=d))), VE,
      "q_buf storage holds 2047 elements from its offset, its view needs 2048"),
    R("out-two-problems", QP, _qpo(q=lambda d: E(5, 256, dtype=U8, d=d), s=lambda d: E(5, 2, dtype=I32, d=d)), VE,
      "q_buf dtype is uint8, needs float8_e4m3fn; s_buf strides are (2, 1), needs (1, 8)"),
    R("out-q_buf-requires-grad", QP, _qpo(q=lambda d: grad(E(5, 256, dtype=E4M3, d=d))), VE,
      QPO_HEAD, "q_buf requires grad, and lowbit writes it in place without a gradient"),
    R("out-q_buf-s_buf-overlap", QP, _qpo_overlap, VE,
      out_head(QP, "(4, 256)", 128), "q_buf and s_buf share storage (bytes 1008..1023); pass separate tensors"),
    R("out-s_buf-over-x", QP, _qpo_over_x, VE, "s_buf and x share storage (bytes 0..15)"),
    R("out-int32-input", QP, _qpo(x_dtype=I32), UE, dtype_line(I32, FLOATS), "out= given"),
    R("out-group0", QP, _qpo(group_size=0), UE, *divide(0, 256)),
    R("out-group-negative", QP, _qpo(group_size=-32), UE, *divide(-32, 256)),
    R("out-1d-input", QP, lambda d: ((E(256, d=d),), {"group_size": 32, "out": (E(256, dtype=E4M3, d=d),
                                                                               E(2, dtype=I32, d=d))}), UE,
      "input has 1 dims; needs at least 2"),
    R("out-eps-nan", QP, _qpo(eps=float("nan")), VE, "eps=nan must be finite and >= 0"),
    R("out-backend-nope", QP, _qpo(backend="nope"), UE, "no backend is named 'nope' (known: cuda, xpu, cpu)"),
]


# --- dequantize_fp8_group_packed: q (4, 128) float8_e4m3fn, packed_scales (4, 1) int32 --------------------------

DP = "dequantize_fp8_group_packed"


def _dp(q=(4, 128), q_dtype=E4M3, s=(4, 1), s_dtype=I32, s_device=None, **kwargs):
    def build(d):
        where = s_device or d
        scales = packed(s[:-2], *s[-2:], where, s_dtype) if len(s) >= 2 else E(*s, dtype=s_dtype, d=where)
        return (E(*q, dtype=q_dtype, d=d), scales), kwargs
    return build


def _dp_shape(q, g, want, got):
    return f"lowbit.{DP}: q {q} with group_size {g} needs packed_scales of shape {want}, got {got}"


DEQUANTIZE_FP8_GROUP_PACKED = [
    *[R(f"q-{name(dt)}", DP, _dp(q_dtype=dt), UE, dtype_line(dt, "float8_e4m3fn, uint8"),
        "Alternative: cast the input to float8_e4m3fn") for dt in (BF16, F32, I32, torch.bool, E5M2)],
    *[R(f"scales-{name(dt)}", DP, _dp(s_dtype=dt), VE, f"lowbit.{DP}: packed_scales dtype {name(dt)} is not int32; "
        f"pass the packed_scales {QP} returned") for dt in (torch.int64, F32, U8, torch.uint32)],
    R("scales-words", DP, _dp(s=(4, 2)), VE, _dp_shape((4, 128), 128, (4, 1), (4, 2)) +
      f"; pass the packed_scales {QP} returned for this q and group_size"),
    R("scales-rows", DP, _dp(s=(5, 1)), VE, _dp_shape((4, 128), 128, (4, 1), (5, 1))),
    R("scales-lead", DP, _dp(q=(2, 4, 128)), VE, _dp_shape((2, 4, 128), 128, (2, 4, 1), (4, 1))),
    R("group-mismatch", DP, _dp(group_size=16), VE, _dp_shape((4, 128), 16, (4, 2), (4, 1))),
    R("1d", DP, _dp(q=(128,), s=(1,)), UE, "  - cpu: input has 1 dims; needs at least 2"),
    R("0d", DP, _dp(q=(), q_dtype=U8, s=()), UE, "  - cpu: input has 0 dims; needs at least 2"),
    *[R(f"group{g}", DP, _dp(group_size=g), UE, *divide(g, 128)) for g in (0, -1, -128, 96, 100)],
    R("group64-k96", DP, _dp(q=(4, 96), group_size=64), UE, *divide(64, 96)),
    *[R(f"out-{name(dt)}", DP, _dp(dtype=dt), UE,
        f"  - cpu: output dtype {name(dt)} is not one of bfloat16, float16, float32",
        "Alternative: pass dtype=torch.bfloat16") for dt in (I32, F64, E4M3)],
    R("scales-on-meta", DP, _dp(s_device="meta"), VE,
      f"lowbit.{DP}: packed_scales is on meta, q on cpu; pass packed_scales on cpu"),
    R("backend-nope", DP, _dp(backend="nope"), UE, "no backend is named 'nope' (known: cuda, xpu, cpu)"),
    R("backend-0", DP, _dp(backend=0), VE, backend_zero(DP)),
    R("packed_scales-int", DP, lambda d: ((E(4, 128, dtype=U8, d=d), 3), {}), TE,
      f"lowbit.{DP}: packed_scales must be a tensor, not int; pass e.g."),
    R("group-None", DP, _dp(group_size=None), VE, f"lowbit.{DP}: group_size=None is of type NoneType, not int"),
]


# --- quantize_fp8_group: x (4, 256) bfloat16 ------------------------------------------------------------------

QG = "quantize_fp8_group"
ROW, COL, TMA = "row_major", "column_major", "column_major_tma"


def _qg(x=(4, 256), dtype=BF16, args=(), **kwargs):
    return lambda d: ((E(*x, dtype=dtype, d=d), *args), kwargs)


def _qgo(layout, q=None, s=None, lead=(), **kwargs):
    """out=(q_buf, s_buf) for x (*lead, 5, 256) bfloat16, group_size 128 (G = 2, A = 8), `layout` scales.
    `q` / `s` (functions of the device) replace the buffers that fit."""
    rows = {ROW: 5, COL: 5, TMA: 8}[layout]
    inner = (2, 1) if layout == ROW else (1, rows)

    def build(d):
        q_buf = E(*lead, 8, 256, dtype=E4M3, d=d) if q is None else q(d)
        s_buf = strided((*lead, 5, 2), (*[2 * rows] * len(lead), *inner), F32, d) if s is None else s(d)
        return (E(*lead, 5, 256, dtype=BF16, d=d),), {"scale_layout": layout, "out": (q_buf, s_buf), **kwargs}
    return build


def _s(layout, dtype=F32, groups=2):
    """A (5, groups) s_buf in `layout`'s strides."""
    strides = {ROW: (groups, 1), COL: (1, 5), TMA: (1, 8)}[layout]
    return lambda d: strided((5, groups), strides, dtype, d)


def qgo_head(layout, x="(5, 256)") -> str:
    return out_head(QG, x, 128, f" and {layout} scales")


QGO_TAIL = "; pass buffers allocated as docs/SPEC.md [F8-OUT] says, or drop out= (lowbit then allocates them)"
ALT = "Alternative: "

QUANTIZE_FP8_GROUP = [
    R("x-list", QG, lambda d: (([1.0] * 128,), {}), TE, f"lowbit.{QG}: x must be a tensor, not list; pass e.g."),
    R("x-float", QG, lambda d: ((1.0,), {}), TE, "x must be a tensor, not float"),
    R("group-float", QG, _qg(args=(128.0,)), VE, "group_size=128.0 is of type float, not int; pass e.g. group_size=128"),
    R("group-bool", QG, _qg(group_size=True), VE, "group_size=True is of type bool, not int; pass e.g. group_size=128"),
    R("eps-str", QG, _qg(eps="1e-10"), VE, "eps='1e-10' is of type str, not float or int; pass e.g. eps=1e-10"),
    R("eps-bool", QG, _qg(eps=False), VE, "eps=False is of type bool", "pass e.g. eps="),
    *[R(f"eps-{eps}", QG, _qg(eps=eps), VE, f"lowbit.{QG}: eps={eps} must be finite and >= 0", "pass e.g. eps=1e-10")
      for eps in (-1e-10, float("nan"), float("inf"))],
    # finite as a Python float, but infinite as the float32 the kernels take
    R("eps-above-float32", QG, _qg(eps=1e39), VE, "eps=1e+39 must be finite and >= 0, and finite as a float32"),
    R("ue8m0-int", QG, _qg(ue8m0=1), VE, "ue8m0=1 is of type int, not bool; pass e.g. ue8m0=True"),
    R("ue8m0-str", QG, _qg(ue8m0="yes"), VE, "ue8m0='yes' is of type str, not bool"),
    R("layout-int", QG, _qg(scale_layout=1), VE, 'scale_layout=1 is of type int, not str; pass e.g. '
      'scale_layout="column_major"'),
    R("layout-tiled", QG, _qg(scale_layout="tiled"), VE,
      f"lowbit.{QG}: scale_layout='tiled' is not one of 'row_major', 'column_major', 'column_major_tma'; "
      'pass scale_layout="column_major" for F.scaled_mm'),
    R("layout-Column_Major", QG, _qg(scale_layout="Column_Major"), VE, "scale_layout='Column_Major' is not one of"),
    R("layout-col_major", QG, _qg(scale_layout="col_major"), VE, "scale_layout='col_major' is not one of"),
    R("group48", QG, _qg(args=(48,)), UE, *divide(48, 256)),
    R("group0", QG, _qg(group_size=0), UE, "group_size 0 does not divide", ALT),
    R("group-negative", QG, _qg(group_size=-128), UE, "group_size -128 does not divide", ALT),
    R("k200", QG, _qg(x=(2, 200)), UE, "group_size 128 does not divide the last dim 200"),
    R("1d", QG, _qg(x=(256,)), UE, "input has 1 dims; needs at least 2", ALT + "reshape the input to 2 or more dims"),
    R("float64", QG, _qg(dtype=F64), UE, "input dtype float64 is not one of", ALT),
    R("int32", QG, _qg(dtype=I32), UE, "input dtype int32 is not one of", ALT),
    R("backend-nope", QG, _qg(backend="nope"), UE, "no backend is named 'nope'", "(known: "),
    R("backend-0", QG, _qg(backend=0), VE, backend_zero(QG)),
    # out=: x (5, 256), group_size 128
    *[R(f"out-{id}", QG, lambda d, make=make: ((E(5, 256, d=d),), {"out": make(d)}), VE,
        f"lowbit.{QG}: {NOT_A_PAIR}{what}; pass out=(q_buf, s_buf) as docs/SPEC.md [F8-OUT] says, or drop out=")
      for id, what, make in (
          ("tensor", "Tensor", lambda d: E(5, 256, dtype=E4M3, d=d)),
          ("one", "tuple", lambda d: (E(5, 256, dtype=E4M3, d=d),)),
          ("three", "tuple", lambda d: (E(5, 256, dtype=E4M3, d=d), E(5, 2, d=d), E(5, 2, d=d))),
          ("none-scales", "tuple", lambda d: (E(5, 256, dtype=E4M3, d=d), None)),
          ("none-q", "tuple", lambda d: (None, E(5, 2, d=d))),
          ("str", "str", lambda d: "q_buf, s_buf"))],
    R("out-not-a-pair-and-group-float", QG, lambda d: ((E(5, 256, d=d), 128.0), {"out": E(5, 2, d=d)}), VE,
      "group_size=128.0 is of type float, not int"),
    R("out-eps-negative-and-bad-buffers", QG, _qgo(ROW, s=_s(ROW, groups=3), eps=-1.0), VE,
      f"lowbit.{QG}: eps=-1.0 must be finite and >= 0"),
    R("out-q-uint8", QG, _qgo(TMA, q=lambda d: E(8, 256, dtype=U8, d=d)), VE,
      qgo_head(TMA), "q_buf dtype is uint8, needs float8_e4m3fn", QGO_TAIL),
    R("out-q-e5m2", QG, _qgo(TMA, q=lambda d: E(8, 256, dtype=E5M2, d=d)), VE, "q_buf dtype is float8_e5m2, needs "
      "float8_e4m3fn"),
    R("out-q-on-meta", QG, _qgo(TMA, q=lambda d: E(8, 256, dtype=E4M3, d="meta")), VE, "q_buf is on meta, x on cpu"),
    R("out-s-on-meta", QG, _qgo(ROW, s=lambda d: E(5, 2, d="meta")), VE, "s_buf is on meta, x on cpu"),
    *[R(f"out-q-{id}", QG, _qgo(layout, q=lambda d, shape=shape: E(*shape, dtype=E4M3, d=d)), VE,
        qgo_head(layout), f"q_buf shape is {shape}, needs ('R', 256) with 5 <= R <= 8")
      for id, layout, shape in (("rows-below-mn", TMA, (4, 256)), ("rows-above-A", COL, (9, 256)),
                                ("wrong-k", ROW, (5, 128)), ("extra-dim", TMA, (1, 5, 256)))],
    R("out-q-non-contiguous", QG, _qgo(TMA, q=lambda d: strided((8, 256), (512, 2), E4M3, d)), VE,
      "q_buf strides (512, 2) are not contiguous"),
    R("out-q-transposed", QG, _qgo(ROW, q=lambda d: E(256, 5, dtype=E4M3, d=d).t()), VE,
      "q_buf strides (1, 5) are not contiguous"),
    R("out-s-bfloat16", QG, _qgo(TMA, s=_s(TMA, BF16)), VE, "s_buf dtype is bfloat16, needs float32"),
    R("out-s-float64", QG, _qgo(ROW, s=_s(ROW, F64)), VE, "s_buf dtype is float64, needs float32"),
    R("out-s-3-groups", QG, _qgo(COL, s=_s(COL, groups=3)), VE, "s_buf shape is (5, 3), needs (5, 2)"),
    R("out-s-A-rows", QG, _qgo(TMA, s=lambda d: strided((8, 2), (1, 8), F32, d)), VE, "s_buf shape is (8, 2), needs (5, 2)"),
    *[R(f"out-s-{have}-for-{want}", QG, _qgo(want, s=_s(have)), VE, qgo_head(want),
        f"s_buf strides are {strides}, needs {needs} ({want})", QGO_TAIL)
      for have, want, strides, needs in ((ROW, COL, (2, 1), (1, 5)), (COL, TMA, (1, 5), (1, 8)),
                                         (TMA, COL, (1, 8), (1, 5)), (COL, ROW, (1, 5), (2, 1)))],
    R("out-s-tma-batch-stride", QG, _qgo(TMA, lead=(2,), s=lambda d: strided((2, 5, 2), (13, 1, 8), F32, d)), VE,
      qgo_head(TMA, "(2, 5, 256)"), "s_buf strides are (13, 1, 8), needs (16, 1, 8) (column_major_tma)"),
    R("out-s-storage-short", QG, _qgo(TMA, s=lambda d: short(_s(TMA)(d))), VE,
      "s_buf storage holds 12 elements from its offset, its view needs 13"),
    R("out-q-storage-short", QG, _qgo(ROW, q=lambda d: short(E(8, 256, dtype=E4M3, d=d))), VE,
      "q_buf storage holds 2047 elements from its offset, its view needs 2048"),
    R("out-s_buf-requires-grad", QG, _qgo(ROW, s=lambda d: grad(E(5, 2, d=d))), VE,
      "s_buf requires grad, and lowbit writes it in place without a gradient; pass s_buf.detach()"),
    R("out-q_buf-s_buf-overlap", QG, lambda d: (lambda w: ((E(4, 256, d=d),), {"out": (
        w.view(E4M3).as_strided((4, 256), (256, 1)), w.view(F32).as_strided((4, 2), (2, 1), (1024 - 16) // 4))}))(
        E(1024 + 32, dtype=U8, d=d)), VE, "q_buf and s_buf share storage (bytes 1008..1023)"),
    R("out-s_buf-over-x", QG, lambda d: (lambda x: ((x,), {"out": (E(4, 256, dtype=E4M3, d=d), x.view(F32).as_strided(
        (4, 2), (2, 1)))}))(E(4, 256, d=d)), VE, "s_buf and x share storage (bytes 0..31)"),
]


# --- dequantize_fp8_group: q (4, 256) float8_e4m3fn, scales (4, 2) float32 ---------------------------------

DG = "dequantize_fp8_group"


def _dg(q=(4, 256), s=(4, 2), q_dtype=E4M3, s_dtype=F32, s_device=None, **kwargs):
    return lambda d: ((E(*q, dtype=q_dtype, d=d), E(*s, dtype=s_dtype, d=s_device or d)), kwargs)


DEQUANTIZE_FP8_GROUP = [
    R("q-list", DG, lambda d: (([0] * 128, E(1, 1, d=d)), {}), TE, "q must be a tensor, not list",
      f"pass e.g. the q {QG} returned"),
    R("scales-float", DG, lambda d: ((E(4, 256, dtype=E4M3, d=d), 1.0), {}), TE, "scales must be a tensor, not float",
      f"pass e.g. the scales {QG} returned"),
    *[R(f"scales-{name(dt)}", DG, _dg(s_dtype=dt), VE, f"lowbit.{DG}: scales dtype {name(dt)} is not float32; pass the "
        f"scales {QG} returned") for dt in (F64, E8M0)],
    R("scales-too-few", DG, _dg(s=(4, 1)), VE, f"lowbit.{DG}: q (4, 256) with group_size 128 needs scales of shape "
      f"(4, 2), got (4, 1); pass the scales {QG} returned for this q and group_size"),
    R("scales-of-group-64", DG, _dg(s=(4, 4)), VE, "needs scales of shape (4, 2), got (4, 4)"),
    R("scales-tma-rows", DG, _dg(q=(5, 256), s=(8, 2)), VE,
      "q (5, 256) with group_size 128 needs scales of shape (5, 2), got (8, 2)"),
    R("scales-flat-for-3d", DG, _dg(q=(2, 3, 256), s=(6, 2)), VE, "needs scales of shape (2, 3, 2), got (6, 2)"),
    R("scales-0d", DG, _dg(s=()), VE, "needs scales of shape (4, 2), got ()"),
    R("group-float", DG, _dg(group_size=128.0), VE, "group_size=128.0 is of type float, not int; pass e.g. "
      "group_size=128"),
    R("dtype-str", DG, _dg(dtype="bfloat16"), VE, "dtype='bfloat16' is of type str, not dtype; pass e.g. "
      "dtype=torch.bfloat16"),
    R("dtype-float64", DG, _dg(dtype=F64), UE, "output dtype float64 is not one of", ALT + "pass dtype=torch.bfloat16"),
    R("q-float32", DG, _dg(q_dtype=F32), UE, "input dtype float32 is not one of", ALT),
    R("1d", DG, _dg(q=(256,), s=(2,)), UE, "input has 1 dims; needs at least 2", ALT),
    R("group48", DG, _dg(s=(4, 5), group_size=48), UE, "group_size 48 does not divide the last dim 256", ALT),
    R("backend-nope", DG, _dg(backend="nope"), UE, "no backend is named 'nope'", "(known: "),
    R("backend-0", DG, _dg(backend=0), VE, backend_zero(DG)),
    R("scales-on-meta", DG, _dg(s_device="meta"), VE, f"lowbit.{DG}: scales is on meta, q on cpu; pass scales on cpu"),
]


# --- quantize_fp8_block: w (300, 640) bfloat16 --------------------------------------------------------------

QB = "quantize_fp8_block"


def _qb(w=(300, 640), dtype=BF16, args=(), **kwargs):
    return lambda d: ((E(*w, dtype=dtype, d=d), *args), kwargs)


QUANTIZE_FP8_BLOCK = [
    R("w-list", QB, lambda d: (([[1.0]],), {}), TE, f"lowbit.{QB}: w must be a tensor, not list; pass e.g."),
    *[R(f"block-{id}", QB, _qb(block=block) if id != "int" else _qb(args=(128,)), VE,
        f"lowbit.{QB}: block={block!r} must be two positive ints (rows, columns); pass e.g. block=(128, 128)")
      for id, block in (("int", 128), ("three", (1, 2, 3)), ("zero", (0, 128)), ("negative", (128, -128)),
                        ("float", (128.0, 128)), ("bool", (True, 128)), ("none", None), ("one", (128,)))],
    R("eps-negative", QB, _qb(eps=-1.0), VE, "eps=-1.0 must be finite and >= 0", "pass e.g. eps=1e-4"),
    R("eps-nan", QB, _qb(eps=float("nan")), VE, "eps=nan must be finite", "pass e.g."),
    R("eps-above-float32", QB, _qb(eps=1e39), VE, "eps=1e+39 must be finite and >= 0, and finite as a float32",
      "pass e.g. eps=1e-4"),
    R("eps-str", QB, _qb(eps="1e-4"), VE, "eps='1e-4' is of type str", "pass e.g. eps=1e-4"),
    R("w-list-and-block-zero", QB, lambda d: (([[1.0]], (0, 128)), {}), VE, "block=(0, 128) must be two positive ints"),
    R("ue8m0-int", QB, _qb(ue8m0=1), VE, "ue8m0=1 is of type int, not bool", "pass e.g. ue8m0=True"),
    R("3d", QB, _qb(w=(2, 300, 640)), UE, "input has 3 dims; takes at most 2", ALT + "flatten the leading dims to get 2 dims"),
    R("1d", QB, _qb(w=(640,)), UE, "input has 1 dims; needs at least 2", ALT),
    R("int32", QB, _qb(dtype=I32), UE, "input dtype int32 is not one of", ALT),
    R("float64", QB, _qb(dtype=F64), UE, "input dtype float64 is not one of", ALT),
    R("backend-nope", QB, _qb(backend="nope"), UE, "no backend is named 'nope'", "(known: "),
    R("backend-0", QB, _qb(backend=0), VE, backend_zero(QB)),
    R("block-zero-and-backend-0", QB, _qb(block=(0, 128), backend=0), VE, backend_zero(QB)),
]


# --- dequantize_fp8_block: q (300, 640) float8_e4m3fn, scales (8, 3) float32 -------------------------------

DB = "dequantize_fp8_block"


def _db(q=(300, 640), s=(8, 3), q_dtype=E4M3, s_dtype=F32, s_device=None, **kwargs):
    return lambda d: ((E(*q, dtype=q_dtype, d=d), E(*s, dtype=s_dtype, d=s_device or d)), kwargs)


DB_SHAPE = "q (300, 640) with block 128x128 (or (5, 3) without the padding rows) needs scales of shape (8, 3), got "

DEQUANTIZE_FP8_BLOCK = [
    R("q-list", DB, lambda d: (([0], E(8, 3, d=d)), {}), TE, "q must be a tensor, not list",
      f"pass e.g. the q {QB} returned"),
    R("scales-list", DB, lambda d: ((E(300, 640, dtype=E4M3, d=d), [1.0]), {}), TE, "scales must be a tensor, not list",
      f"pass e.g. the scales {QB} returned"),
    R("scales-float64", DB, _db(s_dtype=F64), VE, f"scales dtype float64 is not float32; pass the scales {QB} returned"),
    R("scales-rows", DB, _db(s=(6, 3)), VE, f"lowbit.{DB}: {DB_SHAPE}(6, 3); pass the scales {QB} returned for this q "
      "and block"),
    R("scales-transposed", DB, _db(s=(3, 8)), VE, DB_SHAPE + "(3, 8)"),
    *[R(f"scales-{id}", DB, _db(s=shape), VE, DB_SHAPE + str(shape)) for id, shape in (("1d", (24,)), ("0d", ()),
                                                                                       ("3d", (8, 3, 1)))],
    R("scales-of-block-128-read-as-64", DB, _db(block=(64, 64)), VE,
      "q (300, 640) with block 64x64 (or (10, 5) without the padding rows) needs scales of shape (12, 5), got (8, 3)"),
    R("block-one", DB, _db(block=(128,)), VE, "block=(128,) must be two positive ints", "pass e.g. block=(128, 128)"),
    R("block-zero", DB, _db(block=(128, 0)), VE, "block=(128, 0) must be two positive ints"),
    R("q-list-and-block-zero", DB, lambda d: (([0], E(8, 3, d=d)), {"block": (128, 0)}), VE,
      "block=(128, 0) must be two positive ints"),
    R("dtype-str", DB, _db(dtype="float32"), VE, "dtype='float32' is of type str, not dtype",
      "pass e.g. dtype=torch.bfloat16"),
    R("dtype-int8", DB, _db(dtype=torch.int8), UE, "output dtype int8 is not one of", ALT),
    R("3d", DB, _db(q=(1, 300, 640)), UE, "input has 3 dims; takes at most 2", ALT),
    R("q-bfloat16", DB, _db(q_dtype=BF16), UE, "input dtype bfloat16 is not one of", ALT),
    R("backend-0", DB, _db(backend=0), VE, backend_zero(DB)),
    R("scales-on-meta", DB, _db(s_device="meta"), VE, f"lowbit.{DB}: scales is on meta, q on cpu; pass scales on cpu"),
]


# --- NVFP4: x (4, 64) float32; q (4, 32) float4_e2m1fn_x2, block_scales (4, 4) float8_e4m3fn, global scale () ---

QN, GS, DN, VLLM = "quantize_nvfp4", "nvfp4_global_scale", "dequantize_nvfp4", "scaled_fp4_quant"


def _qn(x=(4, 64), dtype=F32, gs=None, **kwargs):
    """x of shape `x`; `gs` a function of the device (or a non-tensor)."""
    def build(d):
        given = () if gs is None else (gs(d) if callable(gs) else gs,)
        return (E(*x, dtype=dtype, d=d), *given), kwargs
    return build


def _gs(shape, dtype=F32, device=None):
    return lambda d: E(*shape, dtype=dtype, d=device or d)


def _dn(q=(4, 32), q_dtype=E2M1, s=(4, 4), s_dtype=E4M3, gs=(), gs_dtype=F32, s_device=None, gs_device=None,
        **kwargs):
    def build(d):
        given = E(*gs, dtype=gs_dtype, d=gs_device or d) if isinstance(gs, tuple) else gs
        return (E(*q, dtype=q_dtype, d=d), E(*s, dtype=s_dtype, d=s_device or d), given), kwargs
    return build


def gs_rule(op, got, shapes="() or (1,) (one scale), or (4,) (one per row)", arg="global_scale"):
    return f"lowbit.{op}: {arg} ({got}) must be float32 on cpu with shape {shapes}; pass "


QN_GIVEN = "global_scale=None to compute it on the device"

QUANTIZE_NVFP4 = [
    R("k40", QN, _qn(x=(4, 40)), UE, "lowbit.quantize_nvfp4 for float32 input, ndim 2, last dim 40, on cpu: no backend "
      "can run it", "last dim 40 is not a multiple of the block size 16",
      "\nAlternative: pad the last dim with zeros to a multiple of 16"),
    R("k40-given-scale", QN, _qn(x=(4, 40), gs=_gs(())), UE, "last dim 40 is not a multiple of the block size 16"),
    R("k8-1d-swizzled", QN, _qn(x=(8,), scale_layout="swizzled"), UE, "last dim 8 is not a multiple of the block size 16"),
    R("k24-per-row", QN, _qn(x=(2, 3, 24), per_row=True), UE, "last dim 24 is not a multiple of the block size 16"),
    *[R(name(dt), QN, _qn(dtype=dt), UE, f"input dtype {name(dt)} is not one of") for dt in (F64, I32, U8)],
    R("0d", QN, _qn(x=()), UE, "input has 0 dims; needs at least 1"),
    R("backend-nope", QN, _qn(backend="nope"), UE, "no backend is named 'nope'"),
    R("backend-0", QN, _qn(backend=0), VE, backend_zero(QN)),
    R("layout-tiled", QN, _qn(scale_layout="tiled"), VE,
      f"lowbit.{QN}: scale_layout='tiled' is not one of 'linear', 'swizzled'; pass scale_layout=\"swizzled\""),
    R("layout-Linear", QN, _qn(gs=_gs(()), scale_layout="Linear"), VE, "scale_layout='Linear' is not one of"),
    R("layout-int", QN, _qn(scale_layout=1), VE, "scale_layout=1 is of type int, not str"),
    *[R(f"gs-{name(dt)}-{'x'.join(map(str, shape)) or '0d'}", QN, _qn(gs=_gs(shape, dt)), VE,
        gs_rule(QN, f"{name(dt)}, shape {shape}, on cpu") + QN_GIVEN)
      for dt, shape in ((F64, ()), (BF16, (1,)), (F16, ()), (I32, (4,)))],
    *[R(f"gs-shape-{'x'.join(map(str, shape))}", QN, _qn(gs=_gs(shape)), VE, gs_rule(QN, f"float32, shape {shape}, on cpu"))
      for shape in ((2,), (4, 1), (1, 1), (3, 1))],
    R("gs-rows-flattened-3d", QN, _qn(x=(2, 3, 64), gs=_gs((6,))), VE, "or (2, 3) (one per row); pass " + QN_GIVEN),
    R("gs-0d-per-row", QN, _qn(gs=_gs(()), per_row=True), VE, gs_rule(QN, "float32, shape (), on cpu", "(4,) (one per row)")),
    R("gs-5-per-row", QN, _qn(gs=_gs((5,)), per_row=True), VE, "shape (5,), on cpu) must be float32 on cpu with shape "
      "(4,) (one per row)"),
    R("gs-1-per-row", QN, _qn(gs=_gs((1,)), per_row=True), VE,
      "global_scale (float32, shape (1,), on cpu) must be float32 on cpu with shape (4,) (one per row)"),
    R("gs-on-meta", QN, _qn(gs=_gs((), device="meta")), VE,
      f"lowbit.{QN}: global_scale (float32, shape (), on meta) must be float32 on cpu"),
    R("gs-float", QN, _qn(gs=2.0), TE, f"lowbit.{QN}: global_scale must be a tensor, not float; pass e.g."),
    R("gs-list", QN, _qn(gs=[1.0]), TE, "global_scale must be a tensor, not list"),
    R("x-list", QN, lambda d: (([1.0] * 16,), {}), TE, "x must be a tensor, not list"),
    R("per_row-str", QN, _qn(per_row="yes"), VE, "per_row='yes' is of type str, not bool; pass e.g. per_row=True"),
    R("per_row-int", QN, _qn(gs=_gs((4,)), per_row=1), VE, "per_row=1 is of type int, not bool"),
]

GLOBAL_SCALE = [
    R("k40", GS, _qn(x=(4, 40)), UE, "last dim 40 is not a multiple of the block size 16"),
    R("k8-per-row", GS, _qn(x=(2, 8), per_row=True), UE, "last dim 8 is not a multiple of the block size 16"),
    R("float64", GS, _qn(dtype=F64), UE, "input dtype float64 is not one of"),
    R("per_row-str", GS, _qn(per_row="yes"), VE, f"lowbit.{GS}: per_row='yes' is of type str, not bool"),
    R("per_row-int", GS, _qn(per_row=1), VE, "per_row=1 is of type int, not bool"),
    R("x-float", GS, lambda d: ((1.0,), {}), TE, f"lowbit.{GS}: x must be a tensor, not float"),
    R("backend-nope", GS, _qn(backend="nope"), UE, "no backend is named 'nope'"),
    R("backend-0", GS, _qn(backend=0), VE, backend_zero(GS)),
]

DN_SHAPE = f"lowbit.{DN}: q (4, 32) needs "
DN_FIX = f"; pass the block_scales {QN} returned for this q and scale_layout"

DEQUANTIZE_NVFP4 = [
    R("scales-too-few", DN, _dn(s=(4, 3)), VE, DN_SHAPE + "linear block_scales of shape (4, 4), got (4, 3)" + DN_FIX),
    R("scales-rows", DN, _dn(q_dtype=U8, s=(5, 4), s_dtype=U8), VE, "q (4, 32) needs linear block_scales of shape "
      "(4, 4), got (5, 4)"),
    R("scales-flat-for-3d", DN, _dn(q=(2, 3, 8), s=(6, 1)), VE,
      "q (2, 3, 8) needs linear block_scales of shape (2, 3, 1), got (6, 1)"),
    R("linear-scales-read-as-swizzled", DN, _dn(scale_layout="swizzled"), VE,
      DN_SHAPE + "swizzled block_scales of shape (128, 4), got (4, 4)"),
    R("swizzled-scales-read-as-linear", DN, _dn(s=(128, 4)), VE, DN_SHAPE + "linear block_scales of shape (4, 4), got "
      "(128, 4)"),
    R("swizzled-scales-short", DN, _dn(q=(130, 40), s=(130, 8), scale_layout="swizzled"), VE,
      "q (130, 40) needs swizzled block_scales of shape (256, 8), got (130, 8)"),
    *[R(f"scales-{name(dt)}", DN, _dn(s_dtype=dt), VE, f"lowbit.{DN}: block_scales dtype {name(dt)} is not "
        f"float8_e4m3fn or uint8; pass the block_scales {QN} returned") for dt in (F32, E8M0)],
    R("gs-float64", DN, _dn(gs_dtype=F64), VE, gs_rule(DN, "float64, shape (), on cpu") + f"the global_scale {QN} returned"),
    R("gs-bfloat16", DN, _dn(gs=(4,), gs_dtype=BF16), VE, "global_scale (bfloat16, shape (4,)"),
    R("gs-shape-2", DN, _dn(gs=(2,)), VE, "shape () or (1,) (one scale), or (4,) (one per row)"),
    R("gs-float", DN, _dn(gs=1.0), TE, f"lowbit.{DN}: global_scale must be a tensor, not float"),
    R("q-float32", DN, _dn(q_dtype=F32), UE, "input dtype float32 is not one of"),
    R("q-k8", DN, _dn(q=(4, 4), s=(4, 1)), UE, "last dim 8 is not a multiple of the block size 16"),
    R("out-float64", DN, _dn(dtype=F64), UE, "output dtype float64 is not one of"),
    R("layout-tiled", DN, _dn(scale_layout="tiled"), VE, f"lowbit.{DN}: scale_layout='tiled' is not one of 'linear', "
      "'swizzled'"),
    R("dtype-str", DN, _dn(dtype="bfloat16"), VE, "dtype='bfloat16' is of type str, not dtype"),
    R("backend-nope", DN, _dn(backend="nope"), UE, "no backend is named 'nope'"),
    R("backend-0", DN, _dn(backend=0), VE, backend_zero(DN)),
    R("scales-on-meta", DN, _dn(s_device="meta"), VE,
      f"lowbit.{DN}: block_scales is on meta, q on cpu; pass block_scales on cpu"),
    R("gs-on-meta", DN, _dn(gs_device="meta"), VE, "global_scale (float32, shape (), on meta) must be float32 on cpu"),
]

# vLLM's conventions around quantize_nvfp4: not an op of lowbit.supports; dispatch refuses it as quantize_nvfp4
SCALED_FP4_QUANT = [
    R("3d", VLLM, lambda d: ((E(2, 3, 64, d=d), E((), d=d)), {}), VE, f"lowbit.{VLLM}: x has 3 dims, not the 2 (m, n) of "
      f"vLLM's convention; pass x.reshape(-1, x.shape[-1]), or use lowbit.{QN}, which takes N-D input"),
    R("1d", VLLM, lambda d: ((E(64, d=d), E((), d=d)), {}), VE, "x has 1 dims"),
    R("swizzle-str", VLLM, lambda d: ((E(4, 64, d=d), E((), d=d), "yes"), {}), VE,
      f"lowbit.{VLLM}: is_sf_swizzled_layout='yes' is of type str, not bool"),
    R("x-list", VLLM, lambda d: (([1.0] * 16, E((), d=d)), {}), TE, f"lowbit.{VLLM}: x must be a tensor, not list"),
    R("gs-list", VLLM, lambda d: ((E(4, 64, d=d), [1.0]), {}), TE,
      f"lowbit.{VLLM}: input_global_scale must be a tensor, not list"),
    R("gs-float64", VLLM, lambda d: ((E(4, 64, d=d), E((), dtype=F64, d=d)), {}), VE,
      gs_rule(VLLM, "float64, shape (), on cpu", arg="input_global_scale")),
    R("gs-shape-3", VLLM, lambda d: ((E(4, 64, d=d), E(3, d=d)), {}), VE, "input_global_scale (float32, shape (3,)"),
    R("k40", VLLM, lambda d: ((E(4, 40, d=d), E((), d=d)), {}), UE, "last dim 40 is not a multiple of the block size 16"),
]

TABLES = (QUANTIZE_MXFP4, GROUP_QUANT_MXFP4, DEQUANTIZE_MXFP4, QUANTIZE_MXFP8, DEQUANTIZE_MXFP8,
          QUANTIZE_FP8_GROUP_PACKED, DEQUANTIZE_FP8_GROUP_PACKED, QUANTIZE_FP8_GROUP, DEQUANTIZE_FP8_GROUP,
          QUANTIZE_FP8_BLOCK, DEQUANTIZE_FP8_BLOCK, QUANTIZE_NVFP4, GLOBAL_SCALE, DEQUANTIZE_NVFP4, SCALED_FP4_QUANT)
REFUSALS = {case.id: case for table in TABLES for case in table}
RUNS_AS = {VLLM: QN}  # what dispatch names when it refuses the call


# --- running a refused call --------------------------------------------------------------------------------

def call(op, args, kwargs):
    return getattr(lowbit, op)(*args, **kwargs)


def caught(fn) -> BaseException | None:
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def tensors(args, kwargs) -> list[torch.Tensor]:
    """The call's tensors, those inside out=(...) too."""
    found = []
    for a in (*args, *kwargs.values()):
        found += [t for t in (a if isinstance(a, (tuple, list)) else (a,)) if isinstance(t, torch.Tensor)]
    return found


def storage_bytes(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=U8).set_(t.untyped_storage())


def refusal(case: Refusal, monkeypatch) -> BaseException:
    """What the real call on CPU raises (it must raise case.error, exactly)."""
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    args, kwargs = case.build("cpu")
    exc = caught(lambda: call(case.op, args, kwargs))
    assert type(exc) is case.error, f"{case.id}: {type(exc).__name__}: {exc}"
    return exc


def _on(text: str, where: str) -> str:
    """The real CPU call's text as a call on `where` says it."""
    return text.replace(" on cpu", f" on {where}")


def _reference_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("  - cpu:")]


@pytest.mark.parametrize("case", REFUSALS)
def test_real_call_refuses(case, monkeypatch):
    case = REFUSALS[case]
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    args, kwargs = case.build("cpu")
    watched = [t for t in tensors(args, kwargs) if t.device.type == "cpu"]
    for t in watched:
        storage_bytes(t).fill_(POISON)
    exc = caught(lambda: call(case.op, args, kwargs))
    assert type(exc) is case.error, f"{type(exc).__name__}: {exc}"
    for needle in case.needs:
        assert needle in str(exc), f"{needle!r} not in:\n{exc}"
    assert all(not storage_bytes(t).ne(POISON).any() for t in watched), "a tensor was written"


FIX = re.compile(r"; (?:pass|use) \S|^Alternative: \S", re.MULTILINE)


@pytest.mark.parametrize("case", REFUSALS)
def test_refusal_names_the_op_the_argument_and_a_fix(case, monkeypatch):
    case = REFUSALS[case]
    text = str(refusal(case, monkeypatch))
    assert FIX.search(text), f"no fix (; pass ..., ; use ..., Alternative: ...) in:\n{text}"
    if text.startswith(f"lowbit.{RUNS_AS.get(case.op, case.op)} for "):
        # dispatch refused it: the call (its input, the op's first tensor, and the options dispatch reads),
        # each backend's unmet constraints, and what would work
        head, *lines = text.splitlines()
        assert " input, " in head and lines[-1].startswith("Alternative: "), text
        assert any(re.match(r"  - [\w/()]+: \S", line) for line in lines), text
    else:  # an argument check refused it: "lowbit.<op>: <argument> ..." (or the environment variable it reads)
        arguments = "|".join(inspect.signature(getattr(lowbit, case.op)).parameters)
        assert re.match(rf"lowbit\.{case.op}: (?:{arguments}|LOWBIT_\w+)\b", text), text


def ask(op, args, kwargs, where) -> tuple:
    """(lowbit.supports's Verdict or what it raised, lowbit.explain's text or what it raised)."""
    try:
        verdict = lowbit.supports(op, *args, **where, **kwargs)
    except Exception as exc:
        verdict = exc
    try:
        text = lowbit.explain(op, *args, **where, **kwargs)
    except Exception as exc:
        text = exc
    return verdict, text


@pytest.mark.parametrize(("device", "arch"), DEVICES)
@pytest.mark.parametrize("case", REFUSALS)
def test_fake_and_supports_refuse_as_the_call_does(case, device, arch, monkeypatch):
    case = REFUSALS[case]
    real = refusal(case, monkeypatch)
    mixed = any(t.device.type != "cpu" for t in tensors(*case.build("cpu")))  # a meta tensor next to cpu ones
    if arch is not None:
        monkeypatch.setattr(dispatch, "device_arch", lambda d: arch if d.type == "cuda" else None)
    where = {} if arch is None else {"arch": arch}
    with FakeTensorMode():
        args, kwargs = case.build(device)
        at = next((str(t.device) for t in tensors(args, kwargs) if t.device.type != "meta"), device)
        fake = caught(lambda: call(case.op, args, kwargs))
        if mixed and case.op != VLLM:  # no meta query can state it: ask with the call's own tensors
            (verdict, text), query_at = ask(case.op, args, kwargs, where), at
    assert type(fake) is type(real), f"the fake raised {fake!r}"
    if case.op == VLLM:  # not an op of lowbit.supports: the fake says what the CPU call says
        if type(real) is UE:
            assert f"on {device}" in str(fake) and _reference_lines(str(fake)) == _reference_lines(str(real))
        else:
            assert str(fake) == _on(str(real), at)
        return
    if not mixed:
        margs, mkwargs = case.build("meta")
        (verdict, text), query_at = ask(case.op, margs, mkwargs, {**where, "device": device}), "meta"
    if isinstance(verdict, dispatch.Verdict):  # dispatch refuses: explain says why, in the text the fake raises
        assert type(real) is UE and not verdict.ok, f"supports answered {verdict.ok} where the call raised {real!r}"
        assert str(fake) == verdict.explain() == text
        assert str(real) == text if device == "cpu" else f"on {device}{f' sm_{arch}' if arch else ''}: " in text
        # the reference's unmet constraints do not depend on the device: the lines said on CPU
        assert _reference_lines(text) == _reference_lines(str(real))
    else:  # an argument check refuses it, alike everywhere
        assert (type(verdict), str(verdict)) == (type(text), str(text)) == (type(real), _on(str(real), query_at))
        assert str(fake) == _on(str(real), at)


def test_every_op_but_attention_has_refusals_of_every_kind():
    ops = set(lowbit.OPS) - {"unified_attention"}
    assert {case.op for case in REFUSALS.values()} == ops | {VLLM}
    for op in ops | {VLLM}:
        assert {case.error for case in REFUSALS.values() if case.op == op} == {UE, VE, TE}, op


# The calls the tables vary, as they are: each is taken, so each refusal is about the one thing it changes.
BASES = [(QM, _qm()), (GQ, _gq()), (DM, _dm()), (QM8, _q8()), (QM8, _q8(scale_layout="swizzled")), (DM8, _d8()),
         (DM8, _d8(s=(128, 4), scale_layout="swizzled")), (QP, _qp()), (QP, _qpo()), (QP, _qpo(x=(2, 5, 256))),
         (DP, _dp()), (QG, _qg()), *[(QG, _qgo(layout)) for layout in (ROW, COL, TMA)], (DG, _dg()), (QB, _qb()), (DB, _db()),
         (QN, _qn()), (QN, _qn(gs=_gs(()))), (GS, _qn()), (DN, _dn()),
         (VLLM, lambda d: ((E(4, 64, d=d), E((), d=d)), {}))]


@pytest.mark.parametrize(("op", "build"), BASES)
def test_the_calls_the_refusals_vary_are_taken(op, build):
    call(op, *build("cpu"))
    if op != VLLM:
        margs, mkwargs = build("meta")
        assert lowbit.supports(op, *margs, device="cpu", **mkwargs).ok


# --- the query functions' own arguments ---------------------------------------------------------------------

def _meta(*shape):
    return torch.empty(shape, device="meta")


QUERY_REFUSALS = {
    # name: (query, call, needle)
    "supports-unknown-op": ("supports", lambda: lowbit.supports("quantize_int3", _meta(2, 32)),
                            "lowbit.supports: op='quantize_int3' is not a lowbit op; pass one of quantize_mxfp4, "),
    "explain-unknown-op": ("explain", lambda: lowbit.explain("quantize_mxfp6", _meta(8, 64)),
                           "lowbit.explain: op='quantize_mxfp6' is not a lowbit op; pass one of "),
    "supports-meta-without-device": ("supports", lambda: lowbit.supports(QM, _meta(8, 64)),
                                     "lowbit.supports: meta tensors carry no device; pass device= (and arch=)"),
    "explain-meta-without-device": ("explain", lambda: lowbit.explain(QM, _meta(8, 64)),
                                    "lowbit.explain: meta tensors carry no device; pass device="),
    "supports-device-nope": ("supports", lambda: lowbit.supports(QM, _meta(8, 64), device="nope"),
                             "lowbit.supports: device='nope' is not a torch device"),
    "supports-arch-list": ("supports", lambda: lowbit.supports(QM, _meta(8, 64), device="cuda", arch=[9, 0]),
                           "lowbit.supports: arch=[9, 0] is not an arch; pass e.g. arch=90, (9, 0), 'sm_90' or "
                           "'gfx942'"),
    "supports-arch-pair-of-str": ("supports", lambda: lowbit.supports(QM, _meta(8, 64), device="cuda", arch=("a", "b")),
                                  "lowbit.supports: arch=('a', 'b') is not an arch"),
    "explain-arch-float": ("explain", lambda: lowbit.explain(QM, _meta(8, 64), device="cuda", arch=9.0),
                           "lowbit.explain: arch=9.0 is not an arch"),
    "capabilities-device-nope": ("capabilities", lambda: lowbit.capabilities("nope"),
                                 "lowbit.capabilities: device='nope' is not a torch device"),
}


@pytest.mark.parametrize("name", QUERY_REFUSALS)
def test_query_refuses_its_own_arguments_naming_the_query_the_argument_and_a_fix(name):
    query, ask, needle = QUERY_REFUSALS[name]
    error = caught(ask)
    assert type(error) is ValueError, repr(error)
    text = str(error)
    assert text.startswith(f"lowbit.{query}: ") and needle in text and FIX.search(text), text
