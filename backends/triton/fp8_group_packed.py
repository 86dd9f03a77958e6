"""quantize_fp8_group_packed and dequantize_fp8_group_packed (docs/SPEC.md "FP8") as portable Triton
kernels, and their launchers.

Quantize, one pass: each program owns BLOCK_M rows x one packed scale word (4 groups of GROUP elements). It
loads that tile, a group split between GROUP_THREADS threads' registers in 16-element pieces, reduces
each group's amax in registers and then across those threads (shuffles, no shared memory), derives
the UE8M0 byte from exponent bits, writes the E4M3 elements and then the int32 word straight into
DeepGEMM's MN-major, TMA-aligned layout: rows of one word column are contiguous there, so BLOCK_M
rows make one contiguous store. No transpose, no second kernel. Rows from mn up to the buffers' row
counts are written as zeros, so one launch also fills the TMA padding.

The E4M3 conversion has two forms behind the HARDWARE_E4M3 constexpr: the float8e4nv cast (one
instruction on sm_89+), and integer round-to-nearest-even, which every target and the interpreter
run exactly (the interpreter's own fp8 cast is wrong near binade edges and for NaN).

Dequantize, one pass: each program owns BLOCK_M rows x BLOCK_K elements. It reads the E4M3 bytes and
the packed words of its groups through their strides (a word serves 4 groups, so the scales add
under 1 % to the bytes read), decodes both (E4M3 as float16 bits, scaled by exact products: float_bits.py's
scaled_float16_bits) and writes the output dtype's bits: the interpreter and every target that keeps float32
subnormals (docs/design.md) compute the same bits.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from lowbit import spec

from .float_bits import (
    OUT_BITS,
    e4m3_as_float16_bits,
    e4m3_integer,
    exponent_field,
    is_inf,
    pow2_or_subnormal,
    scaled_float16_bits,
    store_chunks,
    times_pow2,
    to_f32,
)
from .launch import Launch, LaunchConfig, fitting, size_class

GROUPS_PER_WORD = tl.constexpr(spec.FP8_GROUPS_PER_WORD)
MIN_SCALE_BYTE = tl.constexpr(94)  # the power-of-two ceiling of fl32(1e-10) is 2^-33
MAX_SCALE_BYTE = tl.constexpr(spec.FP8_MAX_SCALE_BYTE)
FP8_NAN_BYTE = tl.constexpr(spec.FP8_NAN_BYTE)  # whatever the NaN's sign
E8M0_NAN = tl.constexpr(spec.E8M0_NAN)
F32_NAN_BITS = tl.constexpr(0x7FC00000)
PIECE = tl.constexpr(16)  # elements a thread quantizes in one run: a 16-byte store of q


@triton.jit
def fp8_scale_byte(a):
    """[FP8-SCALE] byte = power-of-two ceiling of max(fl32(a / 448), fl32(1e-10)), clamped to 254,
    for float32 a >= 0, without the division. With a = m * 2^(E-127), m in [1, 2):
    a / 448 = (m / 1.75) * 2^(E-127-8). For m <= 1.75 the quotient lies in (2^(E-136), 2^(E-135)]
    and rounding to float32 cannot pass 2^(E-135): byte E - 8. For m > 1.75 it is at least
    1 + 2^-23/1.75 times 2^(E-135), more than half an ulp above, so it never rounds down onto the
    power of two: byte E - 7. Below the 1e-10 floor (subnormal a included) the max gives 94, and
    +Inf gives 254."""
    bits = a.to(tl.int32, bitcast=True)
    byte = exponent_field(a) - 8 + ((bits & 0x7FFFFF) > 0x600000).to(tl.int32)  # 0x600000: m = 1.75
    byte = tl.maximum(byte, MIN_SCALE_BYTE)
    return tl.where(is_inf(a), MAX_SCALE_BYTE, byte)


@triton.jit
def e4m3_hardware(v):
    """E4M3FN byte of float32 v by the float8e4nv cast: on sm_89+ one cvt.rn.satfinite.e4m3x2.f32 per
    pair, which saturates to +-448 itself and turns NaN into NaN, so +NaN into 0x7F."""
    return v.to(tl.float8e4nv).to(tl.uint8, bitcast=True)


@triton.jit
def group_max(a):
    """The max over each group of a (PIECES, BLOCK_M, GROUPS_PER_WORD, GROUP_THREADS, PIECE) tile: each
    thread's own elements first, then shuffles between the threads that share the group."""
    return tl.max(tl.max(tl.max(a, axis=4), axis=0), axis=2)


@triton.jit
def quantize_fp8_group_packed_kernel(
        x_ptr, q_ptr, s_ptr, mn, k, groups, q_rows, s_rows, tiles_per_batch,
        stride_xb, stride_xm, stride_xk, stride_qb, stride_sb, stride_sw, eps,
        HARDWARE_E4M3: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, GROUP_THREADS: tl.constexpr):
    WORD: tl.constexpr = GROUPS_PER_WORD * GROUP  # elements one scale word covers
    # The tile as (PIECES, BLOCK_M, GROUPS_PER_WORD, GROUP_THREADS, PIECE): a thread's PIECE elements are
    # loaded in 16-byte vectors and stored as one 16-byte vector of q, and the pieces, the outermost
    # dimension, stay in each thread's registers. So GROUP_THREADS threads share a group: the fewer, the
    # fewer shuffles for its amax and the fewer threads repeating its scale arithmetic.
    PIECES: tl.constexpr = GROUP // (GROUP_THREADS * PIECE)
    batch = (tl.program_id(0) // tiles_per_batch).to(tl.int64)
    row = (tl.program_id(0) % tiles_per_batch) * BLOCK_M + tl.arange(0, BLOCK_M)
    row64 = row.to(tl.int64)  # int64 offsets: tensors past 2^31 elements
    rows = row64[None, :, None, None, None]
    word = tl.program_id(1)
    col = (word * WORD + tl.arange(0, GROUPS_PER_WORD) * GROUP)[None, None, :, None, None] \
        + (tl.arange(0, PIECES) * (GROUP_THREADS * PIECE))[:, None, None, None, None] \
        + (tl.arange(0, GROUP_THREADS) * PIECE)[None, None, None, :, None] + tl.arange(0, PIECE)
    col_ok = col < k
    x = tl.load(x_ptr + batch * stride_xb + rows * stride_xm + col.to(tl.int64) * stride_xk,
                mask=(rows < mn) & col_ok, other=0.0)  # rows >= mn read as 0 and quantize to 0
    x = to_f32(x)

    nan = x != x  # [FP8-NAN]: ignored by amax
    if HARDWARE_E4M3:  # NVIDIA's max.f32 returns the operand that is not NaN: no select needed
        amax = group_max(tl.abs(x))
    else:  # other targets' maxnum may turn a signaling NaN into a quiet one instead
        amax = group_max(tl.where(nan, 0.0, tl.abs(x)))
    byte = fp8_scale_byte(tl.maximum(amax, eps))  # [FP8-SCALE, FP8-INF]
    scale_exponent = 127 - byte[None, :, :, None, None]
    if HARDWARE_E4M3:  # [FP8-ELEMENT] x / 2^(byte - 127), exact; saturated by the conversion
        # NVIDIA's mul.f32 keeps subnormal operands, so 2^-127 (byte 254, Inf groups) is one factor. NaN
        # becomes +NaN, which converts to 0x7F: a select on the float32 before the pair conversion costs
        # half of one on its bytes after (unpacked from the pairs and packed again)
        v = tl.where(nan, tl.full((), F32_NAN_BITS, tl.int32).to(tl.float32, bitcast=True),
                     x * pow2_or_subnormal(scale_exponent))
        q = e4m3_hardware(v)
    else:  # two normal factors: other targets may flush a subnormal 2^-127
        q = tl.where(nan, FP8_NAN_BYTE, e4m3_integer(times_pow2(x, scale_exponent)))
    tl.store(q_ptr + batch * stride_qb + rows * k + col, q, mask=(rows < q_rows) & col_ok)

    # [FP8-PACK]: byte j of the word holds group 4*word + j; groups past G and rows past mn give 0
    group = word * GROUPS_PER_WORD + tl.arange(0, GROUPS_PER_WORD)
    byte = tl.where((row < mn)[:, None] & (group < groups)[None, :], byte, 0)
    packed = tl.sum(byte << (tl.arange(0, GROUPS_PER_WORD) * 8)[None, :], axis=1)
    tl.store(s_ptr + batch * stride_sb + word * stride_sw + row64, packed, mask=row < s_rows)


@triton.jit
def dequantize_fp8_group_packed_kernel(
        q_ptr, s_ptr, out_ptr, mn, k, groups, tiles_per_batch,
        stride_qb, stride_qm, stride_qk, stride_sb, stride_sm, stride_sw,
        OUT: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """[FP8-DEQUANT] q (batches, mn, k) bytes with packed words (batches, mn, ceil(G/4)), both through
    their strides, into contiguous out_ptr as bits (OUT: see output_bits). The tile is (BLOCK_M, CHUNKS, 16)
    from the load to the store: a thread reads 16 bytes (one vector when q's rows are contiguous), the word of
    their group, and stores their outputs in 16-byte vectors; nothing passes through shared memory."""
    CHUNK: tl.constexpr = 16
    CHUNKS: tl.constexpr = BLOCK_K // CHUNK
    batch = (tl.program_id(0) // tiles_per_batch).to(tl.int64)
    row = (tl.program_id(0) % tiles_per_batch) * BLOCK_M + tl.arange(0, BLOCK_M)
    row64 = row.to(tl.int64)[:, None]  # int64 offsets: tensors past 2^31 elements
    chunk = tl.program_id(1) * BLOCK_K + tl.arange(0, CHUNKS) * CHUNK  # first column of each chunk
    chunk_ok = (row < mn)[:, None] & (chunk < k)[None, :]  # K is a multiple of GROUP, itself of 16
    col = chunk[:, None] + tl.arange(0, CHUNK)[None, :]  # (CHUNKS, 16)
    byte = tl.load(q_ptr + batch * stride_qb + row64[:, :, None] * stride_qm + col.to(tl.int64)[None, :, :] * stride_qk,
                   mask=chunk_ok[:, :, None], other=0).to(tl.int32)

    # [FP8-PACK]: group g is byte g % 4 (little-endian) of word g // 4
    group = chunk // GROUP
    word = tl.load(s_ptr + batch * stride_sb + row64 * stride_sm + (group // GROUPS_PER_WORD)[None, :] *
                   stride_sw, mask=chunk_ok, other=0)
    scale = (word >> ((group % GROUPS_PER_WORD) * 8)[None, :]) & 0xFF
    # q * 2^(scale - 127) = (q * 2^-8) * 2^(scale - 119); scale 255 is NaN below, and 254 overflows anyway
    n = (tl.minimum(scale, 254) - 119)[:, :, None]
    # NaN: an E4M3 NaN byte, or every element of a group whose scale byte is E8M0's NaN
    nan = ((byte | tl.where(scale == E8M0_NAN, 0x7F, 0)[:, :, None]) & 0x7F) == 0x7F
    bits = scaled_float16_bits(e4m3_as_float16_bits(byte), n, nan, OUT)
    store_chunks(out_ptr + (batch * mn + row64)[:, :, None] * k, chunk, bits, chunk_ok)


# (max rows, max K, config): the first entry that fits wins; block_k is fixed by the group (one
# packed word per program). Small M tuned on an H100, large M on an H200; see docs/benchmarks.md.
LAUNCH_TABLE = (
    (128, None, LaunchConfig(block_m=2, block_k=4 * spec.FP8_DEFAULT_GROUP, num_warps=4)),
    (1024, None, LaunchConfig(block_m=2, block_k=4 * spec.FP8_DEFAULT_GROUP, num_warps=2)),
    (None, None, LaunchConfig(block_m=8, block_k=4 * spec.FP8_DEFAULT_GROUP, num_warps=1)),
)
# dequantize: block_k elements per program (at least one group); tuned on an H200 (docs/benchmarks.md)
DEQUANTIZE_TABLE = ((None, None, LaunchConfig(block_m=2, block_k=1024, num_warps=2)),)


def quantize(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, *, group_size: int, eps: float,
             hardware_e4m3: bool, config: LaunchConfig | None = None) -> None:
    """Write E4M3 of `x` (..., mn, K) into contiguous `q` (..., R, K) and the packed words into
    `scales` (..., S, ceil(G/4)) with strides (..., 1, A); rows >= mn of both are written as 0."""
    if q.numel() == 0 and scales.numel() == 0:
        return
    x, batches, (mn, k), (stride_b, stride_m, stride_k) = batched(x)
    q_rows, s_rows, words = q.shape[-2], scales.shape[-2], scales.shape[-1]
    stride_word = spec.tma_rows(mn)  # A: word (r, c) of a batch sits at c*A + r [FP8-PACK]
    _, block_m, launch = size_class(launches(k, group_size, hardware_e4m3, config), batches * mn)
    tiles = triton.cdiv(max(q_rows, s_rows), block_m)
    launch((batches * tiles, words, 1), x, q.view(torch.uint8), scales, mn, k, k // group_size, q_rows, s_rows, tiles,
           stride_b, stride_m, stride_k, q_rows * k, words * stride_word, stride_word, float(eps))


def dequantize(q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *, group_size: int,
               config: LaunchConfig | None = None) -> None:
    """[FP8-DEQUANT] q (..., mn, K) with packed scales (..., mn, ceil(G/4)), any strides, into contiguous
    out (..., mn, K)."""
    if out.numel() == 0:
        return
    q, batches, (mn, k), (stride_qb, stride_qm, stride_qk) = batched(q.view(torch.uint8))
    scales, _, _, (stride_sb, stride_sm, stride_sw) = batched(scales)
    int_dtype, out_bits = OUT_BITS[out.dtype]
    _, block_m, block_k, launch = size_class(dequantize_launches(k, group_size, out_bits, config), batches * mn)
    tiles = triton.cdiv(mn, block_m)
    launch((batches * tiles, triton.cdiv(k, block_k), 1), q, scales, out.view(int_dtype), mn, k, k // group_size,
           tiles, stride_qb, stride_qm, stride_qk, stride_sb, stride_sm, stride_sw)


def batched(x: torch.Tensor) -> tuple[torch.Tensor, int, tuple[int, int], tuple[int, int, int]]:
    """(x as at most 3 dims, batches, (mn, k), (batch, row, column strides)) of x (..., mn, K) with one
    batch dim: a view when the leading dims' strides merge, else one copy."""
    if x.dim() == 2:  # one batch: its stride is never used
        return x, 1, tuple(x.shape), (0, *x.stride())
    x3 = x if x.dim() == 3 else x.reshape(math.prod(x.shape[:-2]), *x.shape[-2:])
    return x3, x3.shape[0], tuple(x3.shape[1:]), x3.stride()


@functools.lru_cache(maxsize=1024)
def launches(k: int, group_size: int, hardware_e4m3: bool,
             config: LaunchConfig | None) -> tuple[tuple[int | None, int, Launch], ...]:
    """(max rows, BLOCK_M, launch) for each entry of LAUNCH_TABLE (or just `config`) that takes rows of
    `k` elements: resolved once per kind of call."""
    return tuple(
        # fp fusion is exact here: the one product-then-sum, |v|*512 + 2^23, has an exact product
        (max_rows, c.block_m, Launch(quantize_fp8_group_packed_kernel,
                                     dict(HARDWARE_E4M3=hardware_e4m3, GROUP=group_size, BLOCK_M=c.block_m,
                                          GROUP_THREADS=group_threads(c, group_size)),
                                     num_warps=c.num_warps, enable_fp_fusion=True))
        for max_rows, c in fitting(LAUNCH_TABLE, k, config))


def group_threads(config: LaunchConfig, group_size: int, warp_size: int = 32) -> int:
    """GROUP_THREADS of quantize_fp8_group_packed_kernel: its threads spread over the tile's groups, at
    least one 16-byte piece of a group each (smaller tiles repeat elements across threads) and at most
    a whole group (larger ones give a thread several groups). Warps are 32 threads on NVIDIA and XPU."""
    groups = spec.FP8_GROUPS_PER_WORD * config.block_m
    return max(1, min(group_size // PIECE.value, warp_size * config.num_warps // groups))


@functools.lru_cache(maxsize=1024)
def dequantize_launches(k: int, group_size: int, out_bits: int,
                        config: LaunchConfig | None) -> tuple[tuple[int | None, int, int, Launch], ...]:
    """(max rows, BLOCK_M, BLOCK_K, launch) of dequantize_fp8_group_packed_kernel per DEQUANTIZE_TABLE entry
    (or just `config`) for rows of `k` elements."""
    found = []
    for max_rows, c in fitting(DEQUANTIZE_TABLE, k, config):
        block_k = max(group_size, min(c.block_k, triton.next_power_of_2(k)))  # whole groups per program
        constexprs = dict(OUT=out_bits, GROUP=group_size, BLOCK_M=c.block_m, BLOCK_K=block_k)
        # the products are exact: fusion has nothing to change
        launch = Launch(dequantize_fp8_group_packed_kernel, constexprs, num_warps=c.num_warps, enable_fp_fusion=False)
        found.append((max_rows, c.block_m, block_k, launch))
    return tuple(found)
