"""MXFP8 (docs/SPEC.md "MXFP8") as portable Triton kernels, and their launchers.

- `quantize_mxfp8_kernel`: one pass, bound by bytes (bfloat16 in: 2 bytes read and 1 + 1/32 written
  per element). Each program loads a BLOCK_M x BLOCK_K tile, reduces every 32-element block to its
  amax in registers (an integer max of the magnitude bits: NaN sorts above +Inf, so the same max says
  whether the block holds a NaN), derives the E8M0 scale from exponent bits, scales by an exact power
  of two, converts to E4M3 and stores the elements and the scale bytes. Swizzled scales
  [MX8-SWIZZLE] are stored straight to their tiled offsets: the grid covers the padding rows, and
  BLOCK_K is a multiple of 128, so every program writes whole groups of four scale columns; padding
  bytes are written as 0 in the same launch.
- `dequantize_mxfp8_kernel`: E4M3 value times 2^(byte - 127), rounded to the output dtype (bfloat16
  by integer arithmetic), reading the scales in either layout.

The E4M3 conversion has the two forms of fp8_group_packed.py behind HARDWARE_E4M3: the float8e4nv
cast (cvt.rn.satfinite.e4m3x2, sm_89+) and integer round-to-nearest-even, which every target and the
interpreter run exactly.

No scale depends on a float32 subnormal: the rceil scale of a block whose fl32(amax * fl32(1/448))
would be subnormal comes from two amax thresholds, and the factor 2^-127 (an Inf block's finite
elements) is two normal powers of two, except on CUDA, whose mul.f32 keeps subnormal operands.
Subnormal inputs (float32, or bfloat16 widened by its bits) reach the scaling product as they are,
as in the MXFP4 kernel. Dequantize reads E4M3 through float16 (E4M3's subnormals are float16
subnormals, which the conversion to float32 keeps), scales by two normal powers of two, and writes
the float32 subnormals [MX8-DEQUANT] asks for where the scale is small.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from lowbit import spec

from .float_bits import (
    OUT_BITS,
    ceil_exponent_field,
    e4m3_as_float16_bits,
    e4m3_integer,
    pow2_or_subnormal,
    scaled_float16_bits,
    store_chunks,
    times_pow2,
    to_f32,
)
from .fp8_group_packed import e4m3_hardware
from .launch import Launch, LaunchConfig, byte_rows, fitting, flat_bytes, size_class
from .mxfp4 import F32_INF_BITS, swizzled_offset

BLOCK = tl.constexpr(spec.MX_BLOCK)  # elements per scale
FLOOR_OFFSET = tl.constexpr(127 + spec.MX8_E4M3_EMAX)  # [MX8-FLOOR]: exponent field - 127 - 8
NAN_BYTE = tl.constexpr(spec.MX8_NAN_BYTE)
ONE_OVER_448_BITS = tl.constexpr(0x3B124925)  # fl32(1/448), as [MX8-RCEIL] multiplies by it
# [MX8-RCEIL] where d = fl32(amax * fl32(1/448)) is subnormal: rounding is monotonic, so
# ceil(log2 d) >= -126 exactly for amax >= 0x04600002 (d > 2^-127) and >= -125 exactly for
# amax >= 0x04E00001 (d > 2^-126: d is normal from there on). Bits of non-negative float32 values
# order like the values. tests/backends/triton/test_mxfp8.py derives both with exact fractions.
RCEIL_MINUS_126_BITS = tl.constexpr(0x04600002)
RCEIL_MINUS_125_BITS = tl.constexpr(0x04E00001)


@triton.jit
def quantize_mxfp8_kernel(x_ptr, q_ptr, s_ptr, rows, k, scale_rows, stride_xm, stride_xk,
                          FLOOR: tl.constexpr, HARDWARE_E4M3: tl.constexpr, SWIZZLED: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    BLOCKS: tl.constexpr = BLOCK_K // BLOCK
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = (row < rows)[:, None]
    row64 = row.to(tl.int64)[:, None]  # int64 offsets: tensors past 2^31 elements
    col = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = (col < k)[None, :]
    x = tl.load(x_ptr + row64 * stride_xm + col.to(tl.int64)[None, :] * stride_xk, mask=row_ok & col_ok, other=0.0)
    x = tl.reshape(to_f32(x), (BLOCK_M, BLOCKS, BLOCK))

    amax_bits = tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=2)  # [MX8-AMAX]
    nan = amax_bits > F32_INF_BITS  # [MX8-NAN]: its scale and elements are fixed below
    if FLOOR:  # [MX8-FLOOR]
        e = (amax_bits >> 23) - FLOOR_OFFSET
    else:  # [MX8-RCEIL]: a float32 product with fl32(1/448), never a division
        d = amax_bits.to(tl.float32, bitcast=True) * tl.full((), ONE_OVER_448_BITS, tl.int32).to(tl.float32,
                                                                                                   bitcast=True)
        e = ceil_exponent_field(d) - 127
        e = tl.where(amax_bits < RCEIL_MINUS_125_BITS, tl.where(amax_bits < RCEIL_MINUS_126_BITS, -127, -126), e)
    e = tl.minimum(tl.maximum(e, -127), 127)  # [MX8-SCALE]
    e = tl.where(amax_bits == F32_INF_BITS, 127, e)  # [MX8-INF]

    if HARDWARE_E4M3:  # [MX8-ELEMENT] x * 2^-e, exact; NVIDIA's mul.f32 keeps the subnormal 2^-127
        q = e4m3_hardware(x * pow2_or_subnormal(-e)[:, :, None])
    else:  # two normal factors: other targets may flush a subnormal 2^-127
        q = e4m3_integer(times_pow2(x, -e[:, :, None]))
    q = tl.where(nan[:, :, None], NAN_BYTE, q)
    tl.store(q_ptr + row64 * k + col[None, :], tl.reshape(q, (BLOCK_M, BLOCK_K)), mask=row_ok & col_ok)

    scale = tl.where(nan, 255, e + 127)
    block = tl.program_id(1) * BLOCKS + tl.arange(0, BLOCKS)
    cols = k // BLOCK
    if SWIZZLED:  # [MX8-SWIZZLE]: padding rows and columns are written as 0
        scale = tl.where(row_ok & (block < cols)[None, :], scale, 0)
        tl.store(s_ptr + swizzled_offset(row64, block, cols), scale.to(tl.uint8),
                 mask=(row < scale_rows)[:, None] & (block < (cols + 3) // 4 * 4)[None, :])
    else:  # [MX8-LINEAR]
        tl.store(s_ptr + row64 * cols + block[None, :], scale.to(tl.uint8), mask=row_ok & (block < cols)[None, :])


@triton.jit
def dequantize_mxfp8_kernel(q_ptr, s_ptr, out_ptr, rows, k, stride_qm, stride_qk, stride_sm, stride_sk,
                            SWIZZLED: tl.constexpr, OUT: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    """[MX8-DEQUANT] into contiguous out_ptr as bits: OUT is 32 (float32), 16 (bfloat16) or 15 (float16).
    The tile is (BLOCK_M, CHUNKS, 16) from the load to the store: a thread reads 16 bytes (one vector when
    q's rows are contiguous) and their block's scale, and stores their outputs in 16-byte vectors; nothing
    passes through shared memory. Bound by bytes: a handful of integer operations and three products per
    element (scaled_float16_bits), the NaN test folded into one compare."""
    CHUNK: tl.constexpr = 16
    CHUNKS: tl.constexpr = BLOCK_K // CHUNK
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row64 = row.to(tl.int64)[:, None]
    chunk = tl.program_id(1) * BLOCK_K + tl.arange(0, CHUNKS) * CHUNK  # first column of each chunk
    chunk_ok = (row < rows)[:, None] & (chunk < k)[None, :]  # (BLOCK_M, CHUNKS); K is a multiple of 32
    col = (chunk[:, None] + tl.arange(0, CHUNK)[None, :]).to(tl.int64)  # (CHUNKS, 16)
    byte = tl.load(q_ptr + row64[:, :, None] * stride_qm + col[None, :, :] * stride_qk, mask=chunk_ok[:, :, None],
                   other=0)
    byte = byte.to(tl.int32)

    block = chunk // BLOCK
    if SWIZZLED:
        offset = swizzled_offset(row64, block, k // BLOCK)
    else:
        offset = row64 * stride_sm + block[None, :] * stride_sk
    scale = tl.load(s_ptr + offset, mask=chunk_ok, other=127).to(tl.int32)
    # value * 2^(scale - 127) = (value * 2^-8) * 2^(scale - 119); scale 255 is NaN below, and 254 overflows anyway
    n = tl.minimum(scale, 254) - 119
    # NaN: an E4M3 NaN byte, or every element of a block whose scale byte is E8M0's NaN
    nan = ((byte | tl.where(scale == 255, 0x7F, 0)[:, :, None]) & 0x7F) == 0x7F
    bits = scaled_float16_bits(e4m3_as_float16_bits(byte), n[:, :, None], nan, OUT)
    store_chunks(out_ptr + row64[:, :, None] * k, chunk, bits, chunk_ok)


# (max rows, max K, config): the first entry that fits wins. 2 or 4 rows x 512 elements, as fp8_group_packed.py's
# small-M tiles (the same bytes per element); not re-tuned, see docs/benchmarks.md.
QUANTIZE_TABLE = (
    (128, None, LaunchConfig(block_m=2, block_k=512, num_warps=4)),
    (1024, None, LaunchConfig(block_m=2, block_k=512, num_warps=2)),
    (None, None, LaunchConfig(block_m=4, block_k=512, num_warps=4)),
)
# dequantize: at least 16 elements a thread (one 16-byte load of q; the tile is whole chunks of 16 a thread, so
# fewer would leave threads idle), on 64-wide AMD wavefronts too; 1024 divides K = 7168. Tuned on an H200
DEQUANTIZE_TABLE = ((None, None, LaunchConfig(block_m=2, block_k=1024, num_warps=2)),)


def quantize(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, *, scale_rule: str, swizzled: bool,
             hardware_e4m3: bool, config: LaunchConfig | None = None) -> None:
    """Write MXFP8 of `x` (..., K) into contiguous `q` (..., K) and `scales`: linear (..., K/32), or the
    swizzled tiles (round_up(R, 128), round_up(K/32, 4))."""
    if x.numel() == 0:  # no rows or no columns: the scales are empty too
        return
    k = x.shape[-1]
    rows = x.numel() // k
    scale_rows = scales.shape[0] if swizzled else rows
    x2 = x if x.dim() == 2 else x.reshape(rows, k)  # a view when the leading dims' strides allow it, else one copy
    _, block_m, column_blocks, launch = size_class(
        launches(k, scale_rule == "floor", swizzled, hardware_e4m3, config), rows)
    # E4M3 elements as their bytes (the kernel writes bits); E8M0 scales go as they are (Launch: their bytes)
    launch((triton.cdiv(scale_rows, block_m), column_blocks, 1), x2, q.view(torch.uint8), scales,
           rows, k, scale_rows, x2.stride(0), x2.stride(1))


def dequantize(q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *, swizzled: bool,
               config: LaunchConfig | None = None) -> None:
    """[MX8-DEQUANT] q (..., K) in any strides, with linear scales in any strides or swizzled ones, into
    contiguous out (..., K)."""
    if out.numel() == 0:
        return
    k = out.shape[-1]
    rows = out.numel() // k
    q2 = q.view(torch.uint8)
    q2 = q2 if q2.dim() == 2 else q2.reshape(rows, k)  # a view when the leading dims' strides allow it
    s = flat_bytes(scales) if swizzled else byte_rows(scales, rows)  # swizzled: the tiles in row-major order
    int_dtype, out_bits = OUT_BITS[out.dtype]
    _, block_m, column_blocks, launch = size_class(dequantize_launches(k, swizzled, out_bits, config), rows)
    launch((triton.cdiv(rows, block_m), column_blocks, 1), q2, s, out.view(int_dtype), rows, k, q2.stride(0),
           q2.stride(1), s.stride(0), s.stride(1))


# --- launch tables, resolved once per kind of call ----------------------------------------------------

def _block_k(config: LaunchConfig, k: int) -> int:
    """BLOCK_K for rows of k: at most the row (a power of two), at least 128, so that a program's scales
    are whole groups of 4 [MX8-SWIZZLE]."""
    return max(4 * BLOCK.value, min(config.block_k, triton.next_power_of_2(k)))


@functools.lru_cache(maxsize=1024)
def launches(k: int, floor: bool, swizzled: bool, hardware_e4m3: bool,
             config: LaunchConfig | None) -> tuple[tuple[int | None, int, int, Launch], ...]:
    """(max rows, BLOCK_M, column blocks, launch) of quantize_mxfp8_kernel per QUANTIZE_TABLE entry (or just
    `config`) that takes rows of `k` elements."""
    found = []
    for max_rows, c in fitting(QUANTIZE_TABLE, k, config):
        block_k = _block_k(c, k)
        constexprs = dict(FLOOR=floor, HARDWARE_E4M3=hardware_e4m3, SWIZZLED=swizzled, BLOCK_M=c.block_m,
                          BLOCK_K=block_k)
        # fp fusion is exact here: the one product-then-sum, |v|*512 + 2^23 (e4m3_integer), has an exact product
        launch = Launch(quantize_mxfp8_kernel, constexprs, num_warps=c.num_warps, enable_fp_fusion=True)
        found.append((max_rows, c.block_m, triton.cdiv(k, block_k), launch))
    return tuple(found)


@functools.lru_cache(maxsize=256)
def dequantize_launches(k: int, swizzled: bool, out_bits: int,
                        config: LaunchConfig | None) -> tuple[tuple[int | None, int, int, Launch], ...]:
    """(max rows, BLOCK_M, column blocks, launch) of dequantize_mxfp8_kernel per DEQUANTIZE_TABLE entry."""
    found = []
    for max_rows, c in fitting(DEQUANTIZE_TABLE, k, config):
        block_k = max(BLOCK.value, min(c.block_k, triton.next_power_of_2(k)))
        constexprs = dict(SWIZZLED=swizzled, OUT=out_bits, BLOCK_M=c.block_m, BLOCK_K=block_k)
        # products only, each rounded once: fusion has nothing to fuse
        launch = Launch(dequantize_mxfp8_kernel, constexprs, num_warps=c.num_warps, enable_fp_fusion=False)
        found.append((max_rows, c.block_m, triton.cdiv(k, block_k), launch))
    return tuple(found)
