"""MXFP4 (docs/SPEC.md, "MXFP4"): the public functions, their torch.library ops and fakes, and the
one shape function that allocates both the real outputs and the fake ones.

Kernels live in backends/<name>/mxfp4.py with their capability records.
"""

from __future__ import annotations

import torch

from . import dispatch, spec
from .capability import Call
from .errors import require_type


def quantize_mxfp4(x: torch.Tensor, *, scale_rule: str = spec.MX_DEFAULT_SCALE_RULE,
                   backend: str = dispatch.AUTO) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `x` (..., K) to MXFP4: E2M1 elements in blocks of 32 with E8M0 scales.

    Returns `q` (..., K/2) float4_e2m1fn_x2 (two elements a byte, the even one in the low nibble)
    and `scales` (..., K/32) float8_e8m0fnu. `scale_rule` is "rceil" (DeepSeek/vLLM, the default)
    or "floor" (OCP MX v1.0). Bits follow docs/SPEC.md on every backend.
    """
    require_type("quantize_mxfp4", "scale_rule", scale_rule, str, '"rceil"')
    require_type("quantize_mxfp4", "backend", backend, str, '"auto"')
    return torch.ops.lowbit.quantize_mxfp4(x, scale_rule, backend)


def dequantize_mxfp4(q: torch.Tensor, scales: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16,
                     backend: str = dispatch.AUTO) -> torch.Tensor:
    """Expand MXFP4 `q` (..., K/2) with `scales` (..., K/32) back to (..., K) in `dtype`."""
    require_type("dequantize_mxfp4", "dtype", dtype, torch.dtype, "torch.bfloat16")
    require_type("dequantize_mxfp4", "backend", backend, str, '"auto"')
    return torch.ops.lowbit.dequantize_mxfp4(q, scales, dtype, backend)


# --- what dispatch sees of a call ---------------------------------------------------------------

def describe_quantize(x: torch.Tensor, scale_rule: str = spec.MX_DEFAULT_SCALE_RULE) -> Call:
    return dispatch.call_for("quantize_mxfp4", x, scale_rule=scale_rule)


def describe_dequantize(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> Call:
    """Also checks that q and scales belong together (ValueError otherwise)."""
    if scales.dtype not in (spec.MX_SCALE_DTYPE, torch.uint8):
        raise ValueError(f"lowbit.dequantize_mxfp4: scales dtype {scales.dtype} is not float8_e8m0fnu or "
                         "uint8; pass the scales quantize_mxfp4 returned")
    if q.dim() < 1 or scales.dim() != q.dim() or q.shape[:-1] != scales.shape[:-1] \
            or q.shape[-1] * 2 != scales.shape[-1] * spec.MX_BLOCK:
        raise ValueError(f"lowbit.dequantize_mxfp4: q {tuple(q.shape)} and scales {tuple(scales.shape)} do "
                         f"not match; need q (..., K/2) and scales (..., K/{spec.MX_BLOCK})")
    if q.device != scales.device:
        raise ValueError(f"lowbit.dequantize_mxfp4: q is on {q.device} and scales on {scales.device}; "
                         "move them to one device")
    return dispatch.call_for("dequantize_mxfp4", q, k=int(q.shape[-1]) * 2, out_dtype=dtype)


# --- the one shape function per op --------------------------------------------------------------

def quantize_outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (q, scales) for input x: contiguous, on x's device."""
    *lead, k = x.shape
    q = torch.empty((*lead, k // 2), dtype=spec.MX_Q_DTYPE, device=x.device)
    scales = torch.empty((*lead, k // spec.MX_BLOCK), dtype=spec.MX_SCALE_DTYPE, device=x.device)
    return q, scales


def dequantize_output(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    *lead, half_k = q.shape
    return torch.empty((*lead, half_k * 2), dtype=dtype, device=q.device)


# --- torch.library ops: the real path and the fake share describe, resolve and the shape ---------

@torch.library.custom_op("lowbit::quantize_mxfp4", mutates_args=())
def _quantize_op(x: torch.Tensor, scale_rule: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    kernel = dispatch.resolve(describe_quantize(x, scale_rule), backend)
    q, scales = quantize_outputs(x)
    kernel.run(x, q, scales, scale_rule=scale_rule)
    return q, scales


@_quantize_op.register_fake
def _quantize_fake(x, scale_rule, backend):
    dispatch.resolve(describe_quantize(x, scale_rule), backend)
    return quantize_outputs(x)


@torch.library.custom_op("lowbit::dequantize_mxfp4", mutates_args=())
def _dequantize_op(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, backend: str) -> torch.Tensor:
    kernel = dispatch.resolve(describe_dequantize(q, scales, dtype), backend)
    out = dequantize_output(q, dtype)
    kernel.run(q, scales, out)
    return out


@_dequantize_op.register_fake
def _dequantize_fake(q, scales, dtype, backend):
    dispatch.resolve(describe_dequantize(q, scales, dtype), backend)
    return dequantize_output(q, dtype)
