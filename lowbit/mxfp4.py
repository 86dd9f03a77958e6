"""MXFP4 (docs/SPEC.md, "MXFP4"): the public functions, their torch.library ops and fakes, and the
one shape function that allocates both the real outputs and the fake ones.

Kernels live in backends/<name>/mxfp4.py with their capability records.
"""

from __future__ import annotations

import torch

from . import dispatch, spec
from .backend import Kernel
from .capability import Call, dtype_name
from .errors import (
    UnsupportedError,
    overlapping,
    require_eps,
    require_same_device,
    require_scale_layout,
    require_tensor,
    require_type,
    written_in_place,
)

QUANTIZE = "quantize_mxfp4"
GROUP_QUANT = "per_token_group_quant_mxfp4"
DEQUANTIZE = "dequantize_mxfp4"


def quantize_mxfp4(x: torch.Tensor, *, scale_rule: str = spec.MX_DEFAULT_SCALE_RULE, scale_layout: str = "linear",
                   backend: str = dispatch.AUTO) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `x` (..., K) to MXFP4: E2M1 elements in blocks of 32 with E8M0 scales.

    Returns `q` (..., K/2) float4_e2m1fn_x2 (two elements a byte, the even one in the low nibble)
    and `scales` float8_e8m0fnu: (..., K/32) with scale_layout="linear", or with "swizzled" the
    128x4 tiles Blackwell GEMMs read, (round_up(R, 128), round_up(K/32, 4)) for R rows (the leading
    dims folded). `scale_rule` is "rceil" (DeepSeek/vLLM, the default) or "floor" (OCP MX v1.0).
    Bits follow docs/SPEC.md on every backend.
    """
    if dispatch.eager(x):
        return _quantize(_quantize_kernel(x, scale_rule, scale_layout, backend), x, scale_rule, scale_layout)
    _check_quantize_types(x, scale_rule, scale_layout, backend)
    return dispatch.without_grad(torch.ops.lowbit.quantize_mxfp4, x, scale_rule, scale_layout, backend)


def per_token_group_quant_mxfp4(x: torch.Tensor, x_q: torch.Tensor, x_s: torch.Tensor,
                                group_size: int = spec.MX_BLOCK, eps: float = spec.MX_DEFAULT_EPS, *,
                                scale_layout: str = "linear", backend: str = dispatch.AUTO) -> None:
    """MXFP4 of `x` (..., K) into the caller's buffers, in vLLM's argument convention (the Intel
    vendor op `torch.ops._C.per_token_group_quant_mxfp4`'s), extended to N-D input.

    `x_q` (..., K/2) uint8 or float4_e2m1fn_x2 receives the packed elements; `x_s` (..., K/32)
    receives the scales, as float32 powers of two (the vendor convention) or as E8M0 bytes
    (float8_e8m0fnu or uint8). Scales follow the "rceil" rule with `d` at least `eps`
    (docs/SPEC.md [MX-EPS]). With scale_layout="swizzled", `x_s` is an E8M0 buffer of the 128x4
    tiles, (round_up(R, 128), round_up(K/32, 4)) for R rows. Writes nothing when an argument is
    refused; returns None.

    Under torch.compile with inductor pass a float8_e8m0fnu `x_s` as `x_s.view(torch.uint8)` from
    outside the compiled function: inductor (torch <= 2.13) does not lower a mutated E8M0 input
    (pytorch/pytorch#189522).
    """
    _check_group_quant_types(x, x_q, x_s, group_size, eps, scale_layout, backend)
    if dispatch.eager(x, x_q, x_s):
        _group_quant(_group_quant_kernel(x, x_q, x_s, group_size, eps, scale_layout, backend), x, x_q, x_s, eps,
                     scale_layout)
    else:
        dispatch.without_grad(torch.ops.lowbit.per_token_group_quant_mxfp4, x, x_q, x_s, group_size, float(eps),
                              scale_layout, backend)


def dequantize_mxfp4(q: torch.Tensor, scales: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16,
                     scale_layout: str = "linear", backend: str = dispatch.AUTO) -> torch.Tensor:
    """Expand MXFP4 `q` (..., K/2) with `scales` in `scale_layout` (as quantize_mxfp4 returned
    them) back to (..., K) in `dtype`."""
    if dispatch.eager(q, scales):
        return _dequantize(_dequantize_kernel(q, scales, dtype, scale_layout, backend), q, scales, dtype, scale_layout)
    _check_dequantize_types(q, scales, dtype, scale_layout, backend)
    return dispatch.without_grad(torch.ops.lowbit.dequantize_mxfp4, q, scales, dtype, scale_layout, backend)


def _check_quantize_types(x, scale_rule, scale_layout, backend) -> None:
    require_type(QUANTIZE, "backend", backend, str, '"auto"')
    require_tensor(QUANTIZE, "x", x, "a (..., K) bfloat16 tensor")
    require_type(QUANTIZE, "scale_rule", scale_rule, str, '"rceil"')
    require_type(QUANTIZE, "scale_layout", scale_layout, str, '"linear"')


def _check_group_quant_types(x, x_q, x_s, group_size, eps, scale_layout, backend) -> None:
    require_type(GROUP_QUANT, "backend", backend, str, '"auto"')
    require_tensor(GROUP_QUANT, "x", x, "a (..., K) bfloat16 tensor")
    require_tensor(GROUP_QUANT, "x_q", x_q, "torch.empty(*x.shape[:-1], K // 2, dtype=torch.uint8)")
    require_tensor(GROUP_QUANT, "x_s", x_s, "torch.empty(*x.shape[:-1], K // 32, dtype=torch.float32)")
    require_type(GROUP_QUANT, "group_size", group_size, int, str(spec.MX_BLOCK))
    require_type(GROUP_QUANT, "eps", eps, (float, int), "1e-10")
    require_type(GROUP_QUANT, "scale_layout", scale_layout, str, '"linear"')


def _check_dequantize_types(q, scales, dtype, scale_layout, backend) -> None:
    require_type(DEQUANTIZE, "backend", backend, str, '"auto"')
    require_tensor(DEQUANTIZE, "q", q, "the q quantize_mxfp4 returned")
    require_tensor(DEQUANTIZE, "scales", scales, "the scales quantize_mxfp4 returned")
    require_type(DEQUANTIZE, "dtype", dtype, torch.dtype, "torch.bfloat16")
    require_type(DEQUANTIZE, "scale_layout", scale_layout, str, '"linear"')


# --- what dispatch sees of a call ---------------------------------------------------------------

def describe_quantize(x: torch.Tensor, scale_rule: str = spec.MX_DEFAULT_SCALE_RULE,
                      scale_layout: str = "linear") -> Call:
    _check_quantize_types(x, scale_rule, scale_layout, dispatch.AUTO)
    require_scale_layout(QUANTIZE, scale_layout)
    return dispatch.call_for(QUANTIZE, x, scale_rule=scale_rule, scale_layout=scale_layout)


def describe_group_quant(x: torch.Tensor, x_q: torch.Tensor, x_s: torch.Tensor, group_size: int = spec.MX_BLOCK,
                         eps: float = spec.MX_DEFAULT_EPS, *, scale_layout: str = "linear") -> Call:
    """Also checks the buffers, group_size and eps [MX-BUFFERS] (ValueError naming the argument)."""
    _check_group_quant_types(x, x_q, x_s, group_size, eps, scale_layout, dispatch.AUTO)
    require_scale_layout(GROUP_QUANT, scale_layout)
    name = f"lowbit.{GROUP_QUANT}"
    eps = float(eps)  # as the op receives it, so explain() and the call say the same
    if group_size != spec.MX_BLOCK:
        raise UnsupportedError(f"{name}: group_size={group_size} is not {spec.MX_BLOCK}: MXFP4 blocks are "
                               f"{spec.MX_BLOCK} elements on every backend (docs/SPEC.md [MX-BUFFERS]); pass "
                               f"group_size={spec.MX_BLOCK}, or use lowbit.quantize_fp8_group_packed for other group "
                               "sizes")
    require_eps(GROUP_QUANT, eps, "1e-10")
    call = dispatch.call_for(GROUP_QUANT, x, out_given=True, scale_layout=scale_layout)
    if x.dim() >= 1 and x.shape[-1] % spec.MX_BLOCK == 0:  # else the capability check names the block size
        *lead, k = x.shape
        _check_buffer(name, "x_q", x_q, x, (*lead, k // 2), spec.MX_BUFFER_Q_DTYPES)
        # [MX-SWIZZLE]: E8M0 bytes only (float32 scales are vLLM's linear ones)
        dtypes = spec.MX_BUFFER_SCALE_DTYPES[1:] if scale_layout == "swizzled" else spec.MX_BUFFER_SCALE_DTYPES
        _check_buffer(name, "x_s", x_s, x, spec.scale_shape(lead, k // spec.MX_BLOCK, scale_layout), dtypes)
        shared = overlapping({"x_q": x_q, "x_s": x_s, "x": x})
        if shared:
            raise ValueError(f"{name}: {shared}")
    return call


def _check_buffer(name: str, arg: str, buf, x: torch.Tensor, shape: tuple, dtypes: tuple) -> None:
    dtype = buf.dtype if buf.dtype in dtypes else dtypes[0]
    fix = f"pass e.g. torch.empty({tuple(shape)}, dtype=torch.{dtype_name(dtype)})"
    if buf.dtype not in dtypes:
        raise ValueError(f"{name}: {arg} dtype {dtype_name(buf.dtype)} is not one of "
                         f"{', '.join(dtype_name(d) for d in dtypes)}; {fix}")
    if tuple(buf.shape) != tuple(shape):
        raise ValueError(f"{name}: {arg} has shape {tuple(buf.shape)}, x {tuple(x.shape)} needs {tuple(shape)}; {fix}")
    if not buf.is_contiguous():
        raise ValueError(f"{name}: {arg} must be contiguous, not strides {tuple(buf.stride())}; {fix}")
    require_same_device(GROUP_QUANT, arg, buf, "x", x)
    refused = written_in_place(arg, buf)
    if refused:
        raise ValueError(f"{name}: {refused}")


def describe_dequantize(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16, *,
                        scale_layout: str = "linear") -> Call:
    """Also checks that q and scales belong together (ValueError otherwise)."""
    _check_dequantize_types(q, scales, dtype, scale_layout, dispatch.AUTO)
    require_scale_layout(DEQUANTIZE, scale_layout)
    if scales.dtype not in (spec.MX_SCALE_DTYPE, torch.uint8):
        raise ValueError(f"lowbit.{DEQUANTIZE}: scales dtype {dtype_name(scales.dtype)} is not float8_e8m0fnu or "
                         f"uint8; pass the scales {QUANTIZE} returned")
    if not _scales_fit(q, scales, scale_layout):
        if scale_layout == "linear":
            want, returned = f"scales (..., K/{spec.MX_BLOCK})", f"the q and scales {QUANTIZE} returned"
        else:
            want = f"swizzled scales (round_up(R, 128), round_up(K/{spec.MX_BLOCK}, 4)) for its R rows"
            returned = f"the q and scales {QUANTIZE}(..., scale_layout=\"swizzled\") returned"
        raise ValueError(f"lowbit.{DEQUANTIZE}: q {tuple(q.shape)} and scales {tuple(scales.shape)} do not match: "
                         f"q (..., K/2) takes {want}; pass {returned}")
    require_same_device(DEQUANTIZE, "scales", scales, "q", q)
    return dispatch.call_for(DEQUANTIZE, q, k=int(q.shape[-1]) * 2, out_dtype=dtype, scale_layout=scale_layout)


def _scales_fit(q: torch.Tensor, scales: torch.Tensor, scale_layout: str) -> bool:
    """[MX-LINEAR, MX-SWIZZLE]: scales of the shape quantize_mxfp4 returns for q's input, in any strides
    (swizzled ones are read in row-major order, as MXFP8's and NVFP4's are)."""
    if q.dim() < 1 or (2 * q.shape[-1]) % spec.MX_BLOCK:
        return False
    return tuple(scales.shape) == spec.scale_shape(q.shape[:-1], 2 * q.shape[-1] // spec.MX_BLOCK, scale_layout)


# --- the kernel for a call: remembered per kind (lowbit/dispatch.py, `kind`) ---------------------
# A call of a kind seen before checks per call only what the kind leaves open (buffer and scale
# shapes, devices, layouts); anything else, or a first call, runs the full describe and resolve.

def _quantize_kernel(x: torch.Tensor, scale_rule: str, scale_layout: str, backend: str) -> Kernel:
    def describe():
        _check_quantize_types(x, scale_rule, scale_layout, backend)
        return describe_quantize(x, scale_rule, scale_layout)
    return dispatch.kernel_for(dispatch.kind(QUANTIZE, x, scale_rule, scale_layout, backend), describe, backend)


def _group_quant_kernel(x: torch.Tensor, x_q: torch.Tensor, x_s: torch.Tensor, group_size: int, eps: float,
                        scale_layout: str, backend: str) -> Kernel:
    return dispatch.kernel_for(
        dispatch.kind(GROUP_QUANT, x, x_q.dtype, x_s.dtype, group_size, eps, scale_layout, backend),
        lambda: describe_group_quant(x, x_q, x_s, group_size, eps, scale_layout=scale_layout), backend,
        fits=_buffers_fit(x, x_q, x_s, scale_layout))


def _buffers_fit(x: torch.Tensor, x_q: torch.Tensor, x_s: torch.Tensor, scale_layout: str) -> bool:
    """describe_group_quant's buffer checks bar the dtypes (part of the kind) [MX-BUFFERS, ERR-OVERLAP]."""
    if x.dim() < 1 or x.shape[-1] % spec.MX_BLOCK:
        return False
    lead, k = x.shape[:-1], x.shape[-1]
    return (x_q.shape[:-1] == lead and x_q.shape[-1] * 2 == k and x_q.is_contiguous()
            and tuple(x_s.shape) == spec.scale_shape(lead, k // spec.MX_BLOCK, scale_layout) and x_s.is_contiguous()
            and x_q.device == x.device == x_s.device and overlapping({"x_q": x_q, "x_s": x_s, "x": x}) is None)


def _dequantize_kernel(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, scale_layout: str,
                       backend: str) -> Kernel:
    def describe():
        _check_dequantize_types(q, scales, dtype, scale_layout, backend)
        return describe_dequantize(q, scales, dtype, scale_layout=scale_layout)
    fits = q.device == scales.device and _scales_fit(q, scales, scale_layout)  # describe's per-call checks
    return dispatch.kernel_for(dispatch.kind(DEQUANTIZE, q, scales.dtype, dtype, scale_layout, backend), describe,
                               backend, fits)


# --- the one shape function per op --------------------------------------------------------------

def quantize_outputs(x: torch.Tensor, scale_layout: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (q, scales) for input x: contiguous, on x's device."""
    *lead, k = x.shape
    q = torch.empty((*lead, k // 2), dtype=spec.MX_Q_DTYPE, device=x.device)
    scales = torch.empty(spec.scale_shape(lead, k // spec.MX_BLOCK, scale_layout), dtype=spec.MX_SCALE_DTYPE,
                         device=x.device)
    return q, scales


def dequantize_output(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    *lead, half_k = q.shape
    return torch.empty((*lead, half_k * 2), dtype=dtype, device=q.device)


# --- running a call: eager calls and the torch.library ops share the kernel lookup and the shapes ---

def _quantize(kernel: Kernel, x: torch.Tensor, scale_rule: str, scale_layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    q, scales = quantize_outputs(x, scale_layout)
    kernel.run(x, q, scales, scale_rule=scale_rule, swizzled=scale_layout == "swizzled")
    return q, scales


def _group_quant(kernel: Kernel, x: torch.Tensor, x_q: torch.Tensor, x_s: torch.Tensor, eps: float,
                 scale_layout: str) -> None:
    # [MX-EPS] uses fl32(eps): every kernel gets it exactly
    kernel.run(x, x_q, x_s, eps=spec.float32_value(eps), swizzled=scale_layout == "swizzled")


def _dequantize(kernel: Kernel, q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype,
                scale_layout: str) -> torch.Tensor:
    out = dequantize_output(q, dtype)
    kernel.run(q, scales, out, swizzled=scale_layout == "swizzled")
    return out


@torch.library.custom_op("lowbit::quantize_mxfp4", mutates_args=())
def _quantize_op(x: torch.Tensor, scale_rule: str, scale_layout: str,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize(_quantize_kernel(x, scale_rule, scale_layout, backend), x, scale_rule, scale_layout)


@_quantize_op.register_fake
def _quantize_fake(x, scale_rule, scale_layout, backend):
    dispatch.resolve(describe_quantize(x, scale_rule, scale_layout), backend)
    return quantize_outputs(x, scale_layout)


@torch.library.custom_op("lowbit::per_token_group_quant_mxfp4", mutates_args=("x_q", "x_s"))
def _group_quant_op(x: torch.Tensor, x_q: torch.Tensor, x_s: torch.Tensor, group_size: int, eps: float,
                    scale_layout: str, backend: str) -> None:
    _group_quant(_group_quant_kernel(x, x_q, x_s, group_size, eps, scale_layout, backend), x, x_q, x_s, eps,
                 scale_layout)


@_group_quant_op.register_fake
def _group_quant_fake(x, x_q, x_s, group_size, eps, scale_layout, backend):
    dispatch.resolve(describe_group_quant(x, x_q, x_s, group_size, eps, scale_layout=scale_layout), backend)


@torch.library.custom_op("lowbit::dequantize_mxfp4", mutates_args=())
def _dequantize_op(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, scale_layout: str,
                   backend: str) -> torch.Tensor:
    return _dequantize(_dequantize_kernel(q, scales, dtype, scale_layout, backend), q, scales, dtype, scale_layout)


@_dequantize_op.register_fake
def _dequantize_fake(q, scales, dtype, scale_layout, backend):
    dispatch.resolve(describe_dequantize(q, scales, dtype, scale_layout=scale_layout), backend)
    return dequantize_output(q, dtype)
