"""FP8 with float32 scales (docs/SPEC.md "FP8 with float32 scales") as portable Triton kernels, and
their launchers: quantize_fp8_group, quantize_fp8_block, and both dequantizes.

- `quantize_fp8_kernel`: one pass. A program owns BLOCK_M rows x GROUPS groups of GROUP elements: it
  loads the tile, reduces each group's amax in registers (TILE: over all BLOCK_M rows too, one
  scale per BLOCK_M x GROUP weight block), computes the scale with an IEEE division
  (`tl.math.div_rn`, div.rn.f32 on NVIDIA, never Triton's default approximate `/`), divides each
  element by it correctly rounded (`divide`: one IEEE division per group, Markstein's correction
  per element), converts to E4M3 and stores the elements and the float32 scales through the
  scales' strides: row-major, column-major and TMA-aligned are one kernel.
  Rows from mn up to the buffers' row counts are written as zeros, so one launch also fills the
  TMA padding.
- `dequantize_fp8_kernel`: element times its group's (or block's) scale, read through the scales'
  strides, rounded to the output dtype by integer arithmetic.

The E4M3 conversion has the two forms of fp8_group_packed.py behind HARDWARE_E4M3.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from lowbit import spec

from .float_bits import OUT_BITS, e4m3_integer, e4m3_value, exponent_field, output_bits, pow2, to_f32
from .fp8_group_packed import FP8_NAN_BYTE, batched, e4m3_hardware, fp8_scale_byte
from .launch import Launch, LaunchConfig, fitting, size_class

SCALE_MIN = tl.constexpr(spec.F8_SCALE_MIN)
SCALE_MAX = tl.constexpr(spec.F8_SCALE_MAX)
FP8_MAX = tl.constexpr(spec.FP8_MAX)


@triton.jit
def divide(x, s):
    """fl32(x / s), correctly rounded [F8-ELEMENT], for float32 x (BLOCK_M, GROUPS, GROUP) and scales s
    (BLOCK_M or 1, GROUPS) in [2^-126, 2^127], with one IEEE division per group, not per element. The
    quantize kernel divides only where |x / s| <= 448 (1 + 2^-23), or x is infinite: s >= amax / 448.

    s = m * 2^e with e = min(exponent, 126) and m in [1, 2] (exact). Per group r = RN(1/m) (div_rn);
    per element xs = x * 2^-e (exact unless it underflows), q0 = RN(xs * r), the remainder
    xs - q0 * m (exact, one fma) and Markstein's correction q = RN(q0 + remainder * r), which is
    RN(xs / m) = RN(x / s) for every pair of significands: checked on the GPU for all 2^46 pairs
    (docs/benchmarks.md). Below |x / s| = 2^-100 the remainder may round (or xs underflow); such
    quotients are far below E4M3's smallest subnormal, 2^-9, and only their sign matters, which is
    kept. Zeros keep their sign and infinities pass through, as a division would."""
    e = tl.minimum(exponent_field(s) - 127, 126)
    m = s * pow2(-e)
    r = tl.math.div_rn(tl.full(m.shape, 1.0, tl.float32), m)
    xs = x * pow2(-e)[:, :, None]
    q0 = xs * r[:, :, None]
    q = tl.fma(tl.fma(-q0, m[:, :, None], xs), r[:, :, None], q0)
    return tl.where((q0 == 0) | (tl.abs(q0) == float("inf")), q0, q)


@triton.jit
def quantize_fp8_kernel(
        x_ptr, q_ptr, s_ptr, mn, k, groups, q_rows, s_rows, tiles_per_batch,
        stride_xb, stride_xm, stride_xk, stride_qb, stride_sb, stride_sm, stride_sg, eps,
        UE8M0: tl.constexpr, HARDWARE_E4M3: tl.constexpr, TILE: tl.constexpr, GROUP: tl.constexpr,
        GROUPS: tl.constexpr, BLOCK_M: tl.constexpr):
    """TILE False: one scale per row and group, scale row = element row. TILE True: one scale per
    BLOCK_M x GROUP block [F8-BLOCK], scale row = the program's row tile."""
    WIDTH: tl.constexpr = GROUPS * GROUP
    batch = (tl.program_id(0) // tiles_per_batch).to(tl.int64)
    tile = tl.program_id(0) % tiles_per_batch
    row = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row64 = row.to(tl.int64)  # int64 offsets: tensors past 2^31 elements
    col = tl.program_id(1) * WIDTH + tl.arange(0, WIDTH)
    col_ok = (col < k)[None, :]
    x = tl.load(x_ptr + batch * stride_xb + row64[:, None] * stride_xm + col.to(tl.int64)[None, :] * stride_xk,
                mask=(row < mn)[:, None] & col_ok, other=0.0)  # rows >= mn read as 0 and quantize to 0
    x = tl.reshape(to_f32(x), (BLOCK_M, GROUPS, GROUP))

    nan = x != x  # [F8-NAN]: ignored by amax
    amax = tl.max(tl.where(nan, 0.0, tl.abs(x)), axis=2)
    if TILE:
        amax = tl.max(amax, axis=0, keep_dims=True)
    a = tl.maximum(amax, eps)
    if UE8M0:  # [F8-UE8M0]: bytes 94..254, so s is a normal power of two
        s = pow2(fp8_scale_byte(a) - 127)
    else:  # [F8-SCALE, F8-INF]: Inf / 448 = Inf, held to 2^127
        s = tl.math.div_rn(a, tl.full(a.shape, FP8_MAX, tl.float32))
        s = tl.minimum(tl.maximum(s, SCALE_MIN), SCALE_MAX)
    v = divide(x, s)  # [F8-ELEMENT]
    if HARDWARE_E4M3:
        q = e4m3_hardware(v)
    else:
        q = e4m3_integer(v)
    q = tl.where(nan, FP8_NAN_BYTE, q)
    tl.store(q_ptr + batch * stride_qb + row64[:, None] * k + col[None, :],
             tl.reshape(q, (BLOCK_M, WIDTH)), mask=(row < q_rows)[:, None] & col_ok)

    group = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
    group_ok = (group < groups)[None, :]
    if TILE:
        tl.store(s_ptr + tile * stride_sm + group[None, :] * stride_sg, s, mask=group_ok)
    else:  # scale rows past mn (the TMA padding) are 0
        s = tl.where((row < mn)[:, None], s, 0.0)
        tl.store(s_ptr + batch * stride_sb + row64[:, None] * stride_sm + group[None, :] * stride_sg, s,
                 mask=(row < s_rows)[:, None] & group_ok)


@triton.jit
def dequantize_fp8_kernel(q_ptr, s_ptr, out_ptr, mn, k, tiles_per_batch, stride_sb, stride_sm, stride_sg,
                          OUT: tl.constexpr, GROUP: tl.constexpr, SCALE_ROWS: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    """[F8-DEQUANT] contiguous q (batches, mn, k) into out_ptr as bits (OUT: see output_bits); element
    (r, c) takes the scale at (r // SCALE_ROWS, c // GROUP) of its batch."""
    GROUPS: tl.constexpr = BLOCK_K // GROUP
    batch = (tl.program_id(0) // tiles_per_batch).to(tl.int64)
    row = (tl.program_id(0) % tiles_per_batch) * BLOCK_M + tl.arange(0, BLOCK_M)
    row64 = row.to(tl.int64)
    row_ok = (row < mn)[:, None]
    col = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = row_ok & (col < k)[None, :]
    offset = (batch * mn + row64)[:, None] * k + col[None, :]
    byte = tl.load(q_ptr + offset, mask=mask, other=0).to(tl.int32)
    group = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
    s = tl.load(s_ptr + batch * stride_sb + (row64 // SCALE_ROWS)[:, None] * stride_sm + group[None, :] * stride_sg,
                mask=row_ok & (group < tl.cdiv(k, GROUP))[None, :], other=0.0)
    out = tl.reshape(tl.reshape(e4m3_value(byte), (BLOCK_M, GROUPS, GROUP)) * s[:, :, None], (BLOCK_M, BLOCK_K))
    tl.store(out_ptr + offset, output_bits(out, OUT), mask=mask)


# (max rows, max K, config): the first entry that fits wins; block_k is GROUPS * GROUP elements per
# program. Tuned on an H100; see docs/benchmarks.md.
GROUP_TABLE = (
    (128, None, LaunchConfig(block_m=2, block_k=512, num_warps=4)),
    (1024, None, LaunchConfig(block_m=2, block_k=512, num_warps=2)),
    (None, None, LaunchConfig(block_m=4, block_k=512, num_warps=4)),
)
BLOCK_WARPS = 8  # quantize_fp8_block: one 128 x 128 block per program
DEQUANTIZE_TABLE = ((None, None, LaunchConfig(block_m=4, block_k=1024, num_warps=4)),)


def quantize_group(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, *, group_size: int, eps: float,
                   ue8m0: bool, hardware_e4m3: bool, config: LaunchConfig | None = None) -> None:
    """E4M3 of `x` (..., mn, K) into contiguous `q` (..., R, K) and float32 scales into `scales`
    (..., S, G), whatever their strides; rows >= mn of both are written as 0."""
    if q.numel() == 0 and scales.numel() == 0:
        return
    x, batches, (mn, k), (stride_b, stride_m, stride_k) = batched(x)
    q_rows, s_rows = q.shape[-2], scales.shape[-2]
    stride_sb = _batch_stride(scales, batches)
    _, block_m, groups, launch = size_class(group_launches(k, group_size, ue8m0, hardware_e4m3, config), batches * mn)
    tiles = triton.cdiv(max(q_rows, s_rows), block_m)
    launch((batches * tiles, triton.cdiv(k // group_size, groups), 1), x, q.view(torch.uint8), scales, mn, k,
           k // group_size, q_rows, s_rows, tiles, stride_b, stride_m, stride_k, q_rows * k, stride_sb,
           scales.stride(-2), scales.stride(-1), float(eps))


def quantize_block(w: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, *, block: tuple[int, int], eps: float,
                   ue8m0: bool, hardware_e4m3: bool) -> None:
    """[F8-BLOCK] E4M3 of `w` (N, K) into contiguous `q`, the scale of block (i, j) into `scales[j, i]`."""
    (n, k), (block_rows, block_cols) = w.shape, block
    if w.numel() == 0:
        return
    launch = block_launch(block_rows, block_cols, ue8m0, hardware_e4m3)
    tiles = triton.cdiv(n, block_rows)
    # scales[j, i] is the scale of block (i, j): the kernel's scale row is i, its group j
    launch((tiles, triton.cdiv(k, block_cols), 1), w, q.view(torch.uint8), scales, n, k, triton.cdiv(k, block_cols),
           n, tiles, tiles, 0, w.stride(0), w.stride(1), 0, 0, scales.stride(1), scales.stride(0), float(eps))


def dequantize_group(q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *, group_size: int,
                     config: LaunchConfig | None = None) -> None:
    """[F8-DEQUANT] q (..., mn, K) with scales (..., mn, G) in any strides into contiguous out."""
    if out.numel() == 0:
        return
    *lead, mn, k = q.shape
    batches = math.prod(lead)
    _dequantize(q, scales, out, batches, mn, k, _batch_stride(scales, batches), scales.stride(-2), scales.stride(-1),
                group_size, 1, config)


def _batch_stride(scales: torch.Tensor, batches: int) -> int:
    """The one stride between batches of scales (..., S, G) whose leading dims merge, as every layout
    lowbit allocates or accepts has them (0 for one batch)."""
    if scales.dim() == 2:
        return 0
    if scales.dim() > 3 and batches > 1:
        return scales.reshape(batches, *scales.shape[-2:]).stride(0)
    return scales.stride(-3)


def dequantize_block(q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *, block: tuple[int, int]) -> None:
    """[F8-DEQUANT] q (N, K) with scales[j, i] for block (i, j), any strides, into contiguous out."""
    if out.numel() == 0:
        return
    (n, k), (block_rows, block_cols) = q.shape, block
    _dequantize(q, scales, out, 1, n, k, 0, scales.stride(1), scales.stride(0), block_cols, block_rows, None)


def _dequantize(q, scales, out, batches, mn, k, stride_sb, stride_sm, stride_sg, group, scale_rows, config) -> None:
    int_dtype, out_bits = OUT_BITS[out.dtype]
    q = q if q.is_contiguous() else q.contiguous()
    _, block_m, block_k, launch = size_class(dequantize_launches(k, out_bits, group, scale_rows, config), batches * mn)
    tiles = triton.cdiv(mn, block_m)
    launch((batches * tiles, triton.cdiv(k, block_k), 1), q.view(torch.uint8), scales, out.view(int_dtype), mn, k,
           tiles, stride_sb, stride_sm, stride_sg)


# --- launch tables, resolved once per kind of call ----------------------------------------------------

@functools.lru_cache(maxsize=1024)
def group_launches(k: int, group_size: int, ue8m0: bool, hardware_e4m3: bool,
                   config: LaunchConfig | None) -> tuple[tuple[int | None, int, int, Launch], ...]:
    """(max rows, BLOCK_M, GROUPS, launch) of quantize_fp8_kernel per GROUP_TABLE entry (or just `config`)."""
    found = []
    for max_rows, c in fitting(GROUP_TABLE, k, config):
        groups = max(1, c.block_k // group_size)
        constexprs = dict(UE8M0=ue8m0, HARDWARE_E4M3=hardware_e4m3, TILE=False, GROUP=group_size, GROUPS=groups,
                          BLOCK_M=c.block_m)
        # no product here feeds a sum that fusion could change but |v|*512 + 2^23, whose product is exact
        found.append((max_rows, c.block_m, groups, Launch(quantize_fp8_kernel, constexprs, num_warps=c.num_warps,
                                                           enable_fp_fusion=False)))
    return tuple(found)


@functools.lru_cache(maxsize=64)
def block_launch(block_rows: int, block_cols: int, ue8m0: bool, hardware_e4m3: bool) -> Launch:
    constexprs = dict(UE8M0=ue8m0, HARDWARE_E4M3=hardware_e4m3, TILE=True, GROUP=block_cols, GROUPS=1,
                      BLOCK_M=block_rows)
    return Launch(quantize_fp8_kernel, constexprs, num_warps=BLOCK_WARPS, enable_fp_fusion=False)


@functools.lru_cache(maxsize=1024)
def dequantize_launches(k: int, out_bits: int, group: int, scale_rows: int,
                        config: LaunchConfig | None) -> tuple[tuple[int | None, int, int, Launch], ...]:
    """(max rows, BLOCK_M, BLOCK_K, launch) of dequantize_fp8_kernel per DEQUANTIZE_TABLE entry."""
    found = []
    for max_rows, c in fitting(DEQUANTIZE_TABLE, k, config):
        block_k = max(group, min(c.block_k, triton.next_power_of_2(k)))  # whole groups per program
        constexprs = dict(OUT=out_bits, GROUP=group, SCALE_ROWS=scale_rows, BLOCK_M=c.block_m, BLOCK_K=block_k)
        # the one product is rounded once: fusion has nothing to fuse
        launch = Launch(dequantize_fp8_kernel, constexprs, num_warps=c.num_warps, enable_fp_fusion=False)
        found.append((max_rows, c.block_m, block_k, launch))
    return tuple(found)
