"""Golden-byte tests of `lowbit.per_token_group_quant_mxfp4` against docs/SPEC.md [MX-BUFFERS],
[MX-EPS] and [MX-SCALE-F32] (the CPU reference: the only backend here).

Every expectation is either a literal derived by hand (the arithmetic is in the comment next to it)
or comes from `oracle` below: numpy float32 products for `d`, `frexp` for the exponent, the SPEC's
E2M1 threshold table written out as comparisons, exact float64 `ldexp` for the scaling. Nothing
here calls lowbit except the public functions under test; `quantize_mxfp4` serves only as the
other side of "eps = 0 gives quantize_mxfp4's bits" (itself checked byte for byte in
tests/test_spec_mxfp4.py).
"""

import math
import struct

import numpy as np
import pytest
import torch
from oracles import (
    ALL16,
    F32_MAX,
    F32_NAN,
    U8,
    assert_bytes,
    bits_of_f32,
    block,
    f32_bits_tensor,
    f32_tensor,
    from_bits16,
    u8,
)

import lowbit

# --------------------------------------------------------------------------------------------
# Independent oracle (numpy; no lowbit code)
# --------------------------------------------------------------------------------------------

RECIP6 = np.float32(1.0) / np.float32(6.0)  # fl32(1/6): one correctly rounded float32 division
AMAX_FLOOR = np.float32(6.0 * 2.0**-126)  # exact in float32 (1.5 * 2^-124)
def e2m1_code(a):
    """[MX-ROUND] / [MX-SATURATE] as the SPEC writes them: thresholds on a = |y| >= 0."""
    return np.select(
        [a <= 0.25, a < 0.75, a <= 1.25, a < 1.75, a <= 2.5, a < 3.5, a <= 5.0],
        [0, 1, 2, 3, 4, 5, 6], default=7).astype(np.uint8)


def oracle(x32: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(packed bytes (..., K/2), scale bytes (..., K/32)) of per_token_group_quant_mxfp4 for the
    float32 array `x32` (the exact values of the input), written from the SPEC text."""
    lead, k = x32.shape[:-1], x32.shape[-1]
    b = x32.reshape(-1, k // 32, 32)
    with np.errstate(all="ignore"):
        nan_blk = np.isnan(b).any(-1)  # [MX-NAN]
        amax = np.where(np.isnan(b), np.float32(0), np.abs(b)).max(-1) if b.size else np.zeros(b.shape[:-1], np.float32)
        inf_blk = np.isinf(amax)  # [MX-INF] (NaN blocks are overridden below)
        # [MX-EPS]: d = max(fl32(max(amax, 6*2^-126) * fl32(1/6)), fl32(eps)), all float32 operations
        d = np.maximum(np.maximum(amax, AMAX_FLOOR) * RECIP6, np.float32(eps))
        assert d.dtype == np.float32
        d64 = np.where(np.isfinite(d), d.astype(np.float64), 1.0)
        m, ex = np.frexp(d64)  # d = m * 2^ex, 0.5 <= m < 1: ceil(log2 d) = ex - 1 exactly when m == 0.5
        e = np.where(m == 0.5, ex - 1, ex).astype(np.int64)
        e = np.clip(e, -127, 127)  # [MX-SCALE]
        e = np.where(inf_blk, 127, e)
        y = np.ldexp(b.astype(np.float64), -e[..., None])  # [MX-SCALING], exact in float64
        codes = e2m1_code(np.abs(np.where(np.isnan(y), 0.0, y)))
        nib = codes | (np.signbit(b).astype(np.uint8) << 3)  # [MX-SIGN]
        nib = np.where(nan_blk[..., None], np.uint8(7), nib).astype(np.uint8)
        sb = np.where(nan_blk, 255, e + 127).astype(np.uint8)
    nib = nib.reshape(*lead, k)
    q = (nib[..., 0::2] | (nib[..., 1::2] << 4)).astype(np.uint8)  # [MX-PACK]
    return q, sb.reshape(*lead, k // 32)


def f32_scale_bits(scale_bytes: np.ndarray) -> np.ndarray:
    """[MX-SCALE-F32] from the byte: 2^(byte-127) as a float32 (float64 ldexp, exact), NaN bits for 0xFF."""
    b = scale_bytes.astype(np.int64)
    vals = np.ldexp(1.0, np.where(b == 255, 0, b) - 127).astype(np.float32).view(np.uint32)
    return np.where(b == 255, np.uint32(F32_NAN), vals).astype(np.uint32)


def exact32(x: torch.Tensor) -> np.ndarray:
    """The exact float32 values of a float32 / float16 / bfloat16 tensor (bf16 through its bits)."""
    x = x.contiguous()
    if x.dtype == torch.bfloat16:
        return (x.view(torch.int16).numpy().astype(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return x.numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------
# Calling the op
# --------------------------------------------------------------------------------------------


def buffers(x, q_dtype=U8, s_dtype=U8):
    *lead, k = x.shape
    return torch.empty((*lead, k // 2), dtype=q_dtype), torch.empty((*lead, k // 32), dtype=s_dtype)


def group_quant(x, eps=None, s_dtype=U8, q_dtype=U8):
    """(x_q bytes, x_s) after one call; x_s as written (uint8 view for one-byte dtypes)."""
    x_q, x_s = buffers(x, q_dtype, s_dtype)
    if eps is None:
        result = lowbit.per_token_group_quant_mxfp4(x, x_q, x_s)
    else:
        result = lowbit.per_token_group_quant_mxfp4(x, x_q, x_s, 32, eps)
    assert result is None
    assert x_q.dtype == q_dtype and x_s.dtype == s_dtype  # written in place, not replaced
    return x_q.view(U8), (x_s if s_dtype == torch.float32 else x_s.view(U8))


def check_against_oracle(x, eps, what=""):
    """Nibbles and scales (uint8, float8_e8m0fnu and float32 x_s) against the oracle."""
    rq, rs = oracle(exact32(x), eps)
    for s_dtype in (U8, torch.float8_e8m0fnu):
        qb, sb = group_quant(x, eps, s_dtype)
        assert_bytes(qb, torch.from_numpy(rq), f"{what} q (eps={eps})")
        assert_bytes(sb, torch.from_numpy(rs), f"{what} {s_dtype} x_s (eps={eps})")
    qb, s32 = group_quant(x, eps, torch.float32)
    assert_bytes(qb, torch.from_numpy(rq), f"{what} q with float32 x_s (eps={eps})")
    exp_bits = torch.from_numpy(f32_scale_bits(rs).view(np.int32))
    assert torch.equal(s32.view(torch.int32), exp_bits), f"{what} float32 x_s (eps={eps})"


# --------------------------------------------------------------------------------------------
# Self-checks of the oracle's constants and threshold table (fail if the helpers were wrong)
# --------------------------------------------------------------------------------------------


def test_mx_eps_oracle_constants_and_thresholds():
    assert int(RECIP6.view(np.uint32)) == 0x3E2AAAAB  # fl32(1/6) = 11184811 * 2^-26
    assert int(AMAX_FLOOR.view(np.uint32)) == (3 << 23) | (1 << 22)  # 1.5 * 2^-124
    a = np.array([0, 0.25, 0.2500001, 0.75, 0.7499999, 1.25, 1.2500001, 1.75, 2.5, 2.5000002, 3.5, 3.4999998,
                  5.0, 5.0000005, 6.0, np.inf])
    assert e2m1_code(a).tolist() == [0, 0, 1, 2, 1, 2, 3, 4, 4, 5, 6, 5, 6, 7, 7, 7]
    # the golden mixed row of tests/test_spec_mxfp4.py: e = 0, codes 7,1 | 2,3 | ... | 0,8
    v = [6, 0.5, 1, 1.5, 2, 3, 4, -6, -0.5, -1, -1.5, -2, -3, -4, 0, -0.0]
    q, s = oracle(np.array([block(v)], dtype=np.float32), 0.0)
    assert s.tolist() == [[0x7F]]
    assert q.tolist() == [[0x17, 0x32, 0x54, 0xF6, 0xA9, 0xCB, 0xED, 0x80] + [0] * 8]
    assert f32_scale_bits(np.array([1, 127, 254, 255])).tolist() == [0x00800000, 0x3F800000, 0x7F000000, F32_NAN]


# --------------------------------------------------------------------------------------------
# [MX-EPS]
# --------------------------------------------------------------------------------------------


def test_mx_eps_zero_block_with_1e_10_gets_scale_2_pow_minus_33():
    # fl32(1e-10) = 0x2EDBE6FF: exponent field 0x5D = 93, mantissa non-zero -> e = 93 - 127 + 1 = -33
    # (2^-34 = 5.8e-11 < 1e-10 < 2^-33 = 1.16e-10) -> byte 94 = 0x5E; it beats d = 2^-126 of amax 0
    assert bits_of_f32(1e-10) == 0x2EDBE6FF
    x = torch.zeros(2, 64)
    for eps in (1e-10, None):  # None: the default eps is 1e-10
        qb, sb = group_quant(x, eps)
        assert_bytes(sb, u8([[0x5E, 0x5E], [0x5E, 0x5E]]), f"scales eps={eps}")
        assert_bytes(qb, torch.zeros(2, 32, dtype=U8), f"q eps={eps}")


def test_mx_eps_1e_10_raises_a_small_block_from_2_pow_minus_34_to_minus_33():
    # amax = 3*2^-33: rceil d = fl32(3*2^-33 * fl32(1/6)) = fl32(2^-34 (1 + 2^-25)) = 2^-34 -> e = -34
    # eps 1e-10 > 2^-34 -> d = fl32(1e-10) -> e = -33
    x = f32_tensor([block([3 * 2.0**-33, 2.0**-34, -(2.0**-33)])])
    qb, sb = group_quant(x, 0.0)
    assert_bytes(sb, u8([[0x5D]]), "eps 0 scales")  # -34 + 127 = 93
    assert_bytes(qb, u8([[0x27, 0x0C] + [0] * 14]), "eps 0 q")  # y = 6, 1, -2 -> 7, 2, C
    qb, sb = group_quant(x, 1e-10)
    assert_bytes(sb, u8([[0x5E]]), "eps 1e-10 scales")  # -33 + 127 = 94
    assert_bytes(qb, u8([[0x15, 0x0A] + [0] * 14]), "eps 1e-10 q")  # y = 3, .5, -1 -> 5, 1, A


@pytest.mark.parametrize("eps,byte,q01", [
    (0.5, 0x7F, (0xB7, 0x02)),  # d = max(1, .5) = 1 -> e 0: y = 6, -1.5, .75 -> 7, B, 2 (tie up to even)
    (1.0, 0x7F, (0xB7, 0x02)),  # d = 1 exactly (mantissa 0) -> e 0
    (1.5, 0x80, (0xA5, 0x01)),  # d = 1.5 -> e 1: y = 3, -.75, .375 -> 5, A, 1
    (2.0, 0x80, (0xA5, 0x01)),  # d = 2 (mantissa 0) -> e 1
    (2.5, 0x81, (0x93, 0x00)),  # d = 2.5 -> e 2: y = 1.5, -.375, .1875 -> 3, 9, 0
])
def test_mx_eps_amax_six_against_eps(eps, byte, q01):
    # amax 6: rceil d = fl32(6 * fl32(1/6)) = fl32(1 + 2^-25) = 1.0
    x = f32_tensor([block([6.0, -1.5, 0.75])])
    qb, sb = group_quant(x, eps)
    assert_bytes(sb, u8([[byte]]), "scales")
    assert_bytes(qb, u8([list(q01) + [0] * 14]), "q")


def test_mx_eps_int_eps_is_the_same_as_float():
    x = f32_tensor([block([6.0, -1.5, 0.75])])
    assert torch.equal(group_quant(x, 2)[1], u8([[0x80]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mx_eps_zero_equals_quantize_mxfp4_rceil(spicy, dtype):
    x = spicy((16, 512), dtype, seed=11, exponent_run=32)
    x[3, :32] = 0.0  # an all-zero block: byte 0x01 with eps 0
    q, s = lowbit.quantize_mxfp4(x, scale_rule="rceil")
    for eps in (0.0, 0, -0.0):
        qb, sb = group_quant(x, eps)
        assert_bytes(qb, q.view(U8), f"q eps={eps!r}")
        assert_bytes(sb, s.view(U8), f"scales eps={eps!r}")
    assert sb[3, 0].item() == 0x01


@pytest.mark.parametrize("eps", [2.0**-126, math.nextafter(2.0**-126, 0), 2.0**-127, 1e-40, 2.0**-149, 1e-45, 1e-46,
                                 5e-324])
def test_mx_eps_below_2_pow_minus_126_changes_nothing(spicy, eps):
    # d >= 2^-126 already (amax floor 6*2^-126), so fl32(eps) <= 2^-126 (subnormal or 0) never raises it
    x = spicy((8, 256), torch.float32, seed=12, exponent_run=32)
    x[0] = f32_tensor(block([0.0]) + block([2.0**-126]) + block([2.0**-149, -(2.0**-140)]) + block([6 * 2.0**-126])
                      + [0.0] * 128)
    qb0, sb0 = group_quant(x, 0.0)
    # hand: zero block -> byte 1; 2^-126 -> d = 2^-126 -> byte 1, y = 1 -> code 2; subnormals -> byte 1, y < .25;
    # 6*2^-126 -> byte 1, y = 6 -> code 7
    assert_bytes(sb0[0, :4], u8([1, 1, 1, 1]), "hand scales")
    assert_bytes(qb0[0, :64:16], u8([0x00, 0x02, 0x80, 0x07]), "hand q")
    qb, sb = group_quant(x, eps)
    assert_bytes(qb, qb0, f"q eps={eps}")
    assert_bytes(sb, sb0, f"scales eps={eps}")


@pytest.mark.parametrize("eps,byte,q0", [
    # block [1.5*2^-20, -2^-22]: rceil d = fl32(1.5*2^-20 * fl32(1/6)) = 2^-22 < fl32(eps), so eps sets d.
    # e -20: y = 1.5, -.25 -> 3, 8 (tie down, sign kept); e -19: .75, -.125 -> 2 (tie up), 8; e -21: 3, -.5 -> 5, 9
    (2.0**-20 * (1 + 2.0**-30), 107, 0x83),  # fl32 rounds down to 2^-20 (mantissa 0) -> e -20; unrounded: -19
    (2.0**-20 * (1 + 2.0**-24), 107, 0x83),  # exact tie between 2^-20 and its next float32: to even, 2^-20
    (2.0**-20 * (1 + 2.0**-24 + 2.0**-40), 108, 0x82),  # just above the tie: 2^-20 (1 + 2^-23) -> e -19
    (2.0**-20 * (1 + 2.0**-23), 108, 0x82),  # a float32 one ulp above 2^-20 -> e -19
    (2.0**-21 * (1 + 2.0**-25), 106, 0x95),  # rounds down to 2^-21 -> e -21; unrounded: -20
])
def test_mx_eps_is_rounded_to_float32_first(eps, byte, q0):
    x = f32_tensor([block([1.5 * 2.0**-20, -(2.0**-22)])])
    qb, sb = group_quant(x, eps)
    assert_bytes(sb, u8([[byte]]), "scales")
    assert_bytes(qb, u8([[q0] + [0] * 15]), "q")


@pytest.mark.parametrize("eps", [3.0e38, 2.0**127, 1.5 * 2.0**127, F32_MAX])
def test_mx_eps_huge_eps_clamps_to_127(eps):
    # fl32(3e38): exponent field 254 (2^127 = 1.7e38 <= 3e38 < 2^128), mantissa non-zero -> e 128 -> clamp 127
    # 2^127 -> e 127 exactly; 1.5*2^127 and F32_MAX -> 128 -> 127. Byte 254, y = x * 2^-127 (subnormal factor)
    x = f32_tensor([block([2.0**127, -(2.0**126), 1.0, 0.75 * 2.0**127])])
    qb, sb = group_quant(x, eps)
    assert_bytes(sb, u8([[254]]), "scales")
    assert_bytes(qb, u8([[0x92, 0x20] + [0] * 14]), "q")  # y = 1, -.5, 2^-127, .75 -> 2, 9, 0, 2


def test_mx_eps_just_below_float32_overflow_is_accepted():
    # 2^128 - 2^103 is the tie between F32_MAX = 2^128 - 2^104 and 2^128 (rounds to 2^128: rejected);
    # 2^75 below it rounds to F32_MAX: finite as a float32, so valid -> d = F32_MAX -> e 128 -> clamp 127
    eps = 2.0**128 - 2.0**103 - 2.0**75
    assert np.float32(eps) == np.float32(F32_MAX)
    qb, sb = group_quant(f32_tensor([block([2.0**127])]), eps)
    assert_bytes(sb, u8([[254]]), "scales")
    assert_bytes(qb, u8([[0x02] + [0] * 15]), "q")


def test_mx_eps_does_not_touch_nan_and_inf_blocks():
    nan = float("nan")
    x = f32_tensor([block([nan, -6.0, 1.0]), block([float("-inf"), 2.0**127, -0.0])])
    for eps in (0.0, 1.0, 2.0**100, 3.0e38):
        qb, sb = group_quant(x, eps)
        assert_bytes(sb, u8([[0xFF], [254]]), f"scales eps={eps}")  # [MX-NAN], [MX-INF]
        # NaN block: every nibble 7; Inf block: -inf -> F, 2^127 * 2^-127 = 1 -> 2, -0.0 -> 8
        assert_bytes(qb, u8([[0x77] * 16, [0x2F, 0x08] + [0] * 14]), f"q eps={eps}")


def _all_bf16_arrangements():
    straight = ALL16.reshape(64, 1024)  # 32 consecutive patterns a block: every exponent, subnormals, NaN runs
    strided = ALL16.reshape(32, 2048).T.reshape(64, 1024)  # block i = i + 2048 j: wide blocks; block 1920 is ±Inf
    shuffled = np.random.default_rng(2024).permutation(ALL16).reshape(64, 1024)
    return {"straight": straight, "strided": strided, "shuffled": shuffled}


@pytest.mark.parametrize("eps", [0.0, 1e-10, 2.0**-20, 0.75, 3.0e38])
def test_mx_eps_all_bfloat16_patterns_match_the_oracle(eps):
    for name, bits in _all_bf16_arrangements().items():
        x = from_bits16(bits.reshape(-1)).reshape(bits.shape)
        check_against_oracle(x, eps, name)
        check_against_oracle(x.float(), eps, f"{name} as float32")


def test_mx_eps_all_bfloat16_patterns_inf_block_is_covered():
    # guards the exhaustive test above: the strided arrangement has a ±Inf block without NaN
    bits = _all_bf16_arrangements()["strided"].reshape(-1, 32)
    assert 0x7F80 in bits[1920].tolist() and 0xFF80 in bits[1920].tolist()
    assert not any(0x7F80 < b < 0x8000 or b > 0xFF80 for b in bits[1920].tolist())


def test_mx_eps_all_bfloat16_patterns_eps_zero_equals_quantize_mxfp4():
    for name, bits in _all_bf16_arrangements().items():
        x = from_bits16(bits.reshape(-1)).reshape(bits.shape)
        q, s = lowbit.quantize_mxfp4(x)
        qb, sb = group_quant(x, 0.0)
        assert_bytes(qb, q.view(U8), f"{name} q")
        assert_bytes(sb, s.view(U8), f"{name} scales")


@pytest.mark.parametrize("eps", [0.0, 1e-10, 1e-3, 0.75, 12.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mx_eps_random_data_matches_the_oracle(spicy, dtype, eps):
    check_against_oracle(spicy((8, 1024), dtype, seed=13, exponent_run=32), eps, str(dtype))


# --------------------------------------------------------------------------------------------
# [MX-SCALE-F32]
# --------------------------------------------------------------------------------------------


def test_mx_scale_f32_hand_table():
    nan_neg_payload = struct.unpack("<f", struct.pack("<I", 0xFFC00001))[0]
    rows = [
        block([0.0]),  # amax 0 -> d 2^-126 -> byte 1 -> 2^-126 = 0x00800000
        block([6.0, -1.0]),  # byte 127 -> 1.0 = 0x3F800000
        block([float("inf"), 1.0]),  # byte 254 -> 2^127 = 0x7F000000
        block([F32_MAX]),  # d ~ 1.33*2^125 -> byte 253 -> 2^126 = 0x7E800000
        block([1.0, nan_neg_payload]),  # NaN block (sign set, payload 1) -> canonical 0x7FC00000
    ]
    x = f32_tensor(rows)
    assert bits_of_f32(x[4, 1].item()) & 0x80000000  # the input NaN really has its sign set
    _, s32 = group_quant(x, 0.0, torch.float32)
    assert s32.dtype == torch.float32 and tuple(s32.shape) == (5, 1)
    exp = f32_bits_tensor([[0x00800000], [0x3F800000], [0x7F000000], [0x7E800000], [F32_NAN]])
    assert torch.equal(s32.view(torch.int32), exp.view(torch.int32)), [hex(v) for v in s32.view(torch.int32).flatten()]


def test_mx_scale_f32_byte_0_is_unreachable_smallest_scale_is_2_pow_minus_126():
    # [MX-SCALE-F32] names 0x00400000 for e = -127, but this op always uses rceil, whose d >= 2^-126:
    # the tiniest inputs still give byte 1 = 0x00800000, never the subnormal
    x = f32_bits_tensor([block([0], fill=0), block([1], fill=0), block([0x80000000], fill=0x80000000)])
    for eps in (0.0, 2.0**-149):
        _, s32 = group_quant(x, eps, torch.float32)
        assert torch.equal(s32.view(torch.int32), torch.full((3, 1), 0x00800000, dtype=torch.int32))
        assert torch.equal(group_quant(x, eps, torch.float8_e8m0fnu)[1], torch.ones(3, 1, dtype=U8))


def _every_scale_byte_input():
    """Rows whose bytes are 1..254 in order, then a NaN block: 6*2^k for k in -126..125 -> e = k
    (bytes 1..252), F32_MAX -> 253, Inf -> 254, NaN -> 0xFF."""
    rows = [block([6.0 * 2.0**k, -(2.0**k)]) for k in range(-126, 126)]
    rows += [block([F32_MAX, 1.0]), block([float("inf"), -1.0]), block([float("nan"), 1.0])]
    return f32_tensor(rows), list(range(1, 255)) + [0xFF]


def test_mx_scale_f32_every_byte_is_two_to_the_byte_minus_127():
    x, bytes_ = _every_scale_byte_input()
    _, s32 = group_quant(x, 0.0, torch.float32)
    got = s32.reshape(-1).double().tolist()
    for byte, value in zip(bytes_, got):
        if byte == 0xFF:
            assert math.isnan(value)
        else:
            assert value == 2.0 ** (byte - 127), (byte, value)
    # and bit for bit: 2^(b-127) for b >= 1 is the normal float32 with exponent field b, mantissa 0
    exp_bits = torch.tensor([b << 23 if b != 0xFF else F32_NAN for b in bytes_], dtype=torch.int64)
    assert torch.equal(s32.reshape(-1).view(torch.int32).to(torch.int64) & 0xFFFFFFFF, exp_bits)


@pytest.mark.parametrize("s_dtype", [U8, torch.float8_e8m0fnu])
def test_mx_scale_f32_one_byte_x_s_holds_the_scale_byte(s_dtype):
    x, bytes_ = _every_scale_byte_input()
    qb, sb = group_quant(x, 0.0, s_dtype)
    assert_bytes(sb, u8([[b] for b in bytes_]), f"{s_dtype} x_s")
    # the elements do not depend on the x_s dtype
    assert_bytes(qb, group_quant(x, 0.0, torch.float32)[0], "q with float32 x_s")


def test_mx_scale_f32_with_default_eps_nd_input():
    # default eps 1e-10 -> zero blocks at 2^-33 (0x2F000000 = exponent field 94); 6 -> 1.0; nd shape kept
    x = torch.zeros(2, 3, 64)
    x[1, 2, 40] = 6.0
    _, s32 = group_quant(x, None, torch.float32)
    assert tuple(s32.shape) == (2, 3, 2)
    exp = torch.full((2, 3, 2), 94 << 23, dtype=torch.int32)
    exp[1, 2, 1] = 0x3F800000
    assert torch.equal(s32.view(torch.int32), exp)


# --------------------------------------------------------------------------------------------
# [MX-BUFFERS]
# --------------------------------------------------------------------------------------------

Q_SENTINEL, S_SENTINEL = 0xA5, 0x5A


def filled(shape, dtype, byte):
    t = torch.empty(shape, dtype=dtype)
    t.view(U8).fill_(byte)
    return t


def raw(t):
    return t.detach().clone().contiguous().view(U8)


def good_q():
    return filled((2, 32), U8, Q_SENTINEL)


def good_s():
    return filled((2, 2), torch.float32, S_SENTINEL)


BAD_BUFFERS = {
    # name: (argument named, x_q factory, x_s factory)
    "x_q_float32": ("x_q", lambda: filled((2, 32), torch.float32, Q_SENTINEL), good_s),
    "x_q_int8": ("x_q", lambda: filled((2, 32), torch.int8, Q_SENTINEL), good_s),
    "x_q_e8m0": ("x_q", lambda: filled((2, 32), torch.float8_e8m0fnu, Q_SENTINEL), good_s),
    "x_q_e4m3": ("x_q", lambda: filled((2, 32), torch.float8_e4m3fn, Q_SENTINEL), good_s),
    "x_q_shape_k": ("x_q", lambda: filled((2, 64), U8, Q_SENTINEL), good_s),
    "x_q_shape_short": ("x_q", lambda: filled((2, 31), U8, Q_SENTINEL), good_s),
    "x_q_flat": ("x_q", lambda: filled((64,), U8, Q_SENTINEL), good_s),
    "x_q_extra_dim": ("x_q", lambda: filled((1, 2, 32), U8, Q_SENTINEL), good_s),
    "x_q_transposed": ("x_q", lambda: filled((32, 2), U8, Q_SENTINEL).t(), good_s),
    "x_q_strided": ("x_q", lambda: filled((2, 64), U8, Q_SENTINEL)[:, ::2], good_s),
    "x_s_float16": ("x_s", good_q, lambda: filled((2, 2), torch.float16, S_SENTINEL)),
    "x_s_bfloat16": ("x_s", good_q, lambda: filled((2, 2), torch.bfloat16, S_SENTINEL)),
    "x_s_float64": ("x_s", good_q, lambda: filled((2, 2), torch.float64, S_SENTINEL)),
    "x_s_int32": ("x_s", good_q, lambda: filled((2, 2), torch.int32, S_SENTINEL)),
    "x_s_int8": ("x_s", good_q, lambda: filled((2, 2), torch.int8, S_SENTINEL)),
    "x_s_e4m3": ("x_s", good_q, lambda: filled((2, 2), torch.float8_e4m3fn, S_SENTINEL)),
    "x_s_fp4": ("x_s", good_q, lambda: filled((2, 2), torch.float4_e2m1fn_x2, S_SENTINEL)),
    "x_s_shape_one": ("x_s", good_q, lambda: filled((2, 1), torch.float32, S_SENTINEL)),
    "x_s_shape_four": ("x_s", good_q, lambda: filled((2, 4), torch.float32, S_SENTINEL)),
    "x_s_flat": ("x_s", good_q, lambda: filled((4,), torch.float32, S_SENTINEL)),
    "x_s_extra_dim": ("x_s", good_q, lambda: filled((2, 2, 1), U8, S_SENTINEL)),
    "x_s_transposed": ("x_s", good_q, lambda: filled((2, 2), torch.float32, S_SENTINEL).t()),
    "x_s_strided": ("x_s", good_q, lambda: filled((2, 4), U8, S_SENTINEL)[:, ::2]),
}


@pytest.mark.parametrize("case", list(BAD_BUFFERS))
def test_mx_buffers_invalid_buffer_raises_naming_it_and_writes_nothing(case):
    arg, make_q, make_s = BAD_BUFFERS[case]
    other = {"x_q": "x_s", "x_s": "x_q"}[arg]
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    x_q, x_s = make_q(), make_s()
    if case.endswith(("transposed", "strided")):
        assert not (x_q if arg == "x_q" else x_s).is_contiguous()
    before = raw(x_q), raw(x_s)
    with pytest.raises(ValueError) as info:
        lowbit.per_token_group_quant_mxfp4(x, x_q, x_s)
    msg = str(info.value)
    assert f"{arg} " in msg and f"{other} " not in msg, msg
    assert torch.equal(raw(x_q), before[0]), "x_q was written"
    assert torch.equal(raw(x_s), before[1]), "x_s was written"


@pytest.mark.parametrize("where", ["x_q", "x_s", "x"])
def test_mx_buffers_wrong_device_raises_and_writes_nothing(where):
    # CPU-only: the meta device stands in for "another device" (a meta argument routes the call to
    # the fake, which runs the same checks); the buffers left on CPU must keep their sentinel bytes
    x, x_q, x_s = torch.zeros(2, 64), good_q(), good_s()
    if where == "x_q":
        x_q = torch.empty(2, 32, dtype=U8, device="meta")
    elif where == "x_s":
        x_s = torch.empty(2, 2, dtype=torch.float32, device="meta")
    else:
        x = x.to("meta")
    cpu = {n: (t, raw(t)) for n, t in (("x_q", x_q), ("x_s", x_s)) if t.device.type == "cpu"}
    with pytest.raises(ValueError) as info:
        lowbit.per_token_group_quant_mxfp4(x, x_q, x_s)
    msg = str(info.value)
    assert "meta" in msg, msg
    if where != "x":
        assert f"{where} " in msg, msg
    for name, (t, before) in cpu.items():
        assert torch.equal(raw(t), before), f"{name} was written"


@pytest.mark.parametrize("group_size", [64, 16, 128, 1])
def test_mx_buffers_group_size_other_than_32_is_unsupported(group_size):
    x_q, x_s = good_q(), good_s()
    before = raw(x_q), raw(x_s)
    with pytest.raises(lowbit.UnsupportedError) as info:
        lowbit.per_token_group_quant_mxfp4(torch.zeros(2, 64), x_q, x_s, group_size)
    assert "32" in str(info.value)
    assert torch.equal(raw(x_q), before[0]) and torch.equal(raw(x_s), before[1])


@pytest.mark.parametrize("eps", [-1.0, -1e-30, float("inf"), float("-inf"), float("nan"), 1e39, 2.0**128,
                                 2.0**128 - 2.0**103])
def test_mx_buffers_invalid_eps_raises_value_error_and_writes_nothing(eps):
    # 2^128 - 2^103 is the exact tie above F32_MAX: it rounds (to even) to 2^128 = inf as a float32
    x_q, x_s = good_q(), good_s()
    before = raw(x_q), raw(x_s)
    with pytest.raises(ValueError) as info:
        lowbit.per_token_group_quant_mxfp4(torch.zeros(2, 64), x_q, x_s, 32, eps)
    assert "eps" in str(info.value)
    assert torch.equal(raw(x_q), before[0]) and torch.equal(raw(x_s), before[1])


@pytest.mark.parametrize("k", [48, 31, 16])
def test_mx_buffers_last_dim_not_a_multiple_of_32_is_unsupported(k):
    x_q, x_s = filled((2, k // 2), U8, Q_SENTINEL), filled((2, max(k // 32, 1)), torch.float32, S_SENTINEL)
    before = raw(x_q), raw(x_s)
    with pytest.raises(lowbit.UnsupportedError) as info:
        lowbit.per_token_group_quant_mxfp4(torch.zeros(2, k), x_q, x_s)
    assert "block size 32" in str(info.value) and str(k) in str(info.value)
    assert torch.equal(raw(x_q), before[0]) and torch.equal(raw(x_s), before[1])


def test_mx_buffers_returns_none_and_writes_in_place():
    x = f32_tensor([block([6.0, 1.0]) + block([3.0])])
    x_q, x_s = good_q()[:1].clone(), filled((1, 2), U8, S_SENTINEL)
    assert lowbit.per_token_group_quant_mxfp4(x, x_q, x_s, eps=0.0) is None
    # 6 -> e 0 (0x7F), y 6, 1 -> 7, 2; 3 -> e -1 (0x7E), y 6 -> 7
    assert_bytes(x_s, u8([[0x7F, 0x7E]]), "x_s")
    assert_bytes(x_q, u8([[0x27] + [0] * 15 + [0x07] + [0] * 15]), "x_q")


def test_mx_buffers_one_dimensional_input():
    x = f32_tensor(block([6.0, 1.0]) + block([3.0]))
    x_q, x_s = filled((32,), U8, Q_SENTINEL), filled((2,), torch.float8_e8m0fnu, S_SENTINEL)
    lowbit.per_token_group_quant_mxfp4(x, x_q, x_s)
    assert_bytes(x_s.view(U8), u8([0x7F, 0x7E]), "x_s")
    assert_bytes(x_q, u8([0x27] + [0] * 15 + [0x07] + [0] * 15), "x_q")


@pytest.mark.parametrize("s_dtype", [U8, torch.float32])
def test_mx_buffers_nd_and_non_contiguous_input(spicy, s_dtype):
    x = spicy((2, 3, 64), torch.bfloat16, seed=14, exponent_run=32)
    views = {"nd": x, "permuted": x.permute(1, 0, 2).contiguous().permute(1, 0, 2),
             "sliced": torch.stack([x, x], -1).reshape(2, 3, 128)[..., ::2]}
    rq, rs = oracle(exact32(x), 1e-10)
    for name, v in views.items():
        qb, sb = group_quant(v, None, s_dtype)
        assert tuple(qb.shape) == (2, 3, 32) and tuple(sb.shape) == (2, 3, 2)
        assert_bytes(qb, torch.from_numpy(rq), f"{name} q")
        if s_dtype == torch.float32:
            assert torch.equal(sb.view(torch.int32), torch.from_numpy(f32_scale_bits(rs).view(np.int32))), name
        else:
            assert_bytes(sb, torch.from_numpy(rs), f"{name} x_s")


@pytest.mark.parametrize("shape,qshape,sshape", [((0, 64), (0, 32), (0, 2)), ((2, 0), (2, 0), (2, 0)), ((0,), (0,), (0,)),
                                                 ((2, 0, 32), (2, 0, 16), (2, 0, 1))])
@pytest.mark.parametrize("s_dtype", [U8, torch.float32, torch.float8_e8m0fnu])
def test_mx_buffers_empty_inputs(shape, qshape, sshape, s_dtype):
    x_q, x_s = torch.empty(qshape, dtype=U8), torch.empty(sshape, dtype=s_dtype)
    assert lowbit.per_token_group_quant_mxfp4(torch.zeros(shape, dtype=torch.bfloat16), x_q, x_s) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mx_buffers_x_q_bytes_equal_quantize_mxfp4(spicy, dtype):
    x = spicy((6, 2, 256), dtype, seed=15, exponent_run=32)
    q, s = lowbit.quantize_mxfp4(x)
    for q_dtype in (U8, torch.float4_e2m1fn_x2):
        for s_dtype in (U8, torch.float8_e8m0fnu):
            qb, sb = group_quant(x, 0.0, s_dtype, q_dtype)
            assert_bytes(qb, q.view(U8), f"{q_dtype} x_q")
            assert_bytes(sb, s.view(U8), f"{s_dtype} x_s")


def test_mx_buffers_float4_x_q_is_accepted():
    x = f32_tensor([block([6.0, -1.5, 0.75])])
    x_q, x_s = filled((1, 16), torch.float4_e2m1fn_x2, Q_SENTINEL), filled((1, 1), U8, S_SENTINEL)
    lowbit.per_token_group_quant_mxfp4(x, x_q, x_s, 32, 0.0)
    assert x_q.dtype == torch.float4_e2m1fn_x2
    assert_bytes(x_q.view(U8), u8([[0xB7, 0x02] + [0] * 14]), "x_q")  # 6, -1.5, .75 -> 7, B, 2
    assert_bytes(x_s, u8([[0x7F]]), "x_s")
