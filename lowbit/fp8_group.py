"""FP8 with float32 scales (docs/SPEC.md, "FP8 with float32 scales"): 1 x G token groups and 2-D
weight blocks, in the scale layouts Hopper's GEMMs read (F.scaled_mm, DeepGEMM SM90, CUTLASS, vLLM).
The public functions, their torch.library ops and fakes, the one shape function per op, and the
out= checks.

Kernels live in backends/<name>/fp8_group.py with their capability records. A group-quantize kernel
receives `q` with R >= mn rows and `scales` with S >= mn logical rows in any strides, and writes
every row: rows >= mn as zeros. Returned "column_major_tma" scales are a view of S = A rows of owned
storage, so the TMA padding rows come out zero without a second pass.
"""

from __future__ import annotations

import torch

from . import dispatch, spec
from .backend import Kernel
from .capability import Call, dtype_name
from .errors import require_eps, require_same_device, require_tensor, require_type
from .fp8_group_packed import batch_strides, check_out_pair, out_buffer_problems, out_buffers_refused

QUANTIZE = "quantize_fp8_group"
DEQUANTIZE = "dequantize_fp8_group"
QUANTIZE_BLOCK = "quantize_fp8_block"
DEQUANTIZE_BLOCK = "dequantize_fp8_block"
ROW_MAJOR, COLUMN_MAJOR, COLUMN_MAJOR_TMA = spec.F8_SCALE_LAYOUTS


def quantize_fp8_group(x: torch.Tensor, group_size: int = spec.FP8_DEFAULT_GROUP, *,
                       eps: float = spec.FP8_DEFAULT_EPS, ue8m0: bool = False, scale_layout: str = ROW_MAJOR,
                       out: tuple[torch.Tensor, torch.Tensor] | None = None,
                       backend: str = dispatch.AUTO) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `x` (..., mn, K) to E4M3 per group of `group_size` along K, one float32 scale per group
    (vLLM's `per_token_group_quant_fp8`, with bits of docs/SPEC.md on every backend).

    Returns `q` (..., mn, K) float8_e4m3fn and `scales` float32 of logical shape (..., mn, K/group_size):
    s = amax / 448 (an IEEE division; `ue8m0=True`: its power-of-two ceiling, the packed op's bytes),
    and q = E4M3(x / s). `scale_layout` sets the scales' strides: "row_major" (contiguous),
    "column_major" ((..., 1, mn): what `F.scaled_mm` takes for ScalingType.BlockWise1x128), or
    "column_major_tma" ((..., 1, A), A = mn rounded up to 4: DeepGEMM SM90, vLLM's tma_aligned_scales).
    With `out=(q_buf, s_buf)` the results go into those buffers (no allocation: CUDA-graph safe on
    graph-safe backends), which are returned.
    """
    if out is None:
        if dispatch.eager(x):
            return _quantize(_quantize_kernel(x, group_size, eps, ue8m0, scale_layout, backend), x, group_size, eps,
                             ue8m0, scale_layout)
        _check_quantize_types(x, group_size, eps, ue8m0, scale_layout, backend)
        return dispatch.without_grad(torch.ops.lowbit.quantize_fp8_group, x, group_size, eps, ue8m0, scale_layout,
                                     backend)
    _check_quantize_types(x, group_size, eps, ue8m0, scale_layout, backend, out)
    q_buf, s_buf = out
    if dispatch.eager(x, q_buf, s_buf):
        _quantize_kernel(x, group_size, eps, ue8m0, scale_layout, backend, out=out).run(
            x, q_buf, s_buf, group_size=group_size, eps=eps, ue8m0=ue8m0)
    else:
        dispatch.without_grad(torch.ops.lowbit.quantize_fp8_group_out, x, q_buf, s_buf, group_size, eps, ue8m0,
                              scale_layout, backend)
    return q_buf, s_buf


def dequantize_fp8_group(q: torch.Tensor, scales: torch.Tensor, *, group_size: int = spec.FP8_DEFAULT_GROUP,
                         dtype: torch.dtype = torch.bfloat16, backend: str = dispatch.AUTO) -> torch.Tensor:
    """Expand `q` (..., mn, K) with its float32 scales (..., mn, K/group_size), in any of the layouts
    quantize_fp8_group writes, back to (..., mn, K) in `dtype` [F8-DEQUANT]."""
    if dispatch.eager(q, scales):
        return _dequantize(_dequantize_kernel(q, scales, group_size, dtype, backend), q, scales, group_size, dtype)
    _check_dequantize_types(DEQUANTIZE, q, scales, "group_size", group_size, dtype, backend)
    return dispatch.without_grad(torch.ops.lowbit.dequantize_fp8_group, q, scales, group_size, dtype, backend)


def quantize_fp8_block(w: torch.Tensor, block: tuple[int, int] = spec.F8_DEFAULT_BLOCK, *,
                       eps: float = spec.F8_BLOCK_EPS, ue8m0: bool = False,
                       backend: str = dispatch.AUTO) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D weight `w` (N, K) to E4M3 with one float32 scale per `block` tile (rows x
    columns; partial tiles at the edges), DeepSeek-V3 style [F8-BLOCK].

    Returns `q` (N, K) float8_e4m3fn and `scales` float32 in the layout `F.scaled_mm` reads for
    ScalingType.BlockWise128x128 next to `q.t()`: shape (Kb4, Nb), strides (1, Kb4), where
    Nb = ceil(N/BR), Kb = ceil(K/BC) and Kb4 = Kb rounded up to 4; scales[j, i] belongs to the tile
    of rows i*BR.. and columns j*BC.., and rows Kb..Kb4-1 are 0. `scales.t()[:, :Kb]` is
    DeepSeek-V3's `weight_scale_inv` (Nb, Kb). `eps` floors the amax (1e-4, as DeepGEMM's and vLLM's
    per_block_cast_to_fp8); `ue8m0=True` rounds each scale up to a power of two.
    """
    require_type(QUANTIZE_BLOCK, "backend", backend, str, '"auto"')
    _check_block(QUANTIZE_BLOCK, block)
    block = tuple(block)
    if dispatch.eager(w):
        return _quantize_block(_quantize_block_kernel(w, block, eps, ue8m0, backend), w, block, eps, ue8m0)
    _check_block_types(w, block, eps, ue8m0, backend)
    return dispatch.without_grad(torch.ops.lowbit.quantize_fp8_block, w, block[0], block[1], eps, ue8m0, backend)


def dequantize_fp8_block(q: torch.Tensor, scales: torch.Tensor, *, block: tuple[int, int] = spec.F8_DEFAULT_BLOCK,
                         dtype: torch.dtype = torch.bfloat16, backend: str = dispatch.AUTO) -> torch.Tensor:
    """Expand `q` (N, K) with the scales quantize_fp8_block returned ((Kb4, Nb), or (Kb, Nb) without the
    padding rows, such as DeepSeek-V3's weight_scale_inv.t()), any strides, back to (N, K) in `dtype`
    [F8-DEQUANT]."""
    require_type(DEQUANTIZE_BLOCK, "backend", backend, str, '"auto"')
    _check_block(DEQUANTIZE_BLOCK, block)
    block = tuple(block)
    if dispatch.eager(q, scales):
        return _dequantize_block(_dequantize_block_kernel(q, scales, block, dtype, backend), q, scales, block, dtype)
    _check_dequantize_types(DEQUANTIZE_BLOCK, q, scales, "block", block, dtype, backend)
    return dispatch.without_grad(torch.ops.lowbit.dequantize_fp8_block, q, scales, block[0], block[1], dtype, backend)


# --- argument checks: types first (backend= first of all, as lowbit.supports checks it before an op's
# describe), then what the capability records do not say ---------------------------------------

def _check_quantize_types(x, group_size, eps, ue8m0, scale_layout, backend, out=None) -> None:
    require_type(QUANTIZE, "backend", backend, str, '"auto"')
    require_tensor(QUANTIZE, "x", x, "a (..., mn, K) bfloat16 tensor")
    require_type(QUANTIZE, "group_size", group_size, int, "128")
    require_type(QUANTIZE, "eps", eps, (float, int), "1e-10")
    require_type(QUANTIZE, "ue8m0", ue8m0, bool, "True")
    require_type(QUANTIZE, "scale_layout", scale_layout, str, '"column_major"')
    if out is not None:
        check_out_pair(QUANTIZE, out, "F8-OUT")


# block right after backend: the public functions check it before the rest (they need it as a tuple)
def _check_block_types(w, block, eps, ue8m0, backend) -> None:
    require_type(QUANTIZE_BLOCK, "backend", backend, str, '"auto"')
    _check_block(QUANTIZE_BLOCK, block)
    require_tensor(QUANTIZE_BLOCK, "w", w, "a 2-D (N, K) bfloat16 weight")
    require_type(QUANTIZE_BLOCK, "eps", eps, (float, int), "1e-4")
    require_type(QUANTIZE_BLOCK, "ue8m0", ue8m0, bool, "True")


def _check_dequantize_types(op, q, scales, size_name, size, dtype, backend) -> None:
    require_type(op, "backend", backend, str, '"auto"')
    quantize = QUANTIZE if op == DEQUANTIZE else QUANTIZE_BLOCK
    if op == DEQUANTIZE_BLOCK:
        _check_block(op, size)
    require_tensor(op, "q", q, f"the q {quantize} returned")
    require_tensor(op, "scales", scales, f"the scales {quantize} returned")
    if op == DEQUANTIZE:
        require_type(op, size_name, size, int, "128")
    require_type(op, "dtype", dtype, torch.dtype, "torch.bfloat16")


def _check_block(op: str, block) -> None:
    if not (isinstance(block, (tuple, list)) and len(block) == 2
            and all(type(b) is int and b >= 1 for b in block)):
        raise ValueError(f"lowbit.{op}: block={block!r} must be two positive ints (rows, columns); pass e.g. "
                         f"block=(128, 128)")


def _check_layout(scale_layout: str) -> None:
    if scale_layout not in spec.F8_SCALE_LAYOUTS:
        raise ValueError(f"lowbit.{QUANTIZE}: scale_layout={scale_layout!r} is not one of "
                         f"{', '.join(map(repr, spec.F8_SCALE_LAYOUTS))}; pass scale_layout=\"column_major\" for "
                         "F.scaled_mm, \"column_major_tma\" for DeepGEMM's SM90 kernels")


# --- what dispatch sees of a call ---------------------------------------------------------------

def describe_quantize(x: torch.Tensor, group_size: int = spec.FP8_DEFAULT_GROUP, *,
                      eps: float = spec.FP8_DEFAULT_EPS, ue8m0: bool = False, scale_layout: str = ROW_MAJOR,
                      out=None) -> Call:
    """Also checks eps, the layout name and the out= buffers (ValueError)."""
    _check_quantize_types(x, group_size, eps, ue8m0, scale_layout, dispatch.AUTO, out)
    require_eps(QUANTIZE, eps, "1e-10")
    _check_layout(scale_layout)
    if out is not None:
        check_out_buffers(x, *out, group_size, scale_layout)
    return dispatch.call_for(QUANTIZE, x, group_size=group_size, out_given=out is not None)


def describe_dequantize(q: torch.Tensor, scales: torch.Tensor, group_size: int = spec.FP8_DEFAULT_GROUP,
                        dtype: torch.dtype = torch.bfloat16) -> Call:
    """Also checks that q and its scales belong together (ValueError)."""
    _check_dequantize_types(DEQUANTIZE, q, scales, "group_size", group_size, dtype, dispatch.AUTO)
    if q.dim() >= 2 and group_size >= 1 and q.shape[-1] % group_size == 0:  # else the capability check says
        _check_scales(DEQUANTIZE, q, scales, (*q.shape[:-1], q.shape[-1] // group_size), f"group_size {group_size}",
                      "group_size")
    return dispatch.call_for(DEQUANTIZE, q, group_size=group_size, out_dtype=dtype)


def describe_quantize_block(w: torch.Tensor, block: tuple[int, int] = spec.F8_DEFAULT_BLOCK, *,
                            eps: float = spec.F8_BLOCK_EPS, ue8m0: bool = False) -> Call:
    _check_block_types(w, block, eps, ue8m0, dispatch.AUTO)
    require_eps(QUANTIZE_BLOCK, eps, "1e-4")
    return dispatch.call_for(QUANTIZE_BLOCK, w, weight_block=tuple(block))


def describe_dequantize_block(q: torch.Tensor, scales: torch.Tensor, block: tuple[int, int] = spec.F8_DEFAULT_BLOCK,
                              dtype: torch.dtype = torch.bfloat16) -> Call:
    _check_dequantize_types(DEQUANTIZE_BLOCK, q, scales, "block", block, dtype, dispatch.AUTO)
    if q.dim() == 2:  # else the capability check says
        padded, row_blocks = block_scale_shape(q, block)
        what = "block {}x{} (or ({}, {}) without the padding rows)".format(
            *block, spec.ceil_div(q.shape[1], block[1]), row_blocks)
        fit = scales.dim() == 2 and block_scales_fit(q, scales, block)
        _check_scales(DEQUANTIZE_BLOCK, q, scales, scales.shape if fit else (padded, row_blocks), what, "block")
    return dispatch.call_for(DEQUANTIZE_BLOCK, q, weight_block=tuple(block), out_dtype=dtype)


def _check_scales(op: str, q: torch.Tensor, scales: torch.Tensor, shape: tuple, what: str, size_name: str) -> None:
    name, quantize = f"lowbit.{op}", QUANTIZE if op == DEQUANTIZE else QUANTIZE_BLOCK
    if scales.dtype != spec.F8_SCALE_DTYPE:
        raise ValueError(f"{name}: scales dtype {dtype_name(scales.dtype)} is not float32; pass the scales {quantize} "
                         "returned")
    if tuple(scales.shape) != tuple(shape):
        raise ValueError(f"{name}: q {tuple(q.shape)} with {what} needs scales of shape {tuple(shape)}, got "
                         f"{tuple(scales.shape)}; pass the scales {quantize} returned for this q and {size_name}")
    require_same_device(op, "scales", scales, "q", q)


# --- the kernel for a call: remembered per kind (lowbit/dispatch.py, `kind`) ---------------------
# A call of a kind seen before checks per call only what the kind leaves open (the argument types,
# the out= buffers, the scales' shape, dtype and device); anything else, or a first call, runs the
# full describe and resolve.

def _quantize_kernel(x: torch.Tensor, group_size: int, eps: float, ue8m0: bool, scale_layout: str, backend: str,
                     out=None) -> Kernel:
    def describe():
        _check_quantize_types(x, group_size, eps, ue8m0, scale_layout, backend)
        return describe_quantize(x, group_size, eps=eps, ue8m0=ue8m0, scale_layout=scale_layout, out=out)
    # the types too: 1 == True and 128.0 == 128, and a kind must not let through what a first call refuses
    fits = group_size.__class__ is int and ue8m0.__class__ is bool and eps.__class__ in (float, int)
    return dispatch.kernel_for(dispatch.kind(QUANTIZE, x, group_size, eps, ue8m0, scale_layout, out is not None,
                                             backend), describe, backend, fits,
                               recheck=None if out is None else lambda: check_out_buffers(x, *out, group_size,
                                                                                          scale_layout))


def _dequantize_kernel(q: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype,
                       backend: str) -> Kernel:
    fits = group_size.__class__ is int and q.dim() >= 2 and group_size >= 1 and q.device == scales.device \
        and scales.dtype == spec.F8_SCALE_DTYPE and scales.shape[:-1] == q.shape[:-1] \
        and scales.shape[-1] == q.shape[-1] // group_size  # describe_dequantize's per-call checks
    def describe():
        _check_dequantize_types(DEQUANTIZE, q, scales, "group_size", group_size, dtype, backend)
        return describe_dequantize(q, scales, group_size, dtype)
    return dispatch.kernel_for(dispatch.kind(DEQUANTIZE, q, group_size, dtype, backend), describe, backend, fits)


def _quantize_block_kernel(w: torch.Tensor, block, eps: float, ue8m0: bool, backend: str) -> Kernel:
    fits = ue8m0.__class__ is bool and eps.__class__ in (float, int)
    def describe():
        _check_block_types(w, block, eps, ue8m0, backend)
        return describe_quantize_block(w, block, eps=eps, ue8m0=ue8m0)
    return dispatch.kernel_for(dispatch.kind(QUANTIZE_BLOCK, w, block, eps, ue8m0, backend), describe, backend, fits)


def _dequantize_block_kernel(q: torch.Tensor, scales: torch.Tensor, block, dtype: torch.dtype,
                             backend: str) -> Kernel:
    fits = q.dim() == 2 and scales.dim() == 2 and q.device == scales.device \
        and scales.dtype == spec.F8_SCALE_DTYPE and block_scales_fit(q, scales, block)
    def describe():
        _check_dequantize_types(DEQUANTIZE_BLOCK, q, scales, "block", block, dtype, backend)
        return describe_dequantize_block(q, scales, block, dtype)
    return dispatch.kernel_for(dispatch.kind(DEQUANTIZE_BLOCK, q, block, dtype, backend), describe, backend, fits)


# --- the one shape function per op, and the out= contract ---------------------------------------

def scale_strides(lead, mn: int, groups: int, scale_layout: str) -> tuple[int, ...]:
    """[F8-LAYOUT] strides of (..., mn, G) float32 scales: (..., G, 1), (..., G*mn, 1, mn) or
    (..., G*A, 1, A)."""
    if scale_layout == ROW_MAJOR:
        return batch_strides(lead, (groups, 1), groups * mn)
    rows = spec.tma_rows(mn) if scale_layout == COLUMN_MAJOR_TMA else mn
    return batch_strides(lead, (1, rows), groups * rows)


def quantize_outputs(x: torch.Tensor, group_size: int,
                     scale_layout: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, scales_to_write, scales_to_return) for input x [F8-LAYOUT, F8-STORAGE]: "column_major_tma"
    scales own all A rows of storage per batch, the kernel writes them all, the caller gets mn."""
    *lead, mn, k = x.shape
    groups = k // group_size
    rows = spec.tma_rows(mn) if scale_layout == COLUMN_MAJOR_TMA else mn
    q = torch.empty(x.shape, dtype=spec.FP8_Q_DTYPE, device=x.device)
    full = torch.empty_strided((*lead, rows, groups), scale_strides(lead, rows, groups, scale_layout),
                               dtype=spec.F8_SCALE_DTYPE, device=x.device)
    return q, full, full if rows == mn else full.narrow(-2, 0, mn)  # narrow, not [..., :mn]: fake cuda tensors


def block_scale_shape(w: torch.Tensor, block) -> tuple[int, int]:
    """[F8-BLOCK] (round_up(ceil(K/BC), 4), ceil(N/BR)): F.scaled_mm's BlockWise128x128 shape."""
    return spec.round_up(spec.ceil_div(w.shape[1], block[1]), 4), spec.ceil_div(w.shape[0], block[0])


def block_scales_fit(q: torch.Tensor, scales: torch.Tensor, block) -> bool:
    """A dequantize takes quantize_fp8_block's scales, or them without the padding rows (DeepSeek-V3's
    weight_scale_inv, transposed)."""
    padded, column_blocks = block_scale_shape(q, block)
    return scales.shape[1] == column_blocks and scales.shape[0] in (padded, spec.ceil_div(q.shape[1], block[1]))


def quantize_block_outputs(w: torch.Tensor, block) -> tuple[torch.Tensor, torch.Tensor]:
    """q (N, K) and the scales (Kb4, Nb), strides (1, Kb4): the transpose of a contiguous (Nb, Kb4)
    tensor whose columns past Kb = ceil(K/BC) are 0 (allocated so: the kernels write the Kb blocks)."""
    q = torch.empty(w.shape, dtype=spec.FP8_Q_DTYPE, device=w.device)
    padded, row_blocks = block_scale_shape(w, block)
    fill = torch.empty if padded == spec.ceil_div(w.shape[1], block[1]) else torch.zeros
    return q, fill((row_blocks, padded), dtype=spec.F8_SCALE_DTYPE, device=w.device).t()


def dequantize_output(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(q.shape, dtype=dtype, device=q.device)


def check_out_buffers(x: torch.Tensor, q_buf: torch.Tensor, s_buf: torch.Tensor, group_size: int,
                      scale_layout: str) -> None:
    """[F8-OUT]: raise ValueError for any buffer that does not fit, before anything is written. An input
    the capability check refuses, or an unknown layout, is left to those checks."""
    if x.dim() < 2 or group_size < 1 or x.shape[-1] % group_size or scale_layout not in spec.F8_SCALE_LAYOUTS:
        return
    *lead, mn, k = x.shape
    groups = k // group_size
    strides = scale_strides(lead, mn, groups, scale_layout)
    problems = out_buffer_problems(x, q_buf, s_buf, spec.F8_SCALE_DTYPE, (*lead, mn, groups), strides, scale_layout)
    if problems:
        options = f"group_size {group_size} and {scale_layout} scales"
        raise ValueError(out_buffers_refused(QUANTIZE, x, options, problems, "F8-OUT"))


# --- running a call: eager calls and the torch.library ops share the kernel lookup and the shapes ---

def _quantize(kernel: Kernel, x: torch.Tensor, group_size: int, eps: float, ue8m0: bool,
              scale_layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    q, scales_all_rows, scales = quantize_outputs(x, group_size, scale_layout)
    kernel.run(x, q, scales_all_rows, group_size=group_size, eps=eps, ue8m0=ue8m0)
    return q, scales


def _dequantize(kernel: Kernel, q: torch.Tensor, scales: torch.Tensor, group_size: int,
                dtype: torch.dtype) -> torch.Tensor:
    out = dequantize_output(q, dtype)
    kernel.run(q, scales, out, group_size=group_size)
    return out


def _quantize_block(kernel: Kernel, w: torch.Tensor, block, eps: float,
                    ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    q, scales = quantize_block_outputs(w, block)
    kernel.run(w, q, scales, block=tuple(block), eps=eps, ue8m0=ue8m0)
    return q, scales


def _dequantize_block(kernel: Kernel, q: torch.Tensor, scales: torch.Tensor, block,
                      dtype: torch.dtype) -> torch.Tensor:
    out = dequantize_output(q, dtype)
    kernel.run(q, scales, out, block=tuple(block))
    return out


@torch.library.custom_op("lowbit::quantize_fp8_group", mutates_args=())
def _quantize_op(x: torch.Tensor, group_size: int, eps: float, ue8m0: bool, scale_layout: str,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize(_quantize_kernel(x, group_size, eps, ue8m0, scale_layout, backend), x, group_size, eps, ue8m0,
                     scale_layout)


@_quantize_op.register_fake
def _quantize_fake(x, group_size, eps, ue8m0, scale_layout, backend):
    dispatch.resolve(describe_quantize(x, group_size, eps=eps, ue8m0=ue8m0, scale_layout=scale_layout), backend)
    q, _, scales = quantize_outputs(x, group_size, scale_layout)
    return q, scales


@torch.library.custom_op("lowbit::quantize_fp8_group_out", mutates_args=("q_buf", "s_buf"))
def _quantize_out_op(x: torch.Tensor, q_buf: torch.Tensor, s_buf: torch.Tensor, group_size: int, eps: float,
                     ue8m0: bool, scale_layout: str, backend: str) -> None:
    _quantize_kernel(x, group_size, eps, ue8m0, scale_layout, backend, out=(q_buf, s_buf)).run(
        x, q_buf, s_buf, group_size=group_size, eps=eps, ue8m0=ue8m0)


@_quantize_out_op.register_fake
def _quantize_out_fake(x, q_buf, s_buf, group_size, eps, ue8m0, scale_layout, backend):
    dispatch.resolve(describe_quantize(x, group_size, eps=eps, ue8m0=ue8m0, scale_layout=scale_layout,
                                       out=(q_buf, s_buf)), backend)


@torch.library.custom_op("lowbit::dequantize_fp8_group", mutates_args=())
def _dequantize_op(q: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype,
                   backend: str) -> torch.Tensor:
    return _dequantize(_dequantize_kernel(q, scales, group_size, dtype, backend), q, scales, group_size, dtype)


@_dequantize_op.register_fake
def _dequantize_fake(q, scales, group_size, dtype, backend):
    dispatch.resolve(describe_dequantize(q, scales, group_size, dtype), backend)
    return dequantize_output(q, dtype)


@torch.library.custom_op("lowbit::quantize_fp8_block", mutates_args=())
def _quantize_block_op(w: torch.Tensor, block_rows: int, block_cols: int, eps: float, ue8m0: bool,
                       backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    block = (block_rows, block_cols)
    return _quantize_block(_quantize_block_kernel(w, block, eps, ue8m0, backend), w, block, eps, ue8m0)


@_quantize_block_op.register_fake
def _quantize_block_fake(w, block_rows, block_cols, eps, ue8m0, backend):
    block = (block_rows, block_cols)
    dispatch.resolve(describe_quantize_block(w, block, eps=eps, ue8m0=ue8m0), backend)
    return quantize_block_outputs(w, block)


@torch.library.custom_op("lowbit::dequantize_fp8_block", mutates_args=())
def _dequantize_block_op(q: torch.Tensor, scales: torch.Tensor, block_rows: int, block_cols: int,
                         dtype: torch.dtype, backend: str) -> torch.Tensor:
    block = (block_rows, block_cols)
    return _dequantize_block(_dequantize_block_kernel(q, scales, block, dtype, backend), q, scales, block, dtype)


@_dequantize_block_op.register_fake
def _dequantize_block_fake(q, scales, block_rows, block_cols, dtype, backend):
    block = (block_rows, block_cols)
    dispatch.resolve(describe_dequantize_block(q, scales, block, dtype), backend)
    return dequantize_output(q, dtype)
