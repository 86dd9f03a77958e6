"""NVFP4 (docs/SPEC.md "NVFP4") as portable Triton kernels, and their launchers.

- `quantize_nvfp4_kernel`: one pass over BLOCK_M x BLOCK_K tiles with the global scale known: given
  (one, or one per row), or reduced in its prologue from the partial maxima `nvfp4_amax_kernel`
  left (global_scale=None, per tensor). Per block: the amax in registers, the E4M3 scale and the
  element multiplier by integer arithmetic and IEEE divisions (one per block, not per element), then
  E2M1 nibbles through the ENCODE hook.
- `quantize_nvfp4_rows_kernel`: global_scale=None per row, fused: each program owns whole rows,
  takes their amax, writes their scales, then quantizes them (from registers when a row fits one
  tile, else a second sweep that reads the rows back from L2).
- `nvfp4_amax_kernel`: max |x| over the finite elements, per program (partials) or per row, which
  it turns into the global scale.
- `dequantize_nvfp4_kernel`.

The per-tensor scale with global_scale=None takes two launches and reads x twice (the quantize pass
is bound by instructions, not bytes, so its second read costs little more than the first pass).
Swizzled block scales [NV-SWIZZLE] are written straight to their tiled offsets: programs cover the
padding rows and columns too, and write them as 0.

ENCODE(y) -> packed bytes takes scaled values y (BLOCK_M, BLOCKS, 16) to E2M1 bytes (BLOCK_M,
BLOCKS * 8); portable here, one PTX instruction a pair on the sm_100 families (backends/cuda/ptx.py).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from lowbit import spec

from .float_bits import OUT_BITS, e4m3_integer, e4m3_value, output_bits, to_f32
from .launch import Launch, LaunchConfig, fitting, size_class
from .mxfp4 import F32_INF_BITS, F32_NAN_BITS, ONE_SIXTH_BITS, pack_pairs, swizzled_offset

BLOCK = tl.constexpr(spec.NV_BLOCK)
GS_MIN = tl.constexpr(spec.NV_GS_MIN)
GS_MAX = tl.constexpr(spec.NV_GS_MAX)
NUMERATOR = tl.constexpr(spec.NV_GLOBAL_NUMERATOR)
SCALE_NAN = tl.constexpr(spec.NV_SCALE_NAN)
NAN_BLOCK_BYTE = tl.constexpr(spec.E2M1_NAN_BLOCK_NIBBLE * 0x11)
# Where quantize_nvfp4_kernel's global scale comes from (its SCALE constexpr)
GIVEN, GIVEN_PER_ROW, FROM_PARTIALS = "given", "given_per_row", "from_partials"


@triton.jit
def encode_portable(y):
    """[NV-ELEMENT] E2M1 nibbles of y, packed. a = |y| saturated at 6. From 1 up E2M1 is a float
    with one mantissa bit: round float32's mantissa to one bit, ties to even, and rebias the
    exponent. Below 1 the codes 0, 1, 2 are a * 2 rounded to an integer, ties to even: adding 2^22
    (whose ulp is 0.5) leaves exactly that count in the low bits."""
    a = tl.minimum(tl.abs(y), 6.0)
    bits = a.to(tl.int32, bitcast=True)
    normal = (bits + (0x1FFFFF - 0x3F000000) + ((bits >> 22) & 1)) >> 22  # 1.0 = 0x3F800000 -> code 2
    below_one = (a + 4194304.0).to(tl.int32, bitcast=True) - 0x4A800000
    code = tl.where(bits >= 0x3F800000, normal, below_one)
    return pack_pairs(code | ((y.to(tl.int32, bitcast=True) >> 28) & 0x8))


@triton.jit
def finite_amax_bits(x):
    """Per row of the (M, N) float32 tile x: the bits of max |x| over the finite elements (0: none)."""
    bits = x.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return tl.max(tl.where(bits < F32_INF_BITS, bits, 0), axis=1)


@triton.jit
def global_scale_of(amax):
    """[NV-GLOBAL] min(fl32(2688 / amax), 2^118); amax = 0 divides to +Inf."""
    return tl.minimum(tl.math.div_rn(tl.full(amax.shape, NUMERATOR, tl.float32), amax), GS_MAX)


@triton.jit
def quantize_tile(x, gs, row, col0, rows, k, scale_rows, q_ptr, s_ptr, SWIZZLED: tl.constexpr, ENCODE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Quantize the float32 tile x (BLOCK_M, BLOCK_K) of rows `row` from column col0 (zeros outside
    the tensor) under global scales gs (BLOCK_M,), and store its bytes and block scales."""
    BLOCKS: tl.constexpr = BLOCK_K // BLOCK
    x = tl.reshape(x, (BLOCK_M, BLOCKS, BLOCK))
    # [NV-AMAX, NV-NAN]: an integer max of the magnitude bits; NaN sorts above +Inf
    amax_bits = tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=2)
    usable = (gs >= GS_MIN) & (gs <= GS_MAX)  # [NV-GLOBAL-GIVEN]: False for NaN
    nan = (amax_bits > F32_INF_BITS) | ~usable[:, None]
    one_sixth = tl.full((), ONE_SIXTH_BITS, tl.int32).to(tl.float32, bitcast=True)
    # [NV-SCALE] two products (a NaN block's v is NaN; its byte is replaced below); +Inf saturates
    v = gs[:, None] * (amax_bits.to(tl.float32, bitcast=True) * one_sixth)
    sf = e4m3_integer(v).to(tl.int32)
    sf_value = e4m3_value(sf)
    # [NV-MULTIPLIER] IEEE divisions, per row and per block; usable gs keep both finite
    inverse_gs = tl.math.div_rn(tl.full(gs.shape, 1.0, tl.float32), gs)
    m = tl.math.div_rn(tl.full(sf_value.shape, 1.0, tl.float32), sf_value * inverse_gs[:, None])
    m = tl.where(sf == 0, 0.0, m)
    packed = ENCODE(x * m[:, :, None])  # [NV-ELEMENT, NV-PACK]
    nan_bytes = tl.reshape(tl.broadcast_to(nan[:, :, None], (BLOCK_M, BLOCKS, BLOCK // 2)), (BLOCK_M, BLOCK_K // 2))
    packed = tl.where(nan_bytes, NAN_BLOCK_BYTE, packed)
    row64 = row.to(tl.int64)[:, None]
    byte = col0 // 2 + tl.arange(0, BLOCK_K // 2)
    tl.store(q_ptr + row64 * (k // 2) + byte[None, :], packed.to(tl.uint8),
             mask=(row < rows)[:, None] & (byte < k // 2)[None, :])

    sf = tl.where(nan, SCALE_NAN, sf)
    col = col0 // BLOCK + tl.arange(0, BLOCKS)
    cols = k // BLOCK
    if SWIZZLED:  # [NV-SWIZZLE]: padding rows and columns are written as 0
        sf = tl.where((row < rows)[:, None] & (col < cols)[None, :], sf, 0)
        tl.store(s_ptr + swizzled_offset(row64, col, cols), sf.to(tl.uint8),
                 mask=(row < scale_rows)[:, None] & (col < (cols + 3) // 4 * 4)[None, :])
    else:  # [NV-LINEAR]
        tl.store(s_ptr + row64 * cols + col[None, :], sf.to(tl.uint8),
                 mask=(row < rows)[:, None] & (col < cols)[None, :])


@triton.jit
def quantize_nvfp4_kernel(x_ptr, q_ptr, s_ptr, gs_ptr, partials_ptr, rows, k, scale_rows, stride_xm, stride_xk, parts,
                          SCALE: tl.constexpr, SWIZZLED: tl.constexpr, ENCODE: tl.constexpr, PARTS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col0 = tl.program_id(1) * BLOCK_K
    col = col0 + tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + row.to(tl.int64)[:, None] * stride_xm + col.to(tl.int64)[None, :] * stride_xk,
                mask=(row < rows)[:, None] & (col < k)[None, :], other=0.0)
    if SCALE == "given":
        gs = tl.full((BLOCK_M,), 0.0, tl.float32) + tl.load(gs_ptr)
    elif SCALE == "given_per_row":
        gs = tl.load(gs_ptr + row, mask=row < rows, other=1.0)
    else:
        partial = tl.load(partials_ptr + tl.arange(0, PARTS), mask=tl.arange(0, PARTS) < parts, other=0.0)
        scale = global_scale_of(tl.max(partial, axis=0))
        if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
            tl.store(gs_ptr, scale)
        gs = tl.full((BLOCK_M,), 0.0, tl.float32) + scale
    quantize_tile(to_f32(x), gs, row, col0, rows, k, scale_rows, q_ptr, s_ptr, SWIZZLED, ENCODE, BLOCK_M, BLOCK_K)


@triton.jit
def quantize_nvfp4_rows_kernel(x_ptr, q_ptr, s_ptr, gs_ptr, rows, k, scale_rows, stride_xm, stride_xk,
                               SWIZZLED: tl.constexpr, ENCODE: tl.constexpr, ONE_TILE: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """global_scale=None, per row: each program owns BLOCK_M whole rows (and the swizzle's padding rows)."""
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    base = x_ptr + row.to(tl.int64)[:, None] * stride_xm
    if ONE_TILE:  # the row fits one tile: load it once
        col = tl.arange(0, BLOCK_K)
        x = to_f32(tl.load(base + col[None, :] * stride_xk, mask=(row < rows)[:, None] & (col < k)[None, :],
                           other=0.0))
        gs = global_scale_of(finite_amax_bits(x).to(tl.float32, bitcast=True))
        tl.store(gs_ptr + row, gs, mask=row < rows)
        quantize_tile(x, gs, row, 0, rows, k, scale_rows, q_ptr, s_ptr, SWIZZLED, ENCODE, BLOCK_M, BLOCK_K)
    else:
        amax_bits = tl.zeros((BLOCK_M,), tl.int32)
        for col0 in range(0, k, BLOCK_K):
            col = col0 + tl.arange(0, BLOCK_K)
            x = to_f32(tl.load(base + col.to(tl.int64)[None, :] * stride_xk,
                               mask=(row < rows)[:, None] & (col < k)[None, :], other=0.0))
            amax_bits = tl.maximum(amax_bits, finite_amax_bits(x))
        gs = global_scale_of(amax_bits.to(tl.float32, bitcast=True))
        tl.store(gs_ptr + row, gs, mask=row < rows)
        for col0 in range(0, k, BLOCK_K):
            col = col0 + tl.arange(0, BLOCK_K)
            x = to_f32(tl.load(base + col.to(tl.int64)[None, :] * stride_xk,
                               mask=(row < rows)[:, None] & (col < k)[None, :], other=0.0))
            quantize_tile(x, gs, row, col0, rows, k, scale_rows, q_ptr, s_ptr, SWIZZLED, ENCODE, BLOCK_M, BLOCK_K)


@triton.jit
def nvfp4_amax_kernel(x_ptr, out_ptr, rows, k, stride_xm, stride_xk, PER_ROW: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """PER_ROW: each program sweeps BLOCK_M whole rows and writes their global scales to out_ptr[row].
    Else program p takes tiles p, p + P, p + 2P, ... of all BLOCK_M x BLOCK_K tiles (so a few rows
    still spread over many programs) and writes their max |x| over the finite elements to out_ptr[p]."""
    if PER_ROW:
        row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        amax_bits = tl.zeros((BLOCK_M,), tl.int32)
        for col0 in range(0, k, BLOCK_K):
            col = col0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + row.to(tl.int64)[:, None] * stride_xm + col.to(tl.int64)[None, :] * stride_xk,
                        mask=(row < rows)[:, None] & (col < k)[None, :], other=0.0)
            amax_bits = tl.maximum(amax_bits, finite_amax_bits(to_f32(x)))
        tl.store(out_ptr + row, global_scale_of(amax_bits.to(tl.float32, bitcast=True)), mask=row < rows)
    else:
        column_tiles = tl.cdiv(k, BLOCK_K)
        best = tl.zeros((BLOCK_M, BLOCK_K), tl.int32)  # elementwise maxima, reduced once at the end
        for tile in range(tl.program_id(0), tl.cdiv(rows, BLOCK_M) * column_tiles, tl.num_programs(0)):
            row = (tile // column_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
            col = (tile % column_tiles) * BLOCK_K + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + row.to(tl.int64)[:, None] * stride_xm + col.to(tl.int64)[None, :] * stride_xk,
                        mask=(row < rows)[:, None] & (col < k)[None, :], other=0.0)
            bits = to_f32(x).to(tl.int32, bitcast=True) & 0x7FFFFFFF
            best = tl.maximum(best, tl.where(bits < F32_INF_BITS, bits, 0))
        tl.store(out_ptr + tl.program_id(0), tl.max(tl.max(best, axis=1), axis=0).to(tl.float32, bitcast=True))


@triton.jit
def dequantize_nvfp4_kernel(q_ptr, s_ptr, gs_ptr, out_ptr, rows, k, PER_ROW: tl.constexpr, SWIZZLED: tl.constexpr,
                            OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """[NV-DEQUANT] into out_ptr as bits: OUT is 32 (float32), 16 (bfloat16) or 15 (float16)."""
    BLOCKS: tl.constexpr = BLOCK_K // BLOCK
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row64 = row.to(tl.int64)[:, None]
    row_ok = (row < rows)[:, None]
    byte = tl.program_id(1) * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(q_ptr + row64 * (k // 2) + byte[None, :], mask=row_ok & (byte < k // 2)[None, :], other=0)
    packed = packed.to(tl.int32)
    nibble = tl.reshape(tl.join(packed & 0xF, packed >> 4), (BLOCK_M, BLOCKS, BLOCK))
    code = nibble & 7  # E2M1 magnitudes: 0, 0.5, then (1 + m/2) * 2^(e - 1) from code 2 = 0b01 0 up
    bits = tl.where(code >= 2, (((code >> 1) + 126) << 23) | ((code & 1) << 22), tl.where(code == 1, 126 << 23, 0))
    value = (bits | ((nibble & 8) << 28)).to(tl.float32, bitcast=True)

    col = tl.program_id(1) * BLOCKS + tl.arange(0, BLOCKS)
    cols = k // BLOCK
    if SWIZZLED:
        offset = swizzled_offset(row64, col, cols)
    else:
        offset = row64 * cols + col[None, :]
    sf = tl.load(s_ptr + offset, mask=row_ok & (col < cols)[None, :], other=0).to(tl.int32)
    if PER_ROW:
        gs = tl.load(gs_ptr + row, mask=row < rows, other=1.0)
    else:
        gs = tl.full((BLOCK_M,), 0.0, tl.float32) + tl.load(gs_ptr)
    factor = tl.math.div_rn(e4m3_value(sf), gs[:, None])
    usable = (gs >= GS_MIN) & (gs <= GS_MAX)  # [NV-GLOBAL-GIVEN]: blocks under an unusable gs are NaN
    factor = tl.where(usable[:, None], factor, tl.full((), F32_NAN_BITS, tl.int32).to(tl.float32, bitcast=True))
    out = tl.reshape(value * factor[:, :, None], (BLOCK_M, BLOCK_K))

    col = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = row_ok & (col < k)[None, :]
    result = output_bits(out, OUT)
    tl.store(out_ptr + row64 * k + col[None, :], result, mask=mask)


# (max rows, max K, config): the first entry that fits wins. Tuned on an H100; see docs/benchmarks.md.
LAUNCH_TABLE = (
    (128, None, LaunchConfig(block_m=4, block_k=256, num_warps=4)),
    (1024, None, LaunchConfig(block_m=1, block_k=1024, num_warps=2)),
    (None, None, LaunchConfig(block_m=4, block_k=1024, num_warps=4)),
)
ROWS_TABLE = (  # quantize_nvfp4_rows_kernel: whole rows per program
    (128, 8192, LaunchConfig(block_m=1, block_k=8192, num_warps=8)),
    (None, 8192, LaunchConfig(block_m=1, block_k=8192, num_warps=4)),
    (None, None, LaunchConfig(block_m=1, block_k=4096, num_warps=8)),
)
AMAX_TABLE = ((None, None, LaunchConfig(block_m=4, block_k=1024, num_warps=4)),)
DEQUANTIZE_TABLE = (
    (128, None, LaunchConfig(block_m=4, block_k=256, num_warps=4)),
    (None, None, LaunchConfig(block_m=4, block_k=1024, num_warps=4)),
)
MAX_PARTS = 1024  # partial maxima of the per-tensor amax pass: its program count at most


def quantize(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, gs: torch.Tensor, *, per_row: bool,
             compute_scale: bool, swizzled: bool, encode=encode_portable, config: LaunchConfig | None = None) -> None:
    """Write NVFP4 of `x` (..., K) into contiguous `q` (..., K/2) and `scales` (linear or swizzled).
    `gs` holds one global scale or one per row; with `compute_scale` it is computed into `gs` first."""
    k, rows = x.shape[-1], math.prod(x.shape[:-1])
    if x.numel() == 0:  # the scales are empty too
        if compute_scale:
            gs.fill_(spec.NV_GS_MAX)  # no finite element: amax = 0 [NV-GLOBAL]
        return
    x2 = x if x.dim() == 2 else x.reshape(rows, k)  # a view when the leading dims' strides allow it, else one copy
    scale_rows = scales.shape[0] if swizzled else rows
    s = scales.view(torch.uint8)
    if compute_scale and per_row:
        _, block_m, launch = size_class(rows_launches(k, swizzled, encode, config), rows)
        launch((triton.cdiv(scale_rows, block_m), 1, 1), x2, q, s, gs, rows, k, scale_rows, x2.stride(0), x2.stride(1))
        return
    if compute_scale:
        partials = amax_partials(x2, rows, k)
        source, parts = FROM_PARTIALS, partials.numel()
    else:
        source, partials, parts = (GIVEN if gs.numel() == 1 else GIVEN_PER_ROW), gs, 1
        gs = gs if gs.numel() == 1 or gs.is_contiguous() else gs.contiguous()
    _, block_m, column_blocks, launch = size_class(
        launches(k, source, swizzled, encode, triton.next_power_of_2(parts), config), rows)
    launch((triton.cdiv(scale_rows, block_m), column_blocks, 1), x2, q, s, gs, partials, rows, k, scale_rows,
           x2.stride(0), x2.stride(1), parts)


def global_scale(x: torch.Tensor, gs: torch.Tensor, *, per_row: bool) -> None:
    """[NV-GLOBAL] into `gs` (() or the rows): one amax launch per row, or partial maxima and a
    second, one-row launch that turns them into the scale."""
    k, rows = x.shape[-1], math.prod(x.shape[:-1])
    if x.numel() == 0:
        gs.fill_(spec.NV_GS_MAX)
        return
    x2 = x if x.dim() == 2 else x.reshape(rows, k)
    if per_row:
        _amax(x2, gs, rows, k, per_row=True)
    else:
        partials = amax_partials(x2, rows, k)
        _amax(partials.view(1, -1), gs, 1, partials.numel(), per_row=True)


def amax_partials(x2: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    """The per-program maxima of the per-tensor amax pass (float32, at most MAX_PARTS)."""
    block_m, block_k, launch = amax_launch(k, False)
    tiles = triton.cdiv(rows, block_m) * triton.cdiv(k, block_k)
    partials = torch.empty(min(tiles, MAX_PARTS), dtype=torch.float32, device=x2.device)
    launch((partials.numel(), 1, 1), x2, partials, rows, k, x2.stride(0), x2.stride(1))
    return partials


def _amax(x2: torch.Tensor, out: torch.Tensor, rows: int, k: int, *, per_row: bool) -> None:
    block_m, _, launch = amax_launch(k, per_row)
    launch((triton.cdiv(rows, block_m), 1, 1), x2, out, rows, k, x2.stride(0), x2.stride(1))


def dequantize(q: torch.Tensor, scales: torch.Tensor, gs: torch.Tensor, out: torch.Tensor, *, swizzled: bool,
               config: LaunchConfig | None = None) -> None:
    """[NV-DEQUANT] q (..., K/2) with block scales (linear or swizzled) and gs into contiguous out (..., K)."""
    k = out.shape[-1]
    rows = out.numel() // k if k else 0
    if rows == 0:
        return
    int_dtype, out_bits = OUT_BITS[out.dtype]
    per_row = gs.numel() != 1
    gs = gs if not per_row or gs.is_contiguous() else gs.contiguous()
    # the kernel addresses q and the scales as dense rows: strided ones (the records take any strides)
    # are made dense first, on the device
    q, scales = q.view(torch.uint8).contiguous(), scales.view(torch.uint8).contiguous()
    _, block_m, column_blocks, launch = size_class(dequantize_launches(k, per_row, swizzled, out_bits, config), rows)
    launch((triton.cdiv(rows, block_m), column_blocks, 1), q, scales, gs, out.view(int_dtype), rows, k)


# --- launch tables, resolved once per kind of call ----------------------------------------------------

def _block_k(config: LaunchConfig, k: int) -> int:
    """BLOCK_K for rows of k: at most the row (a power of two), at least 64, so that a program's
    block scales are whole groups of 4 [NV-SWIZZLE]."""
    return max(64, min(config.block_k, triton.next_power_of_2(k)))


@functools.lru_cache(maxsize=1024)
def launches(k: int, source: str, swizzled: bool, encode, parts: int,
             config: LaunchConfig | None) -> tuple[tuple[int | None, int, int, Launch], ...]:
    """(max rows, BLOCK_M, column blocks, launch) of quantize_nvfp4_kernel per LAUNCH_TABLE entry."""
    found = []
    for max_rows, c in fitting(LAUNCH_TABLE, k, config):
        block_k = _block_k(c, k)
        constexprs = dict(SCALE=source, SWIZZLED=swizzled, ENCODE=encode, PARTS=parts, BLOCK_M=c.block_m,
                          BLOCK_K=block_k)
        # no product here feeds a sum, so fp fusion could change nothing; off, so that it never does
        launch = Launch(quantize_nvfp4_kernel, constexprs, num_warps=c.num_warps, enable_fp_fusion=False)
        found.append((max_rows, c.block_m, triton.cdiv(k, block_k), launch))
    return tuple(found)


@functools.lru_cache(maxsize=256)
def rows_launches(k: int, swizzled: bool, encode,
                  config: LaunchConfig | None) -> tuple[tuple[int | None, int, Launch], ...]:
    """(max rows, BLOCK_M, launch) of quantize_nvfp4_rows_kernel per ROWS_TABLE entry for rows of k."""
    found = []
    for max_rows, c in fitting(ROWS_TABLE, k, config):
        block_k = _block_k(c, k)
        constexprs = dict(SWIZZLED=swizzled, ENCODE=encode, ONE_TILE=block_k >= k, BLOCK_M=c.block_m,
                          BLOCK_K=block_k)
        found.append((max_rows, c.block_m, Launch(quantize_nvfp4_rows_kernel, constexprs, num_warps=c.num_warps,
                                                  enable_fp_fusion=False)))
    return tuple(found)


@functools.lru_cache(maxsize=256)
def amax_launch(k: int, per_row: bool) -> tuple[int, int, Launch]:
    """(BLOCK_M, BLOCK_K, launch) of nvfp4_amax_kernel for rows of k."""
    ((_, c),) = fitting(AMAX_TABLE, k)
    block_k = min(c.block_k, triton.next_power_of_2(max(k, 1)))
    launch = Launch(nvfp4_amax_kernel, dict(PER_ROW=per_row, BLOCK_M=c.block_m, BLOCK_K=block_k),
                    num_warps=c.num_warps)
    return c.block_m, block_k, launch


@functools.lru_cache(maxsize=256)
def dequantize_launches(k: int, per_row: bool, swizzled: bool, out_bits: int,
                        config: LaunchConfig | None) -> tuple[tuple[int | None, int, int, Launch], ...]:
    found = []
    for max_rows, c in fitting(DEQUANTIZE_TABLE, k, config):
        block_k = max(BLOCK.value, min(c.block_k, triton.next_power_of_2(k)))
        constexprs = dict(PER_ROW=per_row, SWIZZLED=swizzled, OUT=out_bits, BLOCK_M=c.block_m, BLOCK_K=block_k)
        launch = Launch(dequantize_nvfp4_kernel, constexprs, num_warps=c.num_warps, enable_fp_fusion=False)
        found.append((max_rows, c.block_m, triton.cdiv(k, block_k), launch))
    return tuple(found)
