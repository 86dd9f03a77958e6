"""PTX specialisations for the portable kernels' constexpr hooks (backends/triton/mxfp4.py and nvfp4.py).

- sm_100 families: `cvt.rn.satfinite.e2m1x2.f32` and `cvt.rp.satfinite.ue8m0x2.f32` exist on sm_100a/
  sm_103a/sm_110a/sm_120a/sm_121a; ptxas rejects them for sm_90a. Each computes exactly what the
  portable hook computes, in one instruction for two values.
- sm_90, bfloat16 input: MXFP4's element path on pairs of bfloat16 in one register (`mul.rn.bf16x2`,
  `fma.rn.bf16x2`, `min.bf16x2`, `max.u16x2`; the first and last need sm_90). It computes what the
  portable hooks compute on float32 (design.md, "MXFP4 on bfloat16 pairs") with a third fewer
  instructions a thread, and the portable kernel is bound by its instructions on an H200.
"""

import triton
import triton.language as tl
from lowbit.backends.triton.mxfp4 import scaled


@triton.jit
def encode_ptx(x, e, nan):
    """The ENCODE hook of backends/triton/mxfp4.py on sm_100+: scale, halve where e = 127, NaN blocks to
    6.0 (nibble 0x7), then e2m1_pairs_ptx."""
    y = scaled(x, e)
    v = tl.where((e == 127)[:, :, None], y * 0.5, y)
    return e2m1_pairs_ptx(tl.where(nan[:, :, None], 6.0, v))


@triton.jit
def e2m1_pairs_ptx(v):
    """The ENCODE hook of backends/triton/nvfp4.py: float32 values (M, BLOCKS, N) to E2M1 bytes
    (M, BLOCKS * N / 2), two a byte, round to nearest even, saturating to +-6, the even element in
    the low nibble. The instruction puts its first source in the high nibble, so the odd element
    goes first."""
    rows: tl.constexpr = v.shape[0]
    pairs: tl.constexpr = v.shape[1] * v.shape[2] // 2
    even, odd = tl.split(tl.reshape(v, (rows, pairs, 2)))
    return tl.inline_asm_elementwise(
        "{ .reg .b8 pair; cvt.rn.satfinite.e2m1x2.f32 pair, $2, $1; cvt.u32.u8 $0, pair; }",
        "=r,r,r", [even, odd], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def rceil_exponent_ptx(d):
    """ceil(log2 d) of positive normal float32 d: round up to a UE8M0 power of two, minus the bias.
    (Inf and NaN never reach it: the kernel sets those blocks' scales itself.)"""
    byte = tl.inline_asm_elementwise(
        "{ .reg .b16 pair; cvt.rp.satfinite.ue8m0x2.f32 pair, $1, $1; cvt.u32.u16 $0, pair; }",
        "=r,r", [d], dtype=tl.int32, is_pure=True, pack=1)
    return (byte & 0xFF) - 127


@triton.jit
def _max_u16x2(a, b):
    return tl.inline_asm_elementwise("max.u16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True,
                                     pack=1)


@triton.jit
def amax_bits_bf16x2(x):
    """The AMAX_BITS hook of backends/triton/mxfp4.py for bfloat16 x on sm_90: |x| of a pair by one mask,
    an unsigned 16-bit max of pairs (NaN sorts above Inf, as in the portable hook), then the larger half
    widened to float32 bits."""
    tl.static_assert(x.dtype == tl.bfloat16, "amax_bits_bf16x2 takes bfloat16")
    rows: tl.constexpr = x.shape[0]
    blocks: tl.constexpr = x.shape[1]
    # pack=2: one register holds a pair (the even element in the low half); the second output is unused
    pairs = tl.inline_asm_elementwise("and.b32 $0, $2, 0x7FFF7FFF; mov.b32 $1, 0;", "=r,=r,r", [x],
                                      dtype=tl.int32, is_pure=True, pack=2)
    pairs, _ = tl.split(tl.reshape(pairs, (rows, blocks, x.shape[2] // 2, 2)))
    both = tl.reduce(pairs, 2, _max_u16x2)
    return tl.maximum(both & 0xFFFF, (both >> 16) & 0xFFFF) << 16


@triton.jit
def _per_pair(v, like):
    return tl.broadcast_to(v[:, :, None], like.shape)


@triton.jit
def encode_bf16x2(x, e, nan):
    """The ENCODE hook of backends/triton/mxfp4.py for bfloat16 x on sm_90, the portable hook's steps on
    pairs: y = x * 2^-e is exact in bfloat16 (a power of two; a result below 2^-126 rounds to code 0
    either way); a = min(|y|, 6); each of the encoder's three roundings is one FMA onto 128, where
    bfloat16's ulp is 1, so round(2a), 2 + round(a) and 4 + round(a / 2) land in the low bits and
    compare as the bits do; the code is their minimum. e = 127 blocks (Inf) scale by 2^-126 (2^-127 is
    a bfloat16 subnormal) with every constant halved, as the portable hook does. The sign is x's; NaN
    blocks are 0x77 by the mask n. Bytes: the even element's nibble low, one a pair (odd outputs
    unused)."""
    tl.static_assert(x.dtype == tl.bfloat16, "encode_bf16x2 takes bfloat16")
    half = e == 127
    s = (127 - tl.minimum(e, 126)) << 7  # the bfloat16 bits of 2^-e (2^-126 where e = 127)
    s = s | (s << 16)
    m2 = tl.where(half, 0x3F803F80, 0x40004000)  # 2h: 1 or 2 in both halves
    m1 = tl.where(half, 0x3F003F00, 0x3F803F80)  # h
    m05 = tl.where(half, 0x3E803E80, 0x3F003F00)  # h / 2
    lim = tl.where(half, 0x41404140, 0x40C040C0)  # 6 / h
    n = tl.where(nan, -1, 0)
    # pack=2: x comes as one register ($2) and each int32 input as two equal ones ($3 s, $5 m2, $7 m1,
    # $9 m05, $11 lim, $13 n); two outputs, the even element's and the odd one's
    out = tl.inline_asm_elementwise(
        """{ .reg .b32 y, a, c0, c1, c2, s, w, k0, k1, k2;
        mov.b32 k0, 0x43004300;
        mov.b32 k1, 0x43024302;
        mov.b32 k2, 0x43044304;
        mul.rn.bf16x2 y, $2, $3;
        and.b32 a, y, 0x7FFF7FFF;
        min.bf16x2 a, a, $11;
        fma.rn.bf16x2 c0, a, $5, k0;
        fma.rn.bf16x2 c1, a, $7, k1;
        fma.rn.bf16x2 c2, a, $9, k2;
        min.bf16x2 c0, c0, c1;
        min.bf16x2 c0, c0, c2;
        and.b32 s, $2, 0x80008000;
        shr.b32 s, s, 12;
        and.b32 c0, c0, 0x00070007;
        or.b32 w, c0, s;
        shr.b32 s, w, 12;
        or.b32 w, w, s;
        lop3.b32 $0, w, $13, 0x77, 0xB8;  // (w & ~n) | (n & 0x77): NaN blocks
        mov.b32 $1, 0; }""",
        "=r,=r,r,r,r,r,r,r,r,r,r,r,r,r,r",
        [x, _per_pair(s, x), _per_pair(m2, x), _per_pair(m1, x), _per_pair(m05, x), _per_pair(lim, x),
         _per_pair(n, x)], dtype=tl.int32, is_pure=True, pack=2)
    byte, _ = tl.split(tl.reshape(out, (x.shape[0], x.shape[1] * x.shape[2] // 2, 2)))
    return byte


# The hooks the cuda/bf16x2 variant passes to backends/triton/mxfp4.quantize (RCEIL_EXPONENT stays portable)
BF16X2_HOOKS = dict(amax_bits=amax_bits_bf16x2, encode=encode_bf16x2)
