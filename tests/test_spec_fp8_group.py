"""Golden-byte tests for the "FP8 with float32 scales" clauses of docs/SPEC.md ([F8-*]).

Every expectation is either a literal derived by hand (the arithmetic is in the comment next to it)
or comes from the independent formulation in this file:

- the 256 E4M3FN values enumerated from their bit fields, "nearest, ties to the even code" decided
  by comparing twice the value with the sum of the two grid neighbours (exact in float64);
- scales and quotients as numpy float32 divisions (IEEE, correctly rounded; pinned against exact
  Fraction rounding ``fl32`` by the self-checks below), the [F8-UE8M0] byte as a frexp power-of-two
  ceiling;
- dequantized values as an exact float64 product (4 significant bits times 24 fit in 53) cast once
  to float32, then rounded to bfloat16 with integer nearest-even on the bits, to float16 by numpy.

Nothing here calls into lowbit except the public functions under test ([F8-UE8M0] is also checked
against the public ``quantize_fp8_group_packed``).
"""

from fractions import Fraction

import numpy as np
import pytest
import torch
from oracles import (
    ALL16,
    E4M3_POS,
    F32_MAX,
    NAN_BITS,
    U8,
    assert_bytes,
    bf16_values,
    bits_of_f32,
    ceil_log2_np,
    dn32,
    e4m3_bytes_np,
    exact64,
    f32_bits_of,
    f32_bits_tensor,
    f32_tensor,
    fl32,
    from_bits16,
    poisoned_q,
    storage_u8,
    tma_rows,
    u8,
    up32,
)

import lowbit

E4M3 = torch.float8_e4m3fn
F32 = np.float32
LAYOUTS = ("row_major", "column_major", "column_major_tma")
SENTINEL = 0x5A5A5A5A  # float32 ~1.5e16: a poison value no quantize writes as a scale
INF = float("inf")
NAN = float("nan")
TINY = 2.0**-126
HUGE = 2.0**127

# --------------------------------------------------------------------------------------------
# Independent helpers
# --------------------------------------------------------------------------------------------


def e4m3_byte_exact(fr):
    """E4M3FN byte of the rational fr by exhaustive search over the codes (ties to even code)."""
    mag = min(abs(Fraction(fr)), Fraction(448))
    best = min(range(127), key=lambda c: (abs(Fraction(E4M3_POS[c]) - mag), c % 2))
    return best | (0x80 if fr < 0 else 0)


def e4m3_signed_values(codes):
    codes = np.asarray(codes, dtype=np.int64)
    table = np.append(E4M3_POS, np.nan)  # code 0x7F is NaN
    return table[codes & 0x7F] * np.where(codes & 0x80, -1.0, 1.0)


def amax32(g):
    """float32 max |x| over the last axis of a float64 array, NaNs left out, 0 for none."""
    with np.errstate(invalid="ignore"):
        mag = np.where(np.isnan(g), -np.inf, np.abs(g))
        return np.maximum(mag.max(-1), 0.0).astype(F32)  # exact: the values are float32 values


def scale_oracle(amax, eps, ue8m0):
    """[F8-SCALE] / [F8-UE8M0] float32 scale of float32 group amaxes."""
    with np.errstate(all="ignore"):
        a = np.maximum(F32(eps), amax)
        y = (a / F32(448)).astype(F32)  # IEEE float32 division
        if ue8m0:  # [FP8-SCALE]: floor fl32(1e-10), power-of-two ceiling, byte <= 254
            y = np.maximum(y, F32(1e-10))
            inf = np.isinf(y)
            byte = ceil_log2_np(np.where(inf, 1.0, y.astype(np.float64))) + 127
            byte = np.minimum(np.where(inf, 255, byte), 254)
            return np.ldexp(1.0, byte - 127).astype(F32)
        return np.clip(y, F32(TINY), F32(HUGE))  # Inf -> 2^127


def elements_oracle(x32, s32):
    """[F8-ELEMENT] bytes of E4M3(clamp(fl32(x / s))) with a numpy float32 division; NaN -> 0x7F."""
    with np.errstate(all="ignore"):
        return e4m3_bytes_np((x32 / s32).astype(F32).astype(np.float64))


def ref_group(x, gs, eps=1e-10, ue8m0=False):
    """Independent quantize_fp8_group: x tensor (..., mn, K) -> (q bytes, float32 scales (..., mn, G))."""
    v = exact64(x)
    g = v.reshape(*v.shape[:-1], v.shape[-1] // gs, gs)
    s = scale_oracle(amax32(g), eps, ue8m0)
    with np.errstate(invalid="ignore"):  # NaN payloads narrow silently
        q = elements_oracle(g.astype(F32), s[..., None])
    return q.reshape(v.shape), s


def ref_block(w, block, eps=1e-4, ue8m0=False):
    """Independent quantize_fp8_block: w (N, K) -> (q bytes (N, K), scales (Nb, Kb) by tile (i, j))."""
    v = exact64(w)
    (n, k), (br, bc) = v.shape, block
    nb, kb = -(-n // br), -(-k // bc)
    s = np.zeros((nb, kb), dtype=F32)
    q = np.zeros((n, k), dtype=np.uint8)
    for i in range(nb):
        for j in range(kb):
            tile = v[i * br:(i + 1) * br, j * bc:(j + 1) * bc]
            s[i, j] = scale_oracle(amax32(tile.reshape(-1)), eps, ue8m0)
            with np.errstate(invalid="ignore"):
                q[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = elements_oracle(tile.astype(F32), s[i, j])
    return q, s


def f32_of_bits(b):
    return float(np.array([b], dtype=np.uint32).view(F32)[0])


def assert_f32_equal(got, exp, what=""):
    """Exact float32 equality, bit for bit (exp: numpy float32 array or tensor)."""
    exp = torch.from_numpy(np.ascontiguousarray(exp, dtype=F32)) if isinstance(exp, np.ndarray) else exp
    assert got.dtype == torch.float32, f"{what}: dtype {got.dtype}"
    assert tuple(got.shape) == tuple(exp.shape), f"{what}: shape {tuple(got.shape)} != {tuple(exp.shape)}"
    g, e = f32_bits_of(got).reshape(-1), f32_bits_of(exp).reshape(-1)
    if not torch.equal(g, e):
        bad = (g != e).nonzero().reshape(-1)[:8].tolist()
        detail = ", ".join(f"[{i}] got {g[i].item() & 0xFFFFFFFF:#010x} expected {e[i].item() & 0xFFFFFFFF:#010x}"
                           for i in bad)
        raise AssertionError(f"{what}: {(g != e).sum().item()} scales differ: {detail}")


def quant(x, gs=128, **kw):
    q, s = lowbit.quantize_fp8_group(x, gs, **kw)
    assert q.dtype == E4M3 and s.dtype == torch.float32, (q.dtype, s.dtype)
    assert tuple(q.shape) == tuple(x.shape) and q.is_contiguous()
    return q, s


def check_group(x, gs=128, eps=1e-10, ue8m0=False, layout="row_major", what=""):
    kw = {} if eps == 1e-10 else {"eps": eps}
    q, s = quant(x, gs, ue8m0=ue8m0, scale_layout=layout, **kw)
    rq, rs = ref_group(x, gs, eps, ue8m0)
    assert_bytes(q.view(U8), torch.from_numpy(rq), f"{what} q")
    assert_f32_equal(s, rs, f"{what} scales")
    return q, s


def layout_strides(lead, mn, g, layout):
    """[F8-LAYOUT], written out: (..., G, 1), (..., G*mn, 1, mn), (..., G*A, 1, A)."""
    if layout == "row_major":
        inner, batch = [g, 1], g * mn
    else:
        rows = tma_rows(mn) if layout == "column_major_tma" else mn
        inner, batch = [1, rows], g * rows
    outer = []
    for size in reversed(lead):
        outer.insert(0, batch)
        batch *= size
    return tuple(outer + inner)


def fill_storage(t, bits=SENTINEL):
    n = t.untyped_storage().nbytes() // 4
    torch.empty(0, dtype=torch.int32).set_(t.untyped_storage()).as_strided((n,), (1,)).fill_(bits)


def storage_f32(t):
    n = t.untyped_storage().nbytes() // 4
    return torch.empty(0, dtype=torch.float32).set_(t.untyped_storage()).as_strided((n,), (1,))


def words_to_bytes(s, g):
    """Scale bytes (..., mn, G) read from quantize_fp8_group_packed's int32 words, little-endian."""
    w = s.contiguous().numpy().astype(np.int64) & 0xFFFFFFFF
    out = np.zeros(w.shape[:-1] + (w.shape[-1] * 4,), dtype=np.int64)
    for j in range(4):
        out[..., j::4] = (w >> (8 * j)) & 0xFF
    return out[..., :g]


# --------------------------------------------------------------------------------------------
# Self-checks of the oracles
# --------------------------------------------------------------------------------------------


def test_f8_scale_oracle_float32_division_is_correctly_rounded():
    rng = np.random.default_rng(1)
    a = np.abs(np.concatenate([
        (rng.standard_normal(400) * 10.0 ** rng.integers(-40, 38, 400)).astype(F32),
        np.array([448, 449, up32(448), 672, 1, 1e-10, 1e-4, F32_MAX, 2.0**-140, 2.0**-149, 448 * TINY],
                 dtype=F32),
    ]))
    s = scale_oracle(a, 0.0, False)
    for ai, si in zip(a.tolist(), s.tolist()):
        exact = fl32(Fraction(ai) / 448)
        assert Fraction(si) == max(exact, Fraction(TINY)), ai
    x = (rng.standard_normal(400) * 100).astype(F32)
    sx = np.abs(rng.standard_normal(400)).astype(F32) + F32(1e-3)
    for xi, si, qi in zip(x.tolist(), sx.tolist(), elements_oracle(x, sx).tolist()):
        assert qi == e4m3_byte_exact(fl32(Fraction(xi) / Fraction(si))), (xi, si)


def test_f8_element_oracle_table_and_midpoints():
    assert E4M3_POS[0x38] == 1.0 and E4M3_POS[0x7E] == 448.0 and E4M3_POS[0x01] == 2.0**-9
    mids = (E4M3_POS[:-1] + E4M3_POS[1:]) / 2
    lo = np.arange(126)
    assert np.array_equal(e4m3_bytes_np(mids), np.where(lo % 2 == 0, lo, lo + 1))
    assert np.array_equal(e4m3_bytes_np(E4M3_POS), np.arange(127))
    assert np.array_equal(e4m3_bytes_np(-E4M3_POS), np.arange(127) | 0x80)
    for m in mids[::7]:
        assert e4m3_bytes_np(m) == e4m3_byte_exact(Fraction(m))


def test_f8_dequant_oracle_rounding_helpers():
    # bfloat16 nearest-even on the bits: 1 + 2^-8 is a tie -> 1 (0x3F80); 1 + 3*2^-8 -> 1 + 2^-6
    v = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8, F32_MAX, -(2.0**-133), 2.0**-134], dtype=F32)
    assert bf16_rne_bits(v).tolist() == [0x3F80, 0x3F82, 0x7F80, 0x8001, 0x0000]


# --------------------------------------------------------------------------------------------
# [F8-GOLDEN]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_f8_golden_all_zero_group_default_eps(dtype):
    # s = fl32(fl32(1e-10) / 448): fl32(1e-10) = 0x2EDBE6FF; / 448 -> 0x2A7B5123 ~ 2.2321428e-13
    exp = fl32(fl32(Fraction(1e-10)) / 448)
    assert Fraction(f32_of_bits(0x2A7B5123)) == exp
    assert abs(f32_of_bits(0x2A7B5123) - 2.2321428e-13) < 1e-20
    q, s = quant(torch.zeros(2, 256, dtype=dtype))
    assert torch.equal(f32_bits_of(s), torch.full((2, 2), 0x2A7B5123, dtype=torch.int32))
    assert_bytes(q.view(U8), torch.zeros(2, 256, dtype=U8), "q")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_f8_golden_amax_448_scale_one(dtype):
    # s = 448/448 = 1; elements are E4M3 of themselves: 448 0x7E, -1 0xB8, 0.5 0x30, 3 0x44,
    # 2^-9 0x01, -240 0xF7, 0 0x00, -0 0x80
    x = torch.tensor([[448.0, -1.0, 0.5, 3.0, 2.0**-9, -240.0, 0.0, -0.0]], dtype=dtype)
    q, s = quant(x, 8)
    assert s.tolist() == [[1.0]]
    assert_bytes(q.view(U8), u8([[0x7E, 0xB8, 0x30, 0x44, 0x01, 0xF7, 0x00, 0x80]]), "q")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_f8_golden_amax_672_scale_1_5(dtype):
    # s = 672/448 = 1.5 exactly; 672/1.5 = 448 -> 0x7E; fl32(1/1.5) = 0.6666667 lies between
    # 0.625 (0x32) and 0.6875 (0x33), midpoint 0.65625 -> 0x33; -672 -> 0xFE
    x = torch.tensor([[672.0, 1.0, -672.0, 0.0]], dtype=dtype)
    q, s = quant(x, 4)
    assert s.tolist() == [[1.5]]
    assert_bytes(q.view(U8), u8([[0x7E, 0x33, 0xFE, 0x00]]), "q")
    assert E4M3_POS[0x33] == 0.6875 and E4M3_POS[0x32] == 0.625


# --------------------------------------------------------------------------------------------
# [F8-SCALE]
# --------------------------------------------------------------------------------------------


def test_f8_scale_eps_zero_all_zero_group_is_2_pow_minus_126_not_nan():
    # a = max(0, 0) = 0 -> 0/448 = 0 -> held to 2^-126 (vLLM: 0/0 -> NaN); elements 0 / -0
    x = f32_tensor([[0.0, -0.0, 0.0, 0.0], [NAN, NAN, NAN, NAN]])
    q, s = quant(x, 4, eps=0.0)
    assert_f32_equal(s, np.array([[TINY], [TINY]], dtype=F32), "scales")
    assert_bytes(q.view(U8), u8([[0x00, 0x80, 0x00, 0x00], [0x7F] * 4]), "q")


def test_f8_scale_floor_acts_only_below_448_times_2_pow_minus_126():
    e = 448 * TINY  # 1.75 * 2^-118, a float32
    rows = [
        # (eps, amax, expected s, comment)
        (e, 0.0, TINY),  # a/448 = 2^-126 exactly: no floor needed
        (e / 2, 0.0, TINY),  # a/448 = 2^-127 (subnormal) -> floor
        (0.0, e / 2, TINY),  # the same from the amax
        (0.0, 2.0**-140, TINY),  # float32-subnormal amax: 2^-140/448 -> floor
        (0.0, 2.0**-149, TINY),  # smallest subnormal: /448 underflows to 0 -> floor
        (0.0, up32(e), fl32(Fraction(up32(e)) / 448)),  # just above: no floor
        (1e-40, 0.0, TINY),  # tiny eps (fl32(1e-40) is subnormal) -> floor
        (1e-30, 0.0, fl32(fl32(Fraction(1e-30)) / 448)),  # small eps above the floor
    ]
    x = f32_tensor([[amax, 0.0] for _, amax, _ in rows])
    for r, (eps, amax, s_exp) in enumerate(rows):
        q, s = quant(x[r:r + 1], 2, eps=eps)
        assert Fraction(s.item()) == Fraction(s_exp), (r, eps, amax, s.item())
        assert s_exp >= TINY
    # elements of the floored subnormal-amax row: 2^-140 / 2^-126 = 2^-14 < 2^-10 -> 0x00
    q, s = quant(f32_tensor([[2.0**-140, -(2.0**-140)]]), 2, eps=0.0)
    assert_bytes(q.view(U8), u8([[0x00, 0x80]]), "q")
    # and an amax of 448 * 2^-126 with eps 0: s = 2^-126, element 448 -> 0x7E, 2^-126 -> 1 -> 0x38
    q, s = quant(f32_tensor([[e, TINY]]), 2, eps=0.0)
    assert s.item() == TINY
    assert_bytes(q.view(U8), u8([[0x7E, 0x38]]), "q")


def test_f8_scale_default_eps_is_vllm_amax_over_448():
    # for amax >= fl32(1e-10) the scale is fl32(amax / 448) exactly
    rng = np.random.default_rng(2)
    amax = np.abs(rng.standard_normal(64) * 10.0 ** rng.integers(-9, 30, 64)).astype(F32)
    amax = np.concatenate([amax, np.array([1e-10, 448, 672, 1, F32_MAX, 3], dtype=F32)])
    x = torch.from_numpy(np.stack([amax, -amax / 3, np.zeros_like(amax), amax / 7], 1).astype(F32))
    _, s = quant(x, 4)
    for ai, si in zip(amax.tolist(), s.reshape(-1).tolist()):
        assert Fraction(si) == fl32(Fraction(max(ai, float(F32(1e-10)))) / 448), ai
    _, s_explicit = quant(x, 4, eps=1e-10)
    assert torch.equal(f32_bits_of(s), f32_bits_of(s_explicit))


def test_f8_scale_rounding_of_a_over_448_against_fractions():
    # a spread of amaxes whose a/448 rounds up, down, and is exact
    a = [448.0, 449.0, up32(448.0), dn32(448.0), 1.0, 3.0, 5.0, 7.0, 0.1, 1e-4, 1e5, F32_MAX, 2.0**-100, 1e-9]
    x = f32_tensor([[v, -v / 2] for v in a])
    _, s = quant(x, 2)
    got = [Fraction(v) for v in s.reshape(-1).tolist()]
    exp = [fl32(Fraction(max(v, float(F32(1e-10)))) / 448) for v in a]
    assert got == exp
    # fl32(1/448) = 0x3B124925 (1/448 = 0.00223214285..., rounded up)
    assert bits_of_f32(s[4, 0].item()) == 0x3B124925
    # eps is rounded to float32 first: fl32(448.0000001) = 448 -> s = 1 exactly
    _, s = quant(torch.zeros(1, 4), 4, eps=448.0000001)
    assert s.item() == 1.0


def test_f8_scale_quotient_above_448_clamped():
    # amaxes a with fl32(a / fl32(a/448)) > 448 (the scale rounded down): the amax element is 0x7E
    rng = np.random.default_rng(3)
    cand = np.abs(rng.standard_normal(20000) * 10.0 ** rng.integers(-20, 20, 20000)).astype(F32)
    cand = cand[cand > 1e-9]
    s = (cand / F32(448)).astype(F32)
    over = cand[(cand / s).astype(F32) > F32(448)][:64]
    assert len(over) >= 16
    for a in over[:4].tolist():  # exact check of the premise with Fractions
        sa = fl32(Fraction(a) / 448)
        assert fl32(Fraction(a) / sa) > 448
    x = torch.from_numpy(np.stack([over, -over, over / 2, np.zeros_like(over)], 1))
    q, _ = quant(x, 4)
    qb = q.view(U8)
    assert torch.all(qb[:, 0] == 0x7E) and torch.all(qb[:, 1] == 0xFE)
    rq, _ = ref_group(x, 4)
    assert_bytes(qb, torch.from_numpy(rq), "q")


def test_f8_scale_eps_raises_small_groups():
    # eps = 1: group [2^-8, -2^-9] has a = 1 -> s = fl32(1/448) (just above 1/448); 2^-8/s = 1.75-
    # -> 1.75 = 0x3E (exponent 7, mantissa 6), -2^-9/s = -0.875- -> 0xB6 (1.75*2^-1); group [2, 1]: s = fl32(2/448), 2 -> 448 (0x7E),
    # 1/s = 224.00000x -> 224 (0x76)
    x = f32_tensor([[2.0**-8, -(2.0**-9), 2.0, 1.0]])
    q, s = quant(x, 2, eps=1.0)
    assert [Fraction(v) for v in s.reshape(-1).tolist()] == [fl32(Fraction(1, 448)), fl32(Fraction(2, 448))]
    assert_bytes(q.view(U8), u8([[0x3E, 0xB6, 0x7E, 0x76]]), "q")


# --------------------------------------------------------------------------------------------
# [F8-UE8M0]
# --------------------------------------------------------------------------------------------


def test_f8_ue8m0_table_literal():
    # byte of [FP8-SCALE]: 448 -> y 1 -> 127 -> s 1; 449 -> 128 -> 2; 672 -> 1.5 -> 128 -> 2;
    # 0 -> floor fl32(1e-10) -> 94 -> 2^-33; 1 -> fl32(1/448) -> 119 -> 2^-8; Inf -> 254 -> 2^127
    rows = [(448.0, 1.0, 0x7E), (449.0, 2.0, 0x76), (672.0, 2.0, 0x7A), (0.0, 2.0**-33, 0x00),
            (1.0, 2.0**-8, 0x78), (INF, HUGE, 0x7E)]
    x = f32_tensor([[a, 0.0] for a, _, _ in rows])
    q, s = quant(x, 2, ue8m0=True)
    assert s.reshape(-1).tolist() == [v for _, v, _ in rows]
    # 449/2 = 224.5 -> 224 (0x76); 672/2 = 336 tie 320/352 -> 320 (0x7A); 1*2^8 = 256 (0x78)
    assert_bytes(q.view(U8)[:, 0], u8([b for _, _, b in rows]), "q")


@pytest.mark.parametrize("eps", [1e-10, 0.0, 1.0])
def test_f8_ue8m0_equals_packed_op_on_random_groups(eps):
    rng = np.random.default_rng(4)
    v = rng.standard_normal((6, 1024)) * 2.0 ** rng.integers(-40, 40, (6, 8)).repeat(128, 1)
    v[0, :128] = 0.0
    v[1, 5] = NAN
    v[2, 300] = -INF
    x = torch.from_numpy(v.astype(F32))
    q, s = quant(x, eps=eps, ue8m0=True)
    pq, ps = lowbit.quantize_fp8_group_packed(x, eps=eps)
    byte = words_to_bytes(ps, 8)
    assert_f32_equal(s, np.ldexp(1.0, byte - 127).astype(F32), "scales vs packed bytes")
    assert torch.equal(f32_bits_of(s) >> 23, torch.from_numpy(byte.astype(np.int32)))
    assert_bytes(q.view(U8), pq.view(U8), "q vs packed")
    rq, rs = ref_group(x, 128, eps, True)
    assert_bytes(q.view(U8), torch.from_numpy(rq), "q vs oracle")
    assert_f32_equal(s, rs, "scales vs oracle")


# --------------------------------------------------------------------------------------------
# [F8-ELEMENT]
# --------------------------------------------------------------------------------------------


def test_f8_element_ties_subnormals_and_signed_zero_scale_one():
    # group anchored by 448 -> s = 1, so q = E4M3(v)
    table = [
        (448.0, 0x7E), (2.0**-9, 0x01), (2.0**-10, 0x00),  # tie 0 / 2^-9 -> even 0
        (up32(2.0**-10), 0x01), (1.5 * 2.0**-9, 0x02),  # tie 1/2 -> 2
        (2.5 * 2.0**-9, 0x02), (7 * 2.0**-9, 0x07), (7.5 * 2.0**-9, 0x08),  # tie 7/8 -> 8 (2^-6)
        (1.0625, 0x38), (up32(1.0625), 0x39), (1.1875, 0x3A), (dn32(1.1875), 0x39),
        (432.0, 0x7E), (400.0, 0x7C), (dn32(432.0), 0x7D),  # ties 416/448 -> 448, 384/416 -> 384
        (-0.0, 0x80), (-(2.0**-11), 0x80), (-(2.0**-10), 0x80), (0.0, 0x00), (2.0**-149, 0x00),
        (-7.5 * 2.0**-9, 0x88), (0.1, 0x1D),  # fl32(0.1) = 12.8*2^-7 -> 13*2^-7 = 1.625*2^-4
    ]
    x = f32_tensor([[v for v, _ in table] + [0.0] * (24 - len(table))])
    q, s = quant(x, 24)
    assert s.item() == 1.0
    assert_bytes(q.view(U8), u8([[b for _, b in table] + [0] * (24 - len(table))]), "q")


def test_f8_element_non_power_of_two_scale_ties_and_subnormals():
    # amax 672 -> s = 1.5: x = 1.5*m is exactly m for every E4M3 midpoint m and value v
    mids = (E4M3_POS[:-1] + E4M3_POS[1:]) / 2
    vals = np.concatenate([mids, E4M3_POS, -mids[::3], [-0.0, 2.0**-11]]) * 1.5
    pad = -len(vals) % 63
    vals = np.concatenate([vals, np.zeros(pad)]).reshape(-1, 63)
    x = torch.from_numpy(np.concatenate([np.full((len(vals), 1), 672.0), vals], 1).astype(F32))
    q, s = quant(x, 64)
    assert torch.all(s == 1.5)
    exp = e4m3_bytes_np(np.concatenate([np.full((len(vals), 1), 448.0), vals / 1.5], 1))
    assert_bytes(q.view(U8), torch.from_numpy(exp), "q")


def _division_vs_reciprocal_cases():
    """(a, x) with s = fl32(a/448) where E4M3(fl32(x/s)) != E4M3(fl32(x * fl32(1/s))), found by a
    numpy float32 search around E4M3 midpoints times s."""
    rng = np.random.default_rng(5)
    a = np.abs(rng.standard_normal(3000) * 10.0 ** rng.integers(-6, 6, 3000)).astype(F32)
    a = a[a > 1e-6]
    s = (a / F32(448)).astype(F32)
    r = (F32(1) / s).astype(F32)
    mids = ((E4M3_POS[:-1] + E4M3_POS[1:]) / 2)[8:]  # normal range
    m = rng.choice(mids, size=len(a))
    base = (m * s.astype(np.float64)).astype(F32)
    found = []
    for k in range(-3, 4):
        x = (base.view(np.int32) + k).view(F32)
        ok = np.abs(x) <= a
        qd = e4m3_bytes_np((x / s).astype(F32).astype(np.float64))
        qr = e4m3_bytes_np((x * r).astype(F32).astype(np.float64))
        sel = ok & (qd != qr)
        found += list(zip(a[sel].tolist(), x[sel].tolist()))
    return found


def test_f8_element_correctly_rounded_division_not_reciprocal():
    cases = _division_vs_reciprocal_cases()
    assert len(cases) >= 20, len(cases)
    cases = cases[:200]
    for a, xv in cases[:10]:  # the premise, in exact arithmetic
        s = fl32(Fraction(a) / 448)
        byte = e4m3_byte_exact(fl32(Fraction(xv) / s))
        recip = e4m3_byte_exact(fl32(Fraction(xv) * fl32(1 / s)))
        assert byte != recip
    x = f32_tensor([[a, xv, -xv, 0.0] for a, xv in cases])
    q, s = quant(x, 4)
    sn = np.array([a for a, _ in cases], dtype=F32) / F32(448)
    assert_f32_equal(s.reshape(-1), sn.astype(F32), "scales")
    xn = np.array([xv for _, xv in cases], dtype=F32)
    qd = elements_oracle(xn, sn)
    assert_bytes(q.view(U8)[:, 1], torch.from_numpy(qd), "x / s")
    assert_bytes(q.view(U8)[:, 2], torch.from_numpy(qd | 0x80), "-x / s")


def test_f8_element_subnormal_float32_quotient():
    # amax 448*2^100 -> s = 2^100 (exact); 2^-30 / 2^100 = 2^-130
    # (a float32 subnormal) -> 0x00; 2^91 / 2^100 = 2^-9 -> 0x01; -2^92 -> -2^-8 -> 0x82
    x = f32_tensor([[448 * 2.0**100, 2.0**-30, 2.0**91, -(2.0**92)]])
    q, s = quant(x, 4)
    assert s.item() == 2.0**100
    assert_bytes(q.view(U8), u8([[0x7E, 0x00, 0x01, 0x82]]), "q")


def _mixed(bits):
    n = len(bits)
    return bits[(np.arange(n) * 40503) % n]  # odd multiplier: a permutation mixing magnitudes


@pytest.mark.parametrize("ue8m0", [False, True])
def test_f8_element_exhaustive_bfloat16(ue8m0):
    # all 65,536 patterns, as 512 groups of 128 in order and permuted (mixed magnitudes per group)
    for name, bits in (("in order", ALL16), ("mixed", _mixed(ALL16))):
        x = from_bits16(bits.reshape(64, 1024))
        q, s = check_group(x, 128, ue8m0=ue8m0, what=f"bf16 {name} ue8m0={ue8m0}")
        if ue8m0:  # [F8-UE8M0]: the packed op's bytes
            pq, ps = lowbit.quantize_fp8_group_packed(x)
            assert torch.equal(f32_bits_of(s) >> 23, torch.from_numpy(words_to_bytes(ps, 8).astype(np.int32)))
            assert_bytes(q.view(U8), pq.view(U8), f"{name} q vs packed")
        else:
            assert (s == HUGE).any()  # the group of Inf and NaNs
    # the same values as float32 give the same bytes
    xf = torch.from_numpy(bf16_values(ALL16).astype(F32).reshape(64, 1024))
    check_group(xf, 128, ue8m0=ue8m0, what="bf16 values as float32")


def test_f8_element_exhaustive_float16():
    bits = ALL16
    for ue8m0 in (False, True):
        for name, b in (("in order", bits), ("mixed", _mixed(bits))):
            x = from_bits16(b.reshape(64, 1024), torch.float16)
            q, s = check_group(x, 128, ue8m0=ue8m0, what=f"fp16 {name} ue8m0={ue8m0}")
            if ue8m0:
                pq, ps = lowbit.quantize_fp8_group_packed(x)
                assert torch.equal(f32_bits_of(s) >> 23, torch.from_numpy(words_to_bytes(ps, 8).astype(np.int32)))
                assert_bytes(q.view(U8), pq.view(U8), f"{name} q vs packed")


def test_f8_element_exhaustive_bfloat16_pinned_non_power_of_two_scale():
    # every bf16 pattern with |v| <= 300 (or NaN) in groups of 32 next to the anchor 300 (0x4396):
    # s = fl32(300/448), a non-power-of-two scale, so every pattern goes through a real division
    vals = bf16_values(ALL16)
    sel = ALL16[(np.abs(vals) <= 300.0) | np.isnan(vals)]
    sel = np.concatenate([sel, np.zeros(-len(sel) % 31, dtype=np.uint32)]).reshape(-1, 31)
    bits = np.concatenate([np.full((len(sel), 1), 0x4396, dtype=np.uint32), sel], 1)
    assert bf16_values(0x4396) == 300.0
    x = from_bits16(bits)
    q, s = check_group(x, 32, what="pinned 300")
    assert torch.all(s == float(F32(300) / F32(448)))


# --------------------------------------------------------------------------------------------
# [F8-NAN]
# --------------------------------------------------------------------------------------------


def test_f8_nan_both_signs_0x7f_and_ignored_by_amax():
    nan, nnan, snan, nsnan = 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001
    one, half = 0x3F800000, 0x3F000000
    # group 0: amax 1 (NaNs ignored) -> s = fl32(1/448); 1 -> 448 (0x7E); 0.5/s = 224 -> 0x76
    # group 1: only NaNs -> amax 0 -> a = fl32(1e-10) -> s = 0x2A7B5123; all 0x7F
    x = f32_bits_tensor([[nan, one, nnan, half, nsnan, snan, nan, nnan]])
    q, s = quant(x, 4)
    assert Fraction(s[0, 0].item()) == fl32(Fraction(1, 448))
    assert bits_of_f32(s[0, 1].item()) == 0x2A7B5123
    assert_bytes(q.view(U8), u8([[0x7F, 0x7E, 0x7F, 0x76, 0x7F, 0x7F, 0x7F, 0x7F]]), "q")
    # all-NaN group with eps 0: amax 0 -> a 0 -> floor 2^-126; with ue8m0: byte 0x5E -> 2^-33
    _, s0 = quant(x, 4, eps=0.0)
    assert s0[0, 1].item() == TINY
    qe, se = quant(x, 4, ue8m0=True)
    assert se.tolist() == [[2.0**-8, 2.0**-33]]  # 1/448 -> byte 119; 1 * 2^8 = 256 -> 0x78
    assert_bytes(qe.view(U8), u8([[0x7F, 0x78, 0x7F, 0x70, 0x7F, 0x7F, 0x7F, 0x7F]]), "q ue8m0")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_f8_nan_half_precision_both_signs(dtype):
    if dtype == torch.float16:
        x = from_bits16([[0xFE00, 0x5F00, 0x7E01, 0xB800]], torch.float16)  # -NaN, 448, NaN, -0.5
    else:
        x = from_bits16([[0xFFC0, 0x43E0, 0x7FC1, 0xBF00]])
    q, s = quant(x, 4)
    assert s.item() == 1.0
    assert_bytes(q.view(U8), u8([[0x7F, 0x7E, 0x7F, 0xB0]]), "q")


# --------------------------------------------------------------------------------------------
# [F8-INF]
# --------------------------------------------------------------------------------------------


def test_f8_inf_scale_2_pow_127_and_saturated_elements():
    g0 = [INF, -INF, HUGE, -1.5 * HUGE, F32_MAX, 1.0, -1.0, 2.0**118]
    g1 = [448.0, NAN, -INF, 0.0, 0.0, 0.0, 0.0, 0.0]
    # g0: a = Inf -> s = 2^127 (held); +-Inf -> +-448 (0x7E/0xFE), 2^127 -> 1 (0x38), -1.5 (0xBC),
    #   (2-2^-23) -> 2 (0x40), 2^-127 -> 0 (0x00), -2^-127 -> 0x80, 2^118 / 2^127 = 2^-9 -> 0x01
    # g1: -Inf -> s = 2^127; 448 / 2^127 -> 0 (0x00), NaN 0x7F, -Inf 0xFE
    x = f32_tensor([g0 + g1])
    for ue8m0 in (False, True):
        q, s = quant(x, 8, ue8m0=ue8m0)
        assert s.tolist() == [[HUGE, HUGE]] and bits_of_f32(HUGE) == 254 << 23
        exp = [0x7E, 0xFE, 0x38, 0xBC, 0x40, 0x00, 0x80, 0x01, 0x00, 0x7F, 0xFE, 0, 0, 0, 0, 0]
        assert_bytes(q.view(U8), u8([exp]), f"q ue8m0={ue8m0}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_f8_inf_half_precision(dtype):
    x = torch.tensor([[INF, 65504.0, -1.0, -INF]], dtype=dtype)  # finite ones / 2^127 -> +-0
    q, s = quant(x, 4)
    assert s.item() == HUGE
    assert_bytes(q.view(U8), u8([[0x7E, 0x00, 0x80, 0xFE]]), "q")


def test_f8_inf_dequantize_overflows_to_inf():
    # +-448 * 2^127 = 1.75 * 2^135 > float32 max -> +-Inf; 1 * 2^127 stays finite
    q, s = quant(f32_tensor([[INF, -INF, HUGE, 0.0]]), 4)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        out = lowbit.dequantize_fp8_group(q, s, group_size=4, dtype=dtype).float()
        assert out.tolist() == [[INF, -INF, HUGE if dtype != torch.float16 else INF, 0.0]], dtype


# --------------------------------------------------------------------------------------------
# [F8-LAYOUT] / [F8-STORAGE]
# --------------------------------------------------------------------------------------------


def _random(shape, seed, dtype=torch.float32):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(shape) * 2.0 ** rng.integers(-20, 20, shape[:-1] + (1,))
    return torch.from_numpy(v.astype(F32)).to(dtype)


@pytest.mark.parametrize("shape,gs", [((5, 48), 8), ((2, 3, 5, 32), 8), ((3, 7, 256), 128), ((4, 24), 4),
                                      ((1, 16), 4), ((2, 6, 12), 12)])
def test_f8_layout_shapes_strides_and_values(shape, gs):
    x = _random(shape, sum(shape))
    lead, mn, g = shape[:-2], shape[-2], shape[-1] // gs
    rq, rs = ref_group(x, gs)
    for layout in LAYOUTS:
        q, s = quant(x, gs, scale_layout=layout)
        assert tuple(s.shape) == (*lead, mn, g), (layout, s.shape)
        exp = layout_strides(lead, mn, g, layout)
        assert s.stride() == exp, (layout, s.stride(), exp)
        assert_bytes(q.view(U8), torch.from_numpy(rq), f"{layout} q")
        assert_f32_equal(s, rs, f"{layout} scales")  # read through the strides


def test_f8_layout_literal_strides():
    # (2, 3, 5, 32) gs 8: mn 5, G 4, A 8 -> row (60, 20, 4, 1), column (60, 20, 1, 5), tma (96, 32, 1, 8)
    x = _random((2, 3, 5, 32), 9)
    got = {layout: quant(x, 8, scale_layout=layout)[1].stride() for layout in LAYOUTS}
    assert got == {"row_major": (60, 20, 4, 1), "column_major": (60, 20, 1, 5),
                   "column_major_tma": (96, 32, 1, 8)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_f8_input_non_contiguous_and_nd(dtype):
    base = _random((6, 256), 11, dtype)
    views = {
        "transposed": base.t().contiguous().t(),
        "sliced_k": torch.cat([base, base], 1)[:, ::2],
        "sliced_rows": base[::2],
        "expanded": base[:1].expand(5, 256),
        "batched_permute": base.reshape(2, 3, 256).permute(1, 0, 2),
    }
    for name, x in views.items():
        assert not x.is_contiguous(), name
        for layout in LAYOUTS:
            check_group(x, 32, layout=layout, what=f"{name} {layout}")


def test_f8_input_dtypes_agree():
    x = _random((4, 256), 12)
    for dtype in (torch.bfloat16, torch.float16):
        xd = x.to(dtype)
        check_group(xd, 64, what=str(dtype))
        q, s = quant(xd, 64)
        q2, s2 = quant(xd.float(), 64)  # exact widening: same bytes
        assert torch.equal(q.view(U8), q2.view(U8)) and torch.equal(f32_bits_of(s), f32_bits_of(s2))


def test_f8_input_empty_shapes():
    for shape, sshape in (((0, 256), (0, 2)), ((4, 0), (4, 0)), ((2, 0, 128), (2, 0, 1)), ((0, 3, 512), (0, 3, 4))):
        for layout in LAYOUTS:
            q, s = quant(torch.zeros(shape), 128, scale_layout=layout)
            assert tuple(s.shape) == sshape, (shape, layout, s.shape)
    for shape, sshape in (((0, 256), (4, 0)), ((4, 0), (0, 1))):  # (Kb4, Nb)
        q, s = lowbit.quantize_fp8_block(torch.zeros(shape))
        assert tuple(q.shape) == shape and tuple(s.shape) == sshape


@pytest.mark.parametrize("bad", [
    dict(x=lambda: torch.zeros(256)),  # ndim 1
    dict(x=lambda: torch.zeros(2, 200)),  # 128 does not divide K
    dict(x=lambda: torch.zeros(2, 256), gs=0),
    dict(x=lambda: torch.zeros(2, 256), gs=-128),
    dict(x=lambda: torch.zeros(2, 256), eps=-1e-10),
    dict(x=lambda: torch.zeros(2, 256), eps=INF),
    dict(x=lambda: torch.zeros(2, 256), eps=NAN),
    dict(x=lambda: torch.zeros(2, 256), layout="col_major"),
    dict(x=lambda: torch.zeros(2, 256), layout="column_major_TMA"),
    dict(x=lambda: torch.zeros(2, 256, dtype=torch.float64)),
    dict(x=lambda: torch.zeros(2, 256, dtype=torch.int32)),
])
def test_f8_input_rejects_malformed(bad):
    with pytest.raises(ValueError):
        lowbit.quantize_fp8_group(bad["x"](), bad.get("gs", 128), eps=bad.get("eps", 1e-10),
                                  scale_layout=bad.get("layout", "row_major"))


def test_f8_input_group_size_one_and_odd():
    # gs 1: each element its own group: s = fl32(|x|/448), x/s -> 448 (or above, clamped): 0x7E;
    # 1e-20 < eps: s = fl32(fl32(1e-10)/448), 1e-20/s = 4.5e-8 -> 0x00
    x = f32_tensor([[3.0, -0.001, 0.0, 448.0, 1e-20, -7.0]])
    check_group(x, 1, what="gs 1")
    q, _ = quant(x, 1)
    assert_bytes(q.view(U8), u8([[0x7E, 0xFE, 0x00, 0x7E, 0x00, 0xFE]]), "q")
    check_group(_random((5, 21), 13), 3, what="gs 3")
    check_group(_random((5, 21), 14), 7, ue8m0=True, layout="column_major_tma", what="gs 7")


def test_f8_storage_tma_owned_and_padding_rows_zero():
    for shape, gs in (((5, 48), 8), ((2, 3, 24), 4), ((3, 1, 256), 128), ((2, 2, 6, 16), 2)):
        junk = torch.full((1 << 16,), -1.0)  # dirty the allocator
        del junk
        x = _random(shape, 20 + len(shape))
        lead, mn, g = shape[:-2], shape[-2], shape[-1] // gs
        a = tma_rows(mn)
        nb = int(np.prod(lead)) if lead else 1
        q, s = quant(x, gs, scale_layout="column_major_tma")
        assert s.untyped_storage().nbytes() >= (s.storage_offset() + nb * g * a) * 4
        flat = s.as_strided((nb * g * a,), (1,), s.storage_offset())  # the G*A floats of every batch
        st = flat.reshape(nb, g, a)
        assert torch.all(f32_bits_of(st[:, :, mn:]) == 0), f"{shape}: storage rows mn..A-1 must be +0"
        _, rs = ref_group(x, gs)
        assert_f32_equal(st[:, :, :mn].transpose(1, 2).reshape(s.shape), rs, f"{shape} storage")


# --------------------------------------------------------------------------------------------
# [F8-OUT]
# --------------------------------------------------------------------------------------------


def _sbuf(lead, mn, g, layout, minimal=False):
    """A float32 buffer of the layout's strides over sentinel storage; `minimal` (TMA only): the
    mn + (G - 1)*A floats per batch vLLM allocates."""
    strides = layout_strides(lead, mn, g, layout)
    shape = (*lead, mn, g)
    n = 1 + sum((d - 1) * st for d, st in zip(shape, strides))
    if not minimal:
        n = max(n, (int(np.prod(lead)) if lead else 1) * g * (tma_rows(mn) if layout == "column_major_tma" else mn))
    base = torch.empty(n, dtype=torch.float32)
    base.view(torch.int32).fill_(SENTINEL)
    return base.as_strided(shape, strides)


X3 = [[448.0, -1.0, 0.5, -0.0] * 5, [672.0, 1.0, 0.0, -672.0] * 5, [0.0] * 20]  # mn 3, K 20


def _x3():
    # gs 4, G 5: row 0 groups s 1 -> [0x7E, 0xB8, 0x30, 0x80]; row 1 s 1.5 -> [0x7E, 0x33, 0, 0xFE];
    # row 2 s 0x2A7B5123 -> zeros
    return f32_tensor(X3)


Q3 = [[0x7E, 0xB8, 0x30, 0x80] * 5, [0x7E, 0x33, 0x00, 0xFE] * 5, [0x00] * 20]
S3 = [1.0, 1.5, f32_of_bits(0x2A7B5123)]


def test_f8_out_tma_minimal_storage_and_q_rows_zeroed():
    x = _x3()
    qbuf = poisoned_q((4, 20))  # R = A = 4 > mn
    sbuf = _sbuf((), 3, 5, "column_major_tma", minimal=True)
    assert sbuf.untyped_storage().nbytes() == (3 + 4 * 4) * 4  # mn + (G - 1)*A floats
    rq, rs = lowbit.quantize_fp8_group(x, 4, scale_layout="column_major_tma", out=(qbuf, sbuf))
    assert rq is qbuf and rs is sbuf
    assert_bytes(qbuf.view(U8), u8(Q3 + [[0x00] * 20]), "q_buf")
    st = f32_bits_of(storage_f32(sbuf)).tolist()
    # float (r, c) at c*A + r; storage row 3 (r = mn) of each column left as it was
    exp = []
    for c in range(5):
        exp += [bits_of_f32(S3[r]) for r in range(3)] + ([SENTINEL] if c < 4 else [])
    assert st == exp


@pytest.mark.parametrize("layout", LAYOUTS)
def test_f8_out_each_layout_batched_writes_exactly_the_logical_scales(layout):
    x = torch.stack([_x3(), -_x3()])  # (2, 3, 20)
    qbuf = poisoned_q((2, 3, 20))  # R = mn
    sbuf = _sbuf((2,), 3, 5, layout)
    before = f32_bits_of(storage_f32(sbuf)).clone()
    lowbit.quantize_fp8_group(x, 4, scale_layout=layout, out=(qbuf, sbuf))
    # -x flips every sign bit (0 -> -0 = 0x80, -0 -> 0 = 0x00)
    q1 = [[b ^ 0x80 for b in r] for r in Q3]
    assert_bytes(qbuf.view(U8), u8([Q3, q1]), "q_buf")
    assert_f32_equal(sbuf, np.array([[[v] * 5 for v in S3]] * 2, dtype=F32), "s_buf")
    # everything outside the logical elements untouched
    mask = torch.ones(before.shape, dtype=torch.bool)
    off = torch.tensor([sum(i * st for i, st in zip(idx, sbuf.stride()))
                        for idx in np.ndindex(*sbuf.shape)])
    mask[off] = False
    after = f32_bits_of(storage_f32(sbuf))
    assert torch.equal(after[mask], before[mask])


def test_f8_out_q_rows_zeroed_and_random_matches_allocating_call():
    x = _random((2, 6, 1024), 31)  # mn 6 -> A 8
    for layout in LAYOUTS:
        q, s = quant(x, scale_layout=layout)
        qbuf = poisoned_q((2, 7, 1024))
        sbuf = _sbuf((2,), 6, 8, layout, minimal=layout == "column_major_tma")
        lowbit.quantize_fp8_group(x, scale_layout=layout, out=(qbuf, sbuf))
        assert_bytes(qbuf.view(U8)[:, :6], q.view(U8), f"{layout} q_buf rows < mn")
        assert torch.all(qbuf.view(U8)[:, 6:] == 0)
        assert_f32_equal(sbuf, s.contiguous(), f"{layout} s_buf")


def test_f8_out_size_one_dimension_stride_not_compared():
    x = f32_tensor([[448.0, 1.0, -1.0, 0.0]])  # mn 1, G 1
    for layout in LAYOUTS:
        sbuf = torch.empty(8, dtype=torch.float32).as_strided((1, 1), (7, 3))
        qbuf = poisoned_q((1, 4))
        lowbit.quantize_fp8_group(x, 4, scale_layout=layout, out=(qbuf, sbuf))
        assert sbuf.item() == 1.0
        assert_bytes(qbuf.view(U8), u8([[0x7E, 0x38, 0xB8, 0x00]]), layout)


def _bad_buffers():
    good_q = lambda: poisoned_q((4, 20))
    good_s = lambda: _sbuf((), 3, 5, "column_major_tma", minimal=True)

    def strided(shape, strides, dtype=torch.float32):
        n = 1 + sum((d - 1) * st for d, st in zip(shape, strides))
        t = torch.empty(n, dtype=dtype)
        t.view(U8).fill_(0x5A)
        return t.as_strided(shape, strides)

    return {
        "q uint8": lambda: (torch.full((4, 20), 0xAB, dtype=U8), good_s()),
        "q e5m2": lambda: (torch.full((4, 20), 0xAB, dtype=U8).view(torch.float8_e5m2), good_s()),
        "q wrong K": lambda: (poisoned_q((4, 24)), good_s()),
        "q R > A": lambda: (poisoned_q((5, 20)), good_s()),
        "q R < mn": lambda: (poisoned_q((2, 20)), good_s()),
        "q non-contiguous": lambda: (poisoned_q((4, 40))[:, ::2], good_s()),
        "q extra batch dim": lambda: (poisoned_q((1, 4, 20)), good_s()),
        "s float64": lambda: (good_q(), strided((3, 5), (1, 4), torch.float64)),
        "s bfloat16": lambda: (good_q(), strided((3, 5), (1, 4), torch.bfloat16)),
        "s int32": lambda: (good_q(), strided((3, 5), (1, 4), torch.int32)),
        "s 4 columns": lambda: (good_q(), strided((3, 4), (1, 4))),
        "s 4 rows": lambda: (good_q(), strided((4, 5), (1, 4))),
        "s row-major": lambda: (good_q(), strided((3, 5), (5, 1))),
        "s column-major (stride mn)": lambda: (good_q(), strided((3, 5), (1, 3))),
        "s stride 8": lambda: (good_q(), strided((3, 5), (1, 8))),
        "s extra batch dim": lambda: (good_q(), strided((1, 3, 5), (20, 1, 4))),
    }


@pytest.mark.parametrize("case", list(_bad_buffers()))
def test_f8_out_mismatch_raises_and_writes_nothing(case):
    qbuf, sbuf = _bad_buffers()[case]()
    before_q, before_s = storage_u8(qbuf), storage_u8(sbuf)
    with pytest.raises(ValueError):
        lowbit.quantize_fp8_group(_x3(), 4, scale_layout="column_major_tma", out=(qbuf, sbuf))
    assert torch.equal(storage_u8(qbuf), before_q), "q_buf was written"
    assert torch.equal(storage_u8(sbuf), before_s), "s_buf was written"


def test_f8_out_wrong_layout_strides_raise():
    # a buffer right for one layout is refused under the others (mn 3, G 5: strides all differ)
    for have in LAYOUTS:
        for want in LAYOUTS:
            if have == want:
                continue
            qbuf, sbuf = poisoned_q((3, 20)), _sbuf((), 3, 5, have)
            before_q, before_s = storage_u8(qbuf), storage_u8(sbuf)
            with pytest.raises(ValueError):
                lowbit.quantize_fp8_group(_x3(), 4, scale_layout=want, out=(qbuf, sbuf))
            assert torch.equal(storage_u8(qbuf), before_q) and torch.equal(storage_u8(sbuf), before_s)


# --------------------------------------------------------------------------------------------
# [F8-BLOCK] / [F8-BLOCK-SCALES]
# --------------------------------------------------------------------------------------------


def _block_weight(n, k, seed, dtype=torch.float32):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, k)) * 2.0 ** rng.integers(-12, 12, (n, 1))
    return torch.from_numpy(v.astype(F32)).to(dtype)


def check_block(w, block=(128, 128), eps=1e-4, ue8m0=False, what=""):
    kw = {} if eps == 1e-4 else {"eps": eps}
    q, s = lowbit.quantize_fp8_block(w, block, ue8m0=ue8m0, **kw)
    n, k = w.shape
    nb, kb = -(-n // block[0]), -(-k // block[1])
    kb4 = -(-kb // 4) * 4
    assert q.dtype == E4M3 and tuple(q.shape) == (n, k) and q.is_contiguous(), what
    assert s.dtype == torch.float32 and tuple(s.shape) == (kb4, nb), (what, s.shape)
    assert s.stride() == (1, kb4) or nb == 1 and s.stride()[0] == 1, (what, s.stride())
    rq, rs = ref_block(w, block, eps, ue8m0)
    assert_bytes(q.view(U8), torch.from_numpy(rq), f"{what} q")
    assert_f32_equal(s.t()[:, :kb], rs, f"{what} weight_scale_inv")
    assert torch.all(f32_bits_of(s[kb:]) == 0), f"{what}: padding rows must be +0"
    return q, s


@pytest.mark.parametrize("n,k", [(300, 200), (129, 385), (256, 512), (128, 1024), (1, 1)])
def test_f8_block_partial_edges_against_oracle(n, k):
    w = _block_weight(n, k, n + k)
    w[n // 2, k // 3] = NAN  # ignored by its tile's amax, 0x7F
    check_block(w, what=f"({n}, {k})")


def test_f8_block_small_blocks_dtypes_and_ue8m0():
    w = _block_weight(7, 11, 3)
    w[0, 0] = 0.0
    w[6, 9:] = 0.0  # tile (3, 3) = rows 6, cols 9..10 all zero -> eps 1e-4
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for ue8m0 in (False, True):
            check_block(w.to(dtype), (2, 3), ue8m0=ue8m0, what=f"(2,3) {dtype} ue8m0={ue8m0}")
    check_block(w, (1, 1), what="(1,1)")
    check_block(w, (7, 11), eps=0.0, what="whole")
    check_block(w, (3, 128), eps=1.0, what="wide")


def test_f8_block_literal_tiles():
    # (3, 5) with block (2, 2): Nb 2, Kb 3, Kb4 4; tile (i, j) amax hand-picked
    # tile (0,0) [448, 1; -1, 0] -> s 1 ; (0,1) [672, 0; 1, 0] -> 1.5 ; (0,2) [0; 0] -> fl32(fl32(1e-4)/448)
    # tile (1,0) [-896, 2] -> 2 ; (1,1) [NaN, 4.5] -> fl32(4.5/448) ; (1,2) [Inf] -> 2^127
    w = f32_tensor([[448.0, 1.0, 672.0, 0.0, 0.0],
                    [-1.0, 0.0, 1.0, 0.0, 0.0],
                    [-896.0, 2.0, NAN, 4.5, INF]])
    q, s = lowbit.quantize_fp8_block(w, (2, 2))
    assert tuple(s.shape) == (4, 2) and s.stride() == (1, 4)
    eps_s = float(fl32(fl32(Fraction(1e-4)) / 448))
    assert eps_s == float(F32(F32(1e-4) / F32(448)))
    s45 = float(fl32(Fraction(9, 2) / 448))
    assert_f32_equal(s.t().contiguous(), np.array([[1.0, 1.5, eps_s, 0.0], [2.0, s45, HUGE, 0.0]], dtype=F32),
                     "scales (Nb, Kb4)")
    # q: 448 0x7E, 1 0x38, -1 0xB8, 0; 672/1.5 = 448 0x7E, 1/1.5 -> 0x33; -896/2 = -448 0xFE, 2/2 = 1 0x38,
    # NaN 0x7F, 4.5/s = 448 (or just above, clamped) 0x7E, Inf 0x7E
    exp = [[0x7E, 0x38, 0x7E, 0x00, 0x00], [0xB8, 0x00, 0x33, 0x00, 0x00], [0xFE, 0x38, 0x7F, 0x7E, 0x7E]]
    assert_bytes(q.view(U8), u8(exp), "q")


def test_f8_block_default_eps_1e_4_and_non_contiguous_input():
    w = torch.zeros(130, 260)
    w[129, 259] = 1e-5  # below eps: tile (1, 2) scale from eps
    w[0, 0] = 1.0
    q, s = lowbit.quantize_fp8_block(w)
    eps_s = float(F32(F32(1e-4) / F32(448)))
    assert_f32_equal(s.t()[:, :3], np.array([[float(F32(1.0) / F32(448)), eps_s, eps_s], [eps_s] * 3], dtype=F32))
    # 1e-5 / fl32(1e-4/448) = 44.8 -> 44 (1.375*2^5: exponent 12, mantissa 3 = 0x63) vs 48: nearer 44
    assert q.view(U8)[129, 259].item() == e4m3_bytes_np(float(F32(F32(1e-5) / F32(eps_s))))[()] == 0x63
    assert q.view(U8)[0, 0].item() == 0x7E
    wt = _block_weight(200, 300, 8).t()  # (300, 200), strides (1, 300)
    assert not wt.is_contiguous()
    q1, s1 = check_block(wt, what="transposed")
    q2, s2 = lowbit.quantize_fp8_block(wt.contiguous())
    assert torch.equal(q1.view(U8), q2.view(U8)) and torch.equal(f32_bits_of(s1), f32_bits_of(s2))


def test_f8_block_scales_layout_literal():
    # (300, 200): Nb 3, Kb 2, Kb4 4 -> (4, 3) strides (1, 4); (129, 385): Nb 2, Kb 4 -> (4, 2) (1, 4),
    # weight_scale_inv contiguous; (128, 1152): Nb 1, Kb 9, Kb4 12 -> (12, 1)
    for (n, k), shape in (((300, 200), (4, 3)), ((129, 385), (4, 2)), ((128, 1152), (12, 1)), ((5, 640), (8, 1))):
        _, s = lowbit.quantize_fp8_block(_block_weight(n, k, 1))
        assert tuple(s.shape) == shape and s.stride()[0] == 1, (n, k, s.shape, s.stride())
        if shape[1] > 1:
            assert s.stride()[1] == shape[0]
        kb = -(-k // 128)
        if kb % 4 == 0:
            assert s.t()[:, :kb].is_contiguous()
        assert torch.all(f32_bits_of(s[kb:]) == 0)


def test_f8_block_scales_padding_rows_zero_on_dirty_allocator():
    for _ in range(3):
        junk = torch.full((1 << 16,), -1.0)
        del junk
        check_block(_block_weight(300, 200, 5), what="dirty")
        check_block(_block_weight(33, 17, 6), (4, 4), what="dirty small")  # Kb 5 -> Kb4 8


@pytest.mark.parametrize("bad", [
    dict(w=lambda: torch.zeros(2, 3, 4)),
    dict(w=lambda: torch.zeros(256)),
    dict(w=lambda: torch.zeros(4, 4, dtype=torch.float64)),
    dict(w=lambda: torch.zeros(4, 4), block=(0, 128)),
    dict(w=lambda: torch.zeros(4, 4), block=(128,)),
    dict(w=lambda: torch.zeros(4, 4), eps=-1.0),
    dict(w=lambda: torch.zeros(4, 4), eps=NAN),
])
def test_f8_block_rejects_malformed(bad):
    with pytest.raises(ValueError):
        lowbit.quantize_fp8_block(bad["w"](), bad.get("block", (128, 128)), eps=bad.get("eps", 1e-4))


# --------------------------------------------------------------------------------------------
# [F8-DEQUANT]
# --------------------------------------------------------------------------------------------


def bf16_rne_bits(f):
    """bfloat16 bits of float32 values, nearest-even on the bit pattern (NaN -> 0x7FC0)."""
    f = np.asarray(f, dtype=F32)
    b = f.view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), 0x7FC0, r).astype(np.uint16)


def dequant_oracle(codes, s, dtype):
    """Bits of fl32(float(q) * s) rounded to dtype; codes and s broadcast (s float32)."""
    with np.errstate(all="ignore"):
        v = (e4m3_signed_values(codes) * np.asarray(s, dtype=F32).astype(np.float64)).astype(F32)  # exact, once
        if dtype == torch.float32:
            bits = np.where(np.isnan(v), np.uint32(0x7FC00000), v.view(np.uint32)).astype(np.uint32)
            return torch.from_numpy(bits.view(np.int32).copy())
        if dtype == torch.bfloat16:
            return torch.from_numpy(bf16_rne_bits(v).view(np.int16).copy())
        h = v.astype(np.float16).view(np.uint16)
        return torch.from_numpy(np.where(np.isnan(v), np.uint16(0x7E00), h).astype(np.uint16).view(np.int16).copy())


def int_bits(t):
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int16)


DEQ_SCALES = [1.0, 1.5, float(F32(0.1)), f32_of_bits(0x2A7B5123), HUGE, TINY, 2.0**-130, float(F32(1 / 448)),
              float(F32(3e38))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_f8_dequant_all_bytes_times_scales(dtype):
    # rows: one scale each; columns: the 256 bytes in groups of 32 (all groups of a row share s)
    codes = np.tile(np.arange(256), (len(DEQ_SCALES), 1))
    q = torch.from_numpy(codes.astype(np.uint8)).view(E4M3)
    s = torch.from_numpy(np.repeat(np.array(DEQ_SCALES, dtype=F32)[:, None], 8, 1))
    out = lowbit.dequantize_fp8_group(q, s, group_size=32, dtype=dtype)
    assert out.dtype == dtype and tuple(out.shape) == (len(DEQ_SCALES), 256)
    exp = dequant_oracle(codes, np.array(DEQ_SCALES, dtype=F32)[:, None], dtype)
    assert torch.equal(int_bits(out), exp), (int_bits(out) != exp).nonzero()[:8]
    assert torch.equal(int_bits(out)[:, 0x7F], torch.full((len(DEQ_SCALES),), NAN_BITS[dtype][1],
                                                          dtype=NAN_BITS[dtype][0]))


def test_f8_dequant_hand_values():
    # 0x33 * 1.5 = 0.6875 * 1.5 = 1.03125; 0x7E * 2^127 = Inf; 0x01 * 2^-126 = 2^-135 (f32 subnormal
    # 2^14 * 2^-149: bits 0x4000; bf16 -> 0 since 2^-135 < 2^-134, half its smallest subnormal); 0xB8 * 0.1f = -0.1f; 0x80 * 3 = -0; 0xFF -> NaN
    q = u8([[0x33, 0x7E, 0x01, 0xB8, 0x80, 0xFF]]).view(E4M3)
    s = f32_tensor([[1.5, HUGE, TINY, float(F32(0.1)), 3.0, 1.0]])
    out = lowbit.dequantize_fp8_group(q, s, group_size=1, dtype=torch.float32)
    exp = [bits_of_f32(1.03125), 0x7F800000, 0x00004000, bits_of_f32(-0.1), 0x80000000, 0x7FC00000]
    assert (f32_bits_of(out).numpy().astype(np.int64) & 0xFFFFFFFF).tolist() == [exp]
    outb = lowbit.dequantize_fp8_group(q, s, group_size=1)  # default bfloat16
    assert outb.dtype == torch.bfloat16
    # 1.03125 = 0x3F84 exactly; -0.1f = 0xBDCCCCCD -> 0xBDCD (0xCCCD > 0x8000 rounds up)
    assert (outb.view(torch.int16).numpy().astype(np.uint16)).tolist() == [[0x3F84, 0x7F80, 0x0000, 0xBDCD,
                                                                              0x8000, 0x7FC0]]


def test_f8_dequant_reads_every_layout_through_its_strides():
    x = _random((2, 5, 64), 40)
    x[0, 1, 3] = NAN
    x[1, 4, 60] = -INF
    rq, rs = ref_group(x, 16)
    for layout in LAYOUTS:
        q, s = quant(x, 16, scale_layout=layout)
        for dtype in (torch.float32, torch.bfloat16):
            out = lowbit.dequantize_fp8_group(q, s, group_size=16, dtype=dtype)
            exp = dequant_oracle(rq, np.repeat(rs, 16, -1), dtype)
            assert torch.equal(int_bits(out), exp), (layout, dtype)
    # a column-major scale tensor built by hand, and a tma-strided one from minimal storage
    q, s = quant(x, 16)
    for layout in ("column_major", "column_major_tma"):
        sb = _sbuf((2,), 5, 4, layout, minimal=True)
        sb.copy_(s)
        out = lowbit.dequantize_fp8_group(q, sb, group_size=16, dtype=torch.float32)
        assert torch.equal(int_bits(out), dequant_oracle(rq, np.repeat(rs, 16, -1), torch.float32)), layout


def test_f8_dequant_block_padded_and_unpadded_scales():
    w = _block_weight(300, 200, 41)
    w[7, 150] = NAN
    w[299, 0] = INF
    q, s = lowbit.quantize_fp8_block(w)
    rq, rs = ref_block(w, (128, 128))
    factor = np.repeat(np.repeat(rs, 128, 0)[:300], 128, 1)[:, :200]
    kb = 2
    wsi = s.t()[:, :kb]  # DeepSeek-V3 weight_scale_inv (Nb, Kb)
    for name, sc in (("padded (Kb4, Nb)", s), ("unpadded view (Kb, Nb)", wsi.t()),
                     ("unpadded contiguous", wsi.t().contiguous()), ("row-major padded", s.contiguous())):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            out = lowbit.dequantize_fp8_block(q, sc, dtype=dtype)
            assert out.dtype == dtype and tuple(out.shape) == (300, 200)
            assert torch.equal(int_bits(out), dequant_oracle(rq, factor, dtype)), (name, dtype)
    # small blocks
    w = _block_weight(7, 11, 42)
    q, s = lowbit.quantize_fp8_block(w, (2, 3))
    rq, rs = ref_block(w, (2, 3))
    factor = np.repeat(np.repeat(rs, 2, 0)[:7], 3, 1)[:, :11]
    out = lowbit.dequantize_fp8_block(q, s, block=(2, 3), dtype=torch.float32)
    assert torch.equal(int_bits(out), dequant_oracle(rq, factor, torch.float32))
    out = lowbit.dequantize_fp8_block(q, s.t()[:, :4].t(), block=(2, 3), dtype=torch.float32)
    assert torch.equal(int_bits(out), dequant_oracle(rq, factor, torch.float32))


@pytest.mark.parametrize("dtype", list(NAN_BITS))
def test_f8_dequant_nan_bytes_canonical_bits(dtype):
    q = u8([[0x7F, 0xFF, 0x38, 0xB8]]).view(E4M3)
    out = lowbit.dequantize_fp8_group(q, f32_tensor([[2.0]]), group_size=4, dtype=dtype)
    int_dtype, bits = NAN_BITS[dtype]
    assert torch.equal(out.view(int_dtype)[0, :2], torch.tensor([bits, bits], dtype=int_dtype))
    assert out[0, 2:].tolist() == [2.0, -2.0]
    qb = u8([[0x7F, 0x38], [0xFF, 0x00]]).view(E4M3)
    outb = lowbit.dequantize_fp8_block(qb, f32_tensor([[3.0]] + [[0.0]] * 3), block=(2, 2), dtype=dtype)
    assert torch.equal(outb.view(int_dtype)[:, 0], torch.tensor([bits, bits], dtype=int_dtype))
    assert outb[:, 1].tolist() == [3.0, 0.0]


def test_f8_dequant_round_trip_of_quantize():
    x = _random((3, 4, 256), 43, torch.bfloat16)
    for ue8m0 in (False, True):
        q, s = quant(x, 128, ue8m0=ue8m0, scale_layout="column_major_tma")
        out = lowbit.dequantize_fp8_group(q, s, group_size=128)
        rq, rs = ref_group(x, 128, ue8m0=ue8m0)
        assert torch.equal(int_bits(out), dequant_oracle(rq, np.repeat(rs, 128, -1), torch.bfloat16))


# --------------------------------------------------------------------------------------------
# [F8-PEERS]: where peers' bits differ, shown with their formulas written out here
# --------------------------------------------------------------------------------------------


def test_f8_peers_vllm_scale_is_amax_times_the_reciprocal_of_448_and_moves_elements():
    """vLLM's Triton kernel's `absmax / 448` (and torch's `amax / 448.0` on a CUDA tensor) is amax times
    fl32(1/448), measured on an H100; lowbit divides. Over the 384 bfloat16 amax values in [1, 8) the
    two differ for 213, by one ulp, and an element next to the scale's E4M3 rounding boundary moves."""
    amax = (np.arange(0x3F80, 0x4100, dtype=np.uint32) << 16).view(np.float32)
    divided, multiplied = amax / np.float32(448), amax * (np.float32(1) / np.float32(448))
    assert int((divided != multiplied).sum()) == 213
    assert all(Fraction(float(d)) == fl32(Fraction(float(a)) / 448) for a, d in zip(amax, divided))
    # amax 1.015625: lowbit s = 0x3B149249, vLLM's 0x3B14924A; x = 2^-16 * 1.015625 lies so near the E4M3
    # midpoint 3.5 * 2^-9 that x / s rounds up to code 4 and x / s' down to code 3
    a, x = 1.015625, float(np.float32(1.5497208e-05))
    s, s_vllm = np.float32(a) / np.float32(448), np.float32(a) * (np.float32(1) / np.float32(448))
    assert (bits_of_f32(s), bits_of_f32(s_vllm)) == (0x3B149249, 0x3B14924A)
    assert e4m3_bytes_np(np.float32(x) / s_vllm)[()] == 0x03
    group = torch.tensor([a, x] + [0.0] * 126, dtype=torch.bfloat16).reshape(1, 128)
    q, scales = lowbit.quantize_fp8_group(group)
    assert bits_of_f32(scales.item()) == 0x3B149249 and q.view(torch.uint8)[0, 1].item() == 0x04


def test_f8_peers_vllm_ue8m0_has_no_1e_10_floor():
    """vLLM's Triton use_ue8m0 scale is exp2(ceil(log2(max(amax, eps) / 448))): an all-zero group gets
    2^-42 there, and 2^-33 here ([F8-UE8M0] keeps the packed op's fl32(1e-10) floor)."""
    y = np.float32(1e-10) / np.float32(448)
    assert np.exp2(np.ceil(np.log2(np.float64(y)))) == 2.0**-42
    _, scales = lowbit.quantize_fp8_group(torch.zeros(1, 128), ue8m0=True)
    assert scales.item() == 2.0**-33


def test_f8_peers_vllm_cuda_turns_nan_into_minus_448():
    """vLLM's CUDA kernel clamps with fmaxf/fminf, which return the non-NaN operand: a NaN element
    becomes -448 (0xFE) there, 0x7F here [F8-NAN]."""
    v = np.fmin(np.fmax(np.float32(np.nan), np.float32(-448)), np.float32(448))
    assert e4m3_bytes_np(v)[()] == 0xFE
    x = torch.zeros(1, 128)
    x[0, 0] = float("nan")
    assert lowbit.quantize_fp8_group(x)[0].view(torch.uint8)[0, 0].item() == 0x7F


def test_f8_peers_deepgemm_block_cast_multiplies_by_the_reciprocal():
    """DeepGEMM's and vLLM's per_block_cast_to_fp8 compute x * (1 / sf), lowbit x / sf: some elements
    land on the other side of an E4M3 rounding boundary."""
    sf = np.float32(1.03125) / np.float32(448)  # a block whose amax is 1.03125 (bf16 0x3F84)
    x = np.float32(1.5735626e-05)  # bf16 0x3784: x / sf lies just above the E4M3 midpoint 3.5 * 2^-9
    assert e4m3_bytes_np(x * (np.float32(1) / sf))[()] == 0x03 and e4m3_bytes_np(x / sf)[()] == 0x04
    w = torch.zeros(128, 128, dtype=torch.bfloat16)
    w[0, 0], w[5, 7] = 1.03125, float(x)
    assert lowbit.quantize_fp8_block(w)[0].view(torch.uint8)[5, 7].item() == 0x04
