"""Golden-byte tests for the MXFP8 clauses of docs/SPEC.md ([MX8-*]).

Every expectation is a literal byte derived by hand (the arithmetic is in the comment next to it) or
comes from an independent formulation: exact Fractions, frexp exponents, E4M3 rounding decided
against the grid's exact midpoints (tests/oracles.py: mxfp8_oracle, e4m3_bytes_np, swizzled_bytes).
Nothing here calls into lowbit except the two public functions under test. All 65,536 bfloat16
patterns run through both scale rules, in sorted blocks (every block scale a different power of
two) and pinned next to anchors that fix the scale. [MX8-PEERS] writes TransformerEngine's and
torchao's formulas out and runs them on the same patterns.
"""

import struct
from fractions import Fraction

import numpy as np
import pytest
import torch
from oracles import (
    ALL16,
    E4M3_ALL,
    E4M3_POS,
    F32_MAX,
    F32_RECIP448,
    NAN_BITS,
    U8,
    assert_bytes,
    dn32,
    e4m3_bytes_np,
    e4m3_value,
    exact64,
    f32_bits_tensor,
    f32_np,
    f32_tensor,
    fl32,
    from_bits16,
    mxfp8_dequant_oracle,
    mxfp8_oracle,
    rounded_bits,
    swizzled_bytes,
    u8,
    up32,
)

import lowbit

RULES = ("rceil", "floor")
INF, NAN = float("inf"), float("nan")
E4M3 = torch.float8_e4m3fn
E8M0 = torch.float8_e8m0fnu


def f32_from_bits(b):
    return struct.unpack("<f", struct.pack("<I", b))[0]


def block(vals, n=32, fill=0.0):
    vals = list(vals)
    assert len(vals) <= n
    return vals + [fill] * (n - len(vals))


def quant(x, rule=None, layout=None):
    """(q bytes, scale bytes) of lowbit.quantize_mxfp8 with the given options (None: the default)."""
    kwargs = {k: v for k, v in (("scale_rule", rule), ("scale_layout", layout)) if v is not None}
    q, s = lowbit.quantize_mxfp8(x, **kwargs)
    assert q.dtype == E4M3 and s.dtype == E8M0, (q.dtype, s.dtype)
    return q.view(U8), s.view(U8)


def check_against_oracle(x, rule, what=""):
    qb, sb = quant(x, rule)
    want_q, want_s = mxfp8_oracle(exact64(x), rule)
    assert_bytes(sb, torch.from_numpy(want_s), f"{what} scales ({rule})")
    assert_bytes(qb, torch.from_numpy(want_q), f"{what} q ({rule})")
    return qb, sb


def bf16_values(bits):
    with np.errstate(all="ignore"):  # NaN payloads widen silently
        return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def sorted_blocks():
    """All 65,536 bfloat16 patterns, sorted by magnitude (NaN last) into 2,048 blocks of 32."""
    order = np.argsort(np.abs(bf16_values(ALL16)), kind="stable")
    return ALL16[order].reshape(-1, 32)


def pinned_blocks(values_bits, anchor_bits):
    """31 patterns a block next to one anchor (at position block index % 32), which fixes the amax."""
    n = len(values_bits)
    nb = -(-n // 31)
    padded = np.zeros(nb * 31, dtype=np.uint32)
    padded[:n] = values_bits
    out = np.full((nb, 32), anchor_bits, dtype=np.uint32)
    out[np.arange(32)[None, :] != (np.arange(nb) % 32)[:, None]] = padded
    return out


def bf16_bits(v):
    return struct.unpack("<I", struct.pack("<f", v))[0] >> 16


# --------------------------------------------------------------------------------------------
# Self-checks of the independent formulation (these fail if the oracles were wrong)
# --------------------------------------------------------------------------------------------


def test_mx8_rceil_reciprocal_constant_is_fl32_of_one_over_448():
    # 1/448 = (8/7) * 2^-9; 8/7 = 1.001001...b: 23 fraction bits 00100100100100100100100, then 1001...
    # rounds up to mantissa 0x124925: fl32(1/448) = 0x3B124925 = 9586981 * 2^-32
    assert Fraction(F32_RECIP448) == fl32(Fraction(1, 448)) == Fraction(9586981, 2**32)
    assert struct.unpack("<I", struct.pack("<f", F32_RECIP448))[0] == 0x3B124925
    # 448 * fl32(1/448) = 7 * 9586981 * 2^-26 = (2^26 + 3) * 2^-26: one ulp is 2^-23, so it rounds to 1
    assert 448 * Fraction(F32_RECIP448) == 1 + Fraction(3, 2**26)
    assert fl32(448 * Fraction(F32_RECIP448)) == 1


def test_mx8_element_oracle_rounds_to_the_nearest_e4m3_with_ties_to_even():
    # every E4M3 value, every midpoint between neighbours and the float32 values next to them, against an
    # enumeration of the grid with Fractions (nearest; on a tie the even code; beyond 448 saturation)
    grid = [Fraction(e4m3_value(c)) for c in range(127)]
    mids = [(a + b) / 2 for a, b in zip(grid, grid[1:])]
    vals = []
    for v in grid + mids + [Fraction(464), Fraction(480), Fraction(10**6)]:
        f = float(v)
        vals += [f, up32(f), dn32(f) if f > 0 else 0.0]
    for v in vals:
        dist = [abs(Fraction(v) - g) for g in grid]
        best = min(dist)
        codes = [c for c, d in enumerate(dist) if d == best]
        want = codes[0] if len(codes) == 1 else next(c for c in codes if c % 2 == 0)
        if v >= 448:
            want = 0x7E
        assert e4m3_bytes_np(np.array([v]))[0] == want, v
        assert e4m3_bytes_np(np.array([-v]))[0] == want | 0x80, v


# --------------------------------------------------------------------------------------------
# [MX8-GOLDEN]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mx8_golden_all_zero_block_is_0x00(rule, dtype):
    # rceil: d = 0, log2 0 = -inf, clamped to -127; floor: exponent field 0 - 135 = -135, clamped: byte 0
    x = torch.zeros(2, 64, dtype=dtype)
    x[1, 40] = -0.0
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0x00, 0x00], [0x00, 0x00]]), "scales")
    want = torch.zeros(2, 64, dtype=U8)
    want[1, 40] = 0x80  # the sign of zero is kept
    assert_bytes(qb, want, "q")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mx8_golden_amax_448_elements_round_as_themselves(rule, dtype):
    # e = 0 (byte 0x7F) under both rules; 448 -> 0x7E (15<<3 | 6); 0.5 = 2^-1 -> 6<<3 = 0x30;
    # 17 between 16 (0x58) and 18 (0x59): tie to even 16; 19 between 18 and 20 (0x5A): tie to 20;
    # 1.5*2^-9 between 2^-9 (0x01) and 2^-8 (0x02): 0x02; 2^-10 between 0 and 2^-9: 0; -2^-10: 0x80
    x = f32_tensor([block([448.0, 0.5, 17.0, 19.0, 1.5 * 2**-9, 2**-10, -(2**-10)])]).to(dtype)
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, u8([block([0x7E, 0x30, 0x58, 0x5A, 0x02, 0x00, 0x80], fill=0)]), "q")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mx8_golden_amax_480_separates_the_rules(dtype):
    # rceil: d = fl32(480 * fl32(1/448)) ~ 1.0714 -> e = 1 (0x80); 480 / 2 = 240 = 1.875 * 2^7 -> 14<<3 | 7 = 0x77
    # floor: floor(log2 480) - 8 = 0 (0x7F); 480 saturates to 448 (0x7E), not NaN (480 is 0x7F's slot)
    x = f32_tensor([block([480.0, -480.0])]).to(dtype)
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[0x80]]), "rceil scales")
    assert_bytes(qb, u8([block([0x77, 0xF7], fill=0)]), "rceil q")
    qb, sb = quant(x, "floor")
    assert_bytes(sb, u8([[0x7F]]), "floor scales")
    assert_bytes(qb, u8([block([0x7E, 0xFE], fill=0)]), "floor q")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mx8_golden_tiny_amax_and_the_lower_clamp(rule, dtype):
    # amax 2^-120: rceil d = 2^-120 * 9586981 * 2^-32 ~ 0.286 * 2^-127 (subnormal, <= 2^-127) -> -127;
    # floor -120 - 8 = -128 -> clamp -127: byte 0x00 and 2^-120 * 2^127 = 128 = 2^7 -> 14<<3 = 0x70
    # amax 2^-118: rceil d ~ 1.14 * 2^-127 (subnormal, above 2^-127) -> e = -126; floor -126: byte 0x01,
    # 2^-118 * 2^126 = 256 -> 15<<3 = 0x78
    x = f32_tensor([block([2.0**-120]), block([2.0**-118])]).to(dtype)
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0x00], [0x01]]), "scales")
    assert_bytes(qb, u8([block([0x70], fill=0), block([0x78], fill=0)]), "q")


@pytest.mark.parametrize("rule", RULES)
def test_mx8_golden_inf_block(rule):
    # e = 127 (0xFE); +-Inf -> +-448 (0x7E, 0xFE); 2^127 * 2^-127 = 1 -> 7<<3 = 0x38; -1 * 2^-127 -> -0 (0x80)
    x = f32_tensor([block([INF, -INF, 2.0**127, -1.0])])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0xFE]]), "scales")
    assert_bytes(qb, u8([block([0x7E, 0xFE, 0x38, 0x80], fill=0)]), "q")


# --------------------------------------------------------------------------------------------
# [MX8-RCEIL]
# --------------------------------------------------------------------------------------------


def test_mx8_rceil_is_the_default_rule():
    x = f32_tensor([block([480.0])])
    assert torch.equal(quant(x)[1], quant(x, "rceil")[1]) and quant(x)[1].item() == 0x80


def test_mx8_rceil_uses_the_rounded_float32_product():
    # 448 * fl32(1/448) = 1 + 3 * 2^-26 exactly; unrounded, its ceiling would be 2^1 (e = 1, 0x80). Rounded: 1, e = 0
    qb, sb = quant(f32_tensor([block([448.0, -224.0])]), "rceil")
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, u8([block([0x7E, 0xF6], fill=0)]), "q")  # -224 = -1.75 * 2^7: 0x80 | 14<<3 | 6


def test_mx8_rceil_powers_of_two_and_one_ulp_above():
    # amax 448 * 2^k: d = 2^k (the product 1 + 3*2^-26 rounds to 1) -> e = k; one float32 ulp above 448 * 2^k,
    # amax = 448 * 2^k * (1 + 2^-23 / 1.75): d >= 2^k (1 + 0.57 * 2^-23) rounds above 2^k -> e = k + 1
    ks = list(range(-120, 120, 7))
    rows = [block([448.0 * 2.0**k]) for k in ks] + [block([up32(448.0 * 2.0**k)]) for k in ks]
    qb, sb = quant(f32_tensor(rows), "rceil")
    want = [k + 127 for k in ks] + [k + 128 for k in ks]
    assert_bytes(sb, u8([[b] for b in want]), "scales")
    # 448 -> 0x7E; (448 + ulp) / 2 = 224 + tiny -> 224 (0x76)
    assert_bytes(qb[:, 0], u8([0x7E] * len(ks) + [0x76] * len(ks)), "anchors")


def test_mx8_rceil_subnormal_products_round_up_to_2_pow_minus_126_above_2_pow_minus_127():
    # d = fl32(amax * fl32(1/448)) below 2^-126 is a float32 subnormal (a multiple of 2^-149). Its ceiling is
    # 2^-126 when d > 2^-127, and e <= -127 otherwise. The thresholds on amax, from exact Fractions here:
    c = Fraction(F32_RECIP448)

    def e_of(bits):
        d = fl32(Fraction(f32_from_bits(bits)) * c)
        return -127 if d <= Fraction(1, 2**127) else (-126 if d <= Fraction(1, 2**126) else None)

    assert [e_of(b) for b in (0x04600001, 0x04600002, 0x04E00000, 0x04E00001)] == [-127, -126, -126, None]
    amax_bits = [0x04600001, 0x04600002, 0x04E00000, 0x04E00001, 0x00000001, 0x00400000, 0x007FFFFF, 0x00800000]
    x = f32_bits_tensor([block([b], fill=0) for b in amax_bits])
    qb, sb = quant(x, "rceil")
    # bytes: -127 -> 0; -126 -> 1; 0x04E00001 = (1.75 + 2^-23) * 2^-117: d just above 2^-126 -> -125 -> 2;
    # amax a float32 subnormal or 2^-126: d far below 2^-127 -> 0
    assert_bytes(sb, u8([[0], [1], [1], [2], [0], [0], [0], [0]]), "scales")
    check_against_oracle(x, "rceil", "subnormal d")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mx8_rceil_maximal_finite_block(dtype):
    big = F32_MAX if dtype == torch.float32 else f32_from_bits(0x7F7F0000)  # bfloat16's max, 1.9921875 * 2^127
    # d = big * fl32(1/448) ~ 1.14 * 2^119 (f32) or 1.138 * 2^119 (bf16) -> e = 120 (byte 247);
    # big * 2^-120 = 256 - tiny (f32: 2^8 (2 - 2^-23) / 2... ) rounds to 256 (0x78); -2^127 * 2^-120 = -128 (0xF0)
    x = f32_tensor([block([big, -(2.0**127)])]).to(dtype)
    qb, sb = quant(x, "rceil")
    assert_bytes(sb, u8([[247]]), "scales")
    assert_bytes(qb, u8([block([0x78, 0xF0], fill=0)]), "q")


@pytest.mark.parametrize("as_float32", [False, True])
def test_mx8_rceil_exhaustive_bfloat16_sorted_blocks(as_float32):
    # every pattern once, sorted by magnitude: 2,040 finite blocks, each with its own amax, and 8 NaN blocks
    bits = sorted_blocks()
    x = from_bits16(bits)
    if as_float32:
        x = torch.from_numpy(bf16_values(bits).astype(np.float32))
    _, sb = check_against_oracle(x, "rceil", "sorted bf16")
    assert (sb == 0xFF).sum() == 8 and (sb == 0x00).sum() > 0 and (sb == 0xF7).sum() > 0


# --------------------------------------------------------------------------------------------
# [MX8-FLOOR]
# --------------------------------------------------------------------------------------------


def test_mx8_floor_exponent_is_floor_log2_minus_8():
    rows = [
        block([448.0, 1.0]),  # floor(log2 448) = 8 -> e 0 (0x7F); 448 -> 0x7E, 1 -> 7<<3 = 0x38
        block([511.0, 3.0]),  # e 0: 511 saturates (0x7E), 3 = 1.5 * 2 -> 8<<3 | 4 = 0x44
        block([512.0, 3.0]),  # floor(log2 512) = 9 -> e 1 (0x80): 256 (0x78), 1.5 -> 7<<3 | 4 = 0x3C
        block([256.0, -1.0]),  # e 0 (0x7F): 256 -> 0x78, -1 -> 0xB8
        block([255.0, 2.0]),  # floor(log2 255) = 7 -> e -1 (0x7E): 510 -> 448 (0x7E), 4 -> 9<<3 = 0x48
        block([1.0]),  # e -8 (0x77): 256 -> 0x78
    ]
    qb, sb = quant(f32_tensor(rows), "floor")
    assert_bytes(sb, u8([[0x7F], [0x7F], [0x80], [0x7F], [0x7E], [0x77]]), "scales")
    assert_bytes(qb[:, :2], u8([[0x7E, 0x38], [0x7E, 0x44], [0x78, 0x3C], [0x78, 0xB8], [0x7E, 0x48], [0x78, 0]]),
                 "q")


def test_mx8_floor_small_and_subnormal_amax():
    # amax 0, the float32 subnormals 2^-149 and 2^-127, 2^-126: floor(log2) - 8 <= -134 -> clamped -127 (byte 0);
    # 2^-119: -127 exactly (byte 0); 2^-118: -126 (byte 1). Elements: a * 2^127 (or 2^126)
    amaxes = [0.0, 2.0**-149, 2.0**-127, 2.0**-126, 2.0**-119, 2.0**-118]
    qb, sb = quant(f32_tensor([block([a]) for a in amaxes]), "floor")
    assert_bytes(sb, u8([[0], [0], [0], [0], [0], [1]]), "scales")
    # 0 -> 0; 2^-22 -> 0; 2^0 = 1 -> 0x38; 2^1 -> 0x40; 2^8 = 256 -> 0x78; 2^8 -> 0x78
    assert_bytes(qb[:, 0], u8([0x00, 0x00, 0x38, 0x40, 0x78, 0x78]), "q[0]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mx8_floor_maximal_finite_block(dtype):
    big = F32_MAX if dtype == torch.float32 else f32_from_bits(0x7F7F0000)
    # floor(log2 big) = 127 -> e = 119 (byte 246); big * 2^-119 ~ 511.99 saturates (0x7E); 2^127 * 2^-119 = 256
    x = f32_tensor([block([big, 2.0**127])]).to(dtype)
    qb, sb = quant(x, "floor")
    assert_bytes(sb, u8([[246]]), "scales")
    assert_bytes(qb, u8([block([0x7E, 0x78], fill=0)]), "q")


@pytest.mark.parametrize("as_float32", [False, True])
def test_mx8_floor_exhaustive_bfloat16_sorted_blocks(as_float32):
    bits = sorted_blocks()
    x = from_bits16(bits)
    if as_float32:
        x = torch.from_numpy(bf16_values(bits).astype(np.float32))
    _, sb = check_against_oracle(x, "floor", "sorted bf16")
    assert (sb == 0xFF).sum() == 8


# --------------------------------------------------------------------------------------------
# [MX8-SCALE]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_mx8_scale_byte_is_e_plus_127_for_every_exponent(rule):
    # anchor 448 * 2^k (1.75 * 2^(k+8), a float32 for k in -134..119): e = k under both rules (rceil: the
    # product rounds to 2^k, also as a subnormal for k >= -149), clamped to -127 below. The anchor becomes
    # 448 * 2^(k - e): 448 (0x7E) for k >= -127, 224 (0x76) at k = -128, ... 3.5 (0x46) at k = -134;
    # the other elements 1.5 * 2^k and 2^k scale with it
    ks = list(range(-134, 120))
    x = f32_tensor([block([448.0 * 2.0**k, 1.5 * 2.0**k, -(2.0**k)]) for k in ks])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[max(k, -127) + 127] for k in ks]), "scales")
    assert_bytes(qb[:, :3], torch.from_numpy(e4m3_bytes_np(np.array(
        [[448.0 * 2.0 ** min(k + 127, 0), 1.5 * 2.0 ** min(k + 127, 0), -(2.0 ** min(k + 127, 0))] for k in ks]))),
        "q")


@pytest.mark.parametrize("rule", RULES)
def test_mx8_scale_upper_clamp_only_for_inf(rule):
    x = f32_tensor([block([INF]), block([F32_MAX])])
    _, sb = quant(x, rule)
    assert_bytes(sb, u8([[254], [247 if rule == "rceil" else 246]]), "scales")


def test_mx8_scale_dtype_and_shape():
    q, s = lowbit.quantize_mxfp8(torch.zeros(3, 5, 96))
    assert (q.dtype, tuple(q.shape), s.dtype, tuple(s.shape)) == (E4M3, (3, 5, 96), E8M0, (3, 5, 3))


# --------------------------------------------------------------------------------------------
# [MX8-ELEMENT]
# --------------------------------------------------------------------------------------------

# every E4M3 magnitude, every midpoint between neighbours (an exact tie), and the float32 values next to them
_GRID = np.array([e4m3_value(c) for c in range(127)])
_MIDS = (_GRID[1:] + _GRID[:-1]) / 2
_POINTS = np.unique(np.concatenate([_GRID, _MIDS, np.nextafter(_MIDS.astype(np.float32), np.float32(0)),
                                    np.nextafter(_MIDS.astype(np.float32), np.float32(np.inf))]))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("k", [0, -9, 7, -100, 100, -118, 119])
def test_mx8_element_every_tie_and_neighbour_float32(rule, k):
    # blocks of 31 points next to the anchor 448 * 2^k: e = k under both rules, so each point p * 2^k
    # becomes E4M3(p), ties to even, for both signs
    vals = np.concatenate([_POINTS, -_POINTS])
    flat = np.zeros(-(-len(vals) // 31) * 31)
    flat[:len(vals)] = vals
    blocks = np.concatenate([np.full((len(flat) // 31, 1), 448.0), flat.reshape(-1, 31)], axis=1)
    x = torch.from_numpy((blocks * 2.0**k).astype(np.float32))  # below 2^-126 the float32 input may round
    qb, sb = quant(x, rule)
    assert (sb == k + 127).all()
    assert_bytes(qb, torch.from_numpy(e4m3_bytes_np(np.ldexp(exact64(x), -k))), "q")


def test_mx8_element_saturates_under_floor_and_never_needs_to_under_rceil():
    # floor: amax 500 -> e 0: 449, 464 (the tie above 448), 480, 500 -> 448; rceil: e 1: 250 -> 256 (0x78),
    # 224.5 -> 224 (0x76), 232 (tie of 224 and 240) -> 224 (even), 240 -> 0x77
    x = f32_tensor([block([500.0, 449.0, 464.0, 480.0, -500.0])])
    qb, sb = quant(x, "floor")
    assert (sb.item(), qb[0, :5].tolist()) == (0x7F, [0x7E, 0x7E, 0x7E, 0x7E, 0xFE])
    qb, sb = quant(x, "rceil")
    assert (sb.item(), qb[0, :5].tolist()) == (0x80, [0x78, 0x76, 0x76, 0x77, 0xF8])


def test_mx8_element_rceil_saturates_only_above_448_times_2_pow_minus_127():
    # amax bits 0x04600001 = 448 * 2^-127 * (1 + 2^-23/1.75): d = fl32(amax * fl32(1/448)) is a subnormal that
    # rounds down to 2^-127, so e = -127 and amax * 2^127 = 448 (1 + 0.57 * 2^-23) saturates to 448 (0x7E);
    # 0x04600000 is 448 * 2^-127 exactly (448, no saturation); from 0x04600002 on, e = -126
    x = f32_bits_tensor([block([b, b | 0x80000000], fill=0) for b in (0x04600000, 0x04600001, 0x04600002)])
    qb, sb = quant(x, "rceil")
    assert sb.reshape(-1).tolist() == [0, 0, 1]
    # 0x04600002 * 2^126 = 224 (1 + 2 * 2^-23/1.75) -> 224 (0x76)
    assert qb[:, :2].tolist() == [[0x7E, 0xFE], [0x7E, 0xFE], [0x76, 0xF6]]
    assert float(Fraction(f32_from_bits(0x04600001)) * 2**127) > 448


@pytest.mark.parametrize("rule", RULES)
def test_mx8_element_sign_of_zero_and_underflow(rule):
    # anchor 448: -0 -> 0x80; -2^-11 rounds to -0 (0x80); 2^-11 -> 0x00; -2^-9 -> 0x81
    x = f32_tensor([block([448.0, -0.0, -(2.0**-11), 2.0**-11, -(2.0**-9)])])
    qb, _ = quant(x, rule)
    assert qb[0, :5].tolist() == [0x7E, 0x80, 0x80, 0x00, 0x81]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mx8_element_exhaustive_bfloat16_pinned_scales(rule, dtype):
    # every bfloat16 pattern of magnitude <= 448 * 2^k next to the anchor 448 * 2^k, for several k: the scale
    # is 2^k (rceil also for k < -126, where d is a subnormal power of two), each element E4M3(v * 2^-k)
    vals = bf16_values(ALL16)
    for k in (0, -60, -126, 60, 119):
        anchor = bf16_bits(448.0 * 2.0**k)
        sel = ALL16[np.abs(vals) <= 448.0 * 2.0**k]
        bits = pinned_blocks(sel, anchor)
        x = from_bits16(bits) if dtype == torch.bfloat16 else torch.from_numpy(
            bf16_values(bits).astype(np.float32))
        qb, sb = quant(x, rule)
        assert (sb == k + 127).all(), k
        assert_bytes(qb, torch.from_numpy(e4m3_bytes_np(np.ldexp(bf16_values(bits), -k))), f"q k={k}")


@pytest.mark.parametrize("rule", RULES)
def test_mx8_element_exhaustive_float16_sorted_and_pinned(rule):
    bits = np.arange(65536, dtype=np.uint16)
    vals = bits.view(np.float16).astype(np.float64)
    order = np.argsort(np.abs(vals), kind="stable")
    x = torch.from_numpy(bits[order].view(np.float16).reshape(-1, 32).copy())
    check_against_oracle(x, rule, "sorted f16")
    sel = bits[np.abs(vals) <= 448.0]
    pinned = pinned_blocks(sel.astype(np.uint32), int(np.float16(448.0).view(np.uint16))).astype(np.uint16)
    check_against_oracle(torch.from_numpy(pinned.view(np.float16).copy()), rule, "pinned f16")


# --------------------------------------------------------------------------------------------
# [MX8-NAN]
# --------------------------------------------------------------------------------------------

F32_NAN, F32_NEG_NAN, F32_SNAN, F32_INF, F32_NEG_INF = 0x7FC00000, 0xFFC00000, 0x7F800001, 0x7F800000, 0xFF800000


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("nan_bits", [F32_NAN, F32_NEG_NAN, F32_SNAN])
def test_mx8_nan_poisons_only_its_block(rule, nan_bits):
    b0 = [nan_bits, 0x3F800000, 0xBF800000, 0x43E00000, F32_NEG_INF, F32_INF, 0x80000000]  # NaN, 1, -1, 448, -inf, inf, -0
    b1 = [0x43E00000, 0xC3600000]  # 448, -224
    b2 = [0x3F800000] * 31 + [nan_bits]
    x = f32_bits_tensor([block(b0, fill=0) + block(b1, fill=0) + block(b2, fill=0)])
    qb, sb = quant(x, rule)
    assert_bytes(sb, u8([[0xFF, 0x7F, 0xFF]]), "scales")
    assert_bytes(qb, u8([[0x7F] * 32 + block([0x7E, 0xF6], fill=0) + [0x7F] * 32]), "q")


@pytest.mark.parametrize("rule", RULES)
def test_mx8_nan_float16_and_bfloat16(rule):
    h = np.zeros(32, dtype=np.uint16)
    h[0], h[5] = np.float16(-1.0).view(np.uint16), 0xFE00  # -1, -NaN
    xh = torch.from_numpy(h.view(np.float16)[None].copy())
    xb = from_bits16([block([0xBF80, 0x4000, 0xFFC1], fill=0)])  # -1, 2, -NaN
    for x in (xh, xb):
        qb, sb = quant(x, rule)
        assert_bytes(sb, u8([[0xFF]]), f"{x.dtype} scales")
        assert_bytes(qb, torch.full((1, 32), 0x7F, dtype=U8), f"{x.dtype} q")


# --------------------------------------------------------------------------------------------
# [MX8-INF]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_mx8_inf_finite_elements_scale_by_2_pow_minus_127_without_flushing(rule):
    # e = 127: F32_MAX * 2^-127 = 2 - 2^-23 -> 2 (0x40); 1.5 * 2^127 -> 1.5 (0x3C); 2^127 -> 1 (0x38);
    # 2^-9 * 2^127 = 2^-9... i.e. 2^118 -> 2^-9 (0x01); 2^117 -> 2^-10, a tie to 0; 3 * 2^117 -> 1.5 * 2^-9, tie to 2^-8
    vals = [INF, F32_MAX, 1.5 * 2.0**127, 2.0**127, 2.0**118, 2.0**117, 3 * 2.0**117, -(2.0**118), 1.0, -INF]
    qb, sb = quant(f32_tensor([block(vals)]), rule)
    assert_bytes(sb, u8([[0xFE]]), "scales")
    assert_bytes(qb, u8([block([0x7E, 0x40, 0x3C, 0x38, 0x01, 0x00, 0x02, 0x81, 0x00, 0xFE], fill=0)]), "q")


@pytest.mark.parametrize("rule", RULES)
def test_mx8_inf_float16_and_bfloat16_blocks(rule):
    xh = torch.from_numpy(np.array(block([np.inf, 65504.0, -2.0]), dtype=np.float16)[None])
    xb = from_bits16([block([0xFF80, 0x7F7F, 0x3F80], fill=0)])  # -inf, bf16 max, 1
    # f16: 65504 * 2^-127 and -2 * 2^-127 round to +0 and -0; bf16: 1.99 * 2^127 * 2^-127 -> 2 (0x40), 1 -> 0
    for x, want in ((xh, [0x7E, 0x00, 0x80]), (xb, [0xFE, 0x40, 0x00])):
        qb, sb = quant(x, rule)
        assert (sb.item(), qb[0, :3].tolist()) == (0xFE, want), x.dtype


# --------------------------------------------------------------------------------------------
# [MX8-AMAX]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_mx8_amax_uses_the_magnitude_of_a_negative_element(rule):
    # amax |-448| = 448 -> e 0 (a signed max would see 1 -> e -8 and saturate everything)
    qb, sb = quant(f32_tensor([[1.0] * 31 + [-448.0]]), rule)
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, u8([[0x38] * 31 + [0xFE]]), "q")


@pytest.mark.parametrize("rule", RULES)
def test_mx8_amax_is_per_block(rule):
    # block 0 [1]*32: rceil d = fl32(1/448) -> e = -8; floor -8: byte 0x77, 1 * 2^8 = 256 (0x78); block 1 [448]*32
    qb, sb = quant(f32_tensor([[1.0] * 32 + [448.0] * 32]), rule)
    assert_bytes(sb, u8([[0x77, 0x7F]]), "scales")
    assert_bytes(qb, u8([[0x78] * 32 + [0x7E] * 32]), "q")


# --------------------------------------------------------------------------------------------
# [MX8-INPUT]
# --------------------------------------------------------------------------------------------


def random_blocks(seed, nblocks, dtype=torch.float32):
    """Blocks of E4M3 grid points, midpoints and normals times 2^k, each with an anchor 448 * 2^k."""
    rng = np.random.default_rng(seed)
    k = rng.integers(-20, 20, size=(nblocks, 1))
    base = rng.choice(np.concatenate([_GRID, _MIDS]), size=(nblocks, 32)) * rng.choice([-1.0, 1.0], size=(nblocks, 32))
    base = np.where(rng.random((nblocks, 32)) < 0.3, rng.standard_normal((nblocks, 32)) * 100, base)
    base[np.arange(nblocks), rng.integers(0, 32, size=nblocks)] = 448.0 * rng.choice([-1.0, 1.0, 1.1], size=nblocks)
    return torch.from_numpy(np.ldexp(base, k).astype(np.float32)).to(dtype)


@pytest.mark.parametrize("rule", RULES)
def test_mx8_input_dtypes_agree(rule):
    x32 = random_blocks(1, 64, torch.bfloat16).float()  # exact in both dtypes
    a = check_against_oracle(x32, rule, "f32")
    b = check_against_oracle(x32.to(torch.bfloat16), rule, "bf16")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    check_against_oracle(random_blocks(2, 64, torch.float16), rule, "f16")


@pytest.mark.parametrize("rule", RULES)
def test_mx8_input_float16_subnormals_convert_exactly(rule):
    # float16 subnormals k * 2^-24 with amax 448 * 2^-24 (= 7 * 2^-18, exact): e = -24 (byte 103) under both
    # rules; each element becomes E4M3(k), with ties: 17 -> 16, 19 -> 20, 100 (between 96 and 104) -> 96 (0x6C)
    ks = [448, 17, 19, 1, 3, 255, 100]
    x = torch.from_numpy(np.array(block(ks, fill=0), dtype=np.uint16).view(np.float16)[None].copy())
    for xx in (x, x.float(), x.to(torch.bfloat16)):
        qb, sb = quant(xx, rule)
        assert (sb.item(), qb[0, :7].tolist()) == (103, [0x7E, 0x58, 0x5A, 0x38, 0x44, 0x78, 0x6C]), xx.dtype


@pytest.mark.parametrize("rule", RULES)
def test_mx8_input_nd_and_non_contiguous(rule):
    base = random_blocks(3, 16).reshape(8, 64)
    views = {
        "3d": random_blocks(4, 12).reshape(2, 3, 64),
        "transposed": base.t().contiguous().t(),
        "last_dim_sliced": torch.cat([base, base], dim=1)[:, ::2],
        "rows_sliced": base[::2],
        "expanded": base[:1].expand(3, 64),
        "nd_permuted": base.reshape(2, 4, 64).permute(1, 0, 2),
    }
    for name, x in views.items():
        qb, sb = check_against_oracle(x, rule, name)
        assert tuple(qb.shape) == tuple(x.shape) and tuple(sb.shape) == (*x.shape[:-1], 2)
        qc, sc = quant(x.contiguous(), rule)
        assert torch.equal(qb, qc) and torch.equal(sb, sc), name


@pytest.mark.parametrize("layout", ["linear", "swizzled"])
@pytest.mark.parametrize("shape,sshape", [((0, 64), (0, 2)), ((3, 0), (3, 0)), ((2, 0, 32), (2, 0, 1)), ((0,), (0,))])
def test_mx8_input_empty(shape, sshape, layout):
    if layout == "swizzled":  # (round_up(R, 128), round_up(K/32, 4))
        rows = int(np.prod(shape[:-1]))
        sshape = (-(-rows // 128) * 128, -(-(shape[-1] // 32) // 4) * 4)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        q, s = lowbit.quantize_mxfp8(torch.zeros(shape, dtype=dtype), scale_layout=layout)
        assert (q.dtype, tuple(q.shape), s.dtype, tuple(s.shape)) == (E4M3, shape, E8M0, sshape)


def test_mx8_input_one_dimensional():
    q, s = lowbit.quantize_mxfp8(f32_tensor(block([448.0, 1.0]) + block([224.0])))
    assert tuple(q.shape) == (64,) and tuple(s.shape) == (2,)
    assert s.view(U8).tolist() == [0x7F, 0x7E] and q.view(U8)[[0, 1, 32]].tolist() == [0x7E, 0x38, 0x7E]


@pytest.mark.parametrize("bad", [
    lambda: torch.zeros(2, 48), lambda: torch.zeros(2, 31), lambda: torch.zeros(()),
    lambda: torch.zeros(2, 32, dtype=torch.float64), lambda: torch.zeros(2, 32, dtype=torch.int32),
])
def test_mx8_input_rejects_malformed(bad):
    with pytest.raises(ValueError):
        lowbit.quantize_mxfp8(bad())


def test_mx8_input_rejects_unknown_rule_and_layout():
    with pytest.raises(ValueError):
        lowbit.quantize_mxfp8(torch.zeros(1, 32), scale_rule="nearest")
    with pytest.raises(ValueError):
        lowbit.quantize_mxfp8(torch.zeros(1, 32), scale_layout="tiled")


# --------------------------------------------------------------------------------------------
# [MX8-LINEAR] and [MX8-SWIZZLE]
# --------------------------------------------------------------------------------------------


def test_mx8_linear_block_positions():
    # x (2, 3, 96): block c of row (i, j) has amax 448 * 2^(i*9 + j*3 + c - 10) -> byte 117 + i*9 + j*3 + c
    x = torch.zeros(2, 3, 96)
    for i in range(2):
        for j in range(3):
            for c in range(3):
                x[i, j, 32 * c + 5] = 448.0 * 2.0 ** (i * 9 + j * 3 + c - 10)
    _, sb = quant(x)
    assert tuple(sb.shape) == (2, 3, 3)
    assert sb.reshape(-1).tolist() == list(range(117, 135))


# R = 256, C = 8: offset = ((r//128)*2 + c//4)*512 + (r%32)*16 + ((r%128)//32)*4 + c%4
SWZ_256x8 = [((0, 0), 0), ((0, 3), 3), ((0, 4), 512), ((1, 0), 16), ((31, 0), 496), ((32, 0), 4), ((33, 5), 533),
             ((127, 3), 511), ((128, 0), 1024), ((200, 6), 1674), ((255, 7), 2047)]


def test_mx8_swizzle_literal_offsets_256x8():
    # blocks at those (r, c) get amax 448 * 2^(i+1) -> bytes 128 + i; every other block is zero (byte 0)
    x = torch.zeros(256, 256)
    for i, ((r, c), _) in enumerate(SWZ_256x8):
        x[r, 32 * c] = 448.0 * 2.0 ** (i + 1)
    qs, ss = quant(x, layout="swizzled")
    assert tuple(ss.shape) == (256, 8)
    want = torch.zeros(2048, dtype=U8)
    for i, (_, off) in enumerate(SWZ_256x8):
        want[off] = 128 + i
    assert_bytes(ss.reshape(-1), want, "swizzled bytes")
    ql, sl = quant(x)
    assert torch.equal(qs, ql)  # q does not depend on the layout
    assert_bytes(ss, torch.from_numpy(swizzled_bytes(sl.numpy())), "linear placed by [SCALE-SWIZZLE]")


@pytest.mark.parametrize("rule", RULES)
def test_mx8_swizzle_padding_bytes_are_zero_and_rows_fold(rule):
    # x (2, 65, 160): R = 130 rows, C = 5 -> (256, 8); rows 130..255 and columns 5..7 are padding, 0
    x = random_blocks(5, 130 * 5).reshape(2, 65, 160)
    x[0, 3, 40] = NAN  # a NaN block's 0xFF lands at its place, the padding stays 0
    qs, ss = quant(x, rule, "swizzled")
    ql, sl = quant(x, rule)
    assert tuple(ss.shape) == (256, 8) and torch.equal(qs, ql)
    want = swizzled_bytes(sl.reshape(130, 5).numpy())
    assert_bytes(ss, torch.from_numpy(want), "swizzled")
    real = swizzled_bytes(np.ones((130, 5), dtype=np.uint8)).reshape(-1) == 1
    assert real.sum() == 650 and not ss.reshape(-1)[torch.from_numpy(~real)].any()
    assert (ss == 0xFF).sum() == 1
    assert torch.equal(quant(x.reshape(130, 160), rule, "swizzled")[1], ss)


def test_mx8_swizzle_small_shapes():
    # one row, one block: (128, 4), only byte 0 real; 33 rows x 2 blocks: (32, 1) at 4 + 1 = 5 -> [1, 1]
    _, s = quant(f32_tensor(block([448.0])), layout="swizzled")
    want = torch.zeros(128, 4, dtype=U8)
    want[0, 0] = 0x7F
    assert_bytes(s, want, "1 row")
    x = torch.zeros(33, 64)
    x[32, 32] = 448.0 * 4  # (32, 1): byte 0x81 at offset (32%32)*16 + (32//32)*4 + 1 = 5 -> [1, 1]
    x[1, 0] = 448.0 * 2  # (1, 0): byte 0x80 at offset 16 -> [4, 0]
    _, s = quant(x, layout="swizzled")
    want = torch.zeros(128, 4, dtype=U8)
    want[1, 1], want[4, 0] = 0x81, 0x80
    assert_bytes(s, want, "33 rows")


# --------------------------------------------------------------------------------------------
# [MX8-DEQUANT]
# --------------------------------------------------------------------------------------------


def deq(q, s, dtype=torch.float32, layout=None):
    kwargs = {} if layout is None else {"scale_layout": layout}
    return lowbit.dequantize_mxfp8(q, s, dtype=dtype, **kwargs)


def test_mx8_dequant_every_byte_under_hand_picked_scales_float32():
    # row r: all 256 E4M3 bytes, scale byte 127 (x1), 130 (x8), 0 (2^-127), 254 (2^127)
    q = torch.arange(256, dtype=torch.int64).to(U8).reshape(1, 256).repeat(4, 1)
    s = u8([[b] * 8 for b in (127, 130, 0, 254)])
    out = deq(q, s)
    v = E4M3_ALL
    with np.errstate(all="ignore"):
        want = np.stack([v, v * 8, f32_np(np.ldexp(v, -127)), f32_np(np.ldexp(v, 127))])
    got = out.numpy().astype(np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(got[~np.isnan(want)], want[~np.isnan(want)])
    # hand values: 0x38 = 1; 0x7E = 448; 0x01 = 2^-9; 0x01 under byte 0: 2^-136 (float32 bits 0x2000);
    # 0x7E under 254: 448 * 2^127 overflows to +inf; 0xFE to -inf
    assert out[0, 0x38].item() == 1.0 and out[0, 0x7E].item() == 448.0 and out[1, 0x7E].item() == 3584.0
    assert out[2, 0x01].view(torch.int32).item() == 0x2000
    assert out[3, 0x7E].item() == INF and out[3, 0xFE].item() == -INF and out[3, 0x38].item() == 2.0**127


@pytest.mark.parametrize("dtype", list(NAN_BITS))
def test_mx8_dequant_nan_scale_byte_and_e4m3_nan_give_canonical_nan(dtype):
    # block 0: scale 0xFF, zeros and finite bytes alike NaN; block 1: scale 127, bytes 0x7F and 0xFF NaN
    q = u8([[0x00, 0x38, 0x80] + [0] * 29 + [0x7F, 0xFF, 0x38] + [0] * 29])
    out = deq(q, u8([[0xFF, 127]]), dtype)
    int_dtype, bits = NAN_BITS[dtype]
    raw = out.view(int_dtype)[0]
    assert (raw[:32] == bits).all() and raw[32].item() == bits and raw[33].item() == bits
    assert out[0, 34].item() == 1.0 and out[0, 35:].eq(0).all()


def test_mx8_dequant_rounds_to_the_output_dtype():
    # scale 2^-127: 0x01 -> 2^-136, 0x38 -> 2^-127; bfloat16's smallest subnormal is 2^-133: 2^-136 -> 0,
    # 2^-127 = 2^6 * 2^-133 (0x0040). float16 (smallest 2^-24) under scale 2^-24: 0x01 -> 2^-33 -> 0;
    # 0x38 -> 2^-24 (0x0001); 0x30 (0.5) -> 2^-25, a tie -> 0; 0x3C (1.5) -> 1.5 * 2^-24, tie -> 2 * 2^-24 (0x0002)
    q = u8([[0x01, 0x38, 0x30, 0x3C] + [0] * 28])
    assert deq(q, u8([[0]]), torch.bfloat16).view(torch.int16)[0, :2].tolist() == [0x0000, 0x0040]
    assert deq(q, u8([[127 - 24]]), torch.float16).view(torch.int16)[0, :4].tolist() == [0x0000, 0x0001, 0x0000, 0x0002]
    # +-448 * 2^127 overflows float32, and so bfloat16: +-inf
    assert deq(u8([[0x7E, 0xFE] + [0] * 30]), u8([[254]]), torch.bfloat16)[0, :2].tolist() == [INF, -INF]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mx8_dequant_against_the_oracle_for_random_bytes_and_both_layouts(dtype):
    g = torch.Generator().manual_seed(3)
    q = torch.randint(0, 256, (130, 160), generator=g, dtype=torch.int64).to(U8)
    s = torch.randint(0, 256, (130, 5), generator=g, dtype=torch.int64).to(U8)
    s[:, 0] = torch.tensor([0, 1, 126, 127, 128, 253, 254, 255] * 17)[:130].to(U8)
    linear = deq(q, s, dtype)
    assert_bytes(linear.view(U8), rounded_bits(mxfp8_dequant_oracle(q.numpy(), s.numpy()), dtype), "linear")
    tiles = torch.from_numpy(swizzled_bytes(s.numpy()))
    pad = torch.from_numpy(swizzled_bytes(np.ones((130, 5), dtype=np.uint8)) == 0)
    tiles[pad] = 0xFF  # padding bytes are never read, whatever they hold
    assert_bytes(deq(q, tiles, dtype, "swizzled").view(U8), linear.view(U8), "swizzled")


def test_mx8_dequant_accepts_typed_and_uint8_strided_and_defaults_to_bfloat16():
    q, s = lowbit.quantize_mxfp8(random_blocks(6, 8).reshape(4, 64))
    ref = lowbit.dequantize_mxfp8(q, s)
    assert ref.dtype == torch.bfloat16 and tuple(ref.shape) == (4, 64)
    for qq in (q, q.view(U8)):
        for ss in (s, s.view(U8)):
            assert torch.equal(lowbit.dequantize_mxfp8(qq, ss).view(torch.int16), ref.view(torch.int16))
    wide = torch.zeros(4, 128, dtype=U8)
    wide[:, ::2] = q.view(U8)
    assert torch.equal(lowbit.dequantize_mxfp8(wide[:, ::2], s).view(torch.int16), ref.view(torch.int16))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layout", ["linear", "swizzled"])
def test_mx8_dequant_round_trip(rule, layout):
    x = random_blocks(7, 96).reshape(3, 1024)
    x[0, 5], x[1, 40], x[2, 64:96] = NAN, INF, 0.0
    q, s = lowbit.quantize_mxfp8(x, scale_rule=rule, scale_layout=layout)
    out = lowbit.dequantize_mxfp8(q, s, dtype=torch.float32, scale_layout=layout)
    want_q, want_s = mxfp8_oracle(exact64(x), rule)
    want = torch.from_numpy(mxfp8_dequant_oracle(want_q, want_s).astype(np.float32))
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(out), nan) and torch.equal(out[~nan], want[~nan])


# --------------------------------------------------------------------------------------------
# [MX8-PEERS]: each peer's formula, written out here, on every bfloat16 pattern
# --------------------------------------------------------------------------------------------


def all_pattern_blocks():
    """Every bfloat16 pattern in sorted blocks and next to the anchor 448 (bits (n, 32))."""
    return np.concatenate([sorted_blocks(), pinned_blocks(ALL16, bf16_bits(448.0))])


def f32_bits_of(v):
    return np.asarray(v, dtype=np.float64).astype(np.float32).view(np.uint32).astype(np.int64)


def te_float_to_e8m0(d):
    """TransformerEngine's float_to_e8m0 of float32 d >= 0 (or NaN), by its bits: NaN 0xFF, Inf 0xFE,
    0 -> 0; else the exponent field, plus 1 when the mantissa is non-zero, except that field 0xFE
    stays (satfinite) and a subnormal of mantissa <= 0x400000 stays at 0 (it is 2^-127 or less)."""
    bits = f32_bits_of(np.where(np.isfinite(d), d, 0.0))
    exponent, mantissa = bits >> 23, bits & 0x7FFFFF
    up = (mantissa > 0) & (exponent != 0xFE) & ~((exponent == 0) & (mantissa <= 0x400000))
    return np.where(np.isnan(d), 0xFF, np.where(np.isinf(d), 0xFE, exponent + up))


def te_exp2f_rcp(byte, since_2_13=True):
    """exp2f_rcp: 2^(127 - byte). Since 2.13: 255 -> NaN, 254 -> 2^-127. Before: 0 -> 1, and the bits
    (254 - byte) << 23 for every other byte (254 -> +0, 255 -> -Inf)."""
    byte = np.asarray(byte, dtype=np.int64)
    if since_2_13:
        return np.where(byte == 255, np.nan, np.ldexp(1.0, 127 - np.minimum(byte, 254)))
    bits = (((254 - byte) << 23) & 0xFFFFFFFF).astype(np.uint32)
    return np.where(byte == 0, 1.0, bits.view(np.float32).astype(np.float64))


def te_quantize_mxfp8(v, since_2_13=True):
    """TransformerEngine's rowwise MXFP8 of exact values v (n, 32): (E4M3 bytes, scale bytes). Its amax is a
    max that skips NaN (fmaxf, max.xorsign.abs), and cvt.rn.satfinite.e4m3x2 gives 0x7F for NaN."""
    with np.errstate(all="ignore"):
        amax = np.fmax.reduce(np.abs(v), axis=-1, initial=0.0)
        byte = te_float_to_e8m0(f32_np(amax * F32_RECIP448))
        q = e4m3_bytes_np(f32_np(v * te_exp2f_rcp(byte, since_2_13)[:, None]))
    return q, byte


def test_mx8_peers_transformer_engine_matches_on_every_block_without_nan():
    bits = all_pattern_blocks()
    v = bf16_values(bits)
    te_q, te_s = te_quantize_mxfp8(v)
    qb, sb = quant(from_bits16(bits), "rceil")
    nan = np.isnan(v).any(-1)
    assert nan.sum() > 0 and (~nan).sum() > 4000
    assert np.array_equal(sb.numpy().reshape(-1)[~nan], te_s[~nan])
    assert np.array_equal(qb.numpy()[~nan], te_q[~nan])
    # NaN blocks: lowbit 0xFF and 0x7F throughout; TransformerEngine the scale of the other elements
    assert (sb.numpy().reshape(-1)[nan] == 0xFF).all() and (qb.numpy()[nan] == 0x7F).all()
    assert not (te_s[nan] == 0xFF).any()


def test_mx8_peers_transformer_engine_nan_block_keeps_its_other_elements():
    v = np.array([block([NAN, 448.0, -17.0, 2.0**-9])])
    te_q, te_s = te_quantize_mxfp8(v)
    assert (te_s.tolist(), te_q[0, :4].tolist()) == ([0x7F], [0x7F, 0x7E, 0xD8, 0x01])
    all_nan_q, all_nan_s = te_quantize_mxfp8(np.full((1, 32), NAN))
    assert all_nan_s.tolist() == [0x00] and (all_nan_q == 0x7F).all()
    qb, sb = quant(f32_tensor(v), "rceil")
    assert (sb.item(), set(qb.reshape(-1).tolist())) == (0xFF, {0x7F})


def test_mx8_peers_transformer_engine_before_2_13_tiny_and_inf_blocks():
    # byte 0 (amax below the float32 bits 0x04600002): scaled by 1, not 2^127; byte 254: scaled by +0
    tiny = [f32_from_bits(0x04600001), 2.0**-120, -(2.0**-125)]
    v = np.array([block(tiny), block([INF, -INF, 2.0**127, -1.0])])
    old_q, old_s = te_quantize_mxfp8(v, since_2_13=False)
    new_q, new_s = te_quantize_mxfp8(v)
    qb, sb = quant(f32_tensor(v), "rceil")
    assert old_s.tolist() == new_s.tolist() == sb.reshape(-1).tolist() == [0x00, 0xFE]
    assert np.array_equal(new_q, qb.numpy())
    # lowbit and TE 2.13: (bits 0x04600001) * 2^127 = 448 (1 + 0.57 * 2^-23) -> 448 (0x7E, saturated);
    # 2^-120 * 2^127 = 128 -> 0x70; -2^-125 * 2^127 = -4 -> 0xC8
    assert qb[0, :3].tolist() == [0x7E, 0x70, 0xC8] and old_q[0, :3].tolist() == [0x00, 0x00, 0x80]
    # the Inf block before 2.13: Inf * 0 = NaN -> 0x7F, finite * +0 -> +-0
    assert qb[1, :4].tolist() == [0x7E, 0xFE, 0x38, 0x80] and old_q[1, :4].tolist() == [0x7F, 0x7F, 0x00, 0x80]


def torchao_to_mx(x: torch.Tensor, mode: str):
    """torchao's to_mx for float8_e4m3fn (eager, torch >= 2.13), written out: (E4M3 bytes, scale bytes).
    amax by torch.amax (NaN propagates); RCEIL: descale = amax * (1/448) rounded up by its bits (a subnormal
    above 2^-127 to byte 1), 0xFF where not finite; FLOOR: exponent field - 127 - 8 clamped to [-127, 128],
    + 127, 0xFF where amax is not finite. Elements: x * 2^(127 - byte) (byte 0xFF: a NaN) cast to E4M3."""
    rows, k = x.shape
    data = x.reshape(rows, k // 32, 32)
    max_abs = torch.amax(torch.abs(data), -1, keepdim=True).to(torch.float32)
    data = data.to(torch.float32)
    if mode == "rceil":
        descale = max_abs * (1.0 / 448.0)
        bits = descale.view(torch.int32)
        biased, mantissa = (bits >> 23) & 0xFF, bits & 0x7FFFFF
        up = torch.where(biased == 0, mantissa > 0x400000, mantissa != 0).to(torch.int32)
        byte = torch.where(torch.isfinite(descale), biased + up, 255)
    else:
        unbiased = (((max_abs.view(torch.int32) >> 23) & 0xFF) - 127 - 8).clamp(-127, 128)
        byte = torch.where(torch.isfinite(max_abs), unbiased + 127, 255)
    recip = (254 - byte) & 0xFF
    recip_bits = torch.where(recip == 0, 0x00400000, torch.where(recip == 255, 0x7F800001, recip << 23))
    q = (data * recip_bits.to(torch.int32).view(torch.float32)).to(torch.float8_e4m3fn)
    return q.view(U8).reshape(rows, k), byte.reshape(rows, k // 32).to(U8)


@pytest.mark.parametrize("rule", RULES)
def test_mx8_peers_torchao_matches_on_every_block_without_inf_or_nan(rule):
    bits = all_pattern_blocks()
    x = from_bits16(bits)
    ao_q, ao_s = torchao_to_mx(x, rule)
    qb, sb = quant(x, rule)
    v = bf16_values(bits)
    special = ~np.isfinite(v).all(-1)
    assert special.sum() > 0 and (~special).sum() > 4000
    assert torch.equal(sb.reshape(-1)[~special], ao_s.reshape(-1)[~special])
    assert torch.equal(qb[~special], ao_q[~special])
    assert (ao_s.reshape(-1)[special] == 0xFF).all()


@pytest.mark.parametrize("rule", RULES)
def test_mx8_peers_torchao_inf_and_nan_blocks(rule):
    x = f32_tensor([block([INF, -3.0, 448.0]), block([NAN, -1.0, 2.0, NAN])])
    x.view(torch.int32)[1, 3] |= -(2**31)  # a negative NaN
    ao_q, ao_s = torchao_to_mx(x, rule)
    qb, sb = quant(x, rule)
    assert ao_s.tolist() == [[0xFF], [0xFF]] and sb.tolist() == [[0xFE], [0xFF]]
    assert set(ao_q.reshape(-1).tolist()) <= {0x7F, 0xFF}  # every element NaN, of the sign arithmetic leaves
    assert qb[0, :3].tolist() == [0x7E, 0x80, 0x00] and set(qb[1].tolist()) == {0x7F}


def test_mx8_peers_formulas_agree_with_the_oracle_grid():
    # the peers' element cast is E4M3 round to nearest even with saturation, as the oracle's (torch's cast here)
    v = np.concatenate([E4M3_POS, -E4M3_POS, [464.0, 500.0, -1e4]])
    assert np.array_equal(torch.from_numpy(v).float().to(torch.float8_e4m3fn).view(U8).numpy(), e4m3_bytes_np(v))
