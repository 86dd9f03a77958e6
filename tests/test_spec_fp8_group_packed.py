"""Golden-byte tests for the FP8 per-token-group packed clauses of docs/SPEC.md ([FP8-*]).

Every expectation is either a literal byte / word derived by hand (arithmetic in the comment) or
comes from the independent formulation in this file: the 256 E4M3FN values enumerated from their
bit fields, "nearest, ties to the even code" decided against exact midpoints, numpy float32
division for fl32(a / 448) (checked here against exact Fraction rounding), and frexp-based
power-of-two ceilings. Nothing here calls into lowbit except the public functions under test.
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
    bf16_values,
    ceil_log2_np,
    dn32,
    e4m3_bytes_np,
    e4m3_value,
    exact64,
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
SENTINEL = 0x5A5A5A5A

# --------------------------------------------------------------------------------------------
# Independent helpers
# --------------------------------------------------------------------------------------------


def fp8_scale_bytes(groups, eps=1e-10):
    """[FP8-SCALE] per group of the float64 array groups (..., G, gs)."""
    with np.errstate(all="ignore"):
        mag = np.where(np.isnan(groups), -np.inf, np.abs(groups))
        amax = np.maximum(mag.max(-1), 0.0)  # no non-NaN element -> 0
        a = np.maximum(np.float32(eps), amax.astype(np.float32))  # amax is a float32 value
        y = (a.astype(np.float32) / np.float32(448.0)).astype(np.float32)  # IEEE float32 divide
        y = np.maximum(y, np.float32(1e-10))
        inf = np.isinf(y)
        byte = ceil_log2_np(np.where(inf, 1.0, y.astype(np.float64))) + 127
        byte = np.minimum(np.where(inf, 255, byte), 254)
    return byte.astype(np.uint8)


def ref_fp8(x, gs, eps=1e-10):
    """Independent quantizer: x float64 (..., mn, K) -> (q bytes, scale bytes (..., mn, G))."""
    x = np.asarray(x, dtype=np.float64)
    k = x.shape[-1]
    g = x.reshape(*x.shape[:-1], k // gs, gs)
    sb = fp8_scale_bytes(g, eps)
    with np.errstate(all="ignore"):
        scaled = np.ldexp(g, -(sb.astype(np.int64) - 127)[..., None])  # exact in float64
    return e4m3_bytes_np(scaled).reshape(x.shape), sb


def s32(u):
    return u - (1 << 32) if u >= (1 << 31) else u


def word(b0, b1=0, b2=0, b3=0):
    """Little-endian int32 word: byte j holds the scale byte of group 4c + j."""
    return s32(b0 | (b1 << 8) | (b2 << 16) | (b3 << 24))


def words_from_bytes(sb):
    sb = np.asarray(sb, dtype=np.int64)
    g = sb.shape[-1]
    gw = -(-g // 4)
    pad = np.zeros(sb.shape[:-1] + (gw * 4,), dtype=np.int64)
    pad[..., :g] = sb
    p = pad.reshape(sb.shape[:-1] + (gw, 4))
    w = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16) | (p[..., 3] << 24)
    return np.where(w >= 2**31, w - 2**32, w).astype(np.int32)


def bytes_from_words(s, g):
    """Scale bytes (..., mn, G) read from a packed int32 tensor through its strides."""
    w = s.numpy().astype(np.int64) & 0xFFFFFFFF
    out = np.zeros(w.shape[:-1] + (w.shape[-1] * 4,), dtype=np.uint8)
    for j in range(4):
        out[..., j::4] = (w >> (8 * j)) & 0xFF
    return out[..., :g]


def i32(vals):
    return torch.tensor(vals, dtype=torch.int32)


def _flat(t):
    out = torch.empty(t.numel(), dtype=t.dtype)
    out.copy_(t.reshape(-1))
    return out


def assert_bytes(got, exp, what=""):
    assert got.shape == exp.shape, f"{what}: shape {tuple(got.shape)} != {tuple(exp.shape)}"
    assert got.dtype == exp.dtype, f"{what}: dtype {got.dtype} != {exp.dtype}"
    got = _flat(got).view(U8)  # flat dense copy: byte view regardless of strides
    exp = _flat(exp).view(U8)
    if not torch.equal(got, exp):
        g = got.reshape(-1)
        e = exp.reshape(-1)
        bad = (g != e).nonzero().reshape(-1)[:16].tolist()
        detail = ", ".join(f"[{i}] got {g[i].item():#04x} expected {e[i].item():#04x}" for i in bad)
        raise AssertionError(f"{what}: {(g != e).sum().item()} bytes differ: {detail}")


def quant(x, gs=None, eps=None, out=None):
    kw = {}
    if gs is not None:
        kw["group_size"] = gs
    if eps is not None:
        kw["eps"] = eps
    if out is not None:
        kw["out"] = out
    q, s = lowbit.quantize_fp8_group_packed(x, **kw)
    assert q.dtype == E4M3, q.dtype
    assert s.dtype == torch.int32, s.dtype
    return q, s


def check_layout(s, lead, mn, g):
    """[FP8-PACK] logical shape and strides, [FP8-STORAGE] ownership; returns the storage words."""
    a = tma_rows(mn)
    gw = -(-g // 4)
    assert tuple(s.shape) == tuple(lead) + (mn, gw), s.shape
    if mn == 0 or gw == 0:
        return None
    assert s.stride()[-2] == 1 or mn == 1, s.stride()
    assert s.stride()[-1] == a or gw == 1, s.stride()
    per_batch = gw * a
    nb = int(np.prod(lead)) if lead else 1
    for i in range(len(lead)):
        if lead[i] > 1:
            assert s.stride()[i] == per_batch * int(np.prod(lead[i + 1:])), s.stride()
    flat = s.as_strided((nb * per_batch,), (1,), s.storage_offset())  # raises if not owned
    assert s.untyped_storage().nbytes() >= (s.storage_offset() + nb * per_batch) * 4
    return flat


def check_against_ref(x, gs=128, eps=None, what=""):
    q, s = quant(x, gs, eps)
    rq, rsb = ref_fp8(exact64(x), gs, 1e-10 if eps is None else eps)
    lead, (mn, k) = tuple(x.shape[:-2]), tuple(x.shape[-2:])
    flat = check_layout(s, lead, mn, k // gs)
    assert_bytes(q.view(U8), torch.from_numpy(rq), f"{what} q")
    assert_bytes(s.contiguous(), torch.from_numpy(words_from_bytes(rsb)), f"{what} words")
    if flat is not None:
        a, gw = tma_rows(mn), s.shape[-1]
        st = flat.reshape(-1, gw, a)
        assert torch.all(st[:, :, mn:] == 0), "storage rows mn..A-1 must be 0"
    return q, s


def random_groups(seed, rows, k, gs, dtype=torch.float32):
    """Groups holding an anchor 448*2^j, E4M3 grid points / midpoints times 2^j, and noise."""
    rng = np.random.default_rng(seed)
    pts = np.concatenate([E4M3_POS[::3], (E4M3_POS[:-1:5] + E4M3_POS[1::5]) / 2])
    ng = k // gs
    lo, hi = (-14, 6) if dtype == torch.float16 else (-30, 30)  # keep fp16 finite
    j = rng.integers(lo, hi, size=(rows, ng, 1))
    base = rng.choice(pts, size=(rows, ng, gs)) * rng.choice([-1.0, 1.0], size=(rows, ng, gs))
    base = np.where(rng.random(base.shape) < 0.3, rng.standard_normal(base.shape) * 100, base)
    pos = rng.integers(0, gs, size=(rows, ng))
    ii, jj = np.meshgrid(np.arange(rows), np.arange(ng), indexing="ij")
    base[ii, jj, pos] = 448.0 * rng.choice([-1.0, 1.0], size=(rows, ng))
    x = np.ldexp(base, j).reshape(rows, k)
    return torch.from_numpy(x.astype(np.float32)).to(dtype)


# --------------------------------------------------------------------------------------------
# Self-checks of the oracle
# --------------------------------------------------------------------------------------------


def test_fp8_scale_oracle_division_is_exactly_rounded():
    rng = np.random.default_rng(0)
    a = np.concatenate([
        rng.standard_normal(300).astype(np.float32) * np.float32(1000),
        np.array([448, 449, up32(448), 672, 1, 1e-8, F32_MAX, 2.0**-140], dtype=np.float32),
    ])
    a = np.abs(a)
    y = a / np.float32(448)
    for ai, yi in zip(a.tolist(), y.tolist()):
        assert Fraction(yi) == fl32(Fraction(ai) / 448), ai
    assert Fraction(float(np.float32(1e-10))) == fl32(Fraction(1e-10))


def test_fp8_element_oracle_table():
    # spot values of the enumeration: 0x38 = 1.0, 0x7E = 448, 0x01 = 2^-9, 0x08 = 2^-6
    assert E4M3_POS[0x38] == 1.0 and E4M3_POS[0x7E] == 448.0
    assert E4M3_POS[0x01] == 2.0**-9 and E4M3_POS[0x08] == 2.0**-6
    # every midpoint goes to the even code, everything else to the nearest
    mids = (E4M3_POS[:-1] + E4M3_POS[1:]) / 2
    got = e4m3_bytes_np(mids)
    lo = np.arange(126)
    assert np.array_equal(got, np.where(lo % 2 == 0, lo, lo + 1))
    assert np.array_equal(e4m3_bytes_np(E4M3_POS), np.arange(127))


# --------------------------------------------------------------------------------------------
# [FP8-GOLDEN]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fp8_golden_all_zero_group_0x5E(dtype):
    # a = fl32(1e-10) = 1.718*2^-34; y = a/448 -> max(y, fl32(1e-10)) = fl32(1e-10):
    # exponent field 127-34 = 93, mantissa != 0 -> 94 = 0x5E
    x = torch.zeros(2, 640, dtype=dtype)  # G = 5 -> 2 words
    q, s = quant(x)
    check_layout(s, (), 2, 5)
    assert_bytes(q.view(U8), torch.zeros(2, 640, dtype=U8), "q")
    w0, w1 = word(0x5E, 0x5E, 0x5E, 0x5E), word(0x5E)
    assert_bytes(s.contiguous(), i32([[w0, w1], [w0, w1]]), "words")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fp8_golden_amax_672(dtype):
    # 672/448 = 1.5 -> exponent 127, mantissa != 0 -> byte 0x80 (scale 2)
    # 672/2 = 336: tie between 320 (0x7A, mantissa 2) and 352 (0x7B) -> even -> 0x7A
    x = torch.tensor([[672.0, -672.0, 1.0, 0.0]], dtype=dtype)
    q, s = quant(x, gs=4)
    assert_bytes(s.contiguous(), i32([[word(0x80)]]), "words")
    assert_bytes(q.view(U8), u8([[0x7A, 0xFA, 0x30, 0x00]]), "q")  # 1/2 = 0.5 -> 0x30


# --------------------------------------------------------------------------------------------
# [FP8-SCALE]
# --------------------------------------------------------------------------------------------

# (amax, scale byte, q byte of the amax element) -- one group of 4 per row
SCALE_TABLE = [
    (448.0, 0x7F, 0x7E),  # y = 1 -> 127; 448 -> 0x7E
    (449.0, 0x80, 0x76),  # y = 1.0022 -> 128; 449/2 = 224.5 -> 224 = 0x76
    (up32(448.0), 0x80, 0x76),  # (448+2^-15)/448 = 1+0.57*2^-23 -> fl32 1+2^-23 -> 128
    (224.0, 0x7E, 0x7E),  # y = 0.5 -> 126; 224*2 = 448
    (-448.0, 0x7F, 0xFE),
    (1.0, 0x77, 0x78),  # fl32(1/448) = 1.14*2^-9 -> 118 + 1 = 119; 1*2^8 = 256 = 0x78
    (896.0, 0x80, 0x7E),  # y = 2 -> 128
    (897.0, 0x81, 0x76),  # y = 2.002 -> 129; 897/4 = 224.25 -> 0x76
    (448.0 * 2.0**-20, 0x6B, 0x7E),  # y = 2^-20 -> 107
    (448.0 * 2.0**-32, 0x5F, 0x7E),  # y = 2^-32 -> 95
    (448.0 * 2.0**-33, 0x5E, 0x7E),  # y = 2^-33 = 1.16e-10 > 1e-10 -> 94
    (448.0 * 2.0**-34, 0x5E, 0x76),  # y = 2^-34 < 1e-10 -> fl32(1e-10) -> 94; 448*2^-34*2^33 = 224
    (1e-8, 0x5E, 0x6B),  # y = 2.2e-11 -> clamp -> 94; fl32(1e-8)*2^33 = 85.9 -> 88 = 0x6B
    (0.0, 0x5E, 0x00),
    (2.0**-140, 0x5E, 0x00),  # subnormal amax -> clamp
    (448.0 * 2.0**119, 0xF6, 0x7E),  # y = 2^119 -> 246
    (F32_MAX, 0xF7, 0x78),  # y = 1.14*2^119 -> 247; fmax*2^-120 = 256 - 2^-16 -> 256 = 0x78
]


def test_fp8_scale_table():
    x = f32_tensor([[a, 0.0, 0.0, 0.0] for a, _, _ in SCALE_TABLE])
    q, s = quant(x, gs=4)
    n = len(SCALE_TABLE)
    check_layout(s, (), n, 1)
    assert_bytes(s.contiguous(), i32([[word(b)] for _, b, _ in SCALE_TABLE]), "words")
    exp_q = [[qb, 0, 0, 0] for _, _, qb in SCALE_TABLE]
    assert_bytes(q.view(U8), u8(exp_q), "q")


def test_fp8_scale_eps_zero_all_zero_group():
    # a = 0 -> y = 0 -> max(0, fl32(1e-10)) -> 0x5E
    q, s = quant(torch.zeros(1, 8), gs=8, eps=0.0)
    assert_bytes(s.contiguous(), i32([[word(0x5E)]]), "words")


def test_fp8_scale_eps_raises_floor_of_small_groups():
    # eps = 1: group 0 amax 2^-8 < 1 -> a = 1 -> byte 0x77 (scale 2^-8)
    #   q: 2^-8*2^8 = 1 -> 0x38; -2^-9 -> -0.5 -> 0xB0; 0; 2^-20*2^8 = 2^-12 -> 0x00
    # group 1 amax 2 > eps -> y = 2/448 = 1.14*2^-8 -> 120 = 0x78 (scale 2^-7); 2*2^7 = 256 -> 0x78
    x = f32_tensor([[2.0**-8, -(2.0**-9), 0.0, 2.0**-20, 2.0, 0.0, 0.0, 0.0]])
    q, s = quant(x, gs=4, eps=1.0)
    assert_bytes(s.contiguous(), i32([[word(0x77, 0x78)]]), "words")
    assert_bytes(q.view(U8), u8([[0x38, 0xB0, 0x00, 0x00, 0x78, 0, 0, 0]]), "q")


def test_fp8_scale_eps_is_rounded_to_float32_first():
    # fl32(448.0000001) = 448 (half-ulp is 1.5e-5) -> y = 1 -> 0x7F; unrounded: y > 1 -> 0x80
    q, s = quant(torch.zeros(1, 4), gs=4, eps=448.0000001)
    assert_bytes(s.contiguous(), i32([[word(0x7F)]]), "words")


def test_fp8_scale_default_eps_explicit_matches():
    x = f32_tensor([[1e-12, 0, 0, 0]])
    _, s1 = quant(x, gs=4)
    _, s2 = quant(x, gs=4, eps=1e-10)
    assert_bytes(s1.contiguous(), i32([[word(0x5E)]]), "default")
    assert_bytes(s2.contiguous(), i32([[word(0x5E)]]), "explicit")


# --------------------------------------------------------------------------------------------
# [FP8-ELEMENT]
# --------------------------------------------------------------------------------------------

# (value, E4M3 byte) in a group of 32 anchored by 448 -> scale byte 0x7F (scale 1)
ELEMENT_TABLE = [
    (448.0, 0x7E),
    (1.0, 0x38),
    (-1.0, 0xB8),
    (0.5, 0x30),
    (2.0**-9, 0x01),  # smallest subnormal
    (2.0**-10, 0x00),  # tie 0 / 2^-9 -> even 0
    (up32(2.0**-10), 0x01),
    (1.5 * 2.0**-9, 0x02),  # tie 1/2 -> 2
    (2.5 * 2.0**-9, 0x02),  # tie 2/3 -> 2
    (7 * 2.0**-9, 0x07),  # largest subnormal
    (7.5 * 2.0**-9, 0x08),  # tie 0x07/0x08 -> 0x08 (2^-6)
    (6.5 * 2.0**-9, 0x06),  # tie 6/7 -> 6
    (2.0**-6, 0x08),
    (1.0625, 0x38),  # tie 1.0/1.125 -> 0x38
    (up32(1.0625), 0x39),
    (1.1875, 0x3A),  # tie 1.125/1.25 -> 0x3A
    (dn32(1.1875), 0x39),
    (240.0, 0x77),  # 1.875*2^7
    (256.0, 0x78),
    (416.0, 0x7D),
    (432.0, 0x7E),  # tie 416/448 -> mantissa 6 (even)
    (400.0, 0x7C),  # tie 384/416 -> mantissa 4
    (dn32(432.0), 0x7D),
    (-432.0, 0xFE),
    (-0.0, 0x80),
    (-(2.0**-11), 0x80),  # rounds to zero, keeps sign
    (0.0, 0x00),
    (-(2.0**-10), 0x80),  # tie -> 0, sign kept
    (2.0**-149, 0x00),
    (-7.5 * 2.0**-9, 0x88),
    (3.0, 0x44),  # 1.5*2^1 -> E 8, M 4
    (0.1, 0x1D),  # fl32(0.1)/2^-7 = 12.8 -> 13*2^-7 = 1.625*2^-4 -> E 3, M 5
]


def test_fp8_element_table_scale_one():
    x = f32_tensor([[v for v, _ in ELEMENT_TABLE]])
    q, s = quant(x, gs=32)
    assert_bytes(s.contiguous(), i32([[word(0x7F)]]), "words")
    assert_bytes(q.view(U8), u8([[b for _, b in ELEMENT_TABLE]]), "q")


@pytest.mark.parametrize("k", [4, -4, 100, -30])
def test_fp8_element_table_scaled(k):
    # all values times 2^k with the anchor 448*2^k -> y = 2^k -> scale byte 127 + k (2^-30 is
    # above the 1e-10 floor), same element bytes
    tab = [(0.0, 0x00) if v == 2.0**-149 else (v, b) for v, b in ELEMENT_TABLE]
    x = f32_tensor([[v * 2.0**k for v, _ in tab]])
    q, s = quant(x, gs=32)
    assert_bytes(s.contiguous(), i32([[word(127 + k)]]), "words")
    assert_bytes(q.view(U8), u8([[b for _, b in tab]]), "q")


def _pinned_groups(pattern_bits, anchor_bits, per_row=8):
    per = 31
    n = len(pattern_bits)
    ng = -(-n // per)
    ng = -(-ng // per_row) * per_row
    padded = np.zeros(ng * per, dtype=np.uint32)
    padded[:n] = pattern_bits
    out = np.full((ng, 32), anchor_bits, dtype=np.uint32)
    mask = np.arange(32)[None, :] != (np.arange(ng) % 32)[:, None]
    out[mask] = padded
    return out.reshape(ng // per_row, per_row * 32)


@pytest.mark.parametrize("as_float32", [False, True])
def test_fp8_element_exhaustive_bfloat16_pinned_scale(as_float32):
    # every bf16 pattern with |v| <= 448 or NaN, 31 per group of 32 next to the anchor 448
    # (0x43E0): amax = 448 (NaN ignored) -> y = 1 -> byte 127, scale 1 -> q = E4M3(v)
    vals = bf16_values(ALL16)
    sel = ALL16[(np.abs(vals) <= 448.0) | np.isnan(vals)]
    assert len(sel) == 2 * (0x43E0 + 1) + 254
    bits = _pinned_groups(sel, 0x43E0)
    v = bf16_values(bits)
    x = from_bits16(bits)
    if as_float32:
        x = torch.from_numpy(v.astype(np.float32))
    q, s = quant(x, gs=32)
    check_layout(s, (), bits.shape[0], 8)
    sb = bytes_from_words(s, 8)
    assert np.all(sb == 0x7F), "pinned scale byte must be 0x7F"
    assert_bytes(q.view(U8), torch.from_numpy(e4m3_bytes_np(v)), "q")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_element_exhaustive_sorted_groups(dtype):
    # all 65,536 patterns sorted by magnitude (NaN last) into groups of 128; per-group scale
    # computed independently (includes the +-Inf group and an all-NaN group)
    if dtype == torch.bfloat16:
        vals = bf16_values(ALL16)
    else:
        vals = ALL16.astype(np.uint16).view(np.float16).astype(np.float64)
    order = np.argsort(np.abs(vals), kind="stable")
    bits = ALL16[order].reshape(64, 1024)
    if dtype == torch.bfloat16:
        x = from_bits16(bits)
    else:
        x = torch.from_numpy(bits.astype(np.uint16).view(np.float16).copy())
    q, s = check_against_ref(x, 128, what=f"sorted {dtype}")
    sb = bytes_from_words(s, 8)
    assert (sb == 254).any() and (sb == 0x5E).any()


def test_fp8_element_exhaustive_float16_pinned_scale():
    vals = ALL16.astype(np.uint16).view(np.float16).astype(np.float64)
    sel = ALL16[(np.abs(vals) <= 448.0) | np.isnan(vals)]
    bits = _pinned_groups(sel, 0x5F00)  # fp16 448 = 1.75*2^8
    x = torch.from_numpy(bits.astype(np.uint16).view(np.float16).copy())
    q, s = quant(x, gs=32)
    assert np.all(bytes_from_words(s, 8) == 0x7F)
    v = bits.astype(np.uint16).view(np.float16).astype(np.float64)
    assert_bytes(q.view(U8), torch.from_numpy(e4m3_bytes_np(v)), "q")


# --------------------------------------------------------------------------------------------
# [FP8-NAN]
# --------------------------------------------------------------------------------------------


def test_fp8_nan_is_0x7f_and_ignored_by_amax():
    nan, nnan, snan = 0x7FC00000, 0xFFC00000, 0x7F800001
    one, half = 0x3F800000, 0x3F000000
    # group 0: amax 1 (NaNs ignored) -> 0x77, scale 2^-8: 1 -> 256 = 0x78, 0.5 -> 128 = 0x70
    # group 1: only NaNs -> amax over no element -> a = eps -> 0x5E
    x = f32_bits_tensor([[nan, one, nnan, half, nnan, snan, nan, nnan]])
    q, s = quant(x, gs=4)
    assert_bytes(s.contiguous(), i32([[word(0x77, 0x5E)]]), "words")
    assert_bytes(q.view(U8), u8([[0x7F, 0x78, 0x7F, 0x70, 0x7F, 0x7F, 0x7F, 0x7F]]), "q")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp8_nan_half_precision(dtype):
    if dtype == torch.float16:
        bits = np.array([0xFE00, 0x3C00, 0x7E01, 0xB800], dtype=np.uint16)  # -NaN, 1, NaN, -0.5
        x = torch.from_numpy(bits.view(np.float16)[None].copy())
    else:
        x = from_bits16([[0xFFC0, 0x3F80, 0x7FC1, 0xBF00]])
    q, s = quant(x, gs=4)
    assert_bytes(s.contiguous(), i32([[word(0x77)]]), "words")
    assert_bytes(q.view(U8), u8([[0x7F, 0x78, 0x7F, 0xF0]]), "q")  # -0.5*256 = -128 -> 0xF0


# --------------------------------------------------------------------------------------------
# [FP8-INF]
# --------------------------------------------------------------------------------------------


def test_fp8_inf_group_scale_254():
    inf = float("inf")
    g0 = [inf, -inf, 2.0**127, -1.5 * 2.0**127, F32_MAX, 1.0, -1.0, 2.0**118]
    g1 = [1.0, 0, 0, 0, 0, 0, 0, 0]
    # g0: a = Inf -> y = Inf -> 255 -> clamp 254 (0xFE); scale 2^127:
    #   +-Inf -> +-448 (0x7E/0xFE), 2^127 -> 1 (0x38), -1.5 (0xBC), 2-2^-23 -> 2.0 (0x40),
    #   1*2^-127 -> 0 (0x00), -1*2^-127 -> 0x80, 2^118*2^-127 = 2^-9 -> 0x01
    # g1: amax 1 -> 0x77, 1 -> 256 = 0x78
    x = f32_tensor([g0 + g1])
    q, s = quant(x, gs=8)
    assert_bytes(s.contiguous(), i32([[word(0xFE, 0x77)]]), "words")
    exp = [0x7E, 0xFE, 0x38, 0xBC, 0x40, 0x00, 0x80, 0x01, 0x78] + [0] * 7
    assert_bytes(q.view(U8), u8([exp]), "q")


def test_fp8_inf_with_nan_in_group():
    x = f32_bits_tensor([[0xFF800000, 0x7FC00000, 0x3F800000, 0x00000000]])  # -inf, nan, 1, 0
    q, s = quant(x, gs=4)
    assert_bytes(s.contiguous(), i32([[word(0xFE)]]), "words")
    assert_bytes(q.view(U8), u8([[0xFE, 0x7F, 0x00, 0x00]]), "q")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp8_inf_half_precision(dtype):
    vals = [float("inf"), 65504.0, -1.0, float("-inf")]
    x = torch.tensor([vals], dtype=dtype)  # 65504 rounds to 65536 in bf16; both -> 0 after 2^-127
    q, s = quant(x, gs=4)
    assert_bytes(s.contiguous(), i32([[word(0xFE)]]), "words")
    assert_bytes(q.view(U8), u8([[0x7E, 0x00, 0x80, 0xFE]]), "q")


# --------------------------------------------------------------------------------------------
# [FP8-PACK]
# --------------------------------------------------------------------------------------------


def _pack_input(mn, ng, kbase):
    # group (r, g) = [448, -1, 0.5, -0] * 2^k with k = kbase + 5r + g -> scale byte 127 + k
    rows = []
    for r in range(mn):
        row = []
        for g in range(ng):
            k = kbase + 5 * r + g
            row += [448.0 * 2.0**k, -(2.0**k), 0.5 * 2.0**k, -0.0]
        rows.append(row)
    return rows


def test_fp8_pack_words_mn3_g5_hand():
    # mn = 3 -> A = 4; K = 20, group_size 4 -> G = 5 -> 2 words per row; bytes 124 + 5r + g
    x = f32_tensor(_pack_input(3, 5, -3))
    q, s = quant(x, gs=4)
    assert tuple(s.shape) == (3, 2) and s.stride() == (1, 4), (s.shape, s.stride())
    w00, w01 = word(124, 125, 126, 127), word(128)  # 0x7F7E7D7C, 0x00000080
    w10, w11 = word(129, 130, 131, 132), word(133)  # 0x84838281, 0x85
    w20, w21 = word(134, 135, 136, 137), word(138)  # 0x89888786, 0x8A
    assert w00 == 0x7F7E7D7C and w10 == s32(0x84838281) and w21 == 0x8A
    assert_bytes(s.contiguous(), i32([[w00, w01], [w10, w11], [w20, w21]]), "logical words")
    storage = s.as_strided((8,), (1,), s.storage_offset())
    # word (r, c) at c*A + r; storage row 3 (r = mn .. A-1) is 0
    assert_bytes(storage, i32([w00, w10, w20, 0, w01, w11, w21, 0]), "storage")
    # every group encodes [448, -1, 0.5, -0] -> 0x7E, 0xB8, 0x30, 0x80
    assert_bytes(q.view(U8), u8([[0x7E, 0xB8, 0x30, 0x80] * 5] * 3), "q")


def test_fp8_pack_words_3d_batch_stride():
    b0 = _pack_input(3, 5, -3)  # bytes 124 + 5r + g
    b1 = _pack_input(3, 5, -27)  # bytes 100 + 5r + g
    x = f32_tensor([b0, b1])
    q, s = quant(x, gs=4)
    assert tuple(s.shape) == (2, 3, 2) and s.stride() == (8, 1, 4), (s.shape, s.stride())
    storage = s.as_strided((16,), (1,), s.storage_offset())
    exp = [word(124, 125, 126, 127), word(129, 130, 131, 132), word(134, 135, 136, 137), 0,
           word(128), word(133), word(138), 0,
           word(100, 101, 102, 103), word(105, 106, 107, 108), word(110, 111, 112, 113), 0,
           word(104), word(109), word(114), 0]
    assert exp[8] == 0x67666564
    assert_bytes(storage, i32(exp), "storage")
    assert_bytes(q.view(U8), u8([[[0x7E, 0xB8, 0x30, 0x80] * 5] * 3] * 2), "q")


def test_fp8_pack_g_multiple_of_four_and_mn_multiple_of_four():
    # mn = 4 = A; G = 4 -> one full word per row, no zero bytes
    x = f32_tensor(_pack_input(4, 4, -3))
    q, s = quant(x, gs=4)
    assert tuple(s.shape) == (4, 1)
    exp = [[word(124 + 5 * r, 125 + 5 * r, 126 + 5 * r, 127 + 5 * r)] for r in range(4)]
    assert_bytes(s.contiguous(), i32(exp), "words")
    storage = s.as_strided((4,), (1,), s.storage_offset())
    assert_bytes(storage, i32([e[0] for e in exp]), "storage")


@pytest.mark.parametrize("mn,k,gs", [(5, 18, 2), (1, 256, 128), (7, 1152, 128), (9, 40, 8)])
def test_fp8_pack_against_independent_reference(mn, k, gs):
    x = random_groups(10 + mn, mn, k, gs)
    check_against_ref(x, gs, what=f"mn={mn} K={k} gs={gs}")


# --------------------------------------------------------------------------------------------
# [FP8-STORAGE]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,gs", [((5, 48), 8), ((2, 3, 24), 4), ((3, 1, 512), 128),
                                      ((2, 2, 6, 16), 2)])
def test_fp8_storage_owned_and_padding_rows_zero(shape, gs):
    for attempt in range(3):
        junk = torch.full((1 << 16,), -1, dtype=torch.int32)  # dirty the allocator
        del junk
        x = random_groups(20 + attempt, int(np.prod(shape[:-1])), shape[-1], gs).reshape(shape)
        q, s = quant(x, gs)
        lead, mn, g = shape[:-2], shape[-2], shape[-1] // gs
        flat = check_layout(s, lead, mn, g)
        a, gw = tma_rows(mn), -(-g // 4)
        st = flat.reshape(-1, gw, a)
        assert torch.all(st[:, :, mn:] == 0), st
        rq, rsb = ref_fp8(exact64(x), gs)
        assert_bytes(st[:, :, :mn].transpose(1, 2).reshape(s.shape).contiguous(),
                     torch.from_numpy(words_from_bytes(rsb)), "storage words")


# --------------------------------------------------------------------------------------------
# [FP8-OUT]
# --------------------------------------------------------------------------------------------


def _vllm_sbuf(lead, mn, gw):
    a = tma_rows(mn)
    shape = tuple(lead) + (mn, gw)
    strides = []
    acc = gw * a
    for d in reversed(lead):
        strides.insert(0, acc)
        acc *= d
    s = torch.empty_strided(shape, tuple(strides) + (1, a), dtype=torch.int32)
    n = s.untyped_storage().nbytes() // 4
    s.as_strided((n,), (1,), 0).fill_(SENTINEL)
    return s


def test_fp8_out_vllm_buffers_2d():
    x = f32_tensor(_pack_input(3, 5, -3))
    qbuf = poisoned_q((4, 20))  # R = 4 = A > mn
    sbuf = _vllm_sbuf((), 3, 2)
    assert sbuf.untyped_storage().nbytes() == 7 * 4  # mn + (Gw - 1)*A words
    rq, rs = lowbit.quantize_fp8_group_packed(x, group_size=4, out=(qbuf, sbuf))
    assert rq is qbuf and rs is sbuf
    exp_q = [[0x7E, 0xB8, 0x30, 0x80] * 5] * 3 + [[0x00] * 20]  # row >= mn written as 0
    assert_bytes(qbuf.view(U8), u8(exp_q), "q_buf")
    storage = sbuf.as_strided((7,), (1,), 0)
    exp = [word(124, 125, 126, 127), word(129, 130, 131, 132), word(134, 135, 136, 137),
           SENTINEL, word(128), word(133), word(138)]
    assert_bytes(storage, i32(exp), "s_buf storage (row 3 left as it was)")


def test_fp8_out_r_equals_mn_and_full_storage_sbuf():
    x = f32_tensor(_pack_input(3, 5, -3))
    qbuf = poisoned_q((3, 20))
    sbuf = torch.empty(8, dtype=torch.int32).fill_(SENTINEL).as_strided((3, 2), (1, 4))
    lowbit.quantize_fp8_group_packed(x, group_size=4, out=(qbuf, sbuf))
    assert_bytes(qbuf.view(U8), u8([[0x7E, 0xB8, 0x30, 0x80] * 5] * 3), "q_buf")
    exp = [word(124, 125, 126, 127), word(129, 130, 131, 132), word(134, 135, 136, 137),
           SENTINEL, word(128), word(133), word(138), SENTINEL]
    assert_bytes(sbuf.as_strided((8,), (1,), 0), i32(exp), "s_buf storage")


def test_fp8_out_3d_buffers():
    x = f32_tensor([_pack_input(3, 5, -3), _pack_input(3, 5, -27)])
    qbuf = poisoned_q((2, 4, 20))
    sbuf = _vllm_sbuf((2,), 3, 2)
    n = sbuf.untyped_storage().nbytes() // 4
    assert n == 8 + 7
    rq, rs = lowbit.quantize_fp8_group_packed(x, group_size=4, out=(qbuf, sbuf))
    assert rq is qbuf and rs is sbuf
    row = [0x7E, 0xB8, 0x30, 0x80] * 5
    assert_bytes(qbuf.view(U8), u8([[row] * 3 + [[0] * 20]] * 2), "q_buf")
    exp = [word(124, 125, 126, 127), word(129, 130, 131, 132), word(134, 135, 136, 137),
           SENTINEL, word(128), word(133), word(138), SENTINEL,
           word(100, 101, 102, 103), word(105, 106, 107, 108), word(110, 111, 112, 113),
           SENTINEL, word(104), word(109), word(114)]
    assert_bytes(sbuf.as_strided((n,), (1,), 0), i32(exp), "s_buf storage")


def test_fp8_out_random_matches_allocating_call():
    x = random_groups(31, 6, 1024, 128)  # mn = 6 -> A = 8, G = 8 -> 2 words
    q, s = quant(x)
    qbuf = poisoned_q((7, 1024))
    sbuf = _vllm_sbuf((), 6, 2)
    lowbit.quantize_fp8_group_packed(x, out=(qbuf, sbuf))
    rq, rsb = ref_fp8(exact64(x), 128)
    assert_bytes(qbuf.view(U8)[:6], torch.from_numpy(rq), "q_buf rows < mn")
    assert torch.all(qbuf.view(U8)[6:] == 0)
    assert_bytes(sbuf.contiguous(), torch.from_numpy(words_from_bytes(rsb)), "s_buf words")
    st = sbuf.as_strided((8 + 6,), (1,), 0)
    assert torch.all(st[6:8] == SENTINEL)


def _bad_buffers():
    good_q = lambda: poisoned_q((4, 20))
    good_s = lambda: _vllm_sbuf((), 3, 2)

    def strided(shape, strides, dtype=torch.int32):
        n = 1 + sum((d - 1) * st for d, st in zip(shape, strides))
        t = torch.empty(n, dtype=dtype)
        t.view(U8).fill_(0x5A)
        return t.as_strided(shape, strides)

    return {
        "q uint8": lambda: (torch.full((4, 20), 0xAB, dtype=U8), good_s()),
        "q e5m2": lambda: (torch.full((4, 20), 0xAB, dtype=U8).view(torch.float8_e5m2),
                           good_s()),
        "q wrong K": lambda: (poisoned_q((4, 24)), good_s()),
        "q R > A": lambda: (poisoned_q((5, 20)), good_s()),
        "q R < mn": lambda: (poisoned_q((2, 20)), good_s()),
        "q non-contiguous": lambda: (poisoned_q((4, 40))[:, ::2], good_s()),
        "q extra batch dim": lambda: (poisoned_q((1, 4, 20)), good_s()),
        "s int64": lambda: (good_q(), strided((3, 2), (1, 4), torch.int64)),
        "s float32": lambda: (good_q(), strided((3, 2), (1, 4), torch.float32)),
        "s uint32": lambda: (good_q(), strided((3, 2), (1, 4), torch.uint32)),
        "s 3 columns": lambda: (good_q(), strided((3, 3), (1, 4))),
        "s 1 column": lambda: (good_q(), strided((3, 1), (1, 4))),
        "s 4 rows": lambda: (good_q(), strided((4, 2), (1, 4))),
        "s row-major": lambda: (good_q(), strided((3, 2), (2, 1))),
        "s stride mn": lambda: (good_q(), strided((3, 2), (1, 3))),
        "s stride 8": lambda: (good_q(), strided((3, 2), (1, 8))),
        "s extra batch dim": lambda: (good_q(), strided((1, 3, 2), (8, 1, 4))),
    }


@pytest.mark.parametrize("case", list(_bad_buffers()))
def test_fp8_out_mismatch_raises_and_writes_nothing(case):
    x = f32_tensor(_pack_input(3, 5, -3))
    qbuf, sbuf = _bad_buffers()[case]()
    before_q, before_s = storage_u8(qbuf), storage_u8(sbuf)
    with pytest.raises(ValueError):
        lowbit.quantize_fp8_group_packed(x, group_size=4, out=(qbuf, sbuf))
    assert torch.equal(storage_u8(qbuf), before_q), "q_buf was written"
    assert torch.equal(storage_u8(sbuf), before_s), "s_buf was written"


def test_fp8_out_device_mismatch_raises():
    x = f32_tensor(_pack_input(3, 5, -3))
    qbuf = poisoned_q((4, 20))
    before = storage_u8(qbuf)
    sbuf = torch.empty_strided((3, 2), (1, 4), dtype=torch.int32, device="meta")
    with pytest.raises(ValueError):
        lowbit.quantize_fp8_group_packed(x, group_size=4, out=(qbuf, sbuf))
    assert torch.equal(storage_u8(qbuf), before)


# --------------------------------------------------------------------------------------------
# [FP8-INPUT]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fp8_input_dtypes_literal(dtype):
    # amax 448 -> 0x7F; 1 -> 0x38, -0.5 -> 0xB0, 2^-9 -> 0x01, 3 -> 0x44, -240 -> 0xF7
    x = torch.tensor([[448.0, 1.0, -0.5, 2.0**-9, 3.0, -240.0, 0.0, -0.0]], dtype=dtype)
    q, s = quant(x, gs=8)
    assert_bytes(s.contiguous(), i32([[word(0x7F)]]), "words")
    assert_bytes(q.view(U8), u8([[0x7E, 0x38, 0xB0, 0x01, 0x44, 0xF7, 0x00, 0x80]]), "q")


def test_fp8_input_group_size_one():
    # [3]: fl32(3/448) = 0.0067 in (2^-8, 2^-7) -> 120 = 0x78; 3*2^7 = 384 -> 0x7C
    # [-0.001]: 2.23e-6 in (2^-19, 2^-18) -> 109 = 0x6D; -fl32(.001)*2^18 = -262.1 -> -256 = 0xF8
    # [0] -> 0x5E, 0x00; [448] -> 0x7F, 0x7E
    x = f32_tensor([[3.0, -0.001, 0.0, 448.0]])
    q, s = quant(x, gs=1)
    assert_bytes(s.contiguous(), i32([[word(0x78, 0x6D, 0x5E, 0x7F)]]), "words")
    assert_bytes(q.view(U8), u8([[0x7C, 0xF8, 0x00, 0x7E]]), "q")


def test_fp8_input_group_size_three():
    # [6, -1, .5]: 6/448 = 0.0134 in (2^-7, 2^-6) -> 121 = 0x79, scale 2^-6: 384 -> 0x7C,
    #   -64 -> 0xE8, 32 -> 0x60 ; [.001, 0, 0] -> 0x6D: 262.1 -> 256 = 0x78
    x = f32_tensor([[6.0, -1.0, 0.5, 0.001, 0.0, 0.0]])
    q, s = quant(x, gs=3)
    assert_bytes(s.contiguous(), i32([[word(0x79, 0x6D)]]), "words")
    assert_bytes(q.view(U8), u8([[0x7C, 0xE8, 0x60, 0x78, 0x00, 0x00]]), "q")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fp8_input_random_each_dtype(dtype):
    check_against_ref(random_groups(40, 12, 512, 128, dtype), 128, what=str(dtype))
    check_against_ref(random_groups(41, 5, 96, 16, dtype), 16, what=str(dtype))


def test_fp8_input_nd():
    x = random_groups(50, 2 * 3 * 5, 256, 64).reshape(2, 3, 5, 256)
    q, s = check_against_ref(x, 64, what="4-D")
    assert tuple(q.shape) == (2, 3, 5, 256) and tuple(s.shape) == (2, 3, 5, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_input_non_contiguous(dtype):
    base = random_groups(60, 6, 256, 32, dtype)
    views = {
        "transposed": base.t().contiguous().t(),  # strides (1, 6)
        "sliced_k": torch.cat([base, base], 1)[:, ::2],
        "sliced_rows": base[::2],
        "expanded": base[:1].expand(5, 256),
        "batched_permute": base.reshape(2, 3, 256).permute(1, 0, 2),
    }
    for name, x in views.items():
        assert not x.is_contiguous(), name
        q, s = check_against_ref(x, 32, what=name)
        qc, sc = quant(x.contiguous(), 32)
        assert_bytes(q.view(U8), qc.view(U8), f"{name} q vs contiguous")
        assert_bytes(s.contiguous(), sc.contiguous(), f"{name} words vs contiguous")


@pytest.mark.parametrize("shape,gs,sshape", [
    ((0, 256), 128, (0, 1)),
    ((4, 0), 128, (4, 0)),
    ((2, 0, 128), 128, (2, 0, 1)),
    ((0, 3, 512), 128, (0, 3, 1)),
])
def test_fp8_input_empty(shape, gs, sshape):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        q, s = quant(torch.zeros(shape, dtype=dtype), gs)
        assert tuple(q.shape) == shape and tuple(s.shape) == sshape


@pytest.mark.parametrize("bad", [
    dict(x=lambda: torch.zeros(256), gs=128),  # ndim 1
    dict(x=lambda: torch.zeros(2, 200), gs=128),  # K not a multiple
    dict(x=lambda: torch.zeros(2, 256), gs=0),
    dict(x=lambda: torch.zeros(2, 256), gs=-128),
    dict(x=lambda: torch.zeros(2, 256), gs=128, eps=-1e-10),
    dict(x=lambda: torch.zeros(2, 256), gs=128, eps=float("inf")),
    dict(x=lambda: torch.zeros(2, 256), gs=128, eps=float("nan")),
    dict(x=lambda: torch.zeros(2, 256, dtype=torch.float64), gs=128),
    dict(x=lambda: torch.zeros(2, 256, dtype=torch.int32), gs=128),
])
def test_fp8_input_rejects_malformed(bad):
    kw = {"group_size": bad["gs"]}
    if "eps" in bad:
        kw["eps"] = bad["eps"]
    with pytest.raises(ValueError):
        lowbit.quantize_fp8_group_packed(bad["x"](), **kw)


# --------------------------------------------------------------------------------------------
# [FP8-DEQUANT]
# --------------------------------------------------------------------------------------------

DEQ_Q = [
    [0x38, 0xB8, 0x7E, 0x01, 0x38, 0x80, 0x7E, 0x38, 0x01, 0x7F],
    [0x30, 0x77, 0x7C, 0xFE, 0x08, 0x01, 0x00, 0x80, 0x5A, 0x44],
    [0x38] * 10,
]
DEQ_BYTES = [[127, 128, 94, 254, 0], [127] * 5, [120, 121, 122, 123, 124]]
# float32 results (group_size 2):
# row 0: [1, -1] * 1 ; [448, 2^-9] * 2 ; [1, -0] * 2^-33 ; [448, 1] * 2^127 -> [inf, 2^127] ;
#        [2^-9, NaN] * 2^-127 -> [2^-136 (f32 subnormal), NaN]
# row 1: 0x30 .5, 0x77 240, 0x7C 384, 0xFE -448, 0x08 2^-6, 0x01 2^-9, 0, -0, 0x5A 20, 0x44 3
# row 2: 1 * 2^-7, 2^-6, 2^-5, 2^-4, 2^-3 (two each)
INF = float("inf")
NAN = float("nan")
DEQ_F32 = [
    [1.0, -1.0, 896.0, 2.0**-8, 2.0**-33, -0.0, INF, 2.0**127, 2.0**-136, NAN],
    [0.5, 240.0, 384.0, -448.0, 2.0**-6, 2.0**-9, 0.0, -0.0, 20.0, 3.0],
    [2.0**-7, 2.0**-7, 2.0**-6, 2.0**-6, 2.0**-5, 2.0**-5, 2.0**-4, 2.0**-4, 2.0**-3, 2.0**-3],
]


def _deq_scales(kind):
    w = words_from_bytes(np.array(DEQ_BYTES))  # (3, 2)
    assert w[0, 0] == s32(0xFE5E807F) and w[2, 0] == 0x7B7A7978
    if kind == "vllm":
        s = torch.empty_strided((3, 2), (1, 4), dtype=torch.int32)
    elif kind == "full":
        s = torch.zeros(8, dtype=torch.int32).as_strided((3, 2), (1, 4))
    else:
        s = torch.empty((3, 2), dtype=torch.int32)  # row-major: read through the strides
    s.copy_(torch.from_numpy(w))
    return s


def _same_floats(got, exp):
    nan = torch.isnan(exp)
    assert torch.equal(torch.isnan(got), nan), (got, exp)
    gi = got.view(torch.int16 if got.element_size() == 2 else torch.int32)
    ei = exp.view(torch.int16 if exp.element_size() == 2 else torch.int32)
    assert torch.equal(gi[~nan], ei[~nan]), (got, exp)


@pytest.mark.parametrize("kind", ["vllm", "full", "row_major"])
def test_fp8_dequant_hand_values_float32(kind):
    q = u8(DEQ_Q).view(E4M3)
    out = lowbit.dequantize_fp8_group_packed(q, _deq_scales(kind), group_size=2,
                                             dtype=torch.float32)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 10)
    _same_floats(out, f32_tensor(DEQ_F32))


def test_fp8_dequant_hand_values_bfloat16_and_float16():
    q = u8(DEQ_Q).view(E4M3)
    s = _deq_scales("vllm")
    outb = lowbit.dequantize_fp8_group_packed(q, s, group_size=2)  # default bfloat16
    assert outb.dtype == torch.bfloat16
    eb = [r[:] for r in DEQ_F32]
    eb[0][8] = 0.0  # 2^-136 is below half the smallest bf16 subnormal 2^-133 -> +0
    _same_floats(outb, torch.tensor(eb, dtype=torch.bfloat16))  # remaining values exact in bf16
    outh = lowbit.dequantize_fp8_group_packed(q, s, group_size=2, dtype=torch.float16)
    eh = [r[:] for r in DEQ_F32]
    eh[0][4] = 0.0  # 2^-33 < 2^-25 (half the smallest fp16 subnormal) -> 0
    eh[0][7] = INF  # 2^127 overflows fp16
    eh[0][8] = 0.0
    _same_floats(outh, torch.tensor(eh, dtype=torch.float16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp8_dequant_scale_byte_0xff_gives_nan_for_every_element_of_its_group(dtype):
    """E8M0's NaN byte (quantize never writes it): NaN for q = 0, +-0 and every other code alike, with
    the canonical NaN bits; the neighbouring group (byte 0x7F, scale 1) dequantizes as usual."""
    q = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(2, 128)
    words = torch.tensor([[0x7FFF], [0x7FFF]], dtype=torch.int32)  # group 0: byte 0xFF, group 1: byte 0x7F
    out = lowbit.dequantize_fp8_group_packed(q.reshape(1, 256), words[:1].as_strided((1, 1), (1, 4)),
                                             group_size=128, dtype=dtype)
    int_view, nan_bits = NAN_BITS[dtype]
    assert torch.equal(out[0, :128].view(int_view), torch.full((128,), nan_bits, dtype=int_view))
    want = torch.tensor([-e4m3_value(c & 0x7F) for c in range(128, 256)], dtype=torch.float64)  # codes 0x80..0xFF
    got = out[0, 128:].double()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(got[~torch.isnan(want)], want[~torch.isnan(want)].to(dtype).double())


def test_fp8_dequant_3d():
    q = u8([DEQ_Q, DEQ_Q[::-1]]).view(E4M3)  # (2, 3, 10)
    w0 = words_from_bytes(np.array(DEQ_BYTES))
    s = torch.empty_strided((2, 3, 2), (8, 1, 4), dtype=torch.int32)
    s[0].copy_(torch.from_numpy(w0))
    s[1].copy_(torch.from_numpy(w0))
    out = lowbit.dequantize_fp8_group_packed(q, s, group_size=2, dtype=torch.float32)
    assert tuple(out.shape) == (2, 3, 10)
    _same_floats(out[0], f32_tensor(DEQ_F32))
    # batch 1: row 0 holds DEQ_Q[2] (all 1.0) under DEQ_BYTES[0] -> [1, 1, 2, 2, 2^-33, 2^-33,
    # 2^127, 2^127, 2^-127, 2^-127]
    r0 = [1.0, 1.0, 2.0, 2.0, 2.0**-33, 2.0**-33, 2.0**127, 2.0**127, 2.0**-127, 2.0**-127]
    _same_floats(out[1, 0], f32_tensor(r0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_dequant_round_trip(dtype):
    x = random_groups(70, 6, 512, 128)
    x[0, 3] = float("nan")
    x[1, 130] = float("inf")
    x[2, 256:384] = 0.0
    q, s = quant(x)
    out = lowbit.dequantize_fp8_group_packed(q, s, dtype=dtype).float()
    rq, rsb = ref_fp8(exact64(x), 128)
    table = np.append(E4M3_POS, np.nan)  # code 0x7F is NaN
    vals = table[rq & 0x7F] * np.where(rq & 0x80, -1.0, 1.0)
    with np.errstate(all="ignore"):
        exp = np.ldexp(vals, np.repeat(rsb.astype(np.int64) - 127, 128, axis=-1))
        exp32 = torch.from_numpy(exp.astype(np.float32))
    if dtype == torch.bfloat16:  # E4M3 (4 significant bits) times 2^k fits bf16 unless < 2^-133
        small = exp32.abs() < 2.0**-133
        assert not small[exp32 != 0].any()
    _same_floats(out, exp32)


# --------------------------------------------------------------------------------------------
# [NAN-BITS]: NaNs written by dequantize carry the canonical quiet-NaN bits of the output dtype
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(NAN_BITS))
def test_nan_bits_fp8_dequant_of_both_nan_codes(dtype):
    q = torch.tensor([[0x7F, 0xFF, 0x38, 0xB8]], dtype=torch.uint8)  # +NaN, -NaN, 1.0, -1.0
    packed = torch.tensor([[0x80]], dtype=torch.int32)  # group 0 scale byte 0x80: 2^1
    out = lowbit.dequantize_fp8_group_packed(q, packed, group_size=4, dtype=dtype)
    int_dtype, bits = NAN_BITS[dtype]
    assert torch.equal(out.view(int_dtype)[0, :2], torch.tensor([bits, bits], dtype=int_dtype))
    assert out[0, 2:].tolist() == [2.0, -2.0]
