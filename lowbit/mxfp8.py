"""MXFP8 (docs/SPEC.md, "MXFP8"): the public functions, their torch.library ops and fakes, and the one
shape function per op that allocates both the real outputs and the fake ones.

Kernels live in backends/<name>/mxfp8.py with their capability records. A quantize kernel writes its
scales in the layout asked for (`swizzled`: the [SCALE-SWIZZLE] tiles, padding bytes 0, leading dims
folded into rows); a dequantize kernel reads either.
"""

from __future__ import annotations

import torch

from . import dispatch, spec
from .backend import Kernel
from .capability import Call, dtype_name
from .errors import require_same_device, require_scale_layout, require_tensor, require_type

QUANTIZE = "quantize_mxfp8"
DEQUANTIZE = "dequantize_mxfp8"


def quantize_mxfp8(x: torch.Tensor, *, scale_rule: str = spec.MX_DEFAULT_SCALE_RULE, scale_layout: str = "linear",
                   backend: str = dispatch.AUTO) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `x` (..., K) to MXFP8: E4M3 elements in blocks of 32 with E8M0 scales.

    Returns `q` (..., K) float8_e4m3fn and `scales` float8_e8m0fnu. `scale_rule` is "rceil"
    (TransformerEngine's, the default) or "floor" (OCP MX v1.0). `scale_layout` is
    "linear" ((..., K/32)) or "swizzled" (the 128x4 tiles Blackwell GEMMs read, (round_up(R, 128),
    round_up(K/32, 4)) for R rows). Bits follow docs/SPEC.md on every backend.
    """
    if dispatch.eager(x):
        return _quantize(_quantize_kernel(x, scale_rule, scale_layout, backend), x, scale_rule, scale_layout)
    _check_quantize_types(x, scale_rule, scale_layout, backend)
    return dispatch.without_grad(torch.ops.lowbit.quantize_mxfp8, x, scale_rule, scale_layout, backend)


def dequantize_mxfp8(q: torch.Tensor, scales: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16,
                     scale_layout: str = "linear", backend: str = dispatch.AUTO) -> torch.Tensor:
    """Expand MXFP8 `q` (..., K) with its `scales` (in `scale_layout`) back to (..., K) in `dtype`
    [MX8-DEQUANT]."""
    if dispatch.eager(q, scales):
        return _dequantize(_dequantize_kernel(q, scales, dtype, scale_layout, backend), q, scales, dtype,
                           scale_layout)
    _check_dequantize_types(q, scales, dtype, scale_layout, backend)
    return dispatch.without_grad(torch.ops.lowbit.dequantize_mxfp8, q, scales, dtype, scale_layout, backend)


def _check_quantize_types(x, scale_rule, scale_layout, backend) -> None:
    require_type(QUANTIZE, "backend", backend, str, '"auto"')
    require_tensor(QUANTIZE, "x", x, "a (..., K) bfloat16 tensor")
    require_type(QUANTIZE, "scale_rule", scale_rule, str, '"rceil"')
    require_type(QUANTIZE, "scale_layout", scale_layout, str, '"linear"')


def _check_dequantize_types(q, scales, dtype, scale_layout, backend) -> None:
    require_type(DEQUANTIZE, "backend", backend, str, '"auto"')
    require_tensor(DEQUANTIZE, "q", q, "the q quantize_mxfp8 returned")
    require_tensor(DEQUANTIZE, "scales", scales, "the scales quantize_mxfp8 returned")
    require_type(DEQUANTIZE, "dtype", dtype, torch.dtype, "torch.bfloat16")
    require_type(DEQUANTIZE, "scale_layout", scale_layout, str, '"linear"')


# --- what dispatch sees of a call ---------------------------------------------------------------

def describe_quantize(x: torch.Tensor, scale_rule: str = spec.MX_DEFAULT_SCALE_RULE, *,
                      scale_layout: str = "linear") -> Call:
    """Also checks the layout name (ValueError)."""
    _check_quantize_types(x, scale_rule, scale_layout, dispatch.AUTO)
    require_scale_layout(QUANTIZE, scale_layout)
    return dispatch.call_for(QUANTIZE, x, scale_rule=scale_rule, scale_layout=scale_layout)


def describe_dequantize(q: torch.Tensor, scales: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16,
                        scale_layout: str = "linear") -> Call:
    """Also checks that q and its scales belong together (ValueError)."""
    _check_dequantize_types(q, scales, dtype, scale_layout, dispatch.AUTO)
    require_scale_layout(DEQUANTIZE, scale_layout)
    name = f"lowbit.{DEQUANTIZE}"
    if scales.dtype not in (spec.MX8_SCALE_DTYPE, torch.uint8):
        raise ValueError(f"{name}: scales dtype {dtype_name(scales.dtype)} is not float8_e8m0fnu or uint8; pass the "
                         f"scales {QUANTIZE} returned")
    if q.dim() >= 1 and q.shape[-1] % spec.MX_BLOCK == 0:  # else the capability check names the block size
        want = spec.scale_shape(q.shape[:-1], q.shape[-1] // spec.MX_BLOCK, scale_layout)
        if tuple(scales.shape) != want:
            raise ValueError(f"{name}: q {tuple(q.shape)} needs {scale_layout} scales of shape {want}, got "
                             f"{tuple(scales.shape)}; pass the scales {QUANTIZE} returned for this q and scale_layout")
    require_same_device(DEQUANTIZE, "scales", scales, "q", q)
    return dispatch.call_for(DEQUANTIZE, q, out_dtype=dtype, scale_layout=scale_layout)


# --- the kernel for a call: remembered per kind (lowbit/dispatch.py, `kind`) ---------------------
# A call of a kind seen before checks per call only what the kind leaves open (the scales' shape and
# device); anything else, or a first call, runs the full describe and resolve.

def _quantize_kernel(x: torch.Tensor, scale_rule: str, scale_layout: str, backend: str) -> Kernel:
    def describe():
        _check_quantize_types(x, scale_rule, scale_layout, backend)
        return describe_quantize(x, scale_rule, scale_layout=scale_layout)
    return dispatch.kernel_for(dispatch.kind(QUANTIZE, x, scale_rule, scale_layout, backend), describe, backend)


def _dequantize_kernel(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, scale_layout: str,
                       backend: str) -> Kernel:
    def describe():
        _check_dequantize_types(q, scales, dtype, scale_layout, backend)
        return describe_dequantize(q, scales, dtype=dtype, scale_layout=scale_layout)
    fits = q.dim() >= 1 and q.device == scales.device \
        and tuple(scales.shape) == spec.scale_shape(q.shape[:-1], q.shape[-1] // spec.MX_BLOCK, scale_layout)
    return dispatch.kernel_for(dispatch.kind(DEQUANTIZE, q, scales.dtype, dtype, scale_layout, backend), describe,
                               backend, fits)


# --- the one shape function per op --------------------------------------------------------------

def quantize_outputs(x: torch.Tensor, scale_layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (q, scales) for input x: contiguous, on x's device."""
    *lead, k = x.shape
    q = torch.empty(x.shape, dtype=spec.MX8_Q_DTYPE, device=x.device)
    scales = torch.empty(spec.scale_shape(lead, k // spec.MX_BLOCK, scale_layout), dtype=spec.MX8_SCALE_DTYPE,
                         device=x.device)
    return q, scales


def dequantize_output(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(q.shape, dtype=dtype, device=q.device)


# --- running a call: eager calls and the torch.library ops share the kernel lookup and the shapes ---

def _quantize(kernel: Kernel, x: torch.Tensor, scale_rule: str,
              scale_layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    q, scales = quantize_outputs(x, scale_layout)
    kernel.run(x, q, scales, scale_rule=scale_rule, swizzled=scale_layout == "swizzled")
    return q, scales


def _dequantize(kernel: Kernel, q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype,
                scale_layout: str) -> torch.Tensor:
    out = dequantize_output(q, dtype)
    kernel.run(q, scales, out, swizzled=scale_layout == "swizzled")
    return out


@torch.library.custom_op("lowbit::quantize_mxfp8", mutates_args=())
def _quantize_op(x: torch.Tensor, scale_rule: str, scale_layout: str,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize(_quantize_kernel(x, scale_rule, scale_layout, backend), x, scale_rule, scale_layout)


@_quantize_op.register_fake
def _quantize_fake(x, scale_rule, scale_layout, backend):
    dispatch.resolve(describe_quantize(x, scale_rule, scale_layout=scale_layout), backend)
    return quantize_outputs(x, scale_layout)


@torch.library.custom_op("lowbit::dequantize_mxfp8", mutates_args=())
def _dequantize_op(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, scale_layout: str,
                   backend: str) -> torch.Tensor:
    return _dequantize(_dequantize_kernel(q, scales, dtype, scale_layout, backend), q, scales, dtype, scale_layout)


@_dequantize_op.register_fake
def _dequantize_fake(q, scales, dtype, scale_layout, backend):
    dispatch.resolve(describe_dequantize(q, scales, dtype=dtype, scale_layout=scale_layout), backend)
    return dequantize_output(q, dtype)
