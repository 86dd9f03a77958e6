"""PTX specialisations for the portable kernels' constexpr hooks, sm_100 families only.

`cvt.rn.satfinite.e2m1x2.f32` and `cvt.rp.satfinite.ue8m0x2.f32` exist on sm_100a/sm_103a/sm_110a/
sm_120a/sm_121a; ptxas rejects them for sm_90a. Each computes exactly what the portable hook next
to the kernel computes (backends/triton/mxfp4.py), in one instruction for two values.
"""

import triton
import triton.language as tl


@triton.jit
def encode_ptx(y, half, nan):
    """The ENCODE hook of backends/triton/mxfp4.py: halve where `half`, NaN blocks to 6.0 (nibble
    0x7), then e2m1_pairs_ptx."""
    v = tl.where(half[:, :, None], y * 0.5, y)
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
