"""NVFP4 (docs/SPEC.md, "NVFP4"): the public functions, their torch.library ops and fakes, and the one
shape function per op that allocates both the real outputs and the fake ones.

Kernels live in backends/<name>/nvfp4.py with their capability records. A quantize kernel receives
the global scale as a float32 tensor of one value or one per row; with `compute_scale` it writes
that tensor first ([NV-GLOBAL], on the device: no host sync) and then reads it.
"""

from __future__ import annotations

import torch

from . import dispatch, spec
from .backend import Kernel
from .capability import Call, dtype_name
from .errors import require_same_device, require_scale_layout, require_tensor, require_type

QUANTIZE = "quantize_nvfp4"
GLOBAL_SCALE = "nvfp4_global_scale"
DEQUANTIZE = "dequantize_nvfp4"
VLLM = "scaled_fp4_quant"


def quantize_nvfp4(x: torch.Tensor, global_scale: torch.Tensor | None = None, *, per_row: bool = False,
                   scale_layout: str = "linear",
                   backend: str = dispatch.AUTO) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize `x` (..., K) to NVFP4: E2M1 elements in blocks of 16, one E4M3 scale per block, and a
    float32 global scale.

    Returns `q` (..., K/2) float4_e2m1fn_x2 (the even element in the low nibble), `block_scales`
    float8_e4m3fn and `global_scale`. `global_scale` is the encode scale, 2688 / amax (vLLM's and
    FlashInfer's convention): None computes it on the device inside the call (one per tensor, or one
    per row with `per_row=True`) and returns it, with no host sync; a float32 tensor of shape () or
    (1,) (or x.shape[:-1], one per row) is used as given and returned. `scale_layout` is "linear"
    ((..., K/16)) or "swizzled" (the 128x4 tiles Blackwell GEMMs read, (round_up(R, 128),
    round_up(K/16, 4)) for R rows). Bits follow docs/SPEC.md on every backend.
    """
    if dispatch.eager(x) and (global_scale is None or dispatch.eager(global_scale)):
        return _quantize(_quantize_kernel(x, global_scale, per_row, scale_layout, backend), x, global_scale, per_row,
                         scale_layout)
    _check_quantize_types(x, global_scale, per_row, scale_layout, backend)
    if global_scale is None:
        return dispatch.without_grad(torch.ops.lowbit.quantize_nvfp4_dynamic, x, per_row, scale_layout, backend)
    q, scales = dispatch.without_grad(torch.ops.lowbit.quantize_nvfp4, x, global_scale, per_row, scale_layout, backend)
    return q, scales, global_scale


def nvfp4_global_scale(x: torch.Tensor, *, per_row: bool = False, backend: str = dispatch.AUTO) -> torch.Tensor:
    """The global scale quantize_nvfp4 computes for `x` [NV-GLOBAL]: min(2688 / amax, 2^118) over the
    finite elements, float32 of shape () (per row: x.shape[:-1]), computed on the device."""
    if dispatch.eager(x):
        return _global_scale(_global_scale_kernel(x, per_row, backend), x, per_row)
    _check_global_scale_types(x, per_row, backend)
    return dispatch.without_grad(torch.ops.lowbit.nvfp4_global_scale, x, per_row, backend)


def dequantize_nvfp4(q: torch.Tensor, block_scales: torch.Tensor, global_scale: torch.Tensor, *,
                     scale_layout: str = "linear", dtype: torch.dtype = torch.bfloat16,
                     backend: str = dispatch.AUTO) -> torch.Tensor:
    """Expand NVFP4 `q` (..., K/2) with its block scales (in `scale_layout`) and global scale back to
    (..., K) in `dtype` [NV-DEQUANT]."""
    if dispatch.eager(q, block_scales, global_scale):
        return _dequantize(_dequantize_kernel(q, block_scales, global_scale, scale_layout, dtype, backend), q,
                           block_scales, global_scale, scale_layout, dtype)
    _check_dequantize_types(q, block_scales, global_scale, scale_layout, dtype, backend)
    return dispatch.without_grad(torch.ops.lowbit.dequantize_nvfp4, q, block_scales, global_scale, scale_layout, dtype,
                                 backend)


def scaled_fp4_quant(x: torch.Tensor, input_global_scale: torch.Tensor,
                     is_sf_swizzled_layout: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's `scaled_fp4_quant` conventions with lowbit's bits [NV-VLLM]: 2-D `x` (m, n), the encode
    global scale, and back `q` as uint8 (m, n/2) and the E4M3 block scales, swizzled
    (round_up(m, 128), round_up(n/16, 4)) or linear (m, n/16)."""
    require_type(VLLM, "is_sf_swizzled_layout", is_sf_swizzled_layout, bool, "True")
    require_tensor(VLLM, "x", x, "a 2-D (m, n) bfloat16 tensor")
    if x.dim() != 2:
        raise ValueError(f"lowbit.{VLLM}: x has {x.dim()} dims, not the 2 (m, n) of vLLM's convention; pass "
                         f"x.reshape(-1, x.shape[-1]), or use lowbit.{QUANTIZE}, which takes N-D input")
    if input_global_scale is not None:  # by its own name, before quantize_nvfp4 checks it as global_scale
        require_tensor(VLLM, "input_global_scale", input_global_scale, _SCALE)
        _check_global_scale(VLLM, input_global_scale, x, per_row=False)
    q, scales, _ = quantize_nvfp4(x, input_global_scale, scale_layout="swizzled" if is_sf_swizzled_layout else "linear")
    return q.view(torch.uint8), scales


def _check_quantize_types(x, global_scale, per_row, scale_layout, backend) -> None:
    require_type(QUANTIZE, "backend", backend, str, '"auto"')
    require_tensor(QUANTIZE, "x", x, "a (..., K) bfloat16 tensor")
    if global_scale is not None:
        require_tensor(QUANTIZE, "global_scale", global_scale, _SCALE_EXAMPLE)
    require_type(QUANTIZE, "per_row", per_row, bool, "True")
    require_type(QUANTIZE, "scale_layout", scale_layout, str, '"linear"')


def _check_global_scale_types(x, per_row, backend) -> None:
    require_type(GLOBAL_SCALE, "backend", backend, str, '"auto"')
    require_tensor(GLOBAL_SCALE, "x", x, "a (..., K) bfloat16 tensor")
    require_type(GLOBAL_SCALE, "per_row", per_row, bool, "True")


def _check_dequantize_types(q, block_scales, global_scale, scale_layout, dtype, backend) -> None:
    require_type(DEQUANTIZE, "backend", backend, str, '"auto"')
    require_tensor(DEQUANTIZE, "q", q, "the q quantize_nvfp4 returned")
    require_tensor(DEQUANTIZE, "block_scales", block_scales, "the block_scales quantize_nvfp4 returned")
    require_tensor(DEQUANTIZE, "global_scale", global_scale, "the global_scale quantize_nvfp4 returned")
    require_type(DEQUANTIZE, "scale_layout", scale_layout, str, '"linear"')
    require_type(DEQUANTIZE, "dtype", dtype, torch.dtype, "torch.bfloat16")


_SCALE = "torch.tensor(2688 / amax, dtype=torch.float32, device=x.device)"
_SCALE_EXAMPLE = _SCALE + ", or None to compute it"


# --- what dispatch sees of a call ---------------------------------------------------------------

def describe_quantize(x: torch.Tensor, global_scale: torch.Tensor | None = None, *, per_row: bool = False,
                      scale_layout: str = "linear") -> Call:
    """Also checks the layout name and a given global scale [NV-GLOBAL-GIVEN] (ValueError)."""
    _check_quantize_types(x, global_scale, per_row, scale_layout, dispatch.AUTO)
    require_scale_layout(QUANTIZE, scale_layout)
    if global_scale is not None:
        _check_global_scale(QUANTIZE, global_scale, x, per_row)
    return dispatch.call_for(QUANTIZE, x, scale_layout=scale_layout)


def describe_global_scale(x: torch.Tensor, *, per_row: bool = False) -> Call:
    _check_global_scale_types(x, per_row, dispatch.AUTO)
    return dispatch.call_for(GLOBAL_SCALE, x)


def describe_dequantize(q: torch.Tensor, block_scales: torch.Tensor, global_scale: torch.Tensor, *,
                        scale_layout: str = "linear", dtype: torch.dtype = torch.bfloat16) -> Call:
    """Also checks that q, its block scales and its global scale belong together (ValueError)."""
    _check_dequantize_types(q, block_scales, global_scale, scale_layout, dtype, dispatch.AUTO)
    require_scale_layout(DEQUANTIZE, scale_layout)
    name = f"lowbit.{DEQUANTIZE}"
    if block_scales.dtype not in (spec.NV_SCALE_DTYPE, torch.uint8):
        raise ValueError(f"{name}: block_scales dtype {dtype_name(block_scales.dtype)} is not float8_e4m3fn or "
                         f"uint8; pass the block_scales {QUANTIZE} returned")
    if q.dim() >= 1 and (2 * q.shape[-1]) % spec.NV_BLOCK == 0:  # else the capability check names the block size
        want = spec.scale_shape(q.shape[:-1], 2 * q.shape[-1] // spec.NV_BLOCK, scale_layout)
        if tuple(block_scales.shape) != want:
            raise ValueError(f"{name}: q {tuple(q.shape)} needs {scale_layout} block_scales of shape {want}, got "
                             f"{tuple(block_scales.shape)}; pass the block_scales {QUANTIZE} returned for this q and "
                             "scale_layout")
        _check_global_scale(DEQUANTIZE, global_scale, q, per_row=False)
    require_same_device(DEQUANTIZE, "block_scales", block_scales, "q", q)
    return dispatch.call_for(DEQUANTIZE, q, k=2 * int(q.shape[-1]) if q.dim() else 0, out_dtype=dtype,
                             scale_layout=scale_layout)


def _check_global_scale(op: str, gs: torch.Tensor, x: torch.Tensor, per_row: bool) -> None:
    """[NV-GLOBAL-GIVEN]: float32 on x's device, of shape () or (1,), or x.shape[:-1] (one per row)."""
    if not _global_scale_fits(gs, x, per_row):
        rows = tuple(x.shape[:-1])
        shapes = f"{rows} (one per row)" if per_row else f"() or (1,) (one scale), or {rows} (one per row)"
        arg, fix = _GIVEN_SCALE[op]
        raise ValueError(f"lowbit.{op}: {arg} ({dtype_name(gs.dtype)}, shape {tuple(gs.shape)}, on {gs.device}) must "
                         f"be float32 on {x.device} with shape {shapes}; pass {fix}")


_GIVEN_SCALE = {  # op: (its argument, what would work)
    QUANTIZE: ("global_scale", "global_scale=None to compute it on the device"),
    DEQUANTIZE: ("global_scale", f"the global_scale {QUANTIZE} returned"),
    VLLM: ("input_global_scale", "e.g. " + _SCALE),
}


def _global_scale_fits(gs: torch.Tensor, x: torch.Tensor, per_row: bool) -> bool:
    shape = gs.shape
    return gs.dtype == torch.float32 and gs.device == x.device and x.dim() >= 1 and (
        shape == x.shape[:-1] or (not per_row and shape in ((), (1,))))


# --- the kernel for a call: remembered per kind (lowbit/dispatch.py, `kind`) ---------------------
# A call of a kind seen before checks per call only what the kind leaves open (the global scale's
# shape, dtype and device; the block scales' shape); anything else, or a first call, runs the full
# describe and resolve.

def _quantize_kernel(x: torch.Tensor, gs: torch.Tensor | None, per_row: bool, scale_layout: str,
                     backend: str) -> Kernel:
    def describe():
        _check_quantize_types(x, gs, per_row, scale_layout, backend)
        return describe_quantize(x, gs, per_row=per_row, scale_layout=scale_layout)
    # per_row's type too: 1 == True, and a kind must not let an int through where a first call refuses it
    fits = per_row.__class__ is bool and (
        gs is None or (type(gs) is torch.Tensor and _global_scale_fits(gs, x, per_row)))
    return dispatch.kernel_for(dispatch.kind(QUANTIZE, x, gs is None, per_row, scale_layout, backend), describe,
                               backend, fits)


def _global_scale_kernel(x: torch.Tensor, per_row: bool, backend: str) -> Kernel:
    def describe():
        _check_global_scale_types(x, per_row, backend)
        return describe_global_scale(x, per_row=per_row)
    return dispatch.kernel_for(dispatch.kind(GLOBAL_SCALE, x, per_row, backend), describe, backend,
                               per_row.__class__ is bool)


def _dequantize_kernel(q: torch.Tensor, scales: torch.Tensor, gs: torch.Tensor, scale_layout: str,
                       dtype: torch.dtype, backend: str) -> Kernel:
    def describe():
        _check_dequantize_types(q, scales, gs, scale_layout, dtype, backend)
        return describe_dequantize(q, scales, gs, scale_layout=scale_layout, dtype=dtype)
    fits = q.dim() >= 1 and q.device == scales.device and _global_scale_fits(gs, q, False) \
        and tuple(scales.shape) == spec.scale_shape(q.shape[:-1], 2 * q.shape[-1] // spec.NV_BLOCK, scale_layout)
    return dispatch.kernel_for(dispatch.kind(DEQUANTIZE, q, scales.dtype, scale_layout, dtype, backend), describe,
                               backend, fits)


# --- the one shape function per op --------------------------------------------------------------

def quantize_outputs(x: torch.Tensor, scale_layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (q, block_scales) for input x: contiguous, on x's device."""
    *lead, k = x.shape
    q = torch.empty((*lead, k // 2), dtype=spec.NV_Q_DTYPE, device=x.device)
    scales = torch.empty(spec.scale_shape(lead, k // spec.NV_BLOCK, scale_layout), dtype=spec.NV_SCALE_DTYPE,
                         device=x.device)
    return q, scales


def global_scale_output(x: torch.Tensor, per_row: bool) -> torch.Tensor:
    return torch.empty(x.shape[:-1] if per_row else (), dtype=torch.float32, device=x.device)


def dequantize_output(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    *lead, half_k = q.shape
    return torch.empty((*lead, half_k * 2), dtype=dtype, device=q.device)


# --- running a call: eager calls and the torch.library ops share the kernel lookup and the shapes ---

def _quantize(kernel: Kernel, x: torch.Tensor, gs: torch.Tensor | None, per_row: bool,
              scale_layout: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, scales = quantize_outputs(x, scale_layout)
    compute = gs is None
    if compute:
        gs = global_scale_output(x, per_row)
    kernel.run(x, q, scales, gs, per_row=per_row, compute_scale=compute, swizzled=scale_layout == "swizzled")
    return q, scales, gs


def _global_scale(kernel: Kernel, x: torch.Tensor, per_row: bool) -> torch.Tensor:
    gs = global_scale_output(x, per_row)
    kernel.run(x, gs, per_row=per_row)
    return gs


def _dequantize(kernel: Kernel, q: torch.Tensor, scales: torch.Tensor, gs: torch.Tensor, scale_layout: str,
                dtype: torch.dtype) -> torch.Tensor:
    out = dequantize_output(q, dtype)
    kernel.run(q, scales, gs, out, swizzled=scale_layout == "swizzled")
    return out


@torch.library.custom_op("lowbit::quantize_nvfp4", mutates_args=())
def _quantize_op(x: torch.Tensor, global_scale: torch.Tensor, per_row: bool, scale_layout: str,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    q, scales, _ = _quantize(_quantize_kernel(x, global_scale, per_row, scale_layout, backend), x, global_scale,
                             per_row, scale_layout)
    return q, scales


@_quantize_op.register_fake
def _quantize_fake(x, global_scale, per_row, scale_layout, backend):
    dispatch.resolve(describe_quantize(x, global_scale, per_row=per_row, scale_layout=scale_layout), backend)
    return quantize_outputs(x, scale_layout)


@torch.library.custom_op("lowbit::quantize_nvfp4_dynamic", mutates_args=())
def _quantize_dynamic_op(x: torch.Tensor, per_row: bool, scale_layout: str,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _quantize(_quantize_kernel(x, None, per_row, scale_layout, backend), x, None, per_row, scale_layout)


@_quantize_dynamic_op.register_fake
def _quantize_dynamic_fake(x, per_row, scale_layout, backend):
    dispatch.resolve(describe_quantize(x, per_row=per_row, scale_layout=scale_layout), backend)
    return (*quantize_outputs(x, scale_layout), global_scale_output(x, per_row))


@torch.library.custom_op("lowbit::nvfp4_global_scale", mutates_args=())
def _global_scale_op(x: torch.Tensor, per_row: bool, backend: str) -> torch.Tensor:
    return _global_scale(_global_scale_kernel(x, per_row, backend), x, per_row)


@_global_scale_op.register_fake
def _global_scale_fake(x, per_row, backend):
    dispatch.resolve(describe_global_scale(x, per_row=per_row), backend)
    return global_scale_output(x, per_row)


@torch.library.custom_op("lowbit::dequantize_nvfp4", mutates_args=())
def _dequantize_op(q: torch.Tensor, block_scales: torch.Tensor, global_scale: torch.Tensor, scale_layout: str,
                   dtype: torch.dtype, backend: str) -> torch.Tensor:
    return _dequantize(_dequantize_kernel(q, block_scales, global_scale, scale_layout, dtype, backend), q,
                       block_scales, global_scale, scale_layout, dtype)


@_dequantize_op.register_fake
def _dequantize_fake(q, block_scales, global_scale, scale_layout, dtype, backend):
    dispatch.resolve(describe_dequantize(q, block_scales, global_scale, scale_layout=scale_layout, dtype=dtype),
                     backend)
    return dequantize_output(q, dtype)
