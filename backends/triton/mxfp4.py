"""quantize_mxfp4 (docs/SPEC.md "MXFP4") as one portable Triton kernel, and its launcher.

One pass: each program loads a BLOCK_M x BLOCK_K tile, reduces each 32-element block to its amax
in registers, derives the E8M0 scale from exponent bits, scales by an exact power of two, rounds
to E2M1 and writes packed nibbles and scale bytes. The kernel is bound by instructions per element
more than by bytes, so the element path is integer and bit arithmetic, a handful of operations
each. Three steps are constexpr hooks, so a device backend can swap in instructions for them
(backends/cuda passes PTX: bfloat16 pairs on sm_90, E2M1 and UE8M0 conversions on sm_100+):

- AMAX_BITS(x) -> int32: the float32 bits of each block's largest |x| (NaN above Inf), from the
  input values x (BLOCK_M, BLOCKS, 32) in the input dtype. Portable: amax_bits_portable.
- ENCODE(x, e, nan) -> packed bytes: the input values x, their blocks' exponents e (the scale is
  2^e) and NaN flags, to E2M1 bytes (BLOCK_M, BLOCK_K/2), the even element in the low nibble: int32
  whose low 8 bits are stored (the bits above may hold anything). Portable: encode_portable.
- RCEIL_EXPONENT(d) -> int32: ceil(log2 d) for positive normal float32 d. Portable: exponent bits.

The same kernel serves per_token_group_quant_mxfp4 (vLLM's convention): `eps_bits` raises d to at
least fl32(eps) [MX-EPS] (HAS_EPS; off for quantize_mxfp4 and eps = 0), and SCALE_F32 stores
the scales as float32 powers of two [MX-SCALE-F32] instead of E8M0 bytes.
"""

from __future__ import annotations

import functools
import struct

import torch
import triton
import triton.language as tl

from lowbit import spec

from .float_bits import (
    OUT_BITS,
    ceil_exponent_field,
    exponent_field,
    pow2,
    scaled_float16_bits,
    store_chunks,
    to_f32,
)
from .launch import Launch, LaunchConfig, byte_rows, fitting, flat_bytes, size_class

BLOCK = tl.constexpr(spec.MX_BLOCK)  # elements per scale
ONE_SIXTH_BITS = tl.constexpr(0x3E2AAAAB)  # fl32(1/6), as [MX-RCEIL] multiplies by it
RCEIL_AMAX_FLOOR_BITS = tl.constexpr(0x01C00000)  # 6 * 2^-126
F32_INF_BITS = tl.constexpr(0x7F800000)
F32_NAN_BITS = tl.constexpr(0x7FC00000)  # [MX-SCALE-F32]: a NaN block's float32 scale
F32_TWO_TO_MINUS_127_BITS = tl.constexpr(0x00400000)  # 2^-127, a float32 subnormal


@triton.jit
def pack_pairs(nibbles):
    """(M, BLOCKS, 32) nibbles to (M, BLOCKS * 16) bytes, the even element in the low nibble [MX-PACK]."""
    rows: tl.constexpr = nibbles.shape[0]
    pairs: tl.constexpr = nibbles.shape[1] * nibbles.shape[2] // 2
    even, odd = tl.split(tl.reshape(nibbles, (rows, pairs, 2)))
    return even | (odd << 4)


@triton.jit
def swizzled_offset(row64, col, cols):
    """[SCALE-SWIZZLE]: the byte offset of (row, scale column) for rows (BLOCK_M, 1) int64, columns (BLOCKS,)
    and `cols` scale columns a row."""
    tile = (row64 // 128) * ((cols + 3) // 4) + (col // 4)[None, :]
    return tile * 512 + (row64 % 32) * 16 + ((row64 % 128) // 32) * 4 + (col % 4)[None, :]


@triton.jit
def amax_bits_portable(x):
    """[MX-AMAX, MX-NAN]: an unsigned max of the float32 bits shifted left by one, the sign shifted out (a
    shift runs as a multiply on sm_90, off the logic pipe that bounds this kernel; a mask would not).
    NaN sorts above +Inf, and a block holding one has its scale and nibbles fixed anyway."""
    return (tl.max(to_f32(x).to(tl.uint32, bitcast=True) << 1, axis=2) >> 1).to(tl.int32)


@triton.jit
def scaled(x, e):
    """[MX-SCALING] x * 2^-e in float32, with a normal factor: 2^-127 is a float32 subnormal, which some
    targets flush, so e = 127 blocks (Inf only) scale by 2^-126 and the encoder halves them."""
    return to_f32(x) * pow2(-tl.minimum(e, 126))[:, :, None]


@triton.jit
def encode_portable(x, e, nan):
    """The ENCODE hook: scaled, then e2m1_portable."""
    return e2m1_portable(scaled(x, e), e == 127, nan)


@triton.jit
def e2m1_portable(y, half, nan):
    """[MX-ROUND, MX-SATURATE, MX-SIGN, MX-NAN] E2M1 nibbles of y (halved where `half`), packed.

    a = |y| saturated at 6 (12 before halving). E2M1 steps by 0.5 up to 2, by 1 up to 4 and by 2
    up to 6, so its code is round(2a), 2 + round(a) or 4 + round(a/2) in those ranges, ties to even,
    and each of the three is at least the code elsewhere (rounding is monotone): the code is their
    minimum. Each is one exact FMA onto 2^23, whose ulp is 1, so the sum's low bits are the count
    and the float32 bits compare as the counts do. The bits above the low byte are left over."""
    h = tl.where(half, 0.5, 1.0)[:, :, None]  # a * h has the value of the halved a, exactly
    a = tl.minimum(tl.abs(y), tl.where(half, 12.0, 6.0)[:, :, None])
    by_halves = (a * (h * 2.0) + 8388608.0).to(tl.int32, bitcast=True)
    by_ones = (a * h + 8388610.0).to(tl.int32, bitcast=True)
    by_twos = (a * (h * 0.5) + 8388612.0).to(tl.int32, bitcast=True)
    code = tl.minimum(tl.minimum(by_halves, by_ones), by_twos)  # 2^23 + code: code in the low 3 bits
    nibble = code | ((y.to(tl.int32, bitcast=True) >> 28) & 0x8)
    return pack_pairs(tl.where(nan[:, :, None], 0x7, nibble))


@triton.jit
def rceil_exponent_portable(d):
    return ceil_exponent_field(d) - 127


@triton.jit
def quantize_mxfp4_kernel(x_ptr, q_ptr, s_ptr, rows, k, scale_rows, stride_xm, stride_xk, eps_bits,
                          FLOOR: tl.constexpr, AMAX_BITS: tl.constexpr, ENCODE: tl.constexpr,
                          RCEIL_EXPONENT: tl.constexpr, HAS_EPS: tl.constexpr, SCALE_F32: tl.constexpr,
                          SWIZZLED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    BLOCKS: tl.constexpr = BLOCK_K // BLOCK
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    if SWIZZLED:  # rows in the order of a 512-byte scale tile: within each 128 rows, tile-row bits (0, 1-2, 3-6)
        # become row bits (0, 5-6, 1-4), so the 8 rows whose scales share each 32-byte sector are taken together
        # (by consecutive programs in one-row tiles; its gain there is not measured). A bijection: the grid
        # covers round_up(rows, 128) rows.
        row = (row & -128) | (row & 1) | (((row >> 1) & 3) << 5) | (((row >> 3) & 15) << 1)
    row_ok = (row < rows)[:, None]
    row64 = row.to(tl.int64)[:, None]  # int64 offsets: tensors past 2^31 elements
    # The 16-byte pieces of a block (vector loads) are the outermost dimension, so the tile's layout puts a
    # whole block in one thread's registers: no shuffles for its amax, and one thread computes its scale
    PIECE: tl.constexpr = 128 // x_ptr.dtype.element_ty.primitive_bitwidth
    piece = tl.arange(0, BLOCK // PIECE)[:, None, None, None] * PIECE
    col = (tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCKS) * BLOCK)[None, None, :, None] + piece \
        + tl.arange(0, PIECE)[None, None, None, :]
    x = tl.load(x_ptr + row64[None, :, :, None] * stride_xm + col.to(tl.int64) * stride_xk,
                mask=row_ok[None, :, :, None] & (col < k), other=0.0)
    x = tl.reshape(tl.permute(x, (1, 2, 0, 3)), (BLOCK_M, BLOCKS, BLOCK))

    amax_bits = AMAX_BITS(x)  # [MX-AMAX, MX-NAN]
    nan = amax_bits > F32_INF_BITS
    amax = amax_bits.to(tl.float32, bitcast=True)
    if FLOOR:  # [MX-FLOOR]
        e = exponent_field(amax) - 129
    else:  # [MX-RCEIL]: a float32 product with fl32(1/6), never a division
        floor = tl.full((), RCEIL_AMAX_FLOOR_BITS, tl.int32).to(tl.float32, bitcast=True)
        one_sixth = tl.full((), ONE_SIXTH_BITS, tl.int32).to(tl.float32, bitcast=True)
        d = tl.maximum(amax, floor) * one_sixth
        if HAS_EPS:  # [MX-EPS]: fl32(eps), by its bits; a constexpr, so quantize_mxfp4 pays nothing for it
            d = tl.maximum(d, tl.full((), eps_bits, tl.int32).to(tl.float32, bitcast=True))
        e = RCEIL_EXPONENT(d)
    e = tl.minimum(tl.maximum(e, -127), 127)  # [MX-SCALE]
    e = tl.where(amax_bits == F32_INF_BITS, 127, e)  # [MX-INF]
    block = tl.program_id(1) * BLOCKS + tl.arange(0, BLOCKS)
    cols = k // BLOCK
    if SCALE_F32:  # 2^e as float32 bits: the exponent field e + 127 (2^-127, a subnormal, only under rule floor)
        scale = tl.where(nan, F32_NAN_BITS, tl.where(e == -127, F32_TWO_TO_MINUS_127_BITS, (e + 127) << 23))
        tl.store(s_ptr + row64 * cols + block[None, :], scale, mask=row_ok & (block < cols)[None, :])
    elif SWIZZLED:  # [MX-SWIZZLE]: the grid covers the padding rows and columns too, written as 0
        scale = tl.where(row_ok & (block < cols)[None, :], tl.where(nan, 255, e + 127), 0).to(tl.uint8)
        tl.store(s_ptr + swizzled_offset(row64, block, cols), scale,
                 mask=(row < scale_rows)[:, None] & (block < (cols + 3) // 4 * 4)[None, :])
    else:
        scale = tl.where(nan, 255, e + 127).to(tl.uint8)
        tl.store(s_ptr + row64 * cols + block[None, :], scale, mask=row_ok & (block < cols)[None, :])

    packed = ENCODE(x, e, nan)  # [MX-SCALING] and the elements
    byte = tl.program_id(1) * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    # K is a multiple of 32: each row of bytes starts 16-byte aligned, and a mask against q_row (not k // 2)
    # is constant over 16 bytes, so each thread's 16 bytes go in one store, not two
    q_row = tl.multiple_of(k // 2, 16)
    tl.store(q_ptr + row64 * q_row + byte[None, :], packed.to(tl.uint8), mask=row_ok & (byte < q_row)[None, :])


# (max rows, max K, config): the first entry that fits wins. Small M tuned on an H100, large M on an H200
# (docs/benchmarks.md).
LAUNCH_TABLE = (
    (128, None, LaunchConfig(block_m=4, block_k=256, num_warps=4)),
    (1024, None, LaunchConfig(block_m=1, block_k=1024, num_warps=2)),
    # one row on one warp is the fastest large-M tile for both scale layouts; for swizzled scales a 32 x 128
    # tile, whose warps each store one whole sector of scales, took 58 us to its 52 (8192 x 7168)
    (None, None, LaunchConfig(block_m=1, block_k=1024, num_warps=1)),
)


def quantize(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, *, scale_rule: str, swizzled: bool = False,
             eps: float = 0.0, amax_bits=amax_bits_portable, encode=encode_portable,
             rceil_exponent=rceil_exponent_portable, config: LaunchConfig | None = None) -> None:
    """Write MXFP4 of `x` (..., K) into contiguous `q` (..., K/2) and `scales`: (..., K/32) E8M0
    bytes or float32 powers of two (when `scales` is float32), or the swizzled E8M0 tiles
    [MX-SWIZZLE]. `eps` is [MX-EPS]'s (rule rceil)."""
    k = x.shape[-1]
    rows = x.numel() // k if k else 0
    if rows == 0:
        return
    eps_bits = float32_bits(eps)
    scale_f32 = scales.dtype == torch.float32
    scale_rows = scales.shape[0] if swizzled else rows
    x2 = x if x.dim() == 2 else x.reshape(rows, k)  # a view when the leading dims' strides allow it, else one copy
    _, block_m, column_blocks, launch = size_class(
        launches(k, scale_rule == "floor", eps_bits != 0, scale_f32, swizzled, amax_bits, encode, rceil_exponent,
                 config), rows)
    # float32 scales are written as their bits; q and E8M0 scales go as they are (Launch: their bytes)
    launch((triton.cdiv(scale_rows, block_m), column_blocks, 1), x2, q,
           scales.view(torch.int32) if scale_f32 else scales, rows, k, scale_rows, x2.stride(0), x2.stride(1), eps_bits)


@functools.lru_cache(maxsize=1024)
def launches(k: int, floor: bool, has_eps: bool, scale_f32: bool, swizzled: bool, amax_bits, encode, rceil_exponent,
             config: LaunchConfig | None) -> tuple[tuple[int | None, int, int, Launch], ...]:
    """(max rows, BLOCK_M, column blocks, launch) for each entry of LAUNCH_TABLE (or just `config`)
    that takes rows of `k` elements: resolved once per kind of call."""
    found = []
    for max_rows, c in fitting(LAUNCH_TABLE, k, config):
        block_k = min(c.block_k, triton.next_power_of_2(k))
        if swizzled:  # whole groups of 4 scale columns a program, so the last one writes the padding ones
            block_k = max(block_k, 4 * BLOCK)
        constexprs = dict(FLOOR=floor, AMAX_BITS=amax_bits, ENCODE=encode, RCEIL_EXPONENT=rceil_exponent,
                          HAS_EPS=has_eps, SCALE_F32=scale_f32, SWIZZLED=swizzled, BLOCK_M=c.block_m, BLOCK_K=block_k)
        # fp fusion is exact here: every product-then-sum (the encoder's a * 2h + 2^23, ...) has an exact product
        launch = Launch(quantize_mxfp4_kernel, constexprs, num_warps=c.num_warps, enable_fp_fusion=True)
        found.append((max_rows, c.block_m, triton.cdiv(k, block_k), launch))
    return tuple(found)


@functools.lru_cache(maxsize=64)
def float32_bits(value: float) -> int:
    """The bits of fl32(value) (rounded to nearest even) as a signed int."""
    return struct.unpack("<i", struct.pack("<f", value))[0]


@triton.jit
def dequantize_mxfp4_kernel(q_ptr, s_ptr, out_ptr, rows, k, stride_qm, stride_sm, SWIZZLED: tl.constexpr,
                            OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """[MX-DEQUANT] into out_ptr as bits (OUT: 32 float32, 16 bfloat16, 15 float16). The tile is (BLOCK_M,
    BLOCKS, 32) from the load (a block's 16 bytes) to the store, so a block's scale reaches its elements
    without a shuffle and nothing passes through shared memory. A code is read as float16 bits (E2M1's
    exponent and mantissa fields at bits 11..9 are its value times 2^-14, code 1 a float16 subnormal) and
    scaled as MXFP8's elements are (scaled_float16_bits), which needs float32 subnormals kept (design.md)."""
    BLOCKS: tl.constexpr = BLOCK_K // BLOCK
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row64 = row.to(tl.int64)[:, None]
    col = tl.program_id(1) * BLOCKS + tl.arange(0, BLOCKS)
    cols = k // BLOCK
    block_ok = (row < rows)[:, None] & (col < cols)[None, :]  # (BLOCK_M, BLOCKS)
    byte = (col * (BLOCK // 2))[:, None] + tl.arange(0, BLOCK // 2)[None, :]  # (BLOCKS, 16)
    packed = tl.load(q_ptr + row64[:, :, None] * stride_qm + byte[None, :, :], mask=block_ok[:, :, None], other=0)
    packed = packed.to(tl.int32)
    # [MX-PACK] the even element in the low nibble; the sign (bit 3 of a nibble) goes to bit 15
    even = ((packed & 0x7) << 9) | ((packed & 0x8) << 12)
    odd = ((packed & 0x70) << 5) | ((packed & 0x80) << 8)
    h = tl.reshape(tl.join(even, odd), (BLOCK_M, BLOCKS, BLOCK))

    if SWIZZLED:  # [MX-SWIZZLE]
        offset = swizzled_offset(row64, col, cols)
    else:
        offset = row64 * stride_sm + col[None, :]
    scale = tl.load(s_ptr + offset, mask=block_ok, other=127).to(tl.int32)
    n = (tl.minimum(scale, 254) - 127 + 14)[:, :, None]  # scale 255 is NaN below, and 254 overflows anyway
    bits = scaled_float16_bits(h, n, (scale == 255)[:, :, None], OUT)  # [MX-DEQUANT]: E8M0's NaN

    store_chunks(out_ptr + row64[:, :, None] * k, col * BLOCK, bits, block_ok)


# (max rows, max K, config), as LAUNCH_TABLE; large M tuned on an H200 (docs/benchmarks.md). A thread holds whole
# blocks of 32 (fewer elements a thread leave threads idle)
DEQUANTIZE_TABLE = (
    (128, None, LaunchConfig(block_m=4, block_k=256, num_warps=1)),
    (None, None, LaunchConfig(block_m=2, block_k=1024, num_warps=1)),
)


def dequantize(q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *, swizzled: bool = False,
               config: LaunchConfig | None = None) -> None:
    """[MX-DEQUANT] q (..., K/2) with its scales (linear (..., K/32) or the swizzled tiles) into
    contiguous out (..., K)."""
    k = out.shape[-1]
    rows = out.numel() // k if k else 0
    if rows == 0:
        return
    int_dtype, out_bits = OUT_BITS[out.dtype]
    q2 = byte_rows(q, rows)
    s2 = flat_bytes(scales) if swizzled else byte_rows(scales, rows)  # swizzled: the tiles in row-major order
    _, block_m, column_blocks, launch = size_class(dequantize_launches(k, swizzled, out_bits, config), rows)
    launch((triton.cdiv(rows, block_m), column_blocks, 1), q2, s2, out.view(int_dtype), rows, k, q2.stride(0),
           s2.stride(0))


@functools.lru_cache(maxsize=256)
def dequantize_launches(k: int, swizzled: bool, out_bits: int,
                        config: LaunchConfig | None) -> tuple[tuple[int | None, int, int, Launch], ...]:
    """(max rows, BLOCK_M, column blocks, launch) of dequantize_mxfp4_kernel per DEQUANTIZE_TABLE entry."""
    found = []
    for max_rows, c in fitting(DEQUANTIZE_TABLE, k, config):
        block_k = max(BLOCK.value, min(c.block_k, triton.next_power_of_2(k)))
        constexprs = dict(SWIZZLED=swizzled, OUT=out_bits, BLOCK_M=c.block_m, BLOCK_K=block_k)
        launch = Launch(dequantize_mxfp4_kernel, constexprs, num_warps=c.num_warps, enable_fp_fusion=False)
        found.append((max_rows, c.block_m, triton.cdiv(k, block_k), launch))
    return tuple(found)
