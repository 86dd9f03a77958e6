"""Golden-byte tests for the NVFP4 clauses of docs/SPEC.md ([NV-*]).

Every expectation here is either a literal byte derived by hand (the arithmetic is in the comment
next to it) or comes from one of the independent formulations in this file:

- ``exact_block``: the SPEC's formulas in exact Fraction arithmetic with ``fl32`` for every
  float32 rounding, E4M3 by exhaustive search over all 256 bytes (decoded from the bit fields
  here) and E2M1 by exhaustive search over the 8 grid magnitudes;
- ``ref_nvfp4``: the same formulas vectorised in float64 numpy (a product of two float32 values is
  exact in float64, so one cast to float32 is the single correct rounding; divisions are numpy
  float32 divisions, which are IEEE-correctly rounded), rounding by comparing twice the value with
  the sum of the two grid neighbours (exact in float64).

Self-check tests pin the two against each other and against hand-derived constants, so a mistake
in a helper shows up as a failing test rather than as a matching bug. Nothing here calls into
lowbit except the public functions under test.
"""

import math
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
    bits_of_f32,
    block,
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
    u8,
    up32,
)

import lowbit
from lowbit import spec

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# --------------------------------------------------------------------------------------------
# Independent helpers (exact arithmetic, no lowbit code)
# --------------------------------------------------------------------------------------------


GS_MIN = 2.0**-118  # [NV-GLOBAL-GIVEN] usable range
GS_MAX = 2.0**118

def e4m3_value(b):
    """float8_e4m3fn byte -> Fraction (None for NaN), from the bit fields: s eeee mmm, bias 7,
    no infinities, only S.1111.111 is NaN."""
    s, e, m = b >> 7, (b >> 3) & 0xF, b & 0x7
    if e == 0xF and m == 0x7:
        return None
    mag = Fraction(m, 8) * Fraction(1, 64) if e == 0 else (1 + Fraction(m, 8)) * Fraction(2) ** (e - 7)
    return -mag if s else mag


E4M3_POS = np.array([float(e4m3_value(b)) for b in range(0x7F)])  # bytes 0x00..0x7E, ascending


def e4m3_byte_exhaustive(t):
    """[NV-SCALE] E4M3 of t >= 0 (Fraction, or math.inf): nearest of all 256 bytes' values (NaN
    bytes skipped), ties to the even mantissa; saturating at 448. Returns the byte."""
    if t == math.inf or t > 448:
        return 0x7E
    best = None
    for b in range(256):
        v = e4m3_value(b)
        if v is None:
            continue
        key = (abs(t - v), b & 1, b >> 7)  # distance, then even mantissa, then + over -0
        if best is None or key < best[0]:
            best = (key, b)
    return best[1]


def e4m3_bytes_np(t):
    """Vectorised E4M3 of t >= 0 (float64 holding float32 values, may be inf); saturates at 448.

    Decides with 2t versus (lo + hi), both exact in float64; a tie picks the even byte (even
    mantissa)."""
    t = np.minimum(t, 448.0)
    hi = np.clip(np.searchsorted(E4M3_POS, t, side="left"), 0, 0x7E)
    lo = np.maximum(hi - 1, 0)
    twice = 2.0 * t
    mid = E4M3_POS[lo] + E4M3_POS[hi]
    tie_pick = np.where(lo % 2 == 0, lo, hi)
    return np.where(twice < mid, lo, np.where(twice > mid, hi, tie_pick)).astype(np.uint8)


def usable(gs):
    return gs == gs and GS_MIN <= gs <= GS_MAX


def exact_global_scale(vals):
    """[NV-GLOBAL] from exact values: amax over finite elements, fl32(2688 / amax) capped at 2^118."""
    fin = [abs(Fraction(v)) for v in vals if math.isfinite(v)]
    amax = max(fin, default=Fraction(0))
    if amax == 0:
        return GS_MAX
    return float(min(fl32(Fraction(2688) / amax), Fraction(GS_MAX)))


def exact_block(vals, gs):
    """The SPEC's chain for one block of 16 exact values (floats; nan/inf allowed) under gs.

    Returns (scale byte, [16 nibbles]). Fractions and fl32 throughout, exhaustive E4M3/E2M1."""
    assert len(vals) == 16
    if not usable(gs) or any(math.isnan(v) for v in vals):
        return 0x7F, [7] * 16  # [NV-GLOBAL-GIVEN], [NV-NAN]
    gs_fr = Fraction(gs)
    if any(math.isinf(v) for v in vals):
        t = math.inf  # [NV-INF]: amax = +inf -> d = inf -> gs*d = inf
    else:
        amax = max(abs(Fraction(v)) for v in vals)
        d = fl32(amax * Fraction(RECIP6))
        t = fl32(gs_fr * d)
        t = math.inf if t > Fraction(F32_MAX) else t  # a float32 product overflows to +inf
    sb = e4m3_byte_exhaustive(t)
    sf = e4m3_value(sb)
    if sf == 0:
        m = Fraction(0)
    else:
        m = fl32(1 / fl32(sf * fl32(1 / gs_fr)))
    nibs = []
    for v in vals:
        neg = math.copysign(1.0, v) < 0
        if math.isinf(v):
            code = 7
        else:
            y = fl32(Fraction(v) * m)
            code = 7 if y > Fraction(F32_MAX) else e2m1_code_exact(abs(y))
        nibs.append(code | (8 if neg else 0))
    return sb, nibs


def f32_np(a):
    """Round float64 values to float32 (RNE, numpy's cast) and widen back, exactly."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


def f32_div_np(num, den):
    """IEEE float32 division (correctly rounded), widened to float64."""
    with np.errstate(all="ignore"):
        return (np.asarray(num, np.float32) / np.asarray(den, np.float32)).astype(np.float64)


def ref_global_scale(x, per_row=False):
    """[NV-GLOBAL] vectorised: x float64 (..., K) of exact values. Returns float64 gs values."""
    a = np.where(np.isfinite(x), np.abs(x), 0.0)
    if per_row:
        amax = a.max(-1) if a.shape[-1] else np.zeros(a.shape[:-1])
    else:
        amax = np.array(a.max() if a.size else 0.0)
    amax = f32_np(amax)  # exact: already float32 values
    return np.asarray(np.minimum(f32_div_np(2688.0, amax), GS_MAX))  # 2688/0 = inf -> 2^118


def ref_nvfp4(x, gs):
    """Independent NVFP4 quantizer. x: float64 (..., K) exact values; gs: float64 of shape () or
    (1,) or x.shape[:-1] (exact float32 values, any value). Returns (q uint8 (..., K/2), linear
    scale bytes uint8 (..., K/16))."""
    x = np.asarray(x, dtype=np.float64)
    lead, k = x.shape[:-1], x.shape[-1]
    gs = np.asarray(gs, dtype=np.float64)
    if gs.shape == (1,):
        gs = gs.reshape(())
    g = np.broadcast_to(gs, lead).reshape(-1, 1)
    b = x.reshape(-1, k // 16, 16)
    with np.errstate(all="ignore"):
        nan_blk = np.isnan(b).any(-1)
        amax = np.where(np.isnan(b), 0.0, np.abs(b)).max(-1) if b.size else np.zeros(b.shape[:-1])
        d = f32_np(amax * RECIP6)  # float32 product (exact in float64, then one rounding)
        t = f32_np(g * d)  # inf stays inf; overflow -> inf
        t = np.where(np.isnan(t), 0.0, t)  # only under unusable gs, overwritten below
        sb = e4m3_bytes_np(t)
        sf = E4M3_POS[sb]
        p = f32_np(sf * f32_div_np(1.0, g))
        m = np.where(sf == 0, 0.0, f32_div_np(1.0, p))
        y = f32_np(b * m[..., None])
        codes = e2m1_codes_np(np.abs(np.where(np.isnan(y), 0.0, y)))
        nib = codes | (np.signbit(y).astype(np.uint8) << 3)
        bad = nan_blk | ~((g >= GS_MIN) & (g <= GS_MAX))
        nib = np.where(bad[..., None], np.uint8(7), nib).astype(np.uint8)
        sb = np.where(bad, np.uint8(0x7F), sb).astype(np.uint8)
    nib = nib.reshape(*lead, k)
    q = (nib[..., 0::2] | (nib[..., 1::2] << 4)).astype(np.uint8)
    return q, sb.reshape(*lead, k // 16)


def ref_dequant(q, sb, gs):
    """[NV-DEQUANT] float32 values (as float64; NaN canonical later) from q bytes (..., K/2),
    linear scale bytes (..., K/16) and gs (shape (), (1,) or q.shape[:-1])."""
    q = np.asarray(q, dtype=np.uint8)
    sb = np.asarray(sb, dtype=np.uint8)
    nib = np.empty(q.shape[:-1] + (q.shape[-1] * 2,), dtype=np.uint8)
    nib[..., 0::2] = q & 0xF
    nib[..., 1::2] = q >> 4
    v = E2M1_GRID[nib & 7] * np.where(nib & 8, -1.0, 1.0)
    sf_all = np.array([np.nan if e4m3_value(b) is None else float(e4m3_value(b)) for b in range(256)])
    sf = np.repeat(sf_all[sb], 16, axis=-1)
    gs = np.asarray(gs, dtype=np.float64)
    if gs.shape == (1,):
        gs = gs.reshape(())
    g = np.broadcast_to(gs[..., None] if gs.ndim else gs, sf.shape)
    with np.errstate(all="ignore"):
        scale = f32_div_np(sf, g)  # IEEE float32 division
        out = f32_np(v * scale)  # float32 product
        bad = np.isnan(sf) | ~((g >= GS_MIN) & (g <= GS_MAX))
        return np.where(bad, np.nan, out)


def swizzle_offset(r, c, C):
    """[SCALE-SWIZZLE] byte offset of (row r, scale column c), written out from the SPEC text."""
    return ((r // 128) * -(-C // 4) + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4


def swizzle_expected(lin):
    """Place a linear (R, C) byte array into the padded swizzled layout with nested loops."""
    R, C = lin.shape
    rp, cp = -(-R // 128) * 128, -(-C // 4) * 4
    flat = np.zeros(rp * cp, dtype=np.uint8)
    seen = set()
    for r in range(R):
        for c in range(C):
            off = swizzle_offset(r, c, C)
            assert off not in seen and 0 <= off < rp * cp
            seen.add(off)
            flat[off] = lin[r, c]
    return flat.reshape(rp, cp)


def gs_t(v, shape=()):
    return torch.full(shape, v, dtype=torch.float32)


def quant(x, gs=None, **kw):
    q, s, g = lowbit.quantize_nvfp4(x, gs, **kw)
    assert q.dtype == torch.float4_e2m1fn_x2, q.dtype
    assert s.dtype == torch.float8_e4m3fn, s.dtype
    assert g.dtype == torch.float32, g.dtype
    return q.view(U8), s.view(U8), g


def check_against_ref(x, gs=None, what="", **kw):
    """Quantize with lowbit and compare with ref_nvfp4 (gs: None -> ref_global_scale)."""
    qb, sb, g = quant(x, gs, **kw)
    xv = exact64(x)
    if gs is None:
        want_gs = ref_global_scale(xv, kw.get("per_row", False))
        assert torch.equal(g, torch.from_numpy(want_gs.astype(np.float32)).reshape(g.shape)), \
            f"{what}: gs {g} != {want_gs}"
        gsv = want_gs
    else:
        gsv = gs.double().numpy()
    rq, rs = ref_nvfp4(xv, gsv)
    if kw.get("scale_layout", "linear") == "swizzled":
        rs = swizzle_expected(rs.reshape(-1, rs.shape[-1]))
    assert_bytes(sb, torch.from_numpy(rs), f"{what} scales")
    assert_bytes(qb, torch.from_numpy(rq), f"{what} q")
    return qb, sb, g


def random_nv(seed, rows, k=64, dtype=torch.float32, specials=False):
    """Blocks of grid points, ties and normals times 2^j (j in -8..7), each with one element of
    magnitude in [0.5, 7) * 2^j at a random position; specials: 1% NaN / +-Inf / +-0."""
    rng = np.random.default_rng(seed)
    nb = rows * k // 16
    pts = np.array([0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 5.5, 0.1, 2.6])
    j = rng.integers(-8, 8, size=(nb, 1))
    base = rng.choice(pts, size=(nb, 16)) * rng.choice([-1.0, 1.0], size=(nb, 16))
    noisy = rng.standard_normal((nb, 16)) * 3.0
    base = np.where(rng.random((nb, 16)) < 0.4, noisy, base)
    pos = rng.integers(0, 16, size=nb)
    base[np.arange(nb), pos] = rng.uniform(0.5, 7.0, size=nb) * rng.choice([-1.0, 1.0], size=nb)
    x = np.ldexp(base, j).reshape(rows, k)
    if specials:
        flat = x.reshape(-1)
        idx = rng.choice(flat.size, size=max(1, flat.size // 100), replace=False)
        flat[idx] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0], size=idx.size)
    return torch.from_numpy(x.astype(np.float32)).to(dtype)


INF = float("inf")
NAN = float("nan")


# --------------------------------------------------------------------------------------------
# Self-checks of the independent oracles (these fail if the helpers above are wrong)
# --------------------------------------------------------------------------------------------


def test_nv_scale_reciprocal_constant_is_fl32_of_one_sixth():
    assert Fraction(RECIP6) == fl32(Fraction(1, 6))
    # 6 * 11184811 * 2^-26 = (2^26 + 2) * 2^-26 = 1 + 2^-25, which rounds to 1.0
    assert 6 * Fraction(RECIP6) == 1 + Fraction(1, 2**25)


def test_nv_scale_e4m3_decoder_matches_torch_float8_for_all_256_bytes():
    # the bit-field decoder above against torch's own float8_e4m3fn -> float32 conversion
    t = torch.arange(256, dtype=torch.int32).to(U8).view(torch.float8_e4m3fn).float()
    for b in range(256):
        v = e4m3_value(b)
        if v is None:
            assert b in (0x7F, 0xFF) and math.isnan(t[b].item())
        else:
            assert Fraction(t[b].item()) == v, hex(b)
    # hand: 0x78 = 1.0 * 2^(15-7) = 256, 0x7E = 1.75 * 2^8 = 448, 0x01 = 1/8 * 2^-6 = 2^-9
    assert (e4m3_value(0x78), e4m3_value(0x7E), e4m3_value(0x01)) == (256, 448, Fraction(1, 512))


def test_nv_scale_e4m3_rounding_oracles_agree():
    ts = [Fraction(0)]
    for b in range(0x7E):
        lo, hi = e4m3_value(b), e4m3_value(b + 1)
        mid = (lo + hi) / 2  # exact in float32 (at most 5 significant bits)
        ts += [lo, mid, Fraction(dn32(float(mid))), Fraction(up32(float(mid)))]
    ts += [Fraction(448), Fraction(449), Fraction(464), Fraction(480), Fraction(10**6),
           Fraction(F32_MAX)]
    got = e4m3_bytes_np(np.array([float(t) for t in ts]))
    for t, b in zip(ts, got.tolist()):
        assert e4m3_byte_exhaustive(t) == b, (float(t), hex(b))
    assert e4m3_bytes_np(np.array([INF])).tolist() == [0x7E] == [e4m3_byte_exhaustive(math.inf)]
    # hand: 272 is halfway 256 (0x78, mantissa 0) / 288 (0x79) -> 0x78; 304 -> 0x7A (320)
    #       2^-10 is halfway 0 / 2^-9 -> 0x00; 464 is beyond 448 -> saturates to 0x7E
    assert [e4m3_byte_exhaustive(Fraction(v)) for v in (272, 304, 2.0**-10, 464)] == \
        [0x78, 0x7A, 0x00, 0x7E]


def test_nv_element_oracle_matches_spec_threshold_table():
    def by_thresholds(a):  # [MX-ROUND] as written
        for bound, inclusive, code in ((Fraction(1, 4), True, 0), (Fraction(3, 4), False, 1),
                                       (Fraction(5, 4), True, 2), (Fraction(7, 4), False, 3),
                                       (Fraction(5, 2), True, 4), (Fraction(7, 2), False, 5),
                                       (Fraction(5), True, 6)):
            if a < bound or (inclusive and a == bound):
                return code
        return 7

    vals = [Fraction(i, 64) for i in range(64 * 9)]
    for t in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0):
        vals += [Fraction(dn32(t)), Fraction(t), Fraction(up32(t))]
    np_codes = e2m1_codes_np(np.array([float(v) for v in vals]))
    for v, c in zip(vals, np_codes.tolist()):
        assert by_thresholds(v) == e2m1_code_exact(v) == c, v


def test_nv_multiplier_vectorised_oracle_matches_exact_chain():
    # ref_nvfp4 (float64 numpy, float32 divisions) against exact_block (Fractions) on random
    # blocks with specials, under gs values spread over the usable range and a few unusable ones
    x = random_nv(11, 8, 64, specials=True)
    xv = exact64(x)
    for gs in (256.0, 3.0, 5.0, 448.0, f32_from_bits(0x44066666), 2.0**118, 2.0**-118,
               f32_from_bits(0x3DCCCCCD), 1e30, 1e-30, NAN, 0.0, -1.0, 2.0**119):
        gs = float(np.float32(gs))
        rq, rs = ref_nvfp4(xv, np.float64(gs))
        for r in range(xv.shape[0]):
            for c in range(xv.shape[1] // 16):
                sb, nibs = exact_block(xv[r, 16 * c:16 * c + 16].tolist(), gs)
                assert rs[r, c] == sb, (gs, r, c)
                assert rq[r, 8 * c:8 * c + 8].tolist() == pack(nibs), (gs, r, c)


def test_nv_global_vectorised_oracle_matches_fractions():
    rng = np.random.default_rng(3)
    amaxes = np.concatenate([[0.0, 2.0**-149, 2.0**-120, 21 * 2.0**-111, F32_MAX, 6.0, 5.0, 7.0],
                             np.ldexp(rng.random(200) + 0.5, rng.integers(-140, 127, 200))])
    amaxes = amaxes.astype(np.float32).astype(np.float64)
    got = ref_global_scale(amaxes[:, None], per_row=True)
    for a, g in zip(amaxes.tolist(), got.tolist()):
        assert g == exact_global_scale([a]), a


# --------------------------------------------------------------------------------------------
# [NV-GOLDEN]
# --------------------------------------------------------------------------------------------

# anchor 6, then 2.6 and the ties, then negatives and zeros
GOLD6 = [6.0, 2.6, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -2.5, -5.0, 0.0, -0.0, -2.6]
# codes 7,5 | 0,2 | 2,4 | 4,6 | 6,8 | A,C | E,0 | 8,D  (low nibble first)
GOLD6_Q = [0x57, 0x20, 0x42, 0x64, 0x86, 0xCA, 0x0E, 0xD8]
GOLD6_VALUES = [6.0, 3.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -0.0, -1.0, -2.0, -4.0, 0.0, -0.0, -3.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_nv_golden_amax_six_elements_round_as_themselves(dtype):
    # gs 256: SF = E4M3(256 * fl32(6 * fl32(1/6))) = E4M3(256 * 1) = 256 -> 0x78
    # m = fl32(1 / fl32(256 * fl32(1/256))) = 1, so y = x: 2.6 -> 3 (code 5); ties 0.25 -> 0,
    # 0.75 -> 1 (2), 1.25 -> 1 (2), 1.75 -> 2 (4), 2.5 -> 2 (4), 3.5 -> 4 (6), 5 -> 4 (6)
    # (2.6 is 2.59375 in bf16 and 2.5996 in fp16: still above 2.5 -> 3)
    x = f32_tensor([GOLD6]).to(dtype)
    gs = gs_t(256.0)
    qb, sb, g = quant(x, gs)
    assert_bytes(sb, u8([[0x78]]), "scales")
    assert_bytes(qb, u8([GOLD6_Q]), "q")
    out = lowbit.dequantize_nvfp4(qb, sb, gs, dtype=torch.float32)
    assert torch.equal(out.view(torch.int32), f32_tensor([GOLD6_VALUES]).view(torch.int32)), out


def test_nv_golden_amax_six_with_computed_global_scale_448():
    # gs = fl32(2688 / 6) = 448; SF = E4M3(448 * 1) = 448 -> 0x7E
    # fl32(1/448) = 9586981 * 2^-32; 448 * that = 7 * 9586981 * 2^-26 = (2^26 + 3) * 2^-26
    # -> fl32 = 1 -> m = 1: the same nibbles as under gs 256
    x = f32_tensor([GOLD6])
    qb, sb, g = quant(x)
    assert g.shape == () and g.item() == 448.0
    assert_bytes(sb, u8([[0x7E]]), "scales")
    assert_bytes(qb, u8([GOLD6_Q]), "q")


def test_nv_golden_amax_seven_saturates():
    # d = fl32(7 * 11184811 * 2^-26) = fl32(78293677 * 2^-26) = 9786710 * 2^-23 = 1.1666670
    # t = 256 * d = 298.667 -> E4M3 neighbours 288 (0x79) and 320 -> 288 (0x79)
    # m = fl32(1 / fl32(288 / 256)) = fl32(8/9) = 14913081 * 2^-24
    # 7m = 6.22 -> 7 (saturates); -7 -> F; 3.5m = 3.11 -> 5; 1m = 0.889 -> 2;
    # 0.5625m = 0.5 + 2^-28 -> fl32 0.5 -> 1
    x = f32_tensor([block([7.0, -7.0, 3.5, 1.0, 0.5625], 16)])
    qb, sb, _ = quant(x, gs_t(256.0))
    assert_bytes(sb, u8([[0x79]]), "scales")
    assert_bytes(qb, u8([[0xF7, 0x25, 0x01] + [0] * 5]), "q")


def test_nv_golden_e4m3_scale_ties_to_even():
    # amax 6.375: 6.375 * fl32(1/6) = 570425361 * 2^-29 -> fl32 = 8912896 * 2^-23 = 1.0625
    #   t = 272, halfway 256 (0x78, even) / 288 (0x79) -> 0x78, m = 1:
    #   6.375 -> 7, 2.5 -> 4 (tie), 5.5 -> 7
    # amax 7.125: 7.125 * fl32(1/6) = 637534227 * 2^-29 -> fl32 = 9961472 * 2^-23 = 1.1875
    #   t = 304, halfway 288 (0x79) / 320 (0x7A, even) -> 0x7A;
    #   m = fl32(1 / fl32(320/256)) = fl32(0.8) = 13421773 * 2^-24
    #   7.125m = 5.7 -> 7; 3.125m = 2.5 + 5 * 2^-27 -> fl32 2.5 -> 4 (tie); 1.0m = 0.8 -> 2
    x = f32_tensor([block([6.375, 2.5, 5.5], 16), block([7.125, 3.125, 1.0], 16)])
    qb, sb, _ = quant(x, gs_t(256.0))
    assert_bytes(sb, u8([[0x78], [0x7A]]), "scales")
    assert_bytes(qb, u8([[0x47, 0x07] + [0] * 6, [0x47, 0x02] + [0] * 6]), "q")


# --------------------------------------------------------------------------------------------
# [NV-PEERS]
# --------------------------------------------------------------------------------------------


def seed_style_reference(y):
    """The 'common PyTorch reference' of [NV-PEERS], written here: round |y|*2 to an integer
    (torch.round, half to even), map it through a table of the largest grid value <= i/2."""
    i = torch.round(y.abs() * 2).clamp(max=12).long()
    table = torch.tensor([max(m for m in E2M1_GRID.tolist() if m <= k / 2) for k in range(13)])
    return table[i] * torch.where(y < 0, -1.0, 1.0)


def test_nv_peers_seed_style_table_reference_differs_above_two():
    # gs 256 with the anchor 6 -> m = 1 ([NV-GOLDEN]), so y = x
    x = f32_tensor([block([6.0, 2.6, 3.6, 5.2, -2.6], 16)])
    seed = seed_style_reference(x[0, :5])
    # 2.6*2 = 5.2 -> 5 -> table[5] = 2.0 ; 3.6*2 = 7.2 -> 7 -> 3.0 ; 5.2*2 = 10.4 -> 10 -> 4.0
    assert seed.tolist() == [6.0, 2.0, 3.0, 4.0, -2.0]
    gs = gs_t(256.0)
    qb, sb, _ = quant(x, gs)
    # round to nearest: 2.6 -> 3 (code 5), 3.6 -> 4 (6), 5.2 -> 6 (7), -2.6 -> -3 (D)
    assert_bytes(qb, u8([[0x57, 0x76, 0x0D] + [0] * 5]), "q")
    out = lowbit.dequantize_nvfp4(qb, sb, gs, dtype=torch.float32)[0, :5]
    assert out.tolist() == [6.0, 3.0, 4.0, 6.0, -3.0]


def test_nv_peers_seed_style_agrees_at_and_below_two():
    # below 2 the grid step is 0.5, so rounding 2|y| half-to-even is round-to-nearest-even;
    # the two references also agree on the grid points above 2
    vals = [6.0, 0.3, 0.8, 1.3, 1.8, 0.25, 0.75, 1.25, 1.75, -0.75, 2.0, 3.0, 4.0, 1.9, 0.1, -1.3]
    x = f32_tensor([vals])
    gs = gs_t(256.0)
    qb, sb, _ = quant(x, gs)
    out = lowbit.dequantize_nvfp4(qb, sb, gs, dtype=torch.float32)[0]
    assert torch.equal(out, seed_style_reference(x[0]).float())


def test_nv_peers_zero_and_inf_inputs_are_defined():
    # vLLM's reference takes 2688 / amax = 2688 / 0 = inf for an all-zero tensor; lowbit caps at
    # 2^118 and writes zeros; Inf input gives SF 448 and +-6 instead of NaN garbage
    qb, sb, g = quant(torch.zeros(2, 32))
    assert g.item() == 2.0**118 and math.isfinite(g.item())
    assert_bytes(sb, torch.zeros(2, 2, dtype=U8), "zero scales")
    assert_bytes(qb, torch.zeros(2, 16, dtype=U8), "zero q")
    out = lowbit.dequantize_nvfp4(qb, sb, g, dtype=torch.float32)
    assert torch.equal(out, torch.zeros(2, 32))
    qb, sb, g = quant(f32_tensor([block([INF, -INF, 6.0], 16)]))
    assert g.item() == 448.0  # the Inf is left out of the global amax
    assert_bytes(sb, u8([[0x7E]]), "inf scales")


# --------------------------------------------------------------------------------------------
# [NV-GLOBAL]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_nv_global_all_zero_tensor_gets_2_pow_118(dtype):
    # amax 0 -> 2688/0 = +inf -> min(inf, 2^118); SF = E4M3(2^118 * 0) = 0; m = 0; codes 0 / 8
    x = torch.zeros(3, 32, dtype=dtype)
    x[1] = -0.0
    qb, sb, g = quant(x)
    assert g.dtype == torch.float32 and g.shape == () and g.device == x.device
    assert g.view(torch.int32).item() == 0x7A800000  # 2^118: exponent field 245
    assert_bytes(sb, torch.zeros(3, 2, dtype=U8), "scales")
    assert_bytes(qb, u8([[0] * 16, [0x88] * 16, [0] * 16]), "q")
    assert lowbit.nvfp4_global_scale(x).view(torch.int32).item() == 0x7A800000


@pytest.mark.parametrize("dtype", DTYPES)
def test_nv_global_ignores_nan_and_inf(dtype):
    # finite amax = 3 -> gs = 2688/3 = 896 exactly
    x = f32_tensor([block([NAN, INF, -INF, 3.0, -2.0], 16) + block([1.0, -0.5], 16)]).to(dtype)
    qb, sb, g = quant(x)
    assert g.item() == 896.0
    assert lowbit.nvfp4_global_scale(x).item() == 896.0
    # block 0 holds NaN -> 0x7F / 0x77; block 1: amax 1 -> d = fl32(1/6),
    # t = 896 * 11184811 * 2^-26 = 149.33 -> E4M3 144 (1.125 * 2^7: 0x71) / 160 -> 0x71
    # m = fl32(1 / fl32(144 * fl32(1/896))) = fl32(1/0.160714) ~ 6.22: 1 -> 7, -0.5 -> -3.11 -> D
    assert_bytes(sb, u8([[0x7F, 0x71]]), "scales")
    assert_bytes(qb, u8([[0x77] * 8 + [0xD7] + [0] * 7]), "q")


def test_nv_global_value_is_fl32_of_2688_over_amax():
    cases = [
        (6.0, 0x43E00000),  # 448
        (7.0, 0x43C00000),  # 384
        (5.0, 0x44066666),  # 537.6: 537.6 * 2^14 = 8808038.4 -> 8808038 * 2^-14
        (2688.0, 0x3F800000),  # 1
        (1.0, 0x45280000),  # 2688
        (F32_MAX, 0x05280001),  # 2688 / ((2 - 2^-23) 2^127) = 1.3125(1 + 2^-24 + ...) 2^-117
        # -> rounds up: (1.3125 + 2^-23) * 2^-117 = 11010049 * 2^-140, a normal float32
    ]
    for amax, bits in cases:
        x = f32_tensor([block([0.5, -amax, 0.25], 16)])
        g = lowbit.nvfp4_global_scale(x)
        assert g.dtype == torch.float32 and g.shape == ()
        assert g.view(torch.int32).item() == bits, (amax, hex(g.view(torch.int32).item()))
        assert g.item() == exact_global_scale([amax])
        _, _, g2 = quant(x)
        assert torch.equal(g2.view(torch.int32), g.view(torch.int32))
    # 0.1 (float32 13421773 * 2^-27): checked against the Fraction formulation
    x = f32_tensor([block([0.1], 16)])
    assert lowbit.nvfp4_global_scale(x).item() == exact_global_scale([f32_from_bits(0x3DCCCCCD)])
    # bf16 max (2 - 2^-7) * 2^127 converts exactly first
    xb = from_bits16([block([0x7F7F, 0x3F80], 16, fill=0)])
    assert lowbit.nvfp4_global_scale(xb).item() == exact_global_scale([f32_from_bits(0x7F7F0000)])


def test_nv_global_tiny_amax_clamps_to_2_pow_118():
    # 2688 * 2^-118 = 21 * 2^-111: amax at or below it gets 2^118; one ulp above gets
    # fl32(2^118 / (1 + 2^-23/1.3125)) = 2^118 - 1.52 * 2^94 -> 2^118 - 2 * 2^94 (two ulps down)
    edge = 21 * 2.0**-111
    amaxes = [0.0, 2.0**-149, 2.0**-126, 2.0**-120, dn32(edge), edge, up32(edge), 2.0**-100]
    x = f32_tensor([block([a, -a / 2], 16) for a in amaxes])
    g = lowbit.nvfp4_global_scale(x, per_row=True)
    assert g.shape == (8,)
    want = [2.0**118] * 6 + [dn32(dn32(2.0**118)), exact_global_scale([2.0**-100])]
    assert g.tolist() == want
    assert want[7] == float(fl32(Fraction(2688) * 2**100))
    check_against_ref(x, per_row=True, what="tiny")
    # per tensor: the largest row decides (2^-100)
    _, _, gt = quant(x)
    assert gt.item() == want[7]


def test_nv_global_per_row():
    rows = [
        block([6.0, 1.0], 16) + block([3.0], 16),  # 448
        block([7.0], 16) + block([-1.0], 16),  # 384
        [0.0] * 32,  # 2^118
        block([NAN, INF], 16) + block([-INF], 16),  # nothing finite but zeros -> 2^118
        block([NAN, 5.0], 16) + block([1.0], 16),  # 537.6
        block([-2688.0, 0.5], 16) + block([INF], 16),  # 1
    ]
    x = f32_tensor(rows).reshape(2, 3, 32)
    qb, sb, g = quant(x, per_row=True)
    assert g.shape == (2, 3) and g.dtype == torch.float32
    want = [[448.0, 384.0, 2.0**118], [2.0**118, f32_from_bits(0x44066666), 1.0]]
    assert g.tolist() == want
    assert torch.equal(lowbit.nvfp4_global_scale(x, per_row=True), g)
    # row 0: both blocks under 448: block 0 -> 0x7E; block 1 amax 3 -> d = 0.5,
    # t = 224 = 1.75 * 2^7 -> exponent field 14, mantissa 6 -> 0x76
    assert sb[0, 0].tolist() == [0x7E, 0x76]
    # row 3: NaN block, then Inf block (SF 448 whatever gs)
    assert sb[1, 0].tolist() == [0x7F, 0x7E]
    check_against_ref(x, per_row=True, what="per_row")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_row", [False, True])
def test_nv_global_scale_function_equals_the_returned_scale(spicy, dtype, per_row):
    x = spicy((6, 4, 64), dtype, seed=5 + per_row, exponent_run=16)
    if dtype == torch.float16:  # float16 would turn most of the range into 0 and Inf
        x = spicy((6, 4, 64), torch.float32, seed=5, exponent_run=16).clamp(-6e4, 6e4).to(dtype)
    g = lowbit.nvfp4_global_scale(x, per_row=per_row)
    qb, sb, g2 = quant(x, per_row=per_row)
    assert g.dtype == torch.float32 and g.device == x.device
    assert g.shape == ((6, 4) if per_row else ())
    assert torch.equal(g.view(torch.int32), g2.view(torch.int32))
    want = ref_global_scale(exact64(x), per_row)
    assert torch.equal(g, torch.from_numpy(want.astype(np.float32)).reshape(g.shape))
    assert ((g >= 2.0**-117) & (g <= 2.0**118)).all()
    check_against_ref(x, per_row=per_row, what="spicy")


# --------------------------------------------------------------------------------------------
# [NV-GLOBAL-GIVEN]
# --------------------------------------------------------------------------------------------

UNUSABLE = [0.0, -0.0, -1.0, -256.0, NAN, f32_from_bits(F32_NEG_NAN), INF, -INF, 2.0**-149,
            2.0**-126, 2.0**-119, dn32(2.0**-118), up32(2.0**118), 2.0**119, F32_MAX]


@pytest.mark.parametrize("bad", UNUSABLE, ids=[f"{bits_of_f32(v):08x}" for v in UNUSABLE])
def test_nv_global_given_unusable_value_poisons_every_block(bad):
    # blocks: zeros, a normal block, a NaN block, an Inf block -> all 0x7F, nibbles 0x7
    rows = [[0.0] * 16 + GOLD6, block([NAN, 1.0], 16) + block([INF, 2.0], 16)]
    x = f32_tensor(rows)
    for shape in ((), (1,), (2,)):
        gs = torch.full(shape, bad, dtype=torch.float32)
        if math.isnan(bad):
            gs = f32_bits_tensor([bits_of_f32(bad)]).reshape(()).expand(shape).clone()
        qb, sb, g = quant(x, gs)
        assert_bytes(sb, torch.full((2, 2), 0x7F, dtype=U8), f"scales {shape}")
        assert_bytes(qb, torch.full((2, 16), 0x77, dtype=U8), f"q {shape}")
        assert g is gs
    # swizzled: the two real rows' bytes are 0x7F, every padding byte stays 0
    _, ss, _ = quant(x, gs_t(bad), scale_layout="swizzled")
    exp = swizzle_expected(np.full((2, 2), 0x7F, dtype=np.uint8))
    assert_bytes(ss, torch.from_numpy(exp), "swizzled")


def test_nv_global_given_unusable_row_poisons_only_its_row():
    x = f32_tensor([GOLD6 * 2] * 4)
    gs = f32_tensor([256.0, NAN, 0.0, 2.0**119])
    qb, sb, g = quant(x, gs, per_row=True)
    assert g is gs
    assert_bytes(sb, u8([[0x78, 0x78]] + [[0x7F, 0x7F]] * 3), "scales")
    assert_bytes(qb, u8([GOLD6_Q * 2] + [[0x77] * 16] * 3), "q")
    # the same tensor without per_row=True: a gs of shape x.shape[:-1] is one per row
    qb2, sb2, _ = quant(x, gs)
    assert torch.equal(qb2, qb) and torch.equal(sb2, sb)


def test_nv_global_given_extremes_are_usable():
    # gs = 2^118: amax 6 * 2^-120 -> d = 2^-120, t = 2^-2 -> 0x28 (exponent field 5);
    #   m = fl32(1 / fl32(2^-2 * 2^-118)) = 2^120 -> y = 6, 3, 1, -6 -> 7, 5, 2, F
    a = 2.0**-120
    qb, sb, _ = quant(f32_tensor([block([6 * a, 3 * a, a, -6 * a], 16)]), gs_t(2.0**118))
    assert_bytes(sb, u8([[0x28]]), "2^118 scales")
    assert_bytes(qb, u8([[0x57, 0xF2] + [0] * 6]), "2^118 q")
    # gs = 2^118 with amax 1: t = 2^118 / 6 -> saturates to 448 (0x7E); m = fl32(2^112 / 7)
    # -> 1 and 0.5 both saturate to 6
    qb, sb, _ = quant(f32_tensor([block([1.0, 0.5], 16)]), gs_t(2.0**118))
    assert_bytes(sb, u8([[0x7E]]), "2^118 big scales")
    assert_bytes(qb, u8([[0x77] + [0] * 7]), "2^118 big q")
    # gs = 2^-118: amax 6 * 2^120 -> d = 2^120, t = 2^2 -> 0x48 (exponent field 9);
    #   m = fl32(1 / fl32(4 * 2^118)) = 2^-120 -> 7, 5, 2, F
    b = 2.0**120
    qb, sb, _ = quant(f32_tensor([block([6 * b, 3 * b, b, -6 * b], 16)]), gs_t(2.0**-118))
    assert_bytes(sb, u8([[0x48]]), "2^-118 scales")
    assert_bytes(qb, u8([[0x57, 0xF2] + [0] * 6]), "2^-118 q")
    # gs = 2^-118 with amax 1: t = fl32(2^-118 * fl32(1/6)) ~ 2^-120.6 -> E4M3 0 -> m = 0
    qb, sb, _ = quant(f32_tensor([block([1.0, -1.0, 0.5], 16)]), gs_t(2.0**-118))
    assert_bytes(sb, u8([[0x00]]), "2^-118 small scales")
    assert_bytes(qb, u8([[0x80, 0x00] + [0] * 6]), "2^-118 small q")


def test_nv_global_given_returns_the_given_tensor_and_one_scale_shapes_agree():
    x = random_nv(21, 3, 64)
    outs = []
    for gs in (gs_t(5.0), gs_t(5.0, (1,)), gs_t(5.0, (3,))):
        qb, sb, g = quant(x, gs)
        assert g is gs
        outs.append((qb, sb))
    for qb, sb in outs[1:]:
        assert torch.equal(qb, outs[0][0]) and torch.equal(sb, outs[0][1])
    check_against_ref(x, gs_t(5.0), "gs 5")
    g3 = f32_tensor([5.0, 1000.0, 0.01])
    _, _, g = quant(x, g3, per_row=True)
    assert g is g3
    check_against_ref(x, g3, "per-row given", per_row=True)


@pytest.mark.parametrize("make_gs,per_row", [
    (lambda: torch.tensor(256.0, dtype=torch.float64), False),
    (lambda: torch.tensor(256.0, dtype=torch.bfloat16), False),
    (lambda: torch.tensor(256.0, dtype=torch.float16), False),
    (lambda: torch.tensor(256, dtype=torch.int32), False),
    (lambda: torch.full((2,), 256.0), False),  # x has 3 rows
    (lambda: torch.full((1, 1), 256.0), False),
    (lambda: torch.full((3, 1), 256.0), False),
    (lambda: torch.full((4,), 256.0), True),
    (lambda: torch.tensor(256.0), True),  # per_row needs x.shape[:-1]
    (lambda: torch.full((1,), 256.0), True),
    (lambda: torch.tensor(256.0, device="meta"), False),
], ids=["f64", "bf16", "f16", "i32", "rows2", "1x1", "3x1", "per_row4", "per_row_scalar",
        "per_row_1", "meta"])
def test_nv_global_given_rejects_malformed(make_gs, per_row):
    x = torch.ones(3, 32)
    with pytest.raises(ValueError):
        lowbit.quantize_nvfp4(x, make_gs(), per_row=per_row)


# --------------------------------------------------------------------------------------------
# [NV-AMAX]
# --------------------------------------------------------------------------------------------


def test_nv_amax_uses_magnitude_of_negative_element():
    # amax = |-6| = 6 -> 0x78 (a signed max of 1 would give t = 42.67 -> 44 = 0x63)
    x = f32_tensor([[1.0] * 15 + [-6.0]])
    qb, sb, _ = quant(x, gs_t(256.0))
    assert_bytes(sb, u8([[0x78]]), "scales")
    assert_bytes(qb, u8([[0x22] * 7 + [0xF2]]), "q")  # 1 -> 2 ; 2, F


def test_nv_amax_is_per_block():
    # block 0: amax 0.5 -> d = fl32(0.5 * fl32(1/6)) = 11184811 * 2^-27,
    #   t = 256 d = 21.33 -> E4M3 neighbours 20 / 22 -> 22 = 1.375 * 2^4 -> 0x5B;
    #   m = fl32(1 / fl32(22/256)) = fl32(11.636) -> 0.5 m = 5.82 -> 7
    # block 1: amax 6 -> 0x78, y = 6 -> 7
    x = f32_tensor([[0.5] * 16 + [6.0] * 16])
    qb, sb, _ = quant(x, gs_t(256.0))
    assert_bytes(sb, u8([[0x5B, 0x78]]), "scales")
    assert_bytes(qb, u8([[0x77] * 16]), "q")


def test_nv_amax_negative_inf_block_is_plus_inf():
    # amax = +inf (from -inf) -> SF 448 (0x7E); m = fl32(1 / fl32(448/256)) = fl32(4/7)
    # -inf -> F; 6 * fl32(4/7) = 3.43 -> 5
    x = f32_bits_tensor([block([F32_NEG_INF, 0x40C00000], 16, fill=0)])
    qb, sb, _ = quant(x, gs_t(256.0))
    assert_bytes(sb, u8([[0x7E]]), "scales")
    assert_bytes(qb, u8([[0x5F] + [0] * 7]), "q")


# --------------------------------------------------------------------------------------------
# [NV-SCALE]
# --------------------------------------------------------------------------------------------


def test_nv_scale_two_float32_products_not_a_division():
    # gs 6, amax 3.125 (exact gs * amax / 6 = 3.125, an E4M3 tie between 3.0 (0x44) and 3.25 (0x45))
    # SPEC: d = fl32(3.125 * 11184811 * 2^-26) = fl32(279620275 * 2^-29) = 8738134 * 2^-24
    #       t = fl32(6 d) = 52428804 * 2^-24 = 3.125 + 2^-22 (exact) -> above the tie -> 0x45
    # (a division fl32(3.125/6) = 8738133 * 2^-24 gives t = fl32(3.125 - 2^-23) = 3.125 (tie to
    #  even) -> 0x44, as does the exact value: both would be wrong here)
    assert fl32(6 * fl32(Fraction(25, 8) / 6)) == Fraction(25, 8)
    assert e4m3_byte_exhaustive(Fraction(25, 8)) == 0x44
    # m = fl32(1 / fl32(3.25 * fl32(1/6))) = fl32(2^24 / 9087659) = 1.846: 3.125 -> 5.77 -> 7,
    # 1 -> 1.85 -> 4
    x = f32_tensor([block([3.125, 1.0], 16)])
    qb, sb, _ = quant(x, gs_t(6.0))
    assert_bytes(sb, u8([[0x45]]), "scales")
    assert_bytes(qb, u8([[0x47] + [0] * 7]), "q")


@pytest.mark.parametrize("shift", [0, 20, -20, 100, -100])
def test_nv_scale_every_e4m3_value(shift):
    # gs = 2^shift, row b: [6S, 3S, -1.5S] * 2^-shift with S = E4M3(b):
    # d = fl32(6S * 2^-shift * fl32(1/6)) = S * 2^-shift (S has <= 4 significant bits, so the
    # 2^-25 excess rounds away), t = S -> byte b. m = fl32(1 / fl32(S * 2^-shift)) ~ 2^shift / S
    # -> y ~ 6, 3, -1.5 -> 7, 5, B (row 0: amax 0 -> SF 0, m = 0 -> 0, 0, 8)
    rows = []
    for b in range(0x7F):
        s = float(e4m3_value(b)) * 2.0**-shift
        rows.append(block([6 * s, 3 * s, -1.5 * s], 16))
    x = f32_tensor(rows)
    qb, sb, _ = quant(x, gs_t(2.0**shift))
    assert_bytes(sb, torch.arange(0x7F, dtype=U8).reshape(-1, 1), "scales")
    exp = [[0x00, 0x08] + [0] * 6] + [[0x57, 0x0B] + [0] * 6] * 0x7E
    assert_bytes(qb, u8(exp), "q")


def test_nv_scale_subnormal_and_zero_ties_to_even():
    rows = [
        # t = 2^-10, halfway 0 / 2^-9 -> 0x00 -> m = 0 -> 0, 8
        block([6 * 2.0**-10, -3 * 2.0**-10], 16),
        # t = 1.5 * 2^-9, halfway 0x01 / 0x02 -> 0x02 (2^-8), m = 256: 4.5 -> 6, -1.5 -> B
        block([9 * 2.0**-9, -3 * 2.0**-9], 16),
        # t = 7.5 * 2^-9, halfway 0x07 / 0x08 (2^-6) -> 0x08, m = 64: 5.625 -> 7, 0.25 -> 0
        block([45 * 2.0**-9, 2.0**-8], 16),
        # t = 2^-10 + ulp -> above the tie -> 0x01 (2^-9), m = 512: 3(1 + 2^-23) -> 5, 0.5 -> 1
        block([6 * up32(2.0**-10), 2.0**-10], 16),
        # t = 1.0625 * 2^-6, halfway 0x08 / 0x09 -> 0x08, m = 64: 6.375 -> 7, 0.5 -> 1
        block([6.375 * 2.0**-6, 2.0**-7], 16),
    ]
    qb, sb, _ = quant(f32_tensor(rows), gs_t(1.0))
    assert_bytes(sb, u8([[0x00], [0x02], [0x08], [0x01], [0x08]]), "scales")
    assert_bytes(qb[:, 0], u8([0x80, 0xB6, 0x07, 0x15, 0x17]), "q[0]")
    assert_bytes(qb[:, 1:], torch.zeros(5, 7, dtype=U8), "q[1:]")


def test_nv_scale_saturates_at_448():
    # gs 1: t = 448 (0x7E); 464 (beyond 448; not rounded to NaN); 480; 10^6/6 -> all 0x7E
    # m = fl32(1 / 448) = 9586981 * 2^-32: anchor -> >= 6 -> 7; 448 m = 1 + 3 * 2^-26 -> 1 -> 2
    # row 4: gs 2^118, amax F32_MAX -> t = +inf (float32 overflow) -> 0x7E;
    # m = fl32(2^118 / 448) = 9586981 * 2^86: F32_MAX m -> inf -> 7; 7 * 2^-112 m -> 1 -> 2
    x = f32_tensor([block([2688.0, 448.0], 16), block([2784.0, 448.0], 16), block([2880.0, 448.0], 16),
                    block([1e6, 448.0], 16), block([F32_MAX, 7 * 2.0**-112], 16)])
    gs = f32_tensor([1.0, 1.0, 1.0, 1.0, 2.0**118])
    qb, sb, _ = quant(x, gs, per_row=True)
    assert_bytes(sb, torch.full((5, 1), 0x7E, dtype=U8), "scales")
    assert_bytes(qb, u8([[0x27] + [0] * 7] * 5), "q")


def test_nv_scale_is_never_negative():
    x = -f32_tensor([GOLD6[:1] + [1.0] * 15, [0.0] * 16])
    qb, sb, _ = quant(x, gs_t(256.0))
    assert_bytes(sb, u8([[0x78], [0x00]]), "scales")  # not 0xF8 / 0x80
    assert_bytes(qb, u8([[0xAF] + [0xAA] * 7, [0x88] * 8]), "q")  # -6 -> F, -1 -> A, -0 -> 8


@pytest.mark.parametrize("gs", [3.0, 5.0, 0.0123, 537.6, 1e30, 1e-30, 2.0**118, 2.0**-118])
def test_nv_scale_random_blocks_non_power_of_two_gs(gs):
    # scale the data by a power of two near 1/gs so that gs * amax / 6 stays around the E4M3
    # range (|x| <= ~900 * 2^118 < 2^128 for gs = 2^-118; subnormal inputs for gs = 2^118)
    x = random_nv(31, 16, 128, specials=True) * 2.0 ** round(-math.log2(gs))
    check_against_ref(x, gs_t(float(np.float32(gs))), f"gs {gs}")


# --------------------------------------------------------------------------------------------
# [NV-MULTIPLIER]
# --------------------------------------------------------------------------------------------


def test_nv_multiplier_reciprocal_of_the_rounded_product():
    # gs 3, amax 1.25: d = fl32(1.25 / 6 (1 + 2^-25)), t = fl32(3 d) = 0.625 -> 0x32
    # fl32(1/3) = 11184811 * 2^-25; 0.625 * that = 55924055 * 2^-28 -> fl32 = 13981014 * 2^-26
    # m = fl32(2^26 / 13981014) = 10066329 * 2^-21 = 4.7999997 (one ulp below
    #     fl32(gs / SF) = fl32(4.8) = 10066330 * 2^-21)
    # 1.25 m = 6 - 2^-21 -> 7 ; 0.15625 m = 50331645 * 2^-26 -> fl32 0.75 - 2^-24 -> 1 ;
    # -0.15625 -> 9 ; 4369067 * 2^-23 (0.52083) * m -> fl32 2.5 -> 4 (tie)
    # (with fl32(gs / SF): 0.15625 -> exactly 0.75 -> 2, and 0.52083 -> 2.5 + 2^-22 -> 5)
    ms = fl32(1 / fl32(Fraction(5, 8) * fl32(Fraction(1, 3))))
    assert ms == Fraction(10066329, 2**21) and fl32(Fraction(3) / Fraction(5, 8)) == ms + 2**-21
    x = f32_tensor([block([1.25, 0.15625, -0.15625, 4369067 * 2.0**-23], 16)])
    qb, sb, _ = quant(x, gs_t(3.0))
    assert_bytes(sb, u8([[0x32]]), "scales")
    assert_bytes(qb, u8([[0x17, 0x49] + [0] * 6]), "q")


def test_nv_multiplier_is_zero_when_the_scale_is_zero():
    # gs 1, amax 6 * 2^-10 -> t = 2^-10 -> SF 0 -> m = 0: every element -> +-0 -> 0 / 8
    # gs 2^-118, amax 1 -> t ~ 2^-120.6 -> SF 0 -> m = 0
    x = f32_tensor([block([6 * 2.0**-10, -(2.0**-12), 2.0**-11, -0.0, 0.0, -6 * 2.0**-10], 16),
                    block([1.0, -1.0, 0.5], 16)])
    qb, sb, _ = quant(x, f32_tensor([1.0, 2.0**-118]), per_row=True)
    assert_bytes(sb, u8([[0x00], [0x00]]), "scales")
    assert_bytes(qb, u8([[0x80, 0x80, 0x80] + [0] * 5, [0x80, 0x00] + [0] * 6]), "q")


def test_nv_multiplier_every_scale_byte_near_every_threshold():
    # for several gs and every non-zero SF byte: an anchor aiming at that byte, then elements
    # at +-1 ulp of threshold / m, where a wrong last bit of m flips the code
    rows, gss = [], []
    for gs in (3.0, 5.0, 7.0, 448.0, f32_from_bits(0x44066666), 1e10, 2.0**118, 2.0**-118):
        gs = float(np.float32(gs))
        for b in range(1, 0x7F):
            s = e4m3_value(b)
            anchor = float(fl32(6 * s / Fraction(gs)))
            if not math.isfinite(anchor) or anchor == 0 or abs(anchor) > F32_MAX:
                continue
            m = fl32(1 / fl32(s * fl32(1 / Fraction(gs))))
            vals = [anchor]
            for t in (0.75, 1.75, 3.5, 5.0, 0.25, 1.25, 2.5):
                c = float(fl32(Fraction(t) / m))
                vals += [dn32(c), up32(c)] if len(vals) < 15 else [c]
            rows.append(block(vals[:16], 16))
            gss.append(gs)
    x = f32_tensor(rows)
    check_against_ref(x, f32_tensor(gss), "thresholds", per_row=True)


# --------------------------------------------------------------------------------------------
# [NV-ELEMENT]
# --------------------------------------------------------------------------------------------


def test_nv_element_rounds_the_float32_product_first():
    # gs 256, amax 7.125 -> SF 320 (0x7A), m = fl32(0.8) = 13421773 * 2^-24 ([NV-GOLDEN])
    # 3.125 m = 335544325 * 2^-27 = 2.5 + 5 * 2^-27 (exact) -> fl32 = 2.5 -> tie -> 4 (not 5);
    # -3.125 -> C; 1.0 m = 0.8 -> 2; 7.125 -> 5.7 -> 7
    x = f32_tensor([block([7.125, 3.125, -3.125, 1.0], 16)])
    qb, sb, _ = quant(x, gs_t(256.0))
    assert_bytes(sb, u8([[0x7A]]), "scales")
    assert_bytes(qb, u8([[0x47, 0x2C] + [0] * 6]), "q")


def test_nv_element_sign_of_zero_and_underflow():
    # m = 1 (anchor 6, gs 256): -0 -> 8, -0.1 -> 8, -0.25 -> 8 (tie to 0), -(0.25 - ulp) -> 8,
    # -0.5 -> 9, -6 -> F, -(0.25 + ulp) -> 9, -2^-149 -> 8
    vals = [6.0, -0.0, -0.1, -0.25, -dn32(0.25), 0.0, -0.5, -6.0, -up32(0.25), -(2.0**-149)]
    x = f32_tensor([block(vals, 16)])
    qb, sb, _ = quant(x, gs_t(256.0))
    assert_bytes(sb, u8([[0x78]]), "scales")
    assert_bytes(qb, u8([[0x87, 0x88, 0x08, 0xF9, 0x89] + [0] * 3]), "q")


# two blocks, each anchored by 6; with gs = 256 * 2^-k and the values times 2^k: m = 2^-k exactly
THRESH_A = [6.0, dn32(0.25), 0.25, up32(0.25), dn32(0.75), 0.75, up32(0.75), dn32(1.25), 1.25,
            up32(1.25), dn32(1.75), 1.75, up32(1.75), dn32(2.5), 2.5, up32(2.5)]
# 7, 0,0,1, 1,2,2, 2,2,3, 3,4,4, 4,4,5
THRESH_A_Q = [0x07, 0x10, 0x21, 0x22, 0x32, 0x43, 0x44, 0x54]
THRESH_B = [6.0, dn32(3.5), 3.5, up32(3.5), dn32(5.0), 5.0, up32(5.0), 0.0, 0.5, 1.0, 1.5, 2.0,
            3.0, 4.0, 5.5, dn32(6.0)]
# 7, 5,6,6, 6,6,7, 0,1,2,3,4,5,6,7,7
THRESH_B_Q = [0x57, 0x66, 0x66, 0x07, 0x21, 0x43, 0x65, 0x77]


@pytest.mark.parametrize("k", [0, -3, 7, -100, -110, 100, 120])
def test_nv_element_every_tie_threshold_float32(k):
    # d = fl32(6 * 2^k * fl32(1/6)) = 2^k, t = 2^8 -> 0x78, m = fl32(1 / 2^k) = 2^-k: y = v
    pos = [v * 2.0**k for v in THRESH_A + THRESH_B]
    x = f32_tensor([pos, [-v for v in pos]])
    qb, sb, _ = quant(x, gs_t(2.0 ** (8 - k)))
    assert_bytes(sb, torch.full((2, 2), 0x78, dtype=U8), "scales")
    q = THRESH_A_Q + THRESH_B_Q
    assert_bytes(qb, u8([q, [b | 0x88 for b in q]]), "q")


def _pinned_rows(values_bits, anchor_bits):
    """15 patterns + the anchor per block of 16, the anchor at position (row % 16)."""
    per = 15
    n = len(values_bits)
    nb = -(-n // per)
    padded = np.zeros(nb * per, dtype=np.uint32)
    padded[:n] = values_bits
    anchor_bits = np.broadcast_to(np.asarray(anchor_bits, dtype=np.uint32), (nb,))
    out = np.repeat(anchor_bits[:, None], 16, axis=1)
    mask = np.arange(16)[None, :] != (np.arange(nb) % 16)[:, None]
    out[mask] = padded
    return out


def _expected_q(v):
    """m = 1 (or a power of two already applied): nibbles of the exact values v (float64)."""
    nib = e2m1_codes_np(np.abs(v)) | (np.signbit(v).astype(np.uint8) << 3)
    return torch.from_numpy((nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8))


@pytest.mark.parametrize("given", [True, False], ids=["gs256", "computed448"])
@pytest.mark.parametrize("as_float32", [False, True])
def test_nv_element_exhaustive_bfloat16_pinned_anchor_six(given, as_float32):
    # every bf16 pattern with |v| <= 6 (both signs, zeros, subnormals), each block anchored by
    # 6.0 (0x40C0): gs 256 -> SF 0x78, m = 1; computed gs = 448 -> SF 0x7E, m = 1 ([NV-GOLDEN])
    vals = bf16_values(ALL16)
    sel = ALL16[np.abs(vals) <= 6.0]  # NaN compares False -> excluded
    assert len(sel) == 2 * (0x40C0 + 1)
    rows = _pinned_rows(sel, 0x40C0)
    x = from_bits16(rows)
    if as_float32:
        x = torch.from_numpy(bf16_values(rows).astype(np.float32))
    qb, sb, g = quant(x, gs_t(256.0) if given else None)
    assert g.item() == (256.0 if given else 448.0)
    assert torch.all(sb == (0x78 if given else 0x7E)), "pinned scale"
    assert_bytes(qb, _expected_q(bf16_values(rows)), "q")


def test_nv_element_exhaustive_bfloat16_pinned_per_row_shifts():
    # every finite bf16 pattern up to 1.5 * 2^127 (the largest anchor 6 * 2^125) in rows anchored
    # by 6 * 2^k with the row's given gs = 2^(8 - k): SF 0x78 and m = 2^-k exactly, so y = v 2^-k.
    # k = k0 + j for j = 0..4, k0 the least k >= -110 with |v| <= 6 * 2^k: y covers (3, 6],
    # (1.5, 3], ... (0.1875, 0.375] for each pattern, so every threshold is crossed
    vals = bf16_values(ALL16)
    keep = np.isfinite(vals) & (np.abs(vals) <= 1.5 * 2.0**127)
    bits, v = ALL16[keep], vals[keep]
    mant, ex = np.frexp(np.abs(v) / 6.0)  # |v|/6 = mant * 2^ex; exact powers of two: mant = .5
    k0 = np.where(mant == 0.5, ex - 1, ex)
    k0 = np.maximum(np.where(v == 0, -110, k0), -110)
    assert np.all(np.abs(v) <= 6 * np.ldexp(1.0, k0))
    all_rows, all_k = [], []
    for j in range(5):
        k = k0 + j
        ok = k <= 125
        for kk in np.unique(k[ok]):
            members = bits[ok][k[ok] == kk]
            anchor = ((int(kk) + 2 + 127) << 7) | 0x40  # bf16 of 1.5 * 2^(k+2) = 6 * 2^k
            rows = _pinned_rows(members, anchor)
            all_rows.append(rows)
            all_k.append(np.full(len(rows), kk))
    rows = np.concatenate(all_rows)
    ks = np.concatenate(all_k)
    assert len(rows) > 20000
    x = from_bits16(rows)
    gs = torch.from_numpy(np.ldexp(1.0, 8 - ks).astype(np.float32))
    qb, sb, _ = quant(x, gs, per_row=True)
    assert torch.all(sb == 0x78), "pinned scale"
    assert_bytes(qb, _expected_q(np.ldexp(bf16_values(rows), -ks[:, None])), "q")


def _interleave(chunks, stride, per=8):
    """Rows of `per` chunks taken `stride` apart inside groups of stride*per chunks, so each row's
    blocks span many binades and its per-row gs puts their SF all over the E4M3 range."""
    n = len(chunks)
    group = stride * per
    assert n % group == 0
    i = np.arange(n // per)
    idx = ((i // stride) * group + i % stride)[:, None] + stride * np.arange(per)[None, :]
    assert sorted(idx.reshape(-1).tolist()) == list(range(n))
    return chunks[idx].reshape(n // per, per * chunks.shape[1])


def test_nv_element_exhaustive_bfloat16_sorted_blocks():
    # all 65,536 bf16 patterns sorted by magnitude into 4,096 blocks (the last 16 hold +-Inf and
    # the 254 NaNs), each block's SF, m and codes computed by the oracle
    vals = bf16_values(ALL16)
    chunks = ALL16[np.argsort(np.abs(vals), kind="stable")].reshape(-1, 16)
    # (a) one block per row, gs per row: SF near 448 for every amax, gs clamps for tiny rows
    x = from_bits16(chunks)
    qb, sb, _ = check_against_ref(x, per_row=True, what="one block per row")
    assert (sb == 0x7F).sum() == 16
    # (b) per tensor: gs = fl32(2688 / bf16 max)
    check_against_ref(x.reshape(256, 256), what="per tensor")
    # (c) rows of 8 blocks 2 binades apart, gs per row: SF over the whole E4M3 range
    xi = from_bits16(_interleave(chunks, 32))
    qb, sb, _ = check_against_ref(xi, per_row=True, what="interleaved")
    assert len(set(sb.reshape(-1).tolist())) > 90  # 96 distinct scale bytes
    # (d) the same as float32 input
    check_against_ref(xi.float(), per_row=True, what="interleaved f32")


def test_nv_element_exhaustive_float16_sorted_blocks():
    h = ALL16.astype(np.uint16).view(np.float16)
    chunks = ALL16[np.argsort(np.abs(h.astype(np.float64)), kind="stable")].reshape(-1, 16)
    to_t = lambda a: torch.from_numpy(a.astype(np.uint16).view(np.float16).copy())
    check_against_ref(to_t(chunks), per_row=True, what="fp16 one block per row")
    check_against_ref(to_t(chunks), what="fp16 per tensor")
    xi = to_t(_interleave(chunks, 256))  # a binade of fp16 is 128 blocks; rows span 16 binades
    check_against_ref(xi, per_row=True, what="fp16 interleaved")
    check_against_ref(xi, gs_t(2.0**-3), what="fp16 interleaved gs 1/8")


# --------------------------------------------------------------------------------------------
# [NV-PACK]
# --------------------------------------------------------------------------------------------


def test_nv_pack_even_element_in_low_nibble():
    # m = 1: codes [2, 1, 7, 0, 0, 3] -> bytes 0x12, 0x07, 0x30 (swapped: 0x21, 0x70, 0x03)
    x = f32_tensor([block([1.0, 0.5, 6.0, 0.0, 0.0, 1.5], 16)])
    qb, sb, _ = quant(x, gs_t(256.0))
    assert_bytes(sb, u8([[0x78]]), "scales")
    assert_bytes(qb, u8([[0x12, 0x07, 0x30] + [0] * 5]), "q")


def test_nv_pack_shape_dtype_and_block_order():
    # gs 256. block 0: amax 6 -> 0x78, 6 -> 7, 1 -> 2 -> 0x27
    # block 1: amax 3 -> d = 0.5, t = 128 -> 0x70, m = 2: 0.5 -> 1 -> 2, 3 -> 6 -> 7 -> 0x72
    # block 2: amax 4 -> d = 11184811 * 2^-24, t = 170.67 -> E4M3 160 / 176 -> 176 (0x73),
    #   m = fl32(256/176 via 1/fl32(0.6875)) = 1.4545: -4 -> -5.82 -> F, last (odd) -> 0xF0
    row = block([6.0, 1.0], 16) + block([0.5, 3.0], 16) + block([0.0] * 15 + [-4.0], 16)
    q, s, g = lowbit.quantize_nvfp4(f32_tensor([row]), gs_t(256.0))
    assert q.dtype == torch.float4_e2m1fn_x2 and tuple(q.shape) == (1, 24)
    assert s.dtype == torch.float8_e4m3fn and tuple(s.shape) == (1, 3)
    exp = [0x27] + [0] * 7 + [0x72] + [0] * 7 + [0] * 7 + [0xF0]
    assert_bytes(s.view(U8), u8([[0x78, 0x70, 0x73]]), "scales")
    assert_bytes(q.view(U8), u8([exp]), "q")


# --------------------------------------------------------------------------------------------
# [NV-NAN]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nan_bits", [F32_NAN, F32_NEG_NAN, F32_SNAN])
def test_nv_nan_poisons_only_its_block(nan_bits):
    b0 = [nan_bits, 0x3F800000, 0xBF800000, 0x40C00000, F32_NEG_INF, F32_INF, 0x80000000,
          0xC0C00000]  # NaN, 1, -1, 6, -inf, inf, -0, -6
    b1 = [0x40C00000, 0xC0400000]  # 6, -3
    b2 = [0x3F800000] * 15 + [nan_bits]  # NaN in the last position
    x = f32_bits_tensor([block(b0, 16, fill=0) + block(b1, 16, fill=0) + block(b2, 16, fill=0)])
    exp_q = u8([[0x77] * 8 + [0xD7] + [0] * 7 + [0x77] * 8])  # 6 -> 7, -3 -> D
    qb, sb, _ = quant(x, gs_t(256.0))
    assert_bytes(sb, u8([[0x7F, 0x78, 0x7F]]), "scales")
    assert_bytes(qb, exp_q, "q")
    # computed: the NaNs (and the Infs) are left out of the global amax -> 6 -> gs 448
    qb, sb, g = quant(x)
    assert g.item() == 448.0
    assert_bytes(sb, u8([[0x7F, 0x7E, 0x7F]]), "computed scales")
    assert_bytes(qb, exp_q, "computed q")


def test_nv_nan_float16_and_bfloat16():
    h = np.array(block([np.float16(-1.0), np.float16(2.0)], 16, fill=np.float16(0)), dtype=np.float16)
    hb = h.view(np.uint16).copy()
    hb[5] = 0xFE00  # -NaN
    xh = torch.from_numpy(np.concatenate([hb, hb]).view(np.float16)[None].copy())
    xh[0, 16:] = 1.0
    xb = from_bits16([block([0xBF80, 0x4000, 0xFFC1], 16, fill=0) + [0x3F80] * 16])
    for x in (xh, xb):
        # the finite 2.0 in the NaN block still counts for the global amax: gs = 2688/2 = 1344
        # block 1 all ones: t = fl32(1344 * 11184811 * 2^-26) = fl32(224 + 7 * 2^-20) = 224
        # -> 0x76; fl32(1/1344) = 12782641 * 2^-34, 224 * that -> fl32 = 11184811 * 2^-26,
        # m = fl32(2^26 / 11184811) = 6 - 2^-21 -> 1 -> 7
        qb, sb, g = quant(x)
        assert g.item() == 1344.0
        assert_bytes(sb, u8([[0x7F, 0x76]]), f"{x.dtype} scales")
        assert_bytes(qb, u8([[0x77] * 8 + [0x77] * 8]), f"{x.dtype} q")


def test_nv_nan_block_in_a_nan_only_tensor():
    # only NaN: global amax over nothing finite -> 0 -> gs 2^118; the block is NaN anyway
    x = torch.full((1, 16), float("nan"))
    qb, sb, g = quant(x)
    assert g.item() == 2.0**118
    assert_bytes(sb, u8([[0x7F]]), "scales")
    assert_bytes(qb, torch.full((1, 8), 0x77, dtype=U8), "q")


# --------------------------------------------------------------------------------------------
# [NV-INF]
# --------------------------------------------------------------------------------------------


def test_nv_inf_block_scale_448_and_saturated_elements():
    # gs 256: amax +inf -> d = inf -> t = inf -> SF 448 (0x7E)
    # m = fl32(1 / fl32(448/256)) = fl32(4/7) = 9586981 * 2^-24
    # inf -> 7, -inf -> F; 4.375 m = 2.5 + 15 * 2^-27 -> fl32 2.5 -> 4 (tie);
    # 1.75 m = 1 + 3 * 2^-26 -> 1 -> 2; -0 -> 8; 1000 m = 571 -> 7
    x = f32_tensor([block([INF, -INF, 4.375, 1.75, -0.0, 1000.0], 16)])
    qb, sb, _ = quant(x, gs_t(256.0))
    assert_bytes(sb, u8([[0x7E]]), "scales")
    assert_bytes(qb, u8([[0xF7, 0x24, 0x78] + [0] * 5]), "q")


def test_nv_inf_global_amax_ignores_inf():
    # finite amax 3 -> gs 896; fl32(1/896) = 9586981 * 2^-33
    # block 0 (Inf): SF 448, 448 * fl32(1/896) = 0.5 + 3 * 2^-27 -> 0.5 -> m = 2:
    #   inf -> 7, 3 -> 6 -> 7, 1.25 -> 2.5 -> 4, -1.5 -> -3 -> D
    # block 1: amax 3 -> d = 0.5, t = 448 -> 0x7E, m = 2: 3 -> 7, 0.75 -> 1.5 -> 3
    x = f32_tensor([block([INF, 3.0, 1.25, -1.5], 16) + block([3.0, 0.75], 16)])
    qb, sb, g = quant(x)
    assert g.item() == 896.0
    assert_bytes(sb, u8([[0x7E, 0x7E]]), "scales")
    assert_bytes(qb, u8([[0x77, 0xD4] + [0] * 6 + [0x37] + [0] * 7]), "q")


def test_nv_inf_float16_and_bfloat16():
    # gs 256, m = fl32(4/7) as above: inf -> 7, 1.75 -> 2, -inf -> F, -0 -> 8
    xh = torch.from_numpy(np.array([block([np.inf, 1.75, -np.inf, -0.0], 16)], dtype=np.float16))
    xb = from_bits16([block([0x7F80, 0x3FE0, 0xFF80, 0x8000], 16, fill=0)])
    for x in (xh, xb):
        qb, sb, _ = quant(x, gs_t(256.0))
        assert_bytes(sb, u8([[0x7E]]), f"{x.dtype} scales")
        assert_bytes(qb, u8([[0x27, 0x8F] + [0] * 6]), f"{x.dtype} q")


# --------------------------------------------------------------------------------------------
# [NV-LINEAR]
# --------------------------------------------------------------------------------------------


def _distinct_scale_input(lead, C, base=0x30):
    """Block (..., c) gets amax 6 * E4M3(byte) with byte = base + its linear index: under gs 1,
    d = fl32(6S fl32(1/6)) = S (<= 4 significant bits) and t = S, so SF is exactly that byte."""
    n = int(np.prod(lead)) * C
    bytes_ = (base + np.arange(n)) % 0x7F
    bytes_ = np.where(bytes_ == 0, 1, bytes_)
    amax = np.array([6 * float(e4m3_value(int(b))) for b in bytes_])
    x = np.zeros((n, 16))
    x[:, 0] = amax
    x[:, 5] = -amax / 4
    return (torch.from_numpy(x.reshape(*lead, C * 16).astype(np.float32)),
            torch.from_numpy(bytes_.reshape(*lead, C).astype(np.uint8)))


def test_nv_linear_shape_and_block_positions():
    x, want = _distinct_scale_input((2, 3), 4)
    q, s, _ = lowbit.quantize_nvfp4(x, gs_t(1.0), scale_layout="linear")
    assert s.dtype == torch.float8_e4m3fn and tuple(s.shape) == (2, 3, 4)
    assert tuple(q.shape) == (2, 3, 32)
    assert_bytes(s.view(U8), want, "scales")  # scale of block c of row (i, j) at [i, j, c]
    # anchor 6S * m ~ 6 -> 7; -1.5S m -> B at element 5 (odd: high nibble of byte 2)
    assert_bytes(q.view(U8), u8([[0x07, 0x00, 0xB0] + [0] * 5] * 24).reshape(2, 3, 32), "q")
    # linear is the default
    _, s2, _ = lowbit.quantize_nvfp4(x, gs_t(1.0))
    assert torch.equal(s2.view(U8), want)


# --------------------------------------------------------------------------------------------
# [NV-SWIZZLE]
# --------------------------------------------------------------------------------------------

# R = 256, C = 8 (K = 128): ceil(C/4) = 2; offset = ((r//128)*2 + c//4)*512 + (r%32)*16
#                                                   + ((r%128)//32)*4 + c%4
SWZ_256x8 = [
    ((0, 0), 0),  # everything 0
    ((0, 3), 3),  # c%4 = 3
    ((0, 4), 512),  # c//4 = 1 -> 1*512
    ((1, 0), 16),  # r%32 = 1 -> 16
    ((31, 0), 496),  # 31*16
    ((32, 0), 4),  # (32%128)//32 = 1 -> 4
    ((33, 5), 533),  # 512 + 1*16 + 1*4 + 1
    ((127, 3), 511),  # 31*16 + 3*4 + 3 = 496 + 12 + 3
    ((128, 0), 1024),  # (1*2 + 0)*512
    ((200, 6), 1674),  # (2 + 1)*512 + (200%32 = 8)*16 + ((72)//32 = 2)*4 + 2 = 1536+128+8+2
    ((255, 7), 2047),  # 1536 + 31*16 + 3*4 + 3
]


def test_scale_swizzle_offsets_literal_256x8_and_one_byte_each():
    """[SCALE-SWIZZLE] as lowbit.spec computes it, against the literal offsets and the formula
    written out from the SPEC text: a bijection onto the padded tiles."""
    got = spec.swizzled_offsets(256, 8, "cpu").reshape(256, 8)
    for (r, c), off in SWZ_256x8:
        assert int(got[r, c]) == off
    for rows, cols in [(1, 1), (130, 5), (256, 8), (300, 13)]:
        got = spec.swizzled_offsets(rows, cols, "cpu").reshape(rows, cols)
        want = [[swizzle_offset(r, c, cols) for c in range(cols)] for r in range(rows)]
        assert got.tolist() == want
        assert len(set(got.reshape(-1).tolist())) == rows * cols
        assert spec.swizzled_scale_shape(rows, cols) == (-(-rows // 128) * 128, -(-cols // 4) * 4)
        padded_rows, padded_cols = spec.swizzled_scale_shape(rows, cols)
        assert int(got.max()) < padded_rows * padded_cols


def test_nv_swizzle_offsets_literal_256x8():
    for (r, c), off in SWZ_256x8:
        assert swizzle_offset(r, c, 8) == off
    # blocks at those (r, c) get distinct bytes 0x30 + i (amax 6 * E4M3(0x30 + i), gs 1); every
    # other block is zero (SF 0x00)
    x = torch.zeros(256, 128)
    for i, ((r, c), _) in enumerate(SWZ_256x8):
        x[r, 16 * c] = 6 * float(e4m3_value(0x30 + i))
    q, s, _ = lowbit.quantize_nvfp4(x, gs_t(1.0), scale_layout="swizzled")
    assert s.dtype == torch.float8_e4m3fn and tuple(s.shape) == (256, 8)
    flat = s.view(U8).reshape(-1)
    want = torch.zeros(2048, dtype=U8)
    for i, (_, off) in enumerate(SWZ_256x8):
        want[off] = 0x30 + i
    assert_bytes(flat, want, "swizzled bytes")
    # the same positions as (row, column) of the (256, 8) tensor: offset // 8, offset % 8
    s2 = s.view(U8)
    assert s2[66, 5].item() == 0x30 + 6  # (33, 5) -> 533 = 66*8 + 5
    assert s2[209, 2].item() == 0x30 + 9  # (200, 6) -> 1674 = 209*8 + 2
    assert s2[63, 7].item() == 0x30 + 7  # (127, 3) -> 511
    assert s2[0, 4].item() == 0x30 + 5  # (32, 0) -> 4
    # q does not depend on the layout
    ql, _, _ = lowbit.quantize_nvfp4(x, gs_t(1.0))
    assert torch.equal(q.view(U8), ql.view(U8))


def test_nv_swizzle_full_layout_matches_nested_loop_gather():
    x, want_lin = _distinct_scale_input((256,), 8, base=1)
    # noise below each block's anchor (|noise| < 0.9 amax): the anchors still decide SF
    amax = x.reshape(256, 8, 16)[..., :1]
    noise = torch.from_numpy(np.random.default_rng(41).uniform(-0.9, 0.9, (256, 8, 16)))
    x = torch.where(torch.arange(16) == 0, amax, (noise * amax).float()).reshape(256, 128)
    _, sl, _ = quant(x, gs_t(1.0))
    assert_bytes(sl, want_lin, "linear")
    _, ss, _ = quant(x, gs_t(1.0), scale_layout="swizzled")
    assert_bytes(ss, torch.from_numpy(swizzle_expected(want_lin.numpy())), "swizzled")
    # computed gs, per tensor and per row, against the oracle
    y = random_nv(42, 256, 128)
    for per_row in (False, True):
        qs, ss, g = check_against_ref(y, per_row=per_row, scale_layout="swizzled", what="swz")
        ql, sl, g2 = quant(y, per_row=per_row)
        assert torch.equal(qs, ql) and torch.equal(g, g2)
        assert_bytes(ss, torch.from_numpy(swizzle_expected(sl.numpy())), "swz vs lin")


@pytest.mark.parametrize("gs", [256.0, NAN, None], ids=["gs256", "nan", "computed"])
def test_nv_swizzle_padding_bytes_are_zero(gs):
    # x (2, 65, 80): R = 130 rows, C = 5 -> (256, 8); rows 130..255 and columns 5..7 of every
    # tile are padding and hold 0 whatever gs is (NaN gs: the real bytes are all 0x7F)
    x = random_nv(51, 130, 80, specials=True).reshape(2, 65, 80)
    g = None if gs is None else gs_t(gs)
    q, s, _ = lowbit.quantize_nvfp4(x, g, scale_layout="swizzled")
    assert tuple(s.shape) == (256, 8) and tuple(q.shape) == (2, 65, 40)
    _, sl, _ = quant(x, g)
    assert tuple(sl.shape) == (2, 65, 5)
    exp = swizzle_expected(sl.reshape(130, 5).numpy())
    assert_bytes(s.view(U8), torch.from_numpy(exp), "swizzled")
    real = np.zeros(256 * 8, dtype=bool)
    for r in range(130):
        for c in range(5):
            real[swizzle_offset(r, c, 5)] = True
    assert real.sum() == 650
    assert not s.view(U8).reshape(-1)[torch.from_numpy(~real)].any(), "padding bytes"
    if gs is not None and math.isnan(gs):
        assert (s.view(U8).reshape(-1)[torch.from_numpy(real)] == 0x7F).all()
    # (130, 80) row for row gives the same
    _, s2, _ = lowbit.quantize_nvfp4(x.reshape(130, 80), g, scale_layout="swizzled")
    assert torch.equal(s2.view(U8), s.view(U8))


def test_nv_swizzle_small_shapes():
    # one row, one block: (128, 4), only byte 0 is real
    x = f32_tensor(GOLD6)
    q, s, _ = lowbit.quantize_nvfp4(x, gs_t(256.0), scale_layout="swizzled")
    assert tuple(s.shape) == (128, 4) and tuple(q.shape) == (8,)
    want = torch.zeros(128, 4, dtype=U8)
    want[0, 0] = 0x78
    assert_bytes(s.view(U8), want, "1 row")
    # 33 rows, 2 blocks: row r's block c at (r%32)*4 + (r//32) ... as a (128, 4) tensor:
    # offset = (r%32)*16 + (r//32)*4 + c -> row offset//4, column offset%4
    x = torch.zeros(33, 32)
    x[32, 16] = 6 * float(e4m3_value(0x41))  # (32, 1): offset 0 + 4 + 1 = 5 -> [1, 1]
    x[1, 0] = 6 * float(e4m3_value(0x42))  # (1, 0): offset 16 -> [4, 0]
    _, s, _ = lowbit.quantize_nvfp4(x, gs_t(1.0), scale_layout="swizzled")
    want = torch.zeros(128, 4, dtype=U8)
    want[1, 1] = 0x41
    want[4, 0] = 0x42
    assert_bytes(s.view(U8), want, "33 rows")


# --------------------------------------------------------------------------------------------
# [NV-INPUT]
# --------------------------------------------------------------------------------------------


def test_nv_input_dtypes_agree_on_random_data():
    x32 = random_nv(61, 16, 64, torch.bfloat16).float()  # exact in bf16 and f32
    a = check_against_ref(x32, what="f32")
    b = check_against_ref(x32.to(torch.bfloat16), what="bf16")
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    check_against_ref(random_nv(62, 16, 64, torch.float16), what="f16")
    check_against_ref(random_nv(63, 16, 64, torch.float16), gs_t(37.0), what="f16 given")


def test_nv_input_float16_subnormals_convert_exactly():
    # fp16 subnormals k * 2^-24; anchor 96 * 2^-24 = 6 * 2^-20; gs 2^28:
    # d = 2^-20, t = 2^8 -> 0x78, m = 2^20 -> y = k/16
    ks = [96, 4, 5, 12, 11, 20, 21, 28, 27, 40, 41, 56, 55, 80, 81, 3]
    codes = [7, 0, 1, 2, 1, 2, 3, 4, 3, 4, 5, 6, 5, 6, 7, 0]
    bits = ks + [96, 0x8000 | 12, 0x8000 | 1]  # second block: 6 -> 7, -0.75 -> A, -tiny -> 8
    nibs = codes + [7, 0xA, 0x8] + [0] * 13
    xh = torch.from_numpy(np.array([block(bits, 32, fill=0)], dtype=np.uint16).view(np.float16))
    for x in (xh, xh.float(), xh.to(torch.bfloat16)):  # exact in all three
        qb, sb, _ = quant(x, gs_t(2.0**28))
        assert_bytes(sb, u8([[0x78, 0x78]]), f"{x.dtype} scales")
        assert_bytes(qb, u8([pack(nibs)]), f"{x.dtype} q")


def test_nv_input_nd_shape_folds_rows():
    x = random_nv(64, 12, 64).reshape(2, 2, 3, 64)
    q, s, g = lowbit.quantize_nvfp4(x, per_row=True)
    assert tuple(q.shape) == (2, 2, 3, 32) and tuple(s.shape) == (2, 2, 3, 4)
    assert tuple(g.shape) == (2, 2, 3)
    check_against_ref(x, per_row=True, what="4-D")
    _, ss, _ = lowbit.quantize_nvfp4(x, per_row=True, scale_layout="swizzled")
    assert tuple(ss.shape) == (128, 4)
    assert_bytes(ss.view(U8), torch.from_numpy(swizzle_expected(s.view(U8).reshape(12, 4).numpy())),
                 "4-D swizzled")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nv_input_non_contiguous(dtype):
    base = random_nv(65, 8, 64, dtype)
    views = {
        "transposed": base.reshape(4, 128).t().contiguous().t()[:, :64],
        "transpose_of_2d": base.t().contiguous().t(),
        "sliced_last_dim": torch.cat([base, base], dim=1)[:, ::2],
        "sliced_rows": base[::2],
        "expanded": base[:1].expand(3, 64),
        "nd_permuted": base.reshape(2, 4, 64).permute(1, 0, 2),
    }
    for name, x in views.items():
        assert not x.is_contiguous(), name
        for per_row in (False, True):
            a = quant(x, per_row=per_row)
            b = quant(x.contiguous(), per_row=per_row)
            assert all(torch.equal(u, v) for u, v in zip(a, b)), name
            check_against_ref(x, per_row=per_row, what=name)


@pytest.mark.parametrize("shape,qshape,sshape", [
    ((0, 64), (0, 32), (0, 4)),
    ((3, 0), (3, 0), (3, 0)),
    ((2, 0, 16), (2, 0, 8), (2, 0, 1)),
    ((0,), (0,), (0,)),
])
def test_nv_input_empty(shape, qshape, sshape):
    for dtype in DTYPES:
        x = torch.zeros(shape, dtype=dtype)
        q, s, g = lowbit.quantize_nvfp4(x)
        assert q.dtype == torch.float4_e2m1fn_x2 and s.dtype == torch.float8_e4m3fn
        assert tuple(q.shape) == qshape and tuple(s.shape) == sshape
        assert g.shape == () and g.item() == 2.0**118  # nothing finite: amax 0
        _, _, gr = lowbit.quantize_nvfp4(x, per_row=True)
        assert tuple(gr.shape) == shape[:-1]
    q, s, _ = lowbit.quantize_nvfp4(torch.zeros(0, 64), scale_layout="swizzled")
    assert tuple(s.shape) == (0, 4)


def test_nv_input_one_dimensional():
    x = f32_tensor(GOLD6 + block([3.0], 16))
    q, s, g = lowbit.quantize_nvfp4(x, gs_t(256.0))
    assert tuple(q.shape) == (16,) and tuple(s.shape) == (2,)
    # block 1: amax 3 -> d = 0.5, t = 128 (0x70), m = 2: 3 -> 6 -> 7
    assert_bytes(s.view(U8), u8([0x78, 0x70]), "scales")
    assert_bytes(q.view(U8), u8(GOLD6_Q + [0x07] + [0] * 7), "q")
    _, _, g = lowbit.quantize_nvfp4(x, per_row=True)
    assert g.shape == () and g.item() == 448.0


@pytest.mark.parametrize("bad", [
    lambda: torch.zeros(2, 24),  # K not a multiple of 16
    lambda: torch.zeros(2, 8),
    lambda: torch.zeros(()),  # ndim 0
    lambda: torch.zeros(2, 16, dtype=torch.float64),
    lambda: torch.zeros(2, 16, dtype=torch.int32),
    lambda: torch.zeros(2, 16, dtype=torch.uint8),
])
def test_nv_input_rejects_malformed(bad):
    with pytest.raises(ValueError):
        lowbit.quantize_nvfp4(bad())


def test_nv_input_rejects_unknown_scale_layout():
    with pytest.raises(ValueError):
        lowbit.quantize_nvfp4(torch.zeros(1, 16), scale_layout="tiled")


# --------------------------------------------------------------------------------------------
# [NV-DEQUANT]
# --------------------------------------------------------------------------------------------

ALL_NIBBLES = [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]  # codes 0..15 in order
NIBBLE_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0,
                 -6.0]


def test_nv_dequant_hand_picked_bytes():
    q = u8([ALL_NIBBLES] * 4)
    sb = u8([[0x78], [0x79], [0x39], [0x00]])
    # row 0: SF 256, gs 256 -> fl32(256/256) = 1 -> the E2M1 values themselves
    # row 1: SF 288, gs 384 -> 0.75 exactly -> values * 0.75
    # row 2: SF 1.125, gs 5 -> fl32(0.225) = 15099494 * 2^-26; 1.5 * that = 22649241 * 2^-26
    #   -> fl32: halfway, to even 11324620 * 2^-25 = 0.33749998 (0x3EACCCCC), while the
    #   correctly rounded 1.5 * 1.125 / 5 = 0.3375 is 0x3EACCCCD; 6 -> 0x3FACCCCC (1.3499999)
    # row 3: SF 0 -> v * 0 = +-0 (negative nibbles give -0)
    gs = f32_tensor([256.0, 384.0, 5.0, 256.0])
    out = lowbit.dequantize_nvfp4(q, sb, gs, dtype=torch.float32)
    assert out.dtype == torch.float32 and tuple(out.shape) == (4, 16)
    sc = fl32(Fraction(9, 8) / 5)
    assert sc == Fraction(15099494, 2**26)
    rows = [NIBBLE_VALUES, [0.75 * v for v in NIBBLE_VALUES],
            [math.copysign(float(fl32(Fraction(v) * sc)), v) for v in NIBBLE_VALUES],
            [0.0 * v for v in NIBBLE_VALUES]]
    exp = f32_tensor(rows)
    assert torch.equal(f32_bits_of(out), f32_bits_of(exp)), out
    assert f32_bits_of(out)[2, 3].item() == 0x3EACCCCC and f32_bits_of(out)[2, 7].item() == 0x3FACCCCC
    assert f32_bits_of(out)[3, 15].item() == -0x80000000  # -0.0


def test_nv_dequant_per_row_global_scale():
    # SF 256 with gs 256, 512, 3: fl32(256/256) = 1, 0.5, fl32(256/3) = 11184811 * 2^-17;
    # 6 * fl32(256/3) = 67108866 * 2^-17 -> halfway -> to even 512 exactly; 1.5 * -> 128
    q = u8([[ALL_NIBBLES] * 2] * 3)  # (3, 2, 8): per-row gs has shape (3, 2)
    sb = u8([[[0x78]] * 2] * 3)
    gs = f32_tensor([[256.0, 512.0], [3.0, 256.0], [512.0, 3.0]])
    out = lowbit.dequantize_nvfp4(q, sb, gs, dtype=torch.float32)
    assert tuple(out.shape) == (3, 2, 16)
    exp = ref_dequant(q.numpy(), sb.numpy(), gs.double().numpy())
    assert torch.equal(f32_bits_of(out), f32_bits_of(torch.from_numpy(exp.astype(np.float32))))
    assert out[1, 0, 7].item() == 512.0 and out[1, 0, 3].item() == 128.0
    assert out[0, 1, 7].item() == 3.0


@pytest.mark.parametrize("dtype", list(NAN_BITS))
def test_nv_dequant_nan_scale_bytes_give_canonical_nan(dtype):
    q = u8([ALL_NIBBLES * 3])
    sb = u8([[0x7F, 0x78, 0xFF]])
    out = lowbit.dequantize_nvfp4(q, sb, gs_t(256.0), dtype=dtype)
    int_dtype, bits = NAN_BITS[dtype]
    ob = out.view(int_dtype)
    assert (ob[0, :16] == bits).all() and (ob[0, 32:] == bits).all()
    assert torch.equal(out[0, 16:32].float(), f32_tensor(NIBBLE_VALUES))


@pytest.mark.parametrize("dtype", list(NAN_BITS))
@pytest.mark.parametrize("bad", [0.0, -1.0, NAN, INF, 2.0**-126, 2.0**119],
                         ids=["zero", "neg", "nan", "inf", "small", "big"])
def test_nv_dequant_unusable_global_scale_gives_nan(dtype, bad):
    q = u8([ALL_NIBBLES * 2] * 2)
    sb = u8([[0x78, 0x00]] * 2)
    int_dtype, bits = NAN_BITS[dtype]
    out = lowbit.dequantize_nvfp4(q, sb, gs_t(bad), dtype=dtype)
    assert torch.equal(out.view(int_dtype), torch.full((2, 32), bits, dtype=int_dtype))
    # per row: only the row with the unusable value
    out = lowbit.dequantize_nvfp4(q, sb, f32_tensor([256.0, bad]), dtype=dtype)
    assert torch.equal(out[1].view(int_dtype), torch.full((32,), bits, dtype=int_dtype))
    assert torch.equal(out[0, :16].float(), f32_tensor(NIBBLE_VALUES))


def test_nv_dequant_swizzled_layout():
    x = random_nv(71, 130, 80, specials=True)
    for gs in (None, gs_t(3.0)):
        ql, sl, g = lowbit.quantize_nvfp4(x, gs)
        qs, ss, _ = lowbit.quantize_nvfp4(x, gs, scale_layout="swizzled")
        a = lowbit.dequantize_nvfp4(ql, sl, g, dtype=torch.float32)
        b = lowbit.dequantize_nvfp4(qs, ss, g, scale_layout="swizzled", dtype=torch.float32)
        exp = ref_dequant(ql.view(U8).numpy(), sl.view(U8).numpy(), g.double().numpy())
        expt = torch.from_numpy(exp.astype(np.float32))
        nan = torch.isnan(expt)
        for out in (a, b):
            assert torch.equal(torch.isnan(out), nan)
            assert torch.equal(f32_bits_of(out)[~nan], f32_bits_of(expt)[~nan])
            assert (f32_bits_of(out)[nan] == F32_NAN).all()


def test_nv_dequant_accepts_typed_and_uint8_and_defaults_to_bfloat16():
    q = u8([ALL_NIBBLES])
    sb = u8([[0x79]])
    gs = gs_t(384.0)
    ref = lowbit.dequantize_nvfp4(q, sb, gs, dtype=torch.float32)
    for qq in (q, q.view(torch.float4_e2m1fn_x2)):
        for ss in (sb, sb.view(torch.float8_e4m3fn)):
            out = lowbit.dequantize_nvfp4(qq, ss, gs, dtype=torch.float32)
            assert torch.equal(f32_bits_of(out), f32_bits_of(ref))
            d = lowbit.dequantize_nvfp4(qq, ss, gs)
            assert d.dtype == torch.bfloat16 and tuple(d.shape) == (1, 16)
    assert ref[0].tolist() == [0.75 * v for v in NIBBLE_VALUES]


def test_nv_dequant_rounds_float32_to_the_output_dtype():
    # SF 1.125 (0x39), gs 5: float32 values 0.1125, 0.225, 0.33749998, ... then to bf16 / fp16;
    # SF 448 (0x7E), gs 2^-10: 6 * 448 * 2^10 = 2752512 -> fp16 +inf, bf16 2752512 (exact)
    q = u8([ALL_NIBBLES, ALL_NIBBLES])
    sb = u8([[0x39], [0x7E]])
    gs = f32_tensor([5.0, 2.0**-10])
    f32 = torch.from_numpy(ref_dequant(q.numpy(), sb.numpy(), gs.double().numpy()).astype(np.float32))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        out = lowbit.dequantize_nvfp4(q, sb, gs, dtype=dtype)
        want = f32.to(dtype)  # torch's float32 -> dtype cast: round to nearest even
        assert torch.equal(out.view(NAN_BITS[dtype][0]), want.view(NAN_BITS[dtype][0])), dtype
    h = lowbit.dequantize_nvfp4(q, sb, gs, dtype=torch.float16)
    assert h[1, 7].item() == INF and h[1, 15].item() == -INF
    assert lowbit.dequantize_nvfp4(q, sb, gs)[1, 7].item() == 2752512.0


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("dtype", list(NAN_BITS))
def test_nv_dequant_round_trip(per_row, dtype):
    x = random_nv(81, 6, 256, specials=True)
    q, s, g = lowbit.quantize_nvfp4(x, per_row=per_row)
    out = lowbit.dequantize_nvfp4(q, s, g, dtype=dtype)
    rq, rs = ref_nvfp4(exact64(x), ref_global_scale(exact64(x), per_row))
    exp = torch.from_numpy(ref_dequant(rq, rs, g.double().numpy()).astype(np.float32)).to(dtype)
    int_dtype, bits = NAN_BITS[dtype]
    nan = torch.isnan(exp)
    assert nan.any() and torch.equal(torch.isnan(out), nan)
    assert (out.view(int_dtype)[nan] == bits).all()
    assert torch.equal(out.view(int_dtype)[~nan], exp.view(int_dtype)[~nan])


# --------------------------------------------------------------------------------------------
# [NV-VLLM]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n", [(1, 16), (130, 80), (256, 128), (5, 64)])
@pytest.mark.parametrize("swizzled", [True, False])
def test_nv_vllm_shapes_dtypes_and_bits(m, n, swizzled, dtype):
    x = random_nv(91 + m, m, n).to(dtype)
    gs = gs_t(float(lowbit.nvfp4_global_scale(x)), (1,))
    q, s = lowbit.scaled_fp4_quant(x, gs, is_sf_swizzled_layout=swizzled)
    assert q.dtype == torch.uint8 and tuple(q.shape) == (m, n // 2)
    assert s.dtype == torch.float8_e4m3fn
    up = lambda a, b: -(-a // b) * b
    assert tuple(s.shape) == ((up(m, 128), up(n // 16, 4)) if swizzled else (m, n // 16))
    layout = "swizzled" if swizzled else "linear"
    q2, s2, _ = lowbit.quantize_nvfp4(x, gs, scale_layout=layout)
    assert torch.equal(q, q2.view(U8))
    assert torch.equal(s.view(U8), s2.view(U8))
    rq, rs = ref_nvfp4(exact64(x), gs.double().numpy())
    assert_bytes(q, torch.from_numpy(rq), "q vs ref")
    assert_bytes(s.view(U8), torch.from_numpy(swizzle_expected(rs) if swizzled else rs), "s vs ref")


def test_nv_vllm_default_is_swizzled_and_scalar_scale_accepted():
    x = f32_tensor([GOLD6 * 2] * 3).to(torch.bfloat16)
    q, s = lowbit.scaled_fp4_quant(x, gs_t(256.0, (1,)))
    assert tuple(s.shape) == (128, 4)
    want = torch.zeros(128, 4, dtype=U8)
    # (r, c) -> offset r*16 + c for r < 32: rows 0..2 -> bytes 0, 1, 16, 17, 32, 33
    for r in range(3):
        for c in range(2):
            want.view(-1)[r * 16 + c] = 0x78
    assert_bytes(s.view(U8), want, "scales")
    assert_bytes(q, u8([GOLD6_Q * 2] * 3), "q")
    q2, s2 = lowbit.scaled_fp4_quant(x, gs_t(256.0))
    assert torch.equal(q2, q) and torch.equal(s2.view(U8), s.view(U8))


def test_nv_vllm_takes_2d_input_only():
    with pytest.raises(ValueError):
        lowbit.scaled_fp4_quant(torch.ones(2, 4, 32, dtype=torch.bfloat16), gs_t(256.0, (1,)))
