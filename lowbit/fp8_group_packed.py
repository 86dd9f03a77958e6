"""FP8 per-token-group quantization with DeepGEMM-packed UE8M0 scales (docs/SPEC.md, "FP8"): the
public functions, their torch.library ops and fakes, the one shape function, and the out= checks.

Kernels live in backends/<name>/fp8_group_packed.py with their capability records. A kernel
receives `q` with R ≥ mn rows and `scales` with S ≥ mn logical rows and writes every row: rows
≥ mn as zeros. Returned scales are a view of S = A rows of owned storage, so the TMA padding rows
come out zero without a second pass; caller buffers get exactly their logical words.
"""

from __future__ import annotations

import torch

from . import dispatch, spec
from .backend import Kernel
from .capability import Call, dtype_name
from .errors import overlapping, require_eps, require_same_device, require_tensor, require_type, written_in_place

OP = "quantize_fp8_group_packed"
DEQUANTIZE = "dequantize_fp8_group_packed"


def quantize_fp8_group_packed(x: torch.Tensor, *, group_size: int = spec.FP8_DEFAULT_GROUP,
                              eps: float = spec.FP8_DEFAULT_EPS,
                              out: tuple[torch.Tensor, torch.Tensor] | None = None,
                              backend: str = dispatch.AUTO) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `x` (..., mn, K) to E4M3 per group of `group_size` along K, with UE8M0 scales packed
    four to an int32 in DeepGEMM's MN-major, TMA-aligned layout.

    Returns `q` (..., mn, K) float8_e4m3fn and `packed_scales` int32 of logical shape
    (..., mn, ceil(G/4)) with strides (..., 1, A), A = ceil(mn/4)*4. With `out=(q_buf, s_buf)` the
    results go into those buffers (no allocation: CUDA-graph safe on graph-safe backends), which
    are returned. For 2-D input this is vLLM's per_token_group_quant_fp8_packed_for_deepgemm.
    """
    _check_quantize_types(x, group_size, eps, backend, out)
    if out is None:
        if dispatch.eager(x):
            return _quantize(_quantize_kernel(x, group_size, eps, backend), x, group_size, eps)
        return dispatch.without_grad(torch.ops.lowbit.quantize_fp8_group_packed, x, group_size, eps, backend)
    q_buf, s_buf = out
    if dispatch.eager(x, q_buf, s_buf):
        _quantize_kernel(x, group_size, eps, backend, out=out).run(x, q_buf, s_buf, group_size=group_size, eps=eps)
    else:
        dispatch.without_grad(torch.ops.lowbit.quantize_fp8_group_packed_out, x, q_buf, s_buf, group_size, eps, backend)
    return q_buf, s_buf


def dequantize_fp8_group_packed(q: torch.Tensor, packed_scales: torch.Tensor, *,
                                group_size: int = spec.FP8_DEFAULT_GROUP,
                                dtype: torch.dtype = torch.bfloat16,
                                backend: str = dispatch.AUTO) -> torch.Tensor:
    """Expand `q` (..., mn, K) with its packed scales back to (..., mn, K) in `dtype`."""
    _check_dequantize_types(q, packed_scales, group_size, dtype, backend)
    if dispatch.eager(q, packed_scales):
        return _dequantize(_dequantize_kernel(q, packed_scales, group_size, dtype, backend), q, packed_scales,
                           group_size, dtype)
    return dispatch.without_grad(torch.ops.lowbit.dequantize_fp8_group_packed, q, packed_scales, group_size, dtype,
                                 backend)


def _check_quantize_types(x, group_size, eps, backend, out=None) -> None:
    require_type(OP, "backend", backend, str, '"auto"')
    require_tensor(OP, "x", x, "a (..., mn, K) bfloat16 tensor")
    require_type(OP, "group_size", group_size, int, "128")
    require_type(OP, "eps", eps, (float, int), "1e-10")
    if out is not None:
        check_out_pair(OP, out, "FP8-OUT")


def _check_dequantize_types(q, packed_scales, group_size, dtype, backend) -> None:
    require_type(DEQUANTIZE, "backend", backend, str, '"auto"')
    require_tensor(DEQUANTIZE, "q", q, f"the q {OP} returned")
    require_tensor(DEQUANTIZE, "packed_scales", packed_scales, f"the packed scales {OP} returned")
    require_type(DEQUANTIZE, "group_size", group_size, int, "128")
    require_type(DEQUANTIZE, "dtype", dtype, torch.dtype, "torch.bfloat16")


# --- what dispatch sees of a call ---------------------------------------------------------------

def describe_quantize(x: torch.Tensor, group_size: int = spec.FP8_DEFAULT_GROUP,
                      eps: float = spec.FP8_DEFAULT_EPS, out=None) -> Call:
    _check_quantize_types(x, group_size, eps, dispatch.AUTO, out)
    require_eps(OP, eps, "1e-10")
    return dispatch.call_for(OP, x, group_size=group_size, out_given=out is not None)


def describe_public_call(x: torch.Tensor, *, group_size: int = spec.FP8_DEFAULT_GROUP,
                         eps: float = spec.FP8_DEFAULT_EPS, out=None) -> Call:
    """describe_quantize for quantize_fp8_group_packed's own arguments (out= buffers checked too)."""
    call = describe_quantize(x, group_size, eps, out)
    if out is not None:
        check_out_buffers(x, *out, group_size)
    return call


def describe_dequantize(q: torch.Tensor, scales: torch.Tensor, group_size: int = spec.FP8_DEFAULT_GROUP,
                        dtype: torch.dtype = torch.bfloat16) -> Call:
    """Also checks that q and its packed scales belong together (ValueError otherwise)."""
    _check_dequantize_types(q, scales, group_size, dtype, dispatch.AUTO)
    name = f"lowbit.{DEQUANTIZE}"
    if scales.dtype != spec.FP8_SCALE_DTYPE:
        raise ValueError(f"{name}: packed_scales dtype {dtype_name(scales.dtype)} is not int32; pass the "
                         f"packed_scales {OP} returned")
    if q.dim() >= 2 and group_size >= 1 and q.shape[-1] % group_size == 0:
        words = spec.scale_words(int(q.shape[-1]) // group_size)
        if scales.shape != (*q.shape[:-1], words):
            raise ValueError(f"{name}: q {tuple(q.shape)} with group_size {group_size} needs packed_scales of shape "
                             f"{(*q.shape[:-1], words)}, got {tuple(scales.shape)}; pass the packed_scales {OP} "
                             "returned for this q and group_size")
    require_same_device(DEQUANTIZE, "packed_scales", scales, "q", q)
    return dispatch.call_for(DEQUANTIZE, q, group_size=group_size, out_dtype=dtype)


# --- the kernel for a call: remembered per kind (lowbit/dispatch.py, `kind`) ---------------------
# A call of a kind seen before checks per call only what the kind leaves open (the out= buffers, the
# scales' shape and device); anything else, or a first call, runs the full describe and resolve.

def _quantize_kernel(x: torch.Tensor, group_size: int, eps: float, backend: str, out=None) -> Kernel:
    return dispatch.kernel_for(dispatch.kind(OP, x, group_size, eps, out is not None, backend),
                               lambda: describe_public_call(x, group_size=group_size, eps=eps, out=out), backend,
                               recheck=None if out is None else lambda: check_out_buffers(x, *out, group_size))


def _dequantize_kernel(q: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype,
                       backend: str) -> Kernel:
    fits = q.dim() >= 2 and q.device == scales.device and scales.shape[:-1] == q.shape[:-1] and group_size >= 1 \
        and scales.shape[-1] == spec.scale_words(q.shape[-1] // group_size)  # describe_dequantize's per-call checks
    return dispatch.kernel_for(dispatch.kind(DEQUANTIZE, q, scales.dtype, group_size, dtype, backend),
                               lambda: describe_dequantize(q, scales, group_size, dtype), backend, fits)


# --- the one shape function per op, and the out= contract ---------------------------------------

def quantize_outputs(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, scales_to_write, scales_to_return) for input x [FP8-PACK, FP8-STORAGE].

    The scale storage is (..., ceil(G/4), A) words, owned whole; the kernel writes all A rows of
    its transpose, and the caller gets the first mn rows: shape (..., mn, ceil(G/4)), strides
    (..., 1, A), batch stride ceil(G/4)*A.
    """
    *lead, mn, k = x.shape
    words, rows = spec.scale_words(k // group_size), spec.tma_rows(mn)
    q = torch.empty(x.shape, dtype=spec.FP8_Q_DTYPE, device=x.device)
    full = torch.empty_strided((*lead, rows, words), batch_strides(lead, (1, rows), words * rows),
                               dtype=spec.FP8_SCALE_DTYPE, device=x.device)
    return q, full, full if rows == mn else full.narrow(-2, 0, mn)  # narrow, not [..., :mn]: fake cuda tensors


def dequantize_output(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(q.shape, dtype=dtype, device=q.device)


def check_out_pair(op: str, out, clause: str) -> None:
    """out= is a pair of tensors (q_buf, s_buf), or ValueError; a type check, asked with the others."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        what = "Tensor" if isinstance(out, torch.Tensor) else type(out).__name__  # a fake tensor's type is FakeTensor
        raise ValueError(f"lowbit.{op}: out= must be a pair of tensors (q_buf, s_buf), not {what}; pass "
                         f"out=(q_buf, s_buf) as docs/SPEC.md [{clause}] says, or drop out=")


def check_out_buffers(x: torch.Tensor, q_buf: torch.Tensor, s_buf: torch.Tensor, group_size: int) -> None:
    """[FP8-OUT]: raise ValueError for any buffer that does not fit, before anything is written.
    An input the capability check refuses (too few dims, a group size that does not divide K) is
    left to that check."""
    if x.dim() < 2 or group_size < 1 or x.shape[-1] % group_size:
        return
    *lead, mn, k = x.shape
    words, rows = spec.scale_words(k // group_size), spec.tma_rows(mn)
    problems = out_buffer_problems(x, q_buf, s_buf, spec.FP8_SCALE_DTYPE, (*lead, mn, words),
                                   batch_strides(lead, (1, rows), words * rows), f"word (r, c) at c*A + r, A = {rows}")
    if problems:
        raise ValueError(out_buffers_refused(OP, x, f"group_size {group_size}", problems, "FP8-OUT"))


def out_buffers_refused(op: str, x: torch.Tensor, options: str, problems: list[str], clause: str) -> str:
    """The refusal of out= buffers that do not fit x, naming every problem."""
    return (f"lowbit.{op}: out= buffers do not fit x {tuple(x.shape)} with {options}: " + "; ".join(problems) +
            f"; pass buffers allocated as docs/SPEC.md [{clause}] says, or drop out= (lowbit then allocates them)")


def out_buffer_problems(x: torch.Tensor, q_buf: torch.Tensor, s_buf: torch.Tensor, scale_dtype: torch.dtype,
                        scale_shape: tuple, scale_strides: tuple, layout: str) -> list[str]:
    """What does not fit in out=(q_buf, s_buf) for x (..., mn, K) [FP8-OUT, F8-OUT]: `q_buf` contiguous E4M3
    (..., R, K) with mn <= R <= A; `s_buf` of `scale_dtype`, `scale_shape` and `scale_strides` (the
    stride of a dimension of size 1 is not compared; `layout` says the strides in words); both on
    x's device, with the storage their views span."""
    *lead, mn, k = x.shape
    lead, rows = tuple(lead), spec.tma_rows(mn)
    problems = []
    for what, buf, dtype in (("q_buf", q_buf, spec.FP8_Q_DTYPE), ("s_buf", s_buf, scale_dtype)):
        if buf.dtype != dtype:
            problems.append(f"{what} dtype is {dtype_name(buf.dtype)}, needs {dtype_name(dtype)}")
        if buf.device != x.device:
            problems.append(f"{what} is on {buf.device}, x on {x.device}")
        refused = written_in_place(what, buf)
        if refused:
            problems.append(refused)
    if q_buf.dim() != x.dim() or tuple(q_buf.shape[:-2]) != lead or q_buf.shape[-1] != k \
            or not mn <= q_buf.shape[-2] <= rows:
        problems.append(f"q_buf shape is {tuple(q_buf.shape)}, needs {(*lead, 'R', k)} with {mn} <= R <= {rows}")
    elif not q_buf.is_contiguous():
        problems.append(f"q_buf strides {q_buf.stride()} are not contiguous")
    if tuple(s_buf.shape) != scale_shape:
        problems.append(f"s_buf shape is {tuple(s_buf.shape)}, needs {scale_shape}")
    elif any(size > 1 and got != want for size, got, want in zip(s_buf.shape, s_buf.stride(), scale_strides)):
        problems.append(f"s_buf strides are {s_buf.stride()}, needs {scale_strides} ({layout})")
    shared = overlapping({"q_buf": q_buf, "s_buf": s_buf, "x": x})
    if shared:
        problems.append(shared)
    for what, buf in (("q_buf", q_buf), ("s_buf", s_buf)):
        have = buf.untyped_storage().nbytes() // buf.element_size() - buf.storage_offset()
        if have < _extent(buf):
            problems.append(f"{what} storage holds {have} elements from its offset, its view needs {_extent(buf)}")
    return problems


def _extent(t: torch.Tensor) -> int:
    """Elements of storage a strided view spans from its offset."""
    return 0 if t.numel() == 0 else 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))


def batch_strides(lead, inner: tuple[int, int], batch: int) -> tuple[int, ...]:
    """Strides of (..., R, C): `inner` within a batch, batches of `batch` elements one after another.
    [FP8-PACK]: inner (1, A), batch ceil(G/4)*A; [F8-LAYOUT] the same for float32 scales."""
    strides = list(inner)
    for size in reversed(lead):
        strides.insert(0, batch)
        batch *= size
    return tuple(strides)


# --- running a call: eager calls and the torch.library ops share the kernel lookup and the shapes ---

def _quantize(kernel: Kernel, x: torch.Tensor, group_size: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    q, scales_all_rows, scales = quantize_outputs(x, group_size)
    kernel.run(x, q, scales_all_rows, group_size=group_size, eps=eps)
    return q, scales


def _dequantize(kernel: Kernel, q: torch.Tensor, packed_scales: torch.Tensor, group_size: int,
                dtype: torch.dtype) -> torch.Tensor:
    out = dequantize_output(q, dtype)
    kernel.run(q, packed_scales, out, group_size=group_size)
    return out


@torch.library.custom_op("lowbit::quantize_fp8_group_packed", mutates_args=())
def _quantize_op(x: torch.Tensor, group_size: int, eps: float, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize(_quantize_kernel(x, group_size, eps, backend), x, group_size, eps)


@_quantize_op.register_fake
def _quantize_fake(x, group_size, eps, backend):
    dispatch.resolve(describe_quantize(x, group_size, eps), backend)
    q, _, scales = quantize_outputs(x, group_size)
    return q, scales


@torch.library.custom_op("lowbit::quantize_fp8_group_packed_out", mutates_args=("q_buf", "s_buf"))
def _quantize_out_op(x: torch.Tensor, q_buf: torch.Tensor, s_buf: torch.Tensor, group_size: int, eps: float,
                     backend: str) -> None:
    _quantize_kernel(x, group_size, eps, backend, out=(q_buf, s_buf)).run(x, q_buf, s_buf, group_size=group_size,
                                                                          eps=eps)


@_quantize_out_op.register_fake
def _quantize_out_fake(x, q_buf, s_buf, group_size, eps, backend):
    dispatch.resolve(describe_public_call(x, group_size=group_size, eps=eps, out=(q_buf, s_buf)), backend)


@torch.library.custom_op("lowbit::dequantize_fp8_group_packed", mutates_args=())
def _dequantize_op(q: torch.Tensor, packed_scales: torch.Tensor, group_size: int, dtype: torch.dtype,
                   backend: str) -> torch.Tensor:
    return _dequantize(_dequantize_kernel(q, packed_scales, group_size, dtype, backend), q, packed_scales,
                       group_size, dtype)


@_dequantize_op.register_fake
def _dequantize_fake(q, packed_scales, group_size, dtype, backend):
    dispatch.resolve(describe_dequantize(q, packed_scales, group_size, dtype), backend)
    return dequantize_output(q, dtype)
