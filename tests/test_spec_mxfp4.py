"""Golden-byte tests for the MXFP4 clauses of docs/SPEC.md ([MX-*]).

Every expectation here is either a literal byte derived by hand (the arithmetic is in the comment
next to it) or comes from the independent formulation in this file: exact float64 / Fraction
arithmetic, ``math.frexp``-style exponents (never float bit fields), and "nearest E2M1 magnitude,
ties to the even code" chosen by comparing against the grid's midpoints. Nothing here calls into
lowbit except the two public functions under test.
"""

import struct
from fractions import Fraction

import numpy as np
import pytest
import torch
from oracles import (
    ALL16,
    E2M1_GRID,
    F32_INF,
    F32_MAX,
    F32_NAN,
    F32_NEG_INF,
    F32_NEG_NAN,
    F32_SNAN,
    NAN_BITS,
    RECIP6,
    U8,
    assert_bytes,
    bf16_values,
    block,
    ceil_log2_np,
    dn32,
    e2m1_code_exact,
    e2m1_codes_np,
    exact64,
    f32_bits_of,
    f32_bits_tensor,
    f32_from_bits,
    f32_tensor,
    fl32,
    from_bits16,
    pack,
    swizzled_bytes,
    u8,
    up32,
)

import lowbit

RULES = ("rceil", "floor")

# --------------------------------------------------------------------------------------------
# Independent helpers (exact arithmetic, no lowbit code)
# --------------------------------------------------------------------------------------------


def floor_log2_np(d):
    m, ex = np.frexp(d)
    return (ex - 1).astype(np.int64)


def ref_mxfp4(x, rule):
    """Independent MXFP4 quantizer: x is a float64 array (..., K) of exact input values.

    Returns (q bytes uint8 (..., K/2), scale bytes uint8 (..., K/32))."""
    x = np.asarray(x, dtype=np.float64)
    lead, k = x.shape[:-1], x.shape[-1]
    b = x.reshape(-1, k // 32, 32)
    with np.errstate(all="ignore"):
        nan_blk = np.isnan(b).any(-1)
        inf_blk = np.isinf(b).any(-1) & ~nan_blk
        amax = np.where(np.isnan(b), 0.0, np.abs(b)).max(-1) if b.size else np.zeros(b.shape[:-1])
        safe = np.where(np.isfinite(amax), amax, 1.0)
        if rule == "rceil":
            m = np.maximum(safe, 6.0 * 2.0**-126)
            # product of two float32 values is exact in float64; one rounding to float32 follows
            d = (m * RECIP6).astype(np.float32).astype(np.float64)
            e = ceil_log2_np(d)
        else:
            e = np.where(safe == 0.0, -1000, floor_log2_np(np.where(safe == 0, 1.0, safe)) - 2)
        e = np.clip(e, -127, 127)
        e = np.where(inf_blk, 127, e)
        y = np.ldexp(b, -e[..., None])  # exact: float64 has the range
        codes = e2m1_codes_np(np.abs(np.where(np.isnan(y), 0.0, y)))
        nib = codes | (np.signbit(b).astype(np.uint8) << 3)
        nib = np.where(nan_blk[..., None], np.uint8(7), nib).astype(np.uint8)
        sb = np.where(nan_blk, 255, e + 127).astype(np.uint8)
    nib = nib.reshape(*lead, k)
    q = (nib[..., 0::2] | (nib[..., 1::2] << 4)).astype(np.uint8)
    return q, sb.reshape(*lead, k // 32)


def ref_values(x, rule):
    """Independent dequantized values (float64; NaN for NaN blocks) of ref_mxfp4's encoding."""
    x = np.asarray(x, dtype=np.float64)
    q, s = ref_mxfp4(x, rule)
    nib = np.empty(q.shape[:-1] + (q.shape[-1] * 2,), dtype=np.uint8)
    nib[..., 0::2] = q & 0xF
    nib[..., 1::2] = q >> 4
    mag = E2M1_GRID[nib & 7] * np.where(nib & 8, -1.0, 1.0)
    scale = np.repeat(s.astype(np.int64), 32, axis=-1)
    with np.errstate(all="ignore"):
        out = np.ldexp(mag, scale - 127)
        return np.where(scale == 255, np.nan, out)


def quant(x, rule=None):
    if rule is None:
        q, s = lowbit.quantize_mxfp4(x)
    else:
        q, s = lowbit.quantize_mxfp4(x, scale_rule=rule)
    assert q.dtype == torch.float4_e2m1fn_x2, q.dtype
    assert s.dtype == torch.float8_e8m0fnu, s.dtype
    return q.view(U8), s.view(U8)


def check_against_ref(x, rule, what=""):
    qb, sb = quant(x, rule)
    rq, rs = ref_mxfp4(exact64(x), rule)
    assert_bytes(sb, torch.from_numpy(rs), f"{what} scales ({rule})")
    assert_bytes(qb, torch.from_numpy(rq), f"{what} q ({rule})")
    return qb, sb


def random_blocks(seed, nblocks, dtype=torch.float32):
    """Blocks with an anchor 6*2^k (random position), grid points and midpoints times 2^k, and
    random normals: lots of exact ties. Values are exact in the chosen dtype."""
    rng = np.random.default_rng(seed)
    pts = np.array([0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 5.5, 0.1])
    k = rng.integers(-12, 12, size=(nblocks, 1))
    base = rng.choice(pts, size=(nblocks, 32)) * rng.choice([-1.0, 1.0], size=(nblocks, 32))
    noisy = rng.standard_normal((nblocks, 32)) * 2.0
    base = np.where(rng.random((nblocks, 32)) < 0.3, noisy, base)
    pos = rng.integers(0, 32, size=nblocks)
    base[np.arange(nblocks), pos] = 6.0 * rng.choice([-1.0, 1.0], size=nblocks)
    x = np.ldexp(base, k)
    t = torch.from_numpy(x.astype(np.float32)).to(dtype)  # rounding here only defines the input
    return t


# --------------------------------------------------------------------------------------------
# Self-checks of the independent oracle (these can fail if the helpers above were wrong)
# --------------------------------------------------------------------------------------------


def test_mx_rceil_reciprocal_constant_is_fl32_of_one_sixth():
    assert Fraction(RECIP6) == fl32(Fraction(1, 6))
    # 6 * fl32(1/6) = 6 * 11184811 * 2^-26 = (2^26 + 2) * 2^-26 = 1 + 2^-25, which rounds to 1.0
    assert 6 * Fraction(RECIP6) == 1 + Fraction(1, 2**25)
    assert fl32(6 * Fraction(RECIP6)) == 1


def test_mx_round_oracle_matches_spec_threshold_table():
    # [MX-ROUND] written as thresholds; compare the grid oracles with it on many exact values
    def by_thresholds(a):
        if a <= Fraction(1, 4):
            return 0
        if a < Fraction(3, 4):
            return 1
        if a <= Fraction(5, 4):
            return 2
        if a < Fraction(7, 4):
            return 3
        if a <= Fraction(5, 2):
            return 4
        if a < Fraction(7, 2):
            return 5
        if a <= 5:
            return 6
        return 7

    vals = [Fraction(i, 64) for i in range(64 * 9)]
    for t in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0):
        vals += [Fraction(dn32(t)), Fraction(t), Fraction(up32(t))]
    np_codes = e2m1_codes_np(np.array([float(v) for v in vals]))
    for v, c in zip(vals, np_codes.tolist()):
        assert by_thresholds(v) == e2m1_code_exact(v) == c, v


# --------------------------------------------------------------------------------------------
# [MX-GOLDEN]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mx_golden_all_zero_block_rceil_0x01(dtype):
    # amax 0 -> d = fl32(6*2^-126 * fl32(1/6)) = 2^-126 -> e = -126 -> byte 0x01
    x = torch.zeros(2, 64, dtype=dtype)
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[0x01, 0x01], [0x01, 0x01]]), "scales")
    assert_bytes(qb, torch.zeros(2, 32, dtype=U8), "q")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mx_golden_all_zero_block_floor_0x00(dtype):
    # amax 0 -> floor(log2 0) lands below -127 -> clamp -127 -> byte 0x00
    x = torch.zeros(2, 64, dtype=dtype)
    qb, sb = quant(x, "floor")
    assert_bytes(sb, u8([[0x00, 0x00], [0x00, 0x00]]), "scales")
    assert_bytes(qb, torch.zeros(2, 32, dtype=U8), "q")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mx_golden_mixed_row(rule, dtype):
    # block 0: anchor 6 -> e = 0 (rceil: fl32(6*fl32(1/6)) = 1; floor: floor(log2 6) - 2 = 0)
    v = [6, 0.5, 1, 1.5, 2, 3, 4, -6, -0.5, -1, -1.5, -2, -3, -4, 0, -0.0]
    # block 1: the same times 2^-10 -> e = -10 -> byte 117 = 0x75
    row = block(v) + block([a * 2.0**-10 for a in v])
    x = f32_tensor([row]).to(dtype)
    qb, sb = quant(x, rule)
    # codes 7,1 | 2,3 | 4,5 | 6,F | 9,A | B,C | D,E | 0,8  (low nibble first)
    blk = [0x17, 0x32, 0x54, 0xF6, 0xA9, 0xCB, 0xED, 0x80] + [0x00] * 8
    assert_bytes(sb, u8([[0x7F, 0x75]]), "scales")
    assert_bytes(qb, u8([blk + blk]), "q")


# --------------------------------------------------------------------------------------------
# [MX-RCEIL]
# --------------------------------------------------------------------------------------------


def test_mx_rceil_anchor_six_uses_rounded_float32_product():
    # 6 * fl32(1/6) = 1 + 2^-25 exactly, fl32 -> 1.0 -> e = 0 -> 0x7F (unrounded product: e = 1)
    x = f32_tensor([block([6.0, -3.0])])
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, u8([[0xD7] + [0] * 15]), "q")  # 6 -> 7, -3 -> 5|8 = D


def test_mx_rceil_is_default_rule():
    # amax 7: rceil d = fl32(7*fl32(1/6)) ~ 1.1667 -> e = 1 (0x80); floor would give e = 0 (0x7F)
    x = f32_tensor([block([7.0, 3.5, -1.75, 0.75])])
    qb, sb = quant(x, None)
    assert_bytes(sb, u8([[0x80]]), "scales")
    # y = 3.5 -> 6 (tie up), 1.75 -> 4 (tie up), -0.875 -> 2|8 = A, 0.375 -> 1
    assert_bytes(qb, u8([[0x46, 0x1A] + [0] * 14]), "q")


def test_mx_rceil_versus_floor_amax_seven():
    x = f32_tensor([block([7.0, 3.5, -1.75, 0.75])])
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[0x80]]), "rceil scales")  # e = ceil(log2 1.1667) = 1
    assert_bytes(qb, u8([[0x46, 0x1A] + [0] * 14]), "rceil q")
    qb, sb = quant(x, "floor")
    assert_bytes(sb, u8([[0x7F]]), "floor scales")  # e = floor(log2 7) - 2 = 0
    # y = 7 -> 7 (saturate), 3.5 -> 6, -1.75 -> 4|8 = C, 0.75 -> 2
    assert_bytes(qb, u8([[0x67, 0x2C] + [0] * 14]), "floor q")


def test_mx_rceil_just_above_six_bumps_exponent():
    # amax = 6 + 2^-21 (one ulp): (1 + 2^-23/1.5)(1 + 2^-25) = 1 + 0.92*2^-23 -> fl32 1 + 2^-23
    # -> mantissa non-zero -> e = 1 (0x80); y = 3 + 2^-22 -> code 5
    x = f32_tensor([block([up32(6.0), -6.0])])
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[0x80]]), "scales")
    assert_bytes(qb, u8([[0xD5] + [0] * 15]), "q")  # -6/2 = -3 -> D
    qb, sb = quant(x, "floor")  # floor(log2 6.0000005) - 2 = 0
    assert_bytes(sb, u8([[0x7F]]), "floor scales")
    assert_bytes(qb, u8([[0xF7] + [0] * 15]), "floor q")  # 6+ulp -> 7 (saturates), -6 -> F


def test_mx_rceil_three_times_power_of_two():
    # amax 3*2^k: 3*fl32(1/6) = 0.5(1 + 2^-25) -> 0.5 -> e = k - 1; y = 6 -> code 7
    rows = [block([3.0 * 2.0**k, 1.5 * 2.0**k]) for k in (-20, 0, 20)]
    qb, sb = quant(f32_tensor(rows), "rceil")
    assert_bytes(sb, u8([[127 - 21], [127 - 1], [127 + 19]]), "scales")
    assert_bytes(qb, u8([[0x57] + [0] * 15] * 3), "q")  # 6 -> 7, 3 -> 5


def test_mx_rceil_minimum_amax_clamp():
    # d = fl32(max(amax, 6*2^-126) * fl32(1/6)) >= 2^-126 -> e >= -126 (byte >= 1)
    amaxes = [0.0, 2.0**-149, 2.0**-127, 2.0**-126, 6 * 2.0**-126, up32(6 * 2.0**-126)]
    x = f32_tensor([block([a]) for a in amaxes])
    qb, sb = quant(x, "rceil")
    # e = -126 for the first five; 6*2^-126+ulp -> d = 2^-126(1+2^-23) -> e = -125 (byte 2)
    assert_bytes(sb, u8([[1], [1], [1], [1], [1], [2]]), "scales")
    # y = a*2^126: 0 -> 0; 2^-23 -> 0; 0.5 -> 1; 1 -> 2; 6 -> 7; (6+)*2^-1 = 3+ -> 5
    assert_bytes(qb[:, 0], u8([0x00, 0x00, 0x01, 0x02, 0x07, 0x05]), "q[0]")
    assert_bytes(qb[:, 1:], torch.zeros(6, 15, dtype=U8), "q[1:]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mx_rceil_maximal_block(dtype):
    big = F32_MAX if dtype == torch.float32 else f32_from_bits(0x7F7F0000)  # bf16 max
    # d ~ big/6 ~ 1.33*2^125 -> e = 126 -> 0xFD; y = big*2^-126 = 4 - 2^-22 (f32) or 4 - 2^-6 (bf16)
    x = f32_tensor([block([big, -big, 2.0**127, 1.0])]).to(dtype)
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[0xFD]]), "scales")
    # big -> 6, -big -> E, 2^127 * 2^-126 = 2 -> 4, 1 * 2^-126 -> 0
    assert_bytes(qb, u8([[0xE6, 0x04] + [0] * 14]), "q")


# --------------------------------------------------------------------------------------------
# [MX-FLOOR]
# --------------------------------------------------------------------------------------------


def test_mx_floor_exponent_is_floor_log2_minus_two():
    rows = [
        block([6.0, 5.0]),  # floor(log2 6) = 2 -> e 0 (0x7F); 6 -> 7, 5 -> 6 (tie to even)
        block([7.5, 3.75]),  # e 0 (0x7F); 7.5 -> 7 (saturate), 3.75 -> 6
        block([8.0, 5.0]),  # floor(log2 8) = 3 -> e 1 (0x80); 4 -> 6, 2.5 -> 4
        block([3.5, 1.0]),  # floor(log2 3.5) = 1 -> e -1 (0x7E); 7 -> 7, 2 -> 4
        block([4.0, 0.25]),  # e 0 (0x7F); 4 -> 6, 0.25 -> 0 (tie to even)
        block([0.5, -0.375]),  # floor(log2 .5) = -1 -> e -3 (0x7C); 4 -> 6, -3 -> D
    ]
    qb, sb = quant(f32_tensor(rows), "floor")
    assert_bytes(sb, u8([[0x7F], [0x7F], [0x80], [0x7E], [0x7F], [0x7C]]), "scales")
    exp = [0x67, 0x67, 0x46, 0x47, 0x06, 0xD6]
    assert_bytes(qb[:, 0], u8(exp), "q[0]")
    assert_bytes(qb[:, 1:], torch.zeros(6, 15, dtype=U8), "q[1:]")


def test_mx_floor_versus_rceil_amax_three_and_a_half():
    x = f32_tensor([block([3.5, -1.0])])
    qb, sb = quant(x, "floor")
    assert_bytes(sb, u8([[0x7E]]), "floor scales")  # e = 1 - 2 = -1; y = 7 -> 7, -2 -> C
    assert_bytes(qb, u8([[0xC7] + [0] * 15]), "floor q")
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[0x7F]]), "rceil scales")  # d = 0.583 -> e = 0; 3.5 -> 6, -1 -> A
    assert_bytes(qb, u8([[0xA6] + [0] * 15]), "rceil q")


def test_mx_floor_small_amax_and_minus_127():
    amaxes = [0.0, 2.0**-149, 2.0**-127, 2.0**-126, 2.0**-125, 6 * 2.0**-126, 2.0**-124]
    x = f32_tensor([block([a]) for a in amaxes])
    qb, sb = quant(x, "floor")
    # e: -127 (zero), -127 (clamped), -127 (clamped from -129), -127 (from -128), -127 (exact),
    #    -126 (6*2^-126 = 1.5*2^-124), -126
    assert_bytes(sb, u8([[0], [0], [0], [0], [0], [1], [1]]), "scales")
    # y = a*2^127 -> 0, 2^-22, 1, 2, 4 ; a*2^126 -> 6, 4 -> codes 0, 0, 2, 4, 6, 7, 6
    assert_bytes(qb[:, 0], u8([0x00, 0x00, 0x02, 0x04, 0x06, 0x07, 0x06]), "q[0]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mx_floor_maximal_block(dtype):
    big = F32_MAX if dtype == torch.float32 else f32_from_bits(0x7F7F0000)
    # floor(log2 big) = 127 -> e = 125 -> 0xFC; y = big*2^-125 ~ 8 -> saturates to 7
    x = f32_tensor([block([big, -big, 2.0**127, 1.0])]).to(dtype)
    qb, sb = quant(x, "floor")
    assert_bytes(sb, u8([[0xFC]]), "scales")
    # big -> 7, -big -> F, 2^127*2^-125 = 4 -> 6, 1*2^-125 -> 0
    assert_bytes(qb, u8([[0xF7, 0x06] + [0] * 14]), "q")


def test_mx_floor_bfloat16_subnormals_e_minus_127():
    # bf16 subnormal k*2^-133: amax subnormal -> e = -127 (0x00) -> y = k/64
    ks = [16, 17, 15, 48, 47, 49, 80, 81, 79, 112, 111, 113, 127, 1, 0, 64]
    codes = [0, 1, 0, 2, 1, 2, 2, 3, 2, 4, 3, 4, 4, 0, 0, 2]
    # 16/64 = .25 tie->0; 17/64 ->1; 48/64 = .75 tie->2; 80/64 = 1.25 tie->2; 112/64 = 1.75 ->4
    neg_ks = [17, 1, 48]  # -> 9, 8, A
    bits = ks + [0x8000 | k for k in neg_ks]
    nibs = codes + [9, 8, 0xA]
    x = from_bits16([block(bits, fill=0)]).reshape(1, 32)
    qb, sb = quant(x, "floor")
    assert_bytes(sb, u8([[0x00]]), "scales")
    assert_bytes(qb, u8([pack(block(nibs, fill=0))]), "q")


# --------------------------------------------------------------------------------------------
# [MX-SCALE]
# --------------------------------------------------------------------------------------------


def _power_rows(ks):
    # row k: [6, 4, 3, 2, 1.5, 1, 0.5, 0] * 2^k (exact float32 for every k used)
    return f32_tensor([block([m * 2.0**k for m in (6, 4, 3, 2, 1.5, 1, 0.5, 0)]) for k in ks])


@pytest.mark.parametrize("rule", RULES)
def test_mx_scale_byte_is_e_plus_127_all_exponents(rule):
    ks = list(range(-126, 126))
    qb, sb = quant(_power_rows(ks), rule)
    # anchor 6*2^k -> e = k under both rules -> byte k + 127 (1 .. 252); codes 7,6,5,4,3,2,1,0
    assert_bytes(sb, torch.tensor([[k + 127] for k in ks], dtype=U8), "scales")
    exp = torch.tensor([[0x67, 0x45, 0x23, 0x01] + [0] * 12] * len(ks), dtype=U8)
    assert_bytes(qb, exp, "q")


def test_mx_scale_clamp_at_minus_127():
    qb, sb = quant(_power_rows([-127, -128]), "floor")
    # k=-127: floor(log2 1.5*2^-125) - 2 = -127 -> byte 0, codes as usual
    # k=-128: floor(log2 1.5*2^-126) - 2 = -128 -> clamped -127 -> y = m/2: 3,2,1.5,1,.75,.5,.25,0
    #         -> codes 5,4 | 3,2 | 2,1 | 0,0
    assert_bytes(sb, u8([[0x00], [0x00]]), "floor scales")
    exp = [[0x67, 0x45, 0x23, 0x01] + [0] * 12, [0x45, 0x23, 0x12, 0x00] + [0] * 12]
    assert_bytes(qb, u8(exp), "floor q")
    qb, sb = quant(_power_rows([-127, -128]), "rceil")
    # rceil never goes below e = -126: y = m/2 (k=-127) and m/4 (k=-128)
    # m/4 = 1.5,1,.75,.5,.375,.25,.125,0 -> 3,2,2,1,1,0,0,0
    assert_bytes(sb, u8([[0x01], [0x01]]), "rceil scales")
    exp = [[0x45, 0x23, 0x12, 0x00] + [0] * 12, [0x23, 0x12, 0x01, 0x00] + [0] * 12]
    assert_bytes(qb, u8(exp), "rceil q")


@pytest.mark.parametrize("rule", RULES)
def test_mx_scale_clamp_at_plus_127_with_inf(rule):
    x = f32_tensor([block([float("inf")])])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[254]]), "scales")  # e = 127
    assert_bytes(qb, u8([[0x07] + [0] * 15]), "q")


def test_mx_scale_dtype_and_shape():
    x = torch.zeros(3, 5, 96)
    q, s = lowbit.quantize_mxfp4(x)
    assert s.dtype == torch.float8_e8m0fnu
    assert tuple(s.shape) == (3, 5, 3)
    assert q.dtype == torch.float4_e2m1fn_x2
    assert tuple(q.shape) == (3, 5, 48)


# --------------------------------------------------------------------------------------------
# [MX-SCALING]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_mx_scaling_e127_does_not_flush(rule):
    # Inf -> e = 127; finite x scale by 2^-127 (subnormal factor)
    vals = [float("inf"), float("-inf"), 2.0**127, 1.5 * 2.0**127, F32_MAX, 0.75 * 2.0**127,
            0.25 * 2.0**127, up32(0.25) * 2.0**127, 1.0, -1.0, -0.0, 1.75 * 2.0**127,
            1.25 * 2.0**127, -F32_MAX, up32(1.25) * 2.0**127, 0.0]
    # codes 7, F, 2 (1), 3 (1.5), 4 (2-2^-23), 2 (.75 tie up), 0 (.25 tie down), 1, 0, 8, 8,
    #       4 (1.75 tie up), 2 (1.25 tie down), C, 3, 0
    x = f32_tensor([block(vals)])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0xFE]]), "scales")
    assert_bytes(qb, u8([[0xF7, 0x32, 0x24, 0x10, 0x80, 0x48, 0xC2, 0x03] + [0] * 8]), "q")


def test_mx_scaling_float32_subnormals_floor():
    # amax subnormal -> e = -127 -> y = k*2^-149 * 2^127 = k*2^-22
    M = 2**20  # y = 0.25
    ks = [M, M + 1, M - 1, 3 * M, 3 * M - 1, 5 * M, 5 * M + 1, 7 * M, 7 * M - 1, 2**23 - 1,
          2 * M, 1]
    codes = [0, 1, 0, 2, 1, 2, 3, 4, 3, 4, 1, 0]
    bits = ks + [0x80000000 | (M + 1), 0x80000000 | 1]  # -> 9, 8
    nibs = codes + [9, 8]
    x = f32_bits_tensor([block(bits, fill=0)])
    qb, sb = quant(x, "floor")
    assert_bytes(sb, u8([[0x00]]), "scales")
    assert_bytes(qb, u8([pack(block(nibs, fill=0))]), "q")


def test_mx_scaling_float32_subnormals_rceil():
    # amax subnormal -> max(amax, 6*2^-126) -> e = -126 -> y = k*2^-149 * 2^126 = k*2^-23
    M = 2**21  # y = 0.25
    ks = [M, M + 1, M - 1, 3 * M, 3 * M - 1, 3 * M + 1, 2**23 - 1, 2 * M, 5 * 2**20, 1]
    # .25->0, >.25->1, <.25->0, .75->2, <.75->1, >.75->2, ~1->2, .5->1, .625->1, ~0->0
    codes = [0, 1, 0, 2, 1, 2, 2, 1, 1, 0]
    bits = ks + [0x80000000 | (3 * M)]  # -0.75 -> A
    nibs = codes + [0xA]
    x = f32_bits_tensor([block(bits, fill=0)])
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[0x01]]), "scales")
    assert_bytes(qb, u8([pack(block(nibs, fill=0))]), "q")


@pytest.mark.parametrize("rule", RULES)
def test_mx_scaling_large_exponent_thresholds_exact(rule):
    # thresholds times 2^100 stay exact: anchor 6*2^100 -> e = 100 (byte 227)
    vals = [6.0, up32(0.25), 0.25, dn32(0.75), 0.75, up32(5.0), 5.0, -up32(2.5)]
    x = f32_tensor([block([v * 2.0**100 for v in vals])])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[227]]), "scales")
    # 7,1 | 0,1 | 2,7 | 6,D
    assert_bytes(qb, u8([[0x17, 0x10, 0x72, 0xD6] + [0] * 12]), "q")


# --------------------------------------------------------------------------------------------
# [MX-ROUND]
# --------------------------------------------------------------------------------------------

# (value, code) with the block anchored by 6.0 -> e = 0 under both rules
THRESH = [
    (dn32(0.25), 0), (0.25, 0), (up32(0.25), 1),
    (dn32(0.75), 1), (0.75, 2), (up32(0.75), 2),
    (dn32(1.25), 2), (1.25, 2), (up32(1.25), 3),
    (dn32(1.75), 3), (1.75, 4), (up32(1.75), 4),
    (dn32(2.5), 4), (2.5, 4), (up32(2.5), 5),
    (dn32(3.5), 5), (3.5, 6), (up32(3.5), 6),
    (dn32(5.0), 6), (5.0, 6), (up32(5.0), 7),
    (6.0, 7),
    (0.0, 0), (0.5, 1), (1.0, 2), (1.5, 3), (2.0, 4), (3.0, 5), (4.0, 6), (5.5, 7), (0.125, 0),
    (dn32(6.0), 7),
]
THRESH_BYTES = [0x00, 0x11, 0x22, 0x22, 0x33, 0x44, 0x44, 0x55, 0x66, 0x66, 0x77, 0x10, 0x32,
                0x54, 0x76, 0x70]
THRESH_BYTES_NEG = [b | 0x88 for b in THRESH_BYTES]


def test_mx_round_threshold_table_literal():
    assert pack([c for _, c in THRESH]) == THRESH_BYTES


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("k", [0, -3, 7, -100, 100, 125])
def test_mx_round_every_tie_threshold_float32(rule, k):
    pos = [v * 2.0**k for v, _ in THRESH]
    x = f32_tensor([pos, [-v for v in pos]])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[127 + k], [127 + k]]), "scales")  # anchor 6*2^k -> e = k
    assert_bytes(qb, u8([THRESH_BYTES, THRESH_BYTES_NEG]), "q")


def _neighbours_bf16(v):
    b = struct.unpack("<I", struct.pack("<f", v))[0] >> 16
    return [b - 1, b, b + 1]


@pytest.mark.parametrize("rule", RULES)
def test_mx_round_every_tie_threshold_bfloat16(rule):
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    bits = [0x40C0]  # 6.0 anchor
    codes = [7]
    exp_codes = {0.25: (0, 0, 1), 0.75: (1, 2, 2), 1.25: (2, 2, 3), 1.75: (3, 4, 4),
                 2.5: (4, 4, 5), 3.5: (5, 6, 6), 5.0: (6, 6, 7)}
    for t in ties:
        bits += _neighbours_bf16(t)
        codes += list(exp_codes[t])
    bits += [0x8000 | b for b in _neighbours_bf16(0.75)]  # -> 9, A, A
    codes += [9, 0xA, 0xA]
    x = from_bits16([block(bits, fill=0)])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, u8([pack(block(codes, fill=0))]), "q")


@pytest.mark.parametrize("rule", RULES)
def test_mx_round_every_tie_threshold_float16(rule):
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    vals = [np.float16(6.0)]
    codes = [7]
    exp_codes = {0.25: (0, 0, 1), 0.75: (1, 2, 2), 1.25: (2, 2, 3), 1.75: (3, 4, 4),
                 2.5: (4, 4, 5), 3.5: (5, 6, 6), 5.0: (6, 6, 7)}
    for t in ties:
        h = np.float16(t)
        vals += [np.nextafter(h, np.float16(-np.inf)), h, np.nextafter(h, np.float16(np.inf))]
        codes += list(exp_codes[t])
    vals += [np.float16(-5.0), np.nextafter(np.float16(-5.0), np.float16(-np.inf))]  # E, F
    codes += [0xE, 0xF]
    x = torch.from_numpy(np.array(block(vals, fill=np.float16(0)), dtype=np.float16)[None])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, u8([pack(block(codes, fill=0))]), "q")


def _pinned_blocks(values_bits, anchor_bits):
    """31 patterns + the anchor per block, the anchor at position (block index % 32)."""
    per = 31
    n = len(values_bits)
    nb = -(-n // per)
    padded = np.zeros(nb * per, dtype=np.uint32)
    padded[:n] = values_bits
    out = np.full((nb, 32), anchor_bits, dtype=np.uint32)
    mask = np.arange(32)[None, :] != (np.arange(nb) % 32)[:, None]
    out[mask] = padded
    return out


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("as_float32", [False, True])
def test_mx_round_exhaustive_bfloat16_pinned_scale(rule, as_float32):
    # every bf16 pattern with |v| <= 6 (both signs, zeros and subnormals), anchored by 6.0 (0x40C0)
    # -> e = 0 exactly (rceil: fl32(6*fl32(1/6)) = 1; floor: floor(log2 6) - 2 = 0)
    vals = bf16_values(ALL16)
    sel = ALL16[np.abs(vals) <= 6.0]  # NaN compares False -> excluded
    assert len(sel) == 2 * (0x40C0 + 1)
    blocks = _pinned_blocks(sel, 0x40C0)
    x = from_bits16(blocks)
    if as_float32:
        x = torch.from_numpy(bf16_values(blocks).astype(np.float32))
    qb, sb = quant(x, rule)
    assert torch.all(sb == 0x7F), "pinned scale must be 0x7F (e = 0)"
    v = bf16_values(blocks)
    nib = e2m1_codes_np(np.abs(v)) | (np.signbit(v).astype(np.uint8) << 3)
    exp = (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)
    assert_bytes(qb, torch.from_numpy(exp), "q")


def _sorted_patterns(vals_f64):
    order = np.argsort(np.abs(vals_f64), kind="stable")  # NaN sorts last
    return order


@pytest.mark.parametrize("rule", RULES)
def test_mx_round_exhaustive_bfloat16_sorted_blocks(rule):
    # all 65,536 bf16 patterns, sorted by magnitude into 2,048 blocks: each block's e is
    # computed independently (finite blocks: 2,040; the last 8 hold +-Inf and the 254 NaNs)
    vals = bf16_values(ALL16)
    order = _sorted_patterns(vals)
    bits = ALL16[order].reshape(-1, 32)
    x = from_bits16(bits)
    qb, sb = quant(x, rule)
    rq, rs = ref_mxfp4(bf16_values(bits), rule)
    assert (rs == 255).sum() == 8
    assert_bytes(sb, torch.from_numpy(rs), "scales")
    assert_bytes(qb, torch.from_numpy(rq), "q")


@pytest.mark.parametrize("rule", RULES)
def test_mx_round_exhaustive_float16(rule):
    h = ALL16.astype(np.uint16).view(np.float16)
    vals = h.astype(np.float64)
    # pass 1: |v| <= 6 pinned by the anchor 6.0 (fp16 0x4600) -> e = 0
    sel = ALL16[np.abs(vals) <= 6.0]
    blocks = _pinned_blocks(sel, 0x4600)
    x = torch.from_numpy(blocks.astype(np.uint16).view(np.float16).copy())
    qb, sb = quant(x, rule)
    assert torch.all(sb == 0x7F)
    v = blocks.astype(np.uint16).view(np.float16).astype(np.float64)
    nib = e2m1_codes_np(np.abs(v)) | (np.signbit(v).astype(np.uint8) << 3)
    assert_bytes(qb, torch.from_numpy((nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)),
                 "pinned q")
    # pass 2: all patterns sorted by magnitude, per-block e computed independently
    bits = ALL16[_sorted_patterns(vals)].reshape(-1, 32)
    x = torch.from_numpy(bits.astype(np.uint16).view(np.float16).copy())
    check_against_ref(x, rule, "sorted fp16")


# --------------------------------------------------------------------------------------------
# [MX-SATURATE]
# --------------------------------------------------------------------------------------------


def test_mx_saturate_floor_values_beyond_six():
    vals = [dn32(8.0), 7.0, 6.5, 6.0, up32(5.0), 5.0, -7.5, -up32(5.0)]
    x = f32_tensor([block(vals)])
    qb, sb = quant(x, "floor")
    assert_bytes(sb, u8([[0x7F]]), "scales")  # floor(log2 7.99) - 2 = 0
    # 7,7 | 7,7 | 7,6 | F,F
    assert_bytes(qb, u8([[0x77, 0x77, 0x67, 0xFF] + [0] * 12]), "q")


def test_mx_saturate_same_block_rceil():
    vals = [dn32(8.0), 7.0, 6.5, 6.0, up32(5.0), 5.0, -7.5, -up32(5.0)]
    x = f32_tensor([block(vals)])
    qb, sb = quant(x, "rceil")
    # d = fl32((8-2^-21)*fl32(1/6)) ~ 1.33 -> e = 1 (0x80)
    # y = 4-2^-22 -> 6, 3.5 -> 6, 3.25 -> 5, 3 -> 5, 2.5+2^-22 -> 5, 2.5 -> 4,
    #     -3.75 -> E, -(2.5+2^-22) -> D
    assert_bytes(sb, u8([[0x80]]), "scales")
    assert_bytes(qb, u8([[0x66, 0x55, 0x45, 0xDE] + [0] * 12]), "q")


@pytest.mark.parametrize("rule", RULES)
def test_mx_saturate_between_five_and_six(rule):
    vals = [6.0, 5.5, up32(5.0), -5.75, dn32(6.0), -6.0]  # all |y| in (5, 6] -> 7
    x = f32_tensor([block(vals)])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, u8([[0x77, 0xF7, 0xF7] + [0] * 13]), "q")


# --------------------------------------------------------------------------------------------
# [MX-SIGN]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_mx_sign_negative_zero_and_underflow(rule):
    vals = [6.0, -0.0, -0.1, -0.25, -dn32(0.25), 0.0, -0.5, -6.0, -up32(0.25), 0.0]
    # 7,8 | 8,8 | 8,0 | 9,F | 9,0
    x = f32_tensor([block(vals)])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, u8([[0x87, 0x88, 0x08, 0xF9, 0x09] + [0] * 11]), "q")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mx_sign_all_negative_zero_block(dtype):
    x = torch.full((1, 32), -0.0, dtype=dtype)
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[0x01]]), "rceil scales")
    assert_bytes(qb, torch.full((1, 16), 0x88, dtype=U8), "rceil q")
    qb, sb = quant(x, "floor")
    assert_bytes(sb, u8([[0x00]]), "floor scales")
    assert_bytes(qb, torch.full((1, 16), 0x88, dtype=U8), "floor q")


def test_mx_sign_negative_subnormal_bfloat16_in_anchored_block():
    # 0x40C0 = 6.0, 0x8001 = -2^-133, 0x0001 = +2^-133, 0x8000 = -0
    x = from_bits16([block([0x40C0, 0x8001, 0x0001, 0x8000], fill=0)])
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, u8([[0x87, 0x80] + [0] * 14]), "q")  # 7,8 | 0,8


# --------------------------------------------------------------------------------------------
# [MX-PACK]
# --------------------------------------------------------------------------------------------


def test_mx_pack_even_element_in_low_nibble():
    # codes [2, 1, 7, 0, 0, 3] -> bytes 0x12, 0x07, 0x30 (a swap would give 0x21, 0x70, 0x03)
    x = f32_tensor([block([1.0, 0.5, 6.0, 0.0, 0.0, 1.5])])
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, u8([[0x12, 0x07, 0x30] + [0] * 13]), "q")


def test_mx_pack_shape_dtype_and_block_order():
    # block j of a row owns bytes 16j .. 16j+15; three blocks with distinct contents
    row = block([6.0, 1.0]) + block([0.5, 3.0]) + block([0.0] * 31 + [-4.0])
    q, s = lowbit.quantize_mxfp4(f32_tensor([row]))
    assert q.dtype == torch.float4_e2m1fn_x2 and tuple(q.shape) == (1, 48)
    assert s.dtype == torch.float8_e8m0fnu and tuple(s.shape) == (1, 3)
    # block 0: e=0, 7,2 -> 0x27 ; block 1: amax 3 -> e=-1 (0x7E), y=1,6 -> 2,7 -> 0x72
    # block 2: amax 4 -> d = 0.667 -> e=0, -4 -> E at the last (odd) position -> 0xE0
    exp = [0x27] + [0] * 15 + [0x72] + [0] * 15 + [0] * 15 + [0xE0]
    assert_bytes(s.view(U8), u8([[0x7F, 0x7E, 0x7F]]), "scales")
    assert_bytes(q.view(U8), u8([exp]), "q")


# --------------------------------------------------------------------------------------------
# [MX-NAN]
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("nan_bits", [F32_NAN, F32_NEG_NAN, F32_SNAN])
def test_mx_nan_poisons_only_its_block(rule, nan_bits):
    b0 = [nan_bits, 0x3F800000, 0xBF800000, 0x40C00000, F32_NEG_INF, F32_INF, 0x80000000,
          0xC0C00000]  # NaN, 1, -1, 6, -inf, inf, -0, -6
    b1 = [0x40C00000, 0xC0400000]  # 6, -3
    b2 = [0x3F800000] * 31 + [nan_bits]  # NaN in the last position
    x = f32_bits_tensor([block(b0, fill=0) + block(b1, fill=0) + block(b2, fill=0)])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0xFF, 0x7F, 0xFF]]), "scales")
    exp = [0x77] * 16 + [0xD7] + [0] * 15 + [0x77] * 16  # 6 -> 7, -3 -> D
    assert_bytes(qb, u8([exp]), "q")


@pytest.mark.parametrize("rule", RULES)
def test_mx_nan_float16_and_bfloat16(rule):
    h = np.array(block([np.float16(-1.0), np.float16(2.0)], fill=np.float16(0)), dtype=np.float16)
    hb = h.view(np.uint16).copy()
    hb[5] = 0xFE00  # -NaN
    xh = torch.from_numpy(hb.view(np.float16)[None].copy())
    xb = from_bits16([block([0xBF80, 0x4000, 0xFFC1], fill=0)])  # -1, 2, -NaN
    for x in (xh, xb):
        qb, sb = quant(x, rule)
        assert_bytes(sb, u8([[0xFF]]), f"{x.dtype} scales")
        assert_bytes(qb, torch.full((1, 16), 0x77, dtype=U8), f"{x.dtype} q")


# --------------------------------------------------------------------------------------------
# [MX-INF]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_mx_inf_float16_block(rule):
    vals = [np.inf, 1.0, -np.inf, -2.0, 65504.0, -0.0]
    x = torch.from_numpy(np.array(block(vals), dtype=np.float16)[None])
    qb, sb = quant(x, rule)
    # e = 127: 1*2^-127 -> 0, -2*2^-127 -> 8, 65504*2^-127 -> 0, -0 -> 8
    assert_bytes(sb, u8([[0xFE]]), "scales")
    assert_bytes(qb, u8([[0x07, 0x8F, 0x80] + [0] * 13]), "q")  # 7,0 | F,8 | 0,8


@pytest.mark.parametrize("rule", RULES)
def test_mx_inf_bfloat16_block_and_neighbour(rule):
    # block 0: inf, -inf, bf16 max (2-2^-7)*2^127 -> y = 1.99 -> 4, 2^127 -> y = 1 -> 2
    # block 1: only finite: [4.0, -0.5] -> amax 4 -> e 0 -> 6, 9
    b0 = [0x7F80, 0xFF80, 0x7F7F, 0x7F00]
    b1 = [0x4080, 0xBF00]
    x = from_bits16([block(b0, fill=0) + block(b1, fill=0)])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0xFE, 0x7F]]), "scales")
    assert_bytes(qb, u8([[0xF7, 0x24] + [0] * 14 + [0x96] + [0] * 15]), "q")


@pytest.mark.parametrize("rule", RULES)
def test_mx_inf_negative_only(rule):
    x = f32_bits_tensor([block([F32_NEG_INF, 0x40C00000], fill=0)])  # -inf, 6
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0xFE]]), "scales")
    assert_bytes(qb, u8([[0x0F] + [0] * 15]), "q")  # F, then 6*2^-127 -> 0


# --------------------------------------------------------------------------------------------
# [MX-AMAX]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_mx_amax_uses_magnitude_of_negative_element(rule):
    # amax = |-6| = 6 -> e 0 (a signed max would see 1 -> e -2 = 0x7D)
    x = f32_tensor([[1.0] * 31 + [-6.0]])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, u8([[0x22] * 15 + [0xF2]]), "q")  # 1 -> 2 ; 2,F


@pytest.mark.parametrize("rule", RULES)
def test_mx_amax_is_per_block(rule):
    # block 0: [0.5]*32 -> rceil d = 0.5*fl32(1/6) = 0.0833 -> e = -3; floor -1-2 = -3 -> 0x7C; y=4
    # block 1: [6]*32 -> 0x7F, y = 6
    x = f32_tensor([[0.5] * 32 + [6.0] * 32])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0x7C, 0x7F]]), "scales")
    assert_bytes(qb, u8([[0x66] * 16 + [0x77] * 16]), "q")


# --------------------------------------------------------------------------------------------
# [MX-INPUT]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_mx_input_float16_subnormals_convert_exactly(rule):
    # fp16 subnormals k*2^-24, amax 96*2^-24 = 6*2^-20 -> e = -20 (byte 107) under both rules
    # y = k/16
    ks = [96, 4, 5, 12, 11, 20, 21, 28, 27, 40, 41, 56, 55, 80, 81, 3]
    codes = [7, 0, 1, 2, 1, 2, 3, 4, 3, 4, 5, 6, 5, 6, 7, 0]
    bits = ks + [0x8000 | 12]  # -0.75 -> A
    nibs = codes + [0xA]
    arr = np.array(block(bits, fill=0), dtype=np.uint16).view(np.float16)[None]
    xh = torch.from_numpy(arr.copy())
    for x in (xh, xh.float(), xh.to(torch.bfloat16)):  # exact in all three
        qb, sb = quant(x, rule)
        assert_bytes(sb, u8([[107]]), f"{x.dtype} scales")
        assert_bytes(qb, u8([pack(block(nibs, fill=0))]), f"{x.dtype} q")


@pytest.mark.parametrize("rule", RULES)
def test_mx_input_dtypes_agree_on_random_data(rule):
    x32 = random_blocks(1, 64, torch.bfloat16).float()  # exact in bf16 and f32
    a = check_against_ref(x32, rule, "f32")
    b = check_against_ref(x32.to(torch.bfloat16), rule, "bf16")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    check_against_ref(random_blocks(2, 64, torch.float16), rule, "f16")
    check_against_ref(random_blocks(3, 64, torch.float32), rule, "f32b")


@pytest.mark.parametrize("rule", RULES)
def test_mx_input_nd_shape(rule):
    x = random_blocks(4, 12).reshape(2, 3, 64)
    q, s = lowbit.quantize_mxfp4(x, scale_rule=rule)
    assert tuple(q.shape) == (2, 3, 32) and tuple(s.shape) == (2, 3, 2)
    rq, rs = ref_mxfp4(exact64(x), rule)
    assert_bytes(s.view(U8), torch.from_numpy(rs), "scales")
    assert_bytes(q.view(U8), torch.from_numpy(rq), "q")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mx_input_non_contiguous(rule, dtype):
    base = random_blocks(5, 16, dtype).reshape(8, 64)
    views = {
        "transposed": base.reshape(4, 128).t().contiguous().t()[:, :64],  # strides (1, 4)
        "transpose_of_2d": base.t().contiguous().t(),  # (8, 64) with strides (1, 8)
        "sliced_last_dim": torch.cat([base, base], dim=1)[:, ::2],  # stride 2 along K
        "sliced_rows": base[::2],
        "expanded": base[:1].expand(3, 64),  # stride 0 rows
        "nd_permuted": base.reshape(2, 4, 64).permute(1, 0, 2),
    }
    for name, x in views.items():
        assert not x.is_contiguous(), name
        q, s = quant(x, rule)
        qc, sc = quant(x.contiguous(), rule)
        assert_bytes(q, qc, f"{name} q vs contiguous")
        assert_bytes(s, sc, f"{name} scales vs contiguous")
        rq, rs = ref_mxfp4(exact64(x), rule)
        assert_bytes(q, torch.from_numpy(rq), f"{name} q vs ref")
        assert_bytes(s, torch.from_numpy(rs), f"{name} scales vs ref")


@pytest.mark.parametrize("shape,qshape,sshape", [
    ((0, 64), (0, 32), (0, 2)),
    ((3, 0), (3, 0), (3, 0)),
    ((2, 0, 32), (2, 0, 16), (2, 0, 1)),
    ((0,), (0,), (0,)),
])
def test_mx_input_empty(shape, qshape, sshape):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        q, s = lowbit.quantize_mxfp4(torch.zeros(shape, dtype=dtype))
        assert q.dtype == torch.float4_e2m1fn_x2 and s.dtype == torch.float8_e8m0fnu
        assert tuple(q.shape) == qshape and tuple(s.shape) == sshape


def test_mx_input_one_dimensional():
    x = f32_tensor(block([6.0, 1.0]) + block([3.0]))
    q, s = lowbit.quantize_mxfp4(x)
    assert tuple(q.shape) == (32,) and tuple(s.shape) == (2,)
    assert_bytes(s.view(U8), u8([0x7F, 0x7E]), "scales")  # 6 -> e 0; 3 -> e -1
    assert_bytes(q.view(U8), u8([0x27] + [0] * 15 + [0x07] + [0] * 15), "q")


@pytest.mark.parametrize("bad", [
    lambda: torch.zeros(2, 48),  # K not a multiple of 32
    lambda: torch.zeros(2, 31),
    lambda: torch.zeros(()),  # ndim 0
    lambda: torch.zeros(2, 32, dtype=torch.float64),
    lambda: torch.zeros(2, 32, dtype=torch.int32),
])
def test_mx_input_rejects_malformed(bad):
    with pytest.raises(ValueError):
        lowbit.quantize_mxfp4(bad())


def test_mx_input_rejects_unknown_scale_rule():
    with pytest.raises(ValueError):
        lowbit.quantize_mxfp4(torch.zeros(1, 32), scale_rule="nearest")


# --------------------------------------------------------------------------------------------
# [MX-DEQUANT]
# --------------------------------------------------------------------------------------------

ALL_NIBBLES = [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE] + [0] * 8


def deq(q, s, dtype=None):
    if dtype is None:
        return lowbit.dequantize_mxfp4(q, s)
    return lowbit.dequantize_mxfp4(q, s, dtype=dtype)


def test_mx_dequant_all_codes_float32():
    q = u8([ALL_NIBBLES, ALL_NIBBLES])
    s = u8([[127], [128]])
    out = deq(q, s, torch.float32)
    assert out.dtype == torch.float32 and tuple(out.shape) == (2, 32)
    mags = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    row0 = mags + [-m for m in mags] + [0.0] * 16  # code 8 -> -0.0
    row0[8] = -0.0
    row1 = [2 * v for v in row0]  # byte 128 -> * 2 (nibble 3 -> 3.0)
    exp = f32_tensor([row0, row1])
    assert torch.equal(f32_bits_of(out), f32_bits_of(exp)), (out, exp)
    assert out[1, 3].item() == 3.0  # nibble 0x3 (1.5) with byte 128 (2^1) -> 3.0


def test_mx_dequant_accepts_typed_and_uint8():
    q = u8([ALL_NIBBLES])
    s = u8([[130]])
    ref = deq(q, s, torch.float32)
    for qq in (q, q.view(torch.float4_e2m1fn_x2)):
        for ss in (s, s.view(torch.float8_e8m0fnu)):
            assert torch.equal(f32_bits_of(deq(qq, ss, torch.float32)), f32_bits_of(ref))
    # element 2 is code 2 -> 1.0 * 2^(130-127) = 8; element 3 is code 3 -> 1.5 * 8 = 12
    assert ref[0, 2].item() == 8.0 and ref[0, 3].item() == 12.0


def test_mx_dequant_nan_scale_byte():
    q = u8([[0x00] * 16 + ALL_NIBBLES])
    s = u8([[0xFF, 127]])
    out = deq(q, s, torch.float32)
    assert torch.isnan(out[0, :32]).all()
    assert not torch.isnan(out[0, 32:]).any()
    out16 = deq(q, s)
    assert out16.dtype == torch.bfloat16 and torch.isnan(out16[0, :32]).all()


def test_mx_dequant_extreme_scales_float32():
    # byte 254 = 2^127: code 7 -> 6*2^127 = inf, F -> -inf, 3 -> 1.5*2^127, 4 -> 2^128 = inf,
    # 2 -> 2^127, 0 -> 0 ; byte 0 = 2^-127: code 1 -> 2^-128 (subnormal), 7 -> 1.5*2^-125
    q = u8([[0xF7, 0x43, 0x02] + [0] * 13, [0x71] + [0] * 15])
    s = u8([[254], [0]])
    out = deq(q, s, torch.float32)
    inf = float("inf")
    exp = f32_tensor([block([inf, -inf, 1.5 * 2.0**127, inf, 2.0**127, 0.0]),
                      block([2.0**-128, 1.5 * 2.0**-125])])
    assert torch.equal(f32_bits_of(out), f32_bits_of(exp)), out
    outb = deq(q, s, torch.bfloat16)  # all representable in bf16 (2^-128 is a bf16 subnormal)
    assert torch.equal(outb.view(torch.int16), exp.to(torch.bfloat16).view(torch.int16))
    assert outb.view(torch.int16)[1, 0].item() == 0x0020  # 2^-128 = 2^5 * 2^-133


def test_mx_dequant_float16_rounding():
    # byte 102 -> 2^-25. codes 1..7 give 2^-26, 2^-25, 1.5*2^-25, 2^-24, 3*2^-25, 2^-23, 3*2^-24
    # fp16 (min subnormal 2^-24): 0 (below half), 0 (tie -> even 0), 2^-24 (0.75 ulp -> 1),
    # 2^-24, 2^-23 (1.5 ulp: tie 1/2 -> even 2), 2^-23, 3*2^-24
    # byte 142 -> 2^15: codes 2, 3, 4, 7 -> 32768, 49152, 65536 -> inf, 196608 -> inf
    q = u8([[0x10, 0x32, 0x54, 0x76] + [0] * 12, [0x32, 0x74] + [0] * 14])
    s = u8([[102], [142]])
    out = deq(q, s, torch.float16).view(torch.int16)
    row0 = [0x0000, 0x0000, 0x0000, 0x0001, 0x0001, 0x0002, 0x0002, 0x0003]
    row1 = [0x7800, 0x7A00, 0x7C00, 0x7C00]  # 32768, 49152, inf, inf
    exp = torch.tensor([block(row0, fill=0), block(row1, fill=0)], dtype=torch.int16)
    assert torch.equal(out, exp), out


def test_mx_dequant_default_dtype_and_nd_shape():
    q = u8([[ALL_NIBBLES] * 3] * 2)  # (2, 3, 16)
    s = u8([[[127]] * 3] * 2)  # (2, 3, 1)
    out = deq(q, s)
    assert out.dtype == torch.bfloat16 and tuple(out.shape) == (2, 3, 32)
    assert out[1, 2, 7].item() == 6.0 and out[1, 2, 15].item() == -6.0


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mx_dequant_round_trip(rule, dtype):
    x = random_blocks(7, 96).reshape(3, 1024)
    x[0, 5] = float("nan")
    x[1, 40] = float("inf")
    x[2, 64:96] = 0.0
    q, s = lowbit.quantize_mxfp4(x, scale_rule=rule)
    out = lowbit.dequantize_mxfp4(q, s, dtype=dtype).float()
    ev = ref_values(exact64(x), rule)
    with np.errstate(all="ignore"):
        exp = torch.from_numpy(ev.astype(np.float32))  # exact (<= 2 significant bits, in range)
    nan = torch.isnan(exp)
    assert torch.equal(torch.isnan(out), nan)
    assert torch.equal(f32_bits_of(out)[~nan], f32_bits_of(exp)[~nan])


# --------------------------------------------------------------------------------------------
# [NAN-BITS]: NaNs written by dequantize carry the canonical quiet-NaN bits of the output dtype
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(NAN_BITS))
def test_nan_bits_mx_dequant_of_a_nan_block(dtype):
    q = torch.tensor([[0x7F, 0xF7] * 8], dtype=torch.uint8)  # 32 nibbles 7, 15, ...: ±6 in a NaN block
    scales = torch.tensor([[0xFF]], dtype=torch.uint8)
    out = lowbit.dequantize_mxfp4(q, scales, dtype=dtype)
    int_dtype, bits = NAN_BITS[dtype]
    assert torch.equal(out.view(int_dtype), torch.full((1, 32), bits, dtype=int_dtype))


# --------------------------------------------------------------------------------------------
# [MX-SWIZZLE]
# --------------------------------------------------------------------------------------------

def _scale_bytes(x, rule="rceil"):
    _, s = lowbit.quantize_mxfp4(x, scale_rule=rule)
    return s.view(torch.uint8).reshape(-1, s.shape[-1]).numpy()


@pytest.mark.parametrize("rule", ["rceil", "floor"])
@pytest.mark.parametrize("shape", [(130, 96), (1, 32), (2, 65, 64), (128, 128)], ids=str)
def test_mx_swizzle_bytes_sit_at_the_tile_offsets_with_zero_padding(rule, shape):
    """The swizzled bytes are the linear ones placed by the [SCALE-SWIZZLE] formula written out in
    tests/oracles.py; the elements do not change."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-20, 20, shape, generator=g).float())
    q_lin, _ = lowbit.quantize_mxfp4(x, scale_rule=rule)
    q, s = lowbit.quantize_mxfp4(x, scale_rule=rule, scale_layout="swizzled")
    rows, cols = int(np.prod(shape[:-1])), shape[-1] // 32
    assert s.dtype == torch.float8_e8m0fnu and tuple(s.shape) == (-(-rows // 128) * 128, -(-cols // 4) * 4)
    assert torch.equal(s.view(torch.uint8), torch.from_numpy(swizzled_bytes(_scale_bytes(x, rule))))
    assert torch.equal(q.view(torch.uint8), q_lin.view(torch.uint8))


def test_mx_swizzle_literal_offsets():
    """Rows 0, 1, 32 and 129, scale columns 0 and 2 of a (130, 96) input (C = 3, padded to 4): offsets
    ((r // 128) * 1 + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4 by hand."""
    x = torch.zeros(130, 96)
    for r, c, e in [(0, 0, 3), (1, 2, -5), (32, 0, 7), (129, 2, 1)]:
        x[r, 32 * c] = 6.0 * 2.0**e  # rceil: amax 6 * 2^e gives e, byte e + 127
    _, s = lowbit.quantize_mxfp4(x, scale_layout="swizzled")
    flat = s.view(torch.uint8).reshape(-1)
    assert flat[0] == 130 and flat[16 + 2] == 122 and flat[4] == 134 and flat[512 + 16 + 2] == 128
    zero_block = 1  # rceil's all-zero block ([MX-GOLDEN])
    assert flat[2] == zero_block and flat[3] == 0  # a real column, then a padding one
    assert flat[512 + 2 * 16] == 0  # row 130: a padding row


def test_mx_swizzle_dequant_reads_scales_in_any_strides_in_row_major_order():
    """A column-major copy of the swizzled scales holds the same (row, column) bytes: the same output,
    as for MXFP8 and NVFP4 (the tiles are the row-major order of the 2-D tensor, whatever its strides)."""
    x = torch.randn(130, 96, generator=torch.Generator().manual_seed(6)) * 4
    q, s = lowbit.quantize_mxfp4(x, scale_layout="swizzled")
    column_major = s.view(torch.uint8).t().contiguous().t().view(s.dtype)
    assert not column_major.is_contiguous()
    want = lowbit.dequantize_mxfp4(q, s, scale_layout="swizzled", dtype=torch.float32)
    got = lowbit.dequantize_mxfp4(q, column_major, scale_layout="swizzled", dtype=torch.float32)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert torch.equal(want, lowbit.dequantize_mxfp4(q, lowbit.quantize_mxfp4(x)[1], dtype=torch.float32))


@pytest.mark.parametrize("dtype", [torch.float8_e8m0fnu, torch.uint8])
def test_mx_swizzle_group_quant_writes_the_tiles_of_quantize(dtype):
    x = torch.randn(3, 50, 64, generator=torch.Generator().manual_seed(4))
    x_q = torch.empty(3, 50, 32, dtype=torch.uint8)
    x_s = torch.full((256, 4), 0x5A, dtype=torch.uint8).view(dtype)
    lowbit.per_token_group_quant_mxfp4(x, x_q, x_s, eps=0.0, scale_layout="swizzled")
    q, s = lowbit.quantize_mxfp4(x, scale_layout="swizzled")
    assert torch.equal(x_s.view(torch.uint8), s.view(torch.uint8))
    assert torch.equal(x_q, q.view(torch.uint8))


def test_mx_swizzle_refuses_float32_group_quant_scales():
    x = torch.randn(4, 64)
    x_q, x_s = torch.empty(4, 32, dtype=torch.uint8), torch.empty(128, 4)
    with pytest.raises(ValueError, match="x_s dtype float32 is not one of float8_e8m0fnu, uint8"):
        lowbit.per_token_group_quant_mxfp4(x, x_q, x_s, scale_layout="swizzled")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mx_swizzle_dequantize_reads_either_layout_alike(dtype):
    x = torch.randn(130, 96, generator=torch.Generator().manual_seed(6)).to(dtype)
    lin = lowbit.dequantize_mxfp4(*lowbit.quantize_mxfp4(x), dtype=dtype)
    swz = lowbit.dequantize_mxfp4(*lowbit.quantize_mxfp4(x, scale_layout="swizzled"), dtype=dtype,
                                  scale_layout="swizzled")
    assert torch.equal(lin.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       swz.view(torch.int16 if dtype != torch.float32 else torch.int32))
    with pytest.raises(ValueError, match="takes swizzled scales"):
        lowbit.dequantize_mxfp4(*lowbit.quantize_mxfp4(x), scale_layout="swizzled")
