"""Test-only formulations and helpers shared by the test files: exact float32 rounding with
Fractions, neighbouring floats, tensors built from bit patterns, the packed-scale strides, the
inputs of the on-device suites (every 16-bit pattern in every position of a block, random tensors
scaled by powers of two) and bit-exact comparisons. Independent of lowbit: nothing here imports it,
so expectations built from these can disagree with the library."""

import math
import struct
from fractions import Fraction

import numpy as np
import torch

U8 = torch.uint8


def fl32(fr):
    """Nearest float32 to the rational ``fr`` (ties to even), as a Fraction (no overflow)."""
    fr = Fraction(fr)
    if fr == 0:
        return Fraction(0)
    sign = -1 if fr < 0 else 1
    fr = abs(fr)
    e = fr.numerator.bit_length() - fr.denominator.bit_length()
    while Fraction(2) ** e > fr:
        e -= 1
    while Fraction(2) ** (e + 1) <= fr:
        e += 1
    quantum = Fraction(2) ** (max(e, -126) - 23)
    n = fr / quantum
    i = n.numerator // n.denominator
    rem = n - i
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and i % 2 == 1):
        i += 1
    return sign * i * quantum


F32_MAX = float(np.finfo(np.float32).max)  # (2 - 2^-23) * 2^127


F32_NAN = 0x7FC00000  # float32 bit patterns: the default quiet NaN, a negative one, a signalling one
F32_NEG_NAN = 0xFFC00000
F32_SNAN = 0x7F800001
F32_INF = 0x7F800000
F32_NEG_INF = 0xFF800000


def f32_from_bits(b):
    """The float32 of bit pattern b, as a Python float."""
    return struct.unpack("<f", struct.pack("<I", b))[0]


def bits_of_f32(v):
    """The bit pattern of v rounded to float32."""
    return struct.unpack("<I", struct.pack("<f", v))[0]


def f32_bits_of(t):
    """A float32 tensor's bits as int32, read through its strides (a contiguous copy if it is not)."""
    return t.contiguous().view(torch.int32)


# fl32(1/6) = 0x3E2AAAAB = 11184811 * 2^-26; 6 * fl32(1/6) = 1 + 2^-25
RECIP6 = f32_from_bits(0x3E2AAAAB)


def up32(v):
    return float(np.nextafter(np.float32(v), np.float32(np.inf)))


def dn32(v):
    return float(np.nextafter(np.float32(v), np.float32(-np.inf)))


def from_bits16(bits, dtype=torch.bfloat16):
    """A tensor of a 16-bit float dtype from its bit patterns (ints or an array of them)."""
    arr = np.asarray(bits, dtype=np.uint32).astype(np.uint16).view(np.int16)
    return torch.from_numpy(arr.copy()).view(dtype)


def f32_tensor(vals):
    return torch.from_numpy(np.array(vals, dtype=np.float32))


def f32_bits_tensor(bits):
    return torch.from_numpy(np.array(bits, dtype=np.uint32).view(np.float32).copy())


def u8(vals):
    return torch.tensor(vals, dtype=U8)


ALL16 = np.arange(65536, dtype=np.uint32)


NAN_BITS = {torch.float32: (torch.int32, 0x7FC00000), torch.bfloat16: (torch.int16, 0x7FC0),
            torch.float16: (torch.int16, 0x7E00)}


def tma_rows(mn: int) -> int:
    """A: the rows of the TMA-aligned packed scales, mn rounded up to a multiple of 4 [FP8-PACK]."""
    return -(-mn // 4) * 4


def poisoned_q(shape):
    """An E4M3 buffer of `shape` holding 0xAB bytes (what no quantize writes everywhere)."""
    return torch.full(shape, 0xAB, dtype=U8).view(torch.float8_e4m3fn)


def storage_u8(t):
    """A copy of every byte of t's storage (not only its logical elements)."""
    return torch.empty(0, dtype=U8).set_(t.untyped_storage()).clone()


def packed_strides(lead: tuple, mn: int, words: int) -> tuple:
    """[FP8-PACK] strides of (..., mn, words) packed scales: (..., 1, A), batch stride words*A."""
    rows = -(-mn // 4) * 4
    strides = [1, rows]
    batch = words * rows
    for size in reversed(lead):
        strides.insert(0, batch)
        batch *= size
    return tuple(strides)


E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])  # magnitudes of codes 0..7


def e2m1_code_exact(a):
    """Nearest E2M1 magnitude to a >= 0 (Fraction, or inf), ties to the even code (grid search)."""
    if a == float("inf"):
        return 7
    best = None
    for code, m in enumerate(E2M1_GRID):
        key = (abs(Fraction(a) - Fraction(m)), code % 2)
        if best is None or key < best[0]:
            best = (key, code)
    return best[1]


def e2m1_codes_np(a):
    """Vectorised: nearest grid point to a >= 0 (float64, may be inf), ties to the even code.

    Decides with 2a versus (lo + hi), both exact in float64 (a is a float32 value times a power of
    two, lo + hi is a small dyadic number)."""
    a = np.minimum(a, 6.0)  # every a >= 6 has 6 (code 7) as its nearest grid point
    hi = np.clip(np.searchsorted(E2M1_GRID, a, side="left"), 0, 7)
    lo = np.maximum(hi - 1, 0)
    twice = 2.0 * a
    mid = E2M1_GRID[lo] + E2M1_GRID[hi]
    tie_pick = np.where(lo % 2 == 0, lo, hi)
    return np.where(twice < mid, lo, np.where(twice > mid, hi, tie_pick)).astype(np.uint8)


def nearest_even_e2m1_code(a: np.ndarray) -> np.ndarray:
    """Index of the E2M1 magnitude nearest to a >= 0 in float64 (ties to the even index), 7 past 6."""
    hi = np.clip(np.searchsorted(E2M1_GRID, a), 1, 7)
    lo = hi - 1
    d_lo, d_hi = a - E2M1_GRID[lo], E2M1_GRID[hi] - a
    code = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    return np.where(a >= 6.0, 7, code)


def pack(nibbles):
    """Byte i = nib[2i] | nib[2i+1] << 4 (the even element in the low nibble), written independently."""
    return [nibbles[2 * i] | (nibbles[2 * i + 1] << 4) for i in range(len(nibbles) // 2)]


def bf16_values(bits):
    """Exact float64 values of bfloat16 bit patterns (ints or an array of them)."""
    with np.errstate(all="ignore"):  # NaN payloads widen silently
        return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def block(vals, n=32, fill=0.0):
    """vals padded with `fill` to one block of n (MX: 32; NVFP4 blocks pass 16)."""
    vals = list(vals)
    assert len(vals) <= n
    return vals + [fill] * (n - len(vals))


def exact64(x):
    """Exact float64 values of a float32 / float16 / bfloat16 tensor (bf16 via its bit pattern)."""
    x = x.contiguous()
    with np.errstate(invalid="ignore"):  # NaN payloads widen silently
        if x.dtype == torch.bfloat16:
            bits = x.view(torch.int16).numpy().astype(np.uint16).astype(np.uint32) << 16
            return bits.view(np.float32).astype(np.float64)
        return x.numpy().astype(np.float64)


def assert_bytes(got, exp, what=""):
    """torch.equal of two uint8 tensors; on a mismatch, the count and the first differing bytes."""
    got = got.contiguous()
    exp = exp.contiguous()
    assert got.shape == exp.shape, f"{what}: shape {tuple(got.shape)} != {tuple(exp.shape)}"
    if not torch.equal(got, exp):
        g = got.reshape(-1)
        e = exp.reshape(-1)
        bad = (g != e).nonzero().reshape(-1)[:16].tolist()
        detail = ", ".join(f"[{i}] got {g[i].item():#04x} expected {e[i].item():#04x}" for i in bad)
        raise AssertionError(f"{what}: {(g != e).sum().item()} bytes differ: {detail}")


def bits16(value: float, dtype) -> int:
    """The 16-bit pattern of `value` in a 16-bit float dtype."""
    return int(torch.tensor(value, dtype=dtype).view(torch.int16).item()) & 0xFFFF


def arrangements(bits: np.ndarray, anchor_bits: list[int], width: int, rolls: tuple[int, ...], *,
                 anchor_first: bool = False, row: int | None = None) -> np.ndarray:
    """All patterns, several times over, in blocks (or groups) of `width`: in order (a block holds
    `width` neighbouring patterns), rotated by each of `rolls` places (each pattern in other
    positions of its block), permuted by an odd multiplier (neighbours from all over the range);
    then `width` - 1 patterns a block next to one anchor pattern (after them, or before with
    `anchor_first`), which fixes the block's amax, so every pattern is rounded under several known
    scales. In rows of `row` values (default `width`), the last one zero-padded."""
    n = len(bits)
    parts = [bits, *(np.roll(bits, r) for r in rolls), bits[(np.arange(n) * 40503) % n]]
    padded = np.concatenate([bits, np.zeros(-n % (width - 1), dtype=bits.dtype)]).reshape(-1, width - 1)
    for anchor in anchor_bits:
        column = np.full((len(padded), 1), anchor, dtype=bits.dtype)
        parts.append(np.concatenate([column, padded] if anchor_first else [padded, column], axis=1))
    flat = np.concatenate([p.reshape(-1) for p in parts])
    row = width if row is None else row
    return np.concatenate([flat, np.zeros(-len(flat) % row, dtype=bits.dtype)]).reshape(-1, row)


# E4M3FN from its bit fields, ties decided against exact midpoints (the FP8 spec tests)

def e4m3_value(code):
    """Value of a non-negative E4M3FN code 0..127 from its fields (bias 7, no infinities)."""
    e, m = code >> 3, code & 7
    if e == 15 and m == 7:
        return float("nan")
    if e == 0:
        return m * 2.0**-9
    return (1 + m / 8) * 2.0 ** (e - 7)


E4M3_POS = np.array([e4m3_value(c) for c in range(127)])  # codes 0..0x7E, increasing
assert E4M3_POS[-1] == 448.0 and np.all(np.diff(E4M3_POS) > 0)


def e4m3_bytes_np(v):
    """E4M3FN(clamp(v, -448, 448)), nearest, ties to the even code; NaN -> 0x7F. v: float64."""
    v = np.asarray(v, dtype=np.float64)
    nan = np.isnan(v)
    a = np.where(nan, 0.0, np.minimum(np.abs(v), 448.0))
    hi = np.clip(np.searchsorted(E4M3_POS, a, side="left"), 0, 126)
    lo = np.maximum(hi - 1, 0)
    twice = 2.0 * a  # exact
    mid = E4M3_POS[lo] + E4M3_POS[hi]  # exact (few significant bits)
    tie_pick = np.where(lo % 2 == 0, lo, hi)
    code = np.where(twice < mid, lo, np.where(twice > mid, hi, tie_pick))
    out = code | (np.signbit(v).astype(np.int64) << 7)
    return np.where(nan, 0x7F, out).astype(np.uint8)


def ceil_log2_np(d):
    """The exponent of the power-of-two ceiling of positive d."""
    m, ex = np.frexp(d)
    return np.where(m == 0.5, ex - 1, ex).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Whole-op formulations of docs/SPEC.md, vectorised in float64 numpy (the fuzz tests' oracles).
#
# Float32 arithmetic is modelled exactly: the product of two float32 values is exact in float64, so
# one rounding to float32 (f32_np) gives fl32(a * b); a float64 quotient of two float32 values,
# rounded once more to float32, is the correctly rounded float32 quotient (53 >= 2*24 + 2 bits:
# double rounding is innocuous). Exponents come from frexp, never from float bit fields, and
# rounding onto E2M1 / E4M3 compares against the grid's exact midpoints.
# --------------------------------------------------------------------------------------------

F32_RECIP6 = float(fl32(Fraction(1, 6)))  # fl32(1/6) = 0x3E2AAAAB
NV_GS_MIN, NV_GS_MAX = 2.0**-118, 2.0**118  # [NV-GLOBAL-GIVEN] usable range
E4M3_ALL = np.array([(-1.0 if b & 0x80 else 1.0) * e4m3_value(b & 0x7F) for b in range(256)])  # NaN at 0x7F, 0xFF


def f32_np(a):
    """float64 values rounded to the nearest float32 (ties to even, overflow to +-inf), widened back."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


def fl32_float(v) -> float:
    """fl32 of a Python float (eps and the like), as a float; +-inf where it overflows."""
    r = fl32(Fraction(v))
    return float(r) if abs(r) <= Fraction(F32_MAX) else float(np.copysign(np.inf, v))


def floor_log2_np(d):
    """floor(log2 d) for positive finite float64 d."""
    return (np.frexp(d)[1] - 1).astype(np.int64)


def unpack_nibbles(packed):
    """(..., n) uint8 -> (..., 2n) nibbles, the low nibble first ([MX-PACK])."""
    packed = np.asarray(packed, dtype=np.uint8)
    nib = np.empty((*packed.shape[:-1], 2 * packed.shape[-1]), dtype=np.uint8)
    nib[..., 0::2], nib[..., 1::2] = packed & 0xF, packed >> 4
    return nib


def pack_nibbles(nib):
    """(..., 2n) nibbles -> (..., n) bytes, the even element in the low nibble ([MX-PACK])."""
    nib = np.asarray(nib, dtype=np.uint8)
    return (nib[..., 0::2] | (nib[..., 1::2] << 4)).astype(np.uint8)


def e2m1_signed_values(nib):
    """Values of E2M1 nibbles: bit 3 the sign, bits 0..2 the code."""
    return np.where(nib & 8, -1.0, 1.0) * E2M1_GRID[nib & 7]


def e2m1_nibbles(y, sign):
    """Nibbles of y (float64, NaN-free) on the E2M1 grid, nearest-even, saturating; sign: bool array."""
    return (nearest_even_e2m1_code(np.abs(y)) | (np.asarray(sign, dtype=np.int64) << 3)).astype(np.uint8)


def raw_bytes(a) -> torch.Tensor:
    """The bytes of numpy array `a` as a uint8 tensor shaped (..., n * itemsize), as a tensor's
    .view(torch.uint8) shows them (empty arrays included)."""
    a = np.ascontiguousarray(a)
    flat = torch.from_numpy(a.reshape(-1).view(np.uint8).copy())
    return flat.reshape(*a.shape[:-1], a.shape[-1] * a.itemsize) if a.ndim else flat


def rounded_bits(v, dtype):
    """The bit patterns of float64 values `v` (float32 values, or NaN) rounded to `dtype` (nearest,
    ties to even, overflow to +-inf) with every NaN canonical ([NAN-BITS]): a uint8 tensor of the
    raw bytes, shaped like out.view(torch.uint8)."""
    v = np.asarray(v, dtype=np.float64)
    nan = np.isnan(v)
    with np.errstate(over="ignore", invalid="ignore"):
        f = v.astype(np.float32)
    bits32 = f.view(np.uint32).astype(np.uint64)
    int_dtype, nan_bits = NAN_BITS[dtype]
    if dtype == torch.float32:
        bits = bits32
    elif dtype == torch.float16:
        with np.errstate(over="ignore", invalid="ignore"):
            bits = f.astype(np.float16).view(np.uint16).astype(np.uint64)
    else:  # bfloat16: round the float32 pattern to its top 16 bits, ties to even
        bits = (bits32 + 0x7FFF + ((bits32 >> 16) & 1)) >> 16
    bits = np.where(nan, nan_bits, bits)
    return raw_bytes(bits.astype(np.uint32 if int_dtype == torch.int32 else np.uint16))


def mxfp4_oracle(x, rule="rceil", eps=0.0):
    """[MX-*] of exact input values x (float64 (..., K)): (packed bytes (..., K/2), scale bytes (..., K/32))."""
    x = np.asarray(x, dtype=np.float64)
    lead, k = x.shape[:-1], x.shape[-1]
    b = x.reshape(math.prod(lead), k // 32, 32)
    with np.errstate(all="ignore"):
        nan_blk = np.isnan(b).any(-1)
        amax = np.where(np.isnan(b), 0.0, np.abs(b)).max(-1, initial=0.0)
        if rule == "rceil":
            d = f32_np(np.maximum(amax, 6.0 * 2.0**-126) * F32_RECIP6)
            d = np.maximum(d, fl32_float(eps))
            e = ceil_log2_np(np.where(np.isfinite(d), d, 1.0))
        else:  # zero and subnormal amax land below -127
            e = np.where(amax > 0, floor_log2_np(np.where((amax > 0) & np.isfinite(amax), amax, 1.0)) - 2, -1000)
        e = np.where(np.isinf(amax), 127, np.clip(e, -127, 127))
        y = np.ldexp(np.where(np.isnan(b), 0.0, b), -e[..., None])  # exact in float64
    nib = e2m1_nibbles(y, np.signbit(b))
    nib = np.where(nan_blk[..., None], 7, nib).reshape(*lead, k)
    scale = np.where(nan_blk, 255, e + 127).astype(np.uint8).reshape(*lead, k // 32)
    return pack_nibbles(nib), scale


def mxfp4_dequant_oracle(q, scale_bytes):
    """[MX-DEQUANT] float32 values (float64; NaN for scale byte 0xFF) of packed q (..., K/2) and
    scale bytes (..., K/32)."""
    v = e2m1_signed_values(unpack_nibbles(q))
    byte = np.repeat(np.asarray(scale_bytes, dtype=np.int64), 32, axis=-1)
    return np.where(byte == 255, np.nan, f32_np(np.ldexp(v, byte - 127)))


F32_RECIP448 = float(fl32(Fraction(1, 448)))  # fl32(1/448) = 0x3B124925


def mxfp8_oracle(x, rule="rceil"):
    """[MX8-*] of exact input values x (float64 (..., K)): (E4M3 bytes (..., K), linear scale bytes
    (..., K/32)). d = fl32(amax * fl32(1/448)) keeps float32's subnormals (f32_np rounds into them);
    exponents come from frexp."""
    x = np.asarray(x, dtype=np.float64)
    lead, k = x.shape[:-1], x.shape[-1]
    b = x.reshape(math.prod(lead), k // 32, 32)
    with np.errstate(all="ignore"):
        nan_blk = np.isnan(b).any(-1)
        amax = np.where(np.isnan(b), 0.0, np.abs(b)).max(-1, initial=0.0)
        if rule == "rceil":
            d = f32_np(amax * F32_RECIP448)
            usable = np.isfinite(d) & (d > 0)
            e = np.where(usable, ceil_log2_np(np.where(usable, d, 1.0)), -1000)  # log2 0 = -inf
        else:
            usable = np.isfinite(amax) & (amax > 0)
            e = np.where(usable, floor_log2_np(np.where(usable, amax, 1.0)) - 8, -1000)
        e = np.where(np.isinf(amax), 127, np.clip(e, -127, 127))
        y = np.ldexp(np.where(np.isnan(b), 0.0, b), -e[..., None])  # exact in float64
    q = np.where(nan_blk[..., None], 0x7F, e4m3_bytes_np(y)).astype(np.uint8).reshape(*lead, k)
    scale = np.where(nan_blk, 255, e + 127).astype(np.uint8).reshape(*lead, k // 32)
    return q, scale


def mxfp8_dequant_oracle(q, scale_bytes):
    """[MX8-DEQUANT] float32 values (float64; NaN for scale byte 0xFF and E4M3 NaN) of E4M3 bytes
    (..., K) and linear scale bytes (..., K/32)."""
    v = E4M3_ALL[np.asarray(q, dtype=np.int64)]
    byte = np.repeat(np.asarray(scale_bytes, dtype=np.int64), 32, axis=-1)
    with np.errstate(all="ignore"):
        return np.where(byte == 255, np.nan, f32_np(np.ldexp(v, byte - 127)))


def nvfp4_global_scale_oracle(x, per_row=False):
    """[NV-GLOBAL]: min(fl32(2688 / amax), 2^118), amax over the finite elements (of each row)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.where(np.isfinite(x), np.abs(x), 0.0)
    amax = a.max(-1, initial=0.0) if per_row else np.array(a.max(initial=0.0))
    with np.errstate(divide="ignore"):
        return np.minimum(f32_np(2688.0 / amax), NV_GS_MAX)


def nvfp4_oracle(x, gs):
    """[NV-*] of exact input values x (float64 (..., K)) under global scales gs (float64, one value or
    one per row, any value): (packed bytes (..., K/2), linear scale bytes (..., K/16))."""
    x = np.asarray(x, dtype=np.float64)
    lead, k = x.shape[:-1], x.shape[-1]
    b = x.reshape(math.prod(lead), k // 16, 16)
    g = np.asarray(gs, dtype=np.float64).reshape(-1)
    g = np.broadcast_to(g, (b.shape[0],)).reshape(-1, 1)  # one scale for every row, or one per row
    with np.errstate(all="ignore"):
        usable = (g >= NV_GS_MIN) & (g <= NV_GS_MAX)
        bad = np.isnan(b).any(-1) | ~usable
        g = np.where(usable, g, 1.0)
        amax = np.where(np.isnan(b), 0.0, np.abs(b)).max(-1, initial=0.0)
        t = f32_np(g * f32_np(amax * F32_RECIP6))  # two float32 products
        sb = e4m3_bytes_np(t)  # t >= 0, saturating at 448 (+inf included)
        sf = E4M3_ALL[sb]
        p = f32_np(sf * f32_np(1.0 / g))
        m = np.where(sf == 0, 0.0, f32_np(1.0 / np.where(sf == 0, 1.0, p)))
        y = f32_np(np.where(np.isnan(b), 0.0, b) * m[..., None])
    nib = e2m1_nibbles(y, np.signbit(y))
    nib = np.where(bad[..., None], 7, nib).reshape(*lead, k)
    sb = np.where(bad, 0x7F, sb).astype(np.uint8).reshape(*lead, k // 16)
    return pack_nibbles(nib), sb


def swizzled_bytes(linear):
    """[SCALE-SWIZZLE]: linear (R, C) scale bytes placed at their offsets in the zero-padded tiles."""
    rows, cols = linear.shape
    out = np.zeros((-(-rows // 128) * 128) * (-(-cols // 4) * 4), dtype=np.uint8)
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    offset = ((r // 128) * -(-cols // 4) + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
    out[offset.reshape(-1)] = linear.reshape(-1)
    return out.reshape(-(-rows // 128) * 128, -(-cols // 4) * 4)


def nvfp4_dequant_oracle(q, scale_bytes, gs):
    """[NV-DEQUANT] float32 values (float64, NaN where the spec says NaN) of q (..., K/2), linear
    scale bytes (..., K/16) and gs (one value or one per row)."""
    v = e2m1_signed_values(unpack_nibbles(q))
    sf = E4M3_ALL[np.asarray(scale_bytes, dtype=np.int64)]
    g = np.asarray(gs, dtype=np.float64)
    g = g.reshape(()) if g.size == 1 else g.reshape(*sf.shape[:-1], 1)
    with np.errstate(all="ignore"):
        usable = (g >= NV_GS_MIN) & (g <= NV_GS_MAX)
        factor = np.where(usable, f32_np(sf / np.where(usable, g, 1.0)), np.nan)
        return f32_np(v * np.repeat(factor, 16, axis=-1))


def ue8m0_byte_oracle(amax, eps):
    """[FP8-SCALE]: the UE8M0 byte of groups of float64 amax (NaNs left out, +inf allowed)."""
    with np.errstate(invalid="ignore"):
        a = np.maximum(np.asarray(amax, dtype=np.float64), fl32_float(eps))
        y = np.maximum(f32_np(a / 448.0), fl32_float(1e-10))
        byte = np.where(np.isfinite(y), ceil_log2_np(np.where(np.isfinite(y), y, 1.0)) + 127, 255)
    return np.minimum(byte, 254)


def f8_scale_oracle(amax, eps, ue8m0):
    """[F8-SCALE] / [F8-UE8M0]: the float32 scale (as float64) of groups of float64 amax."""
    if ue8m0:
        return np.ldexp(1.0, ue8m0_byte_oracle(amax, eps) - 127)
    a = np.maximum(np.asarray(amax, dtype=np.float64), fl32_float(eps))
    return np.clip(f32_np(a / 448.0), 2.0**-126, 2.0**127)


def f8_element_oracle(x, s):
    """[F8-ELEMENT, F8-NAN, F8-INF]: E4M3 bytes of clamp(fl32(x / s)); x exact values, s float32 scales."""
    with np.errstate(all="ignore"):
        return e4m3_bytes_np(f32_np(np.asarray(x, dtype=np.float64) / s))


def nan_masked_amax(x, axis):
    """max |x| over `axis` with NaNs left out (0 for nothing left), float64."""
    return np.where(np.isnan(x), 0.0, np.abs(x)).max(axis=axis, initial=0.0)


def attention_oracle(q, keys, values, q_lens, *, scale, causal, window, softcap, alibi, sinks, dq, dk, dv):
    """[ATTN-*] in float64 over each sequence's contiguous keys and values (the oracle never sees
    pages). q (tokens, H, d); keys[s], values[s] (kv_len, KV, d); alibi, sinks (H,) or None; dq, dk,
    dv (num_seqs, KV) descales. Returns the rows that belong to a sequence, (sum(q_lens), H, d)."""
    heads, kv_heads, d = q.shape[1], keys[0].shape[1], q.shape[2]
    group = heads // kv_heads
    left, right = window
    rows, first = [], 0
    for s, q_len in enumerate(q_lens):
        kv_len = keys[s].shape[0]
        out = torch.zeros(q_len, heads, d, dtype=torch.float64)
        for i in range(q_len):
            p = i + kv_len - q_len  # [ATTN-POSITION]
            seen = [j for j in range(kv_len) if (not causal or j <= p) and (left < 0 or j >= p - left)
                    and (right < 0 or j <= p + right)]
            for h in range(heads):
                g = h // group
                if not seen:
                    continue  # no key: zeros, with or without a sink
                k, v = keys[s][seen, g], values[s][seen, g]
                score = (k @ q[first + i, h]) * (scale * dq[s, g] * dk[s, g])
                if softcap > 0:
                    score = softcap * torch.tanh(score / softcap)
                if alibi is not None:
                    score = score - alibi[h] * torch.tensor([abs(p - j) for j in seen], dtype=torch.float64)
                top = score.max() if sinks is None else torch.maximum(score.max(), sinks[h])
                e = torch.exp(score - top)
                total = e.sum() + (0.0 if sinks is None else torch.exp(sinks[h] - top))
                out[i, h] = (e / total) @ v * dv[s, g]
        rows.append(out)
        first += q_len
    return torch.cat(rows) if rows else torch.zeros(0, heads, d, dtype=torch.float64)
# --- the inputs and comparisons of the on-device suites (tests/backends) ---------------------------

def dtype_id(d: torch.dtype) -> str:
    """A dtype as a test id: bfloat16."""
    return str(d).removeprefix("torch.")


def bits(t: torch.Tensor) -> torch.Tensor:
    """t's bits as integers of its element size (NaN == NaN), a view in t's layout on t's device."""
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()])


def raw(t: torch.Tensor) -> torch.Tensor:
    """t's bits as integers on the CPU (NaN == NaN), in t's logical layout. The view comes first:
    copies of float4/E8M0 tensors between devices need not exist."""
    return bits(t.detach()).cpu()


def storage_words(s: torch.Tensor) -> torch.Tensor:
    """Every element of s's storage in s's dtype (for packed scales: every int32 word, the TMA
    padding rows included), flat, on the CPU."""
    return torch.empty(0, dtype=s.dtype, device=s.device).set_(s.untyped_storage()).cpu()


def first_difference(got: torch.Tensor, want: torch.Tensor, what: str) -> tuple[str, tuple]:
    """(message, index) of the first element where two integer tensors of one shape differ."""
    bad = (got != want).nonzero()
    at = tuple(bad[0].tolist())
    mask = (1 << 8 * got.element_size()) - 1
    return (f"{what}: {len(bad)} of {got.numel()} values differ; first at {at}: got {int(got[at]) & mask:#x}, "
            f"want {int(want[at]) & mask:#x}"), at


def same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal shapes, strides and bits (compared on the CPU)."""
    assert got.shape == want.shape and got.stride() == want.stride(), (what, got.shape, got.stride(), want.stride())
    g, w = raw(got), raw(want)
    if not torch.equal(g, w):
        raise AssertionError(first_difference(g, w, what)[0])


def assert_same_bits(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal dtypes, shapes and bits (compared on the CPU)."""
    assert got.dtype == want.dtype and got.shape == want.shape, (
        f"{what}: {got.dtype} {tuple(got.shape)} != {want.dtype} {tuple(want.shape)}")
    g, w = raw(got), raw(want)
    if not torch.equal(g, w):
        raise AssertionError(first_difference(g, w, what)[0])


def meta(*shape, dtype=torch.bfloat16) -> torch.Tensor:
    """An empty tensor on the meta device: meta(4, 64)."""
    return torch.empty(shape, dtype=dtype, device="meta")


def all_patterns(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Every one of the 65,536 bit patterns of a 16-bit float dtype, as (finite, non-finite)."""
    values = torch.from_numpy(np.arange(1 << 16, dtype=np.uint16).view(np.int16).copy()).view(dtype)
    finite = values.isfinite()
    return values[finite], values[~finite]


def every_position(values: torch.Tensor, width: int, stride: int) -> torch.Tensor:
    """Blocks (rows of `width`: a block or group of the format) holding each value once in every
    position: block b takes every `stride`-th of `width * stride` consecutive values (so the stride
    sets how many binades a block spans, hence which codes its elements round to), then all `width`
    rotations of every block."""
    per = width * stride
    v = torch.cat([values, values[: (-values.numel()) % per]])  # wrap around: every value at least once
    blocks = v.reshape(-1, width, stride).transpose(1, 2).reshape(-1, width)
    return torch.cat([blocks.roll(r, dims=-1) for r in range(width)])


def strides_for(dtype: torch.dtype, width: int, binades) -> list[int]:
    """Strides through the bit patterns of `dtype` that make a block of `width` span `binades`."""
    per_binade = 1 << {torch.bfloat16: 7, torch.float16: 10}[dtype]  # mantissa bits
    return sorted({max(1, round(b * per_binade / width)) for b in binades})


def to_rows(blocks: torch.Tensor, per_row: int) -> torch.Tensor:
    """Blocks laid out `per_row` to a row (zero blocks pad the last row)."""
    pad = (-blocks.shape[0]) % per_row
    blocks = torch.cat([blocks, blocks.new_zeros(pad, blocks.shape[1])])
    return blocks.reshape(-1, per_row * blocks.shape[1])


def pow2(e: torch.Tensor) -> torch.Tensor:
    """Exactly 2**e as float32, from the exponent bits (normal range)."""
    return ((e.to(torch.int32) + 127) << 23).view(torch.float32)


def randn_pow2(rows: int, k: int, dtype: torch.dtype, seed: int, width: int) -> torch.Tensor:
    """Plain normal values times random powers of two: one per row (over most of the dtype's
    range) and one per block of `width` (a spread of 2^-8..2^8 within a row)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-14, 7) if dtype == torch.float16 else (-125, 110)
    x = torch.randn(rows, k // width, width, generator=g)
    row_scale = pow2(torch.randint(lo, hi, (rows, 1, 1), generator=g))
    block_scale = pow2(torch.randint(-8, 9, (rows, k // width, 1), generator=g))
    return (x * row_scale * block_scale).reshape(rows, k).to(dtype)


def big_spicy(cache: dict, spicy, shape: tuple[int, int], dtype: torch.dtype, *, width: int, seed: int,
              shift: int) -> torch.Tensor:
    """Per dtype, one spicy tensor of `shape` (exponent runs of `width`), made from one a quarter of
    its rows and three column rotations of that by multiples of `shift` runs (cheaper to generate);
    tests slice it. cache: the module's big_inputs fixture; spicy: the spicy fixture."""
    if dtype not in cache:
        base = spicy((shape[0] // 4, shape[1]), dtype, seed=seed + dtype.itemsize, exponent_run=width)
        cache[dtype] = torch.cat([base.roll(width * shift * i, dims=-1) for i in range(4)])
    return cache[dtype]


# --- the API tests: fakes, refusals, opcheck (lowbit-independent parts) -----------------------------

def randn(*shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    """Normal values with a spread of exponents, so block and group scales differ."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    x = x * torch.exp2(torch.randint(-6, 7, shape, generator=g).to(torch.float32))
    return x.to(dtype)


def E(*shape, dtype=torch.float32, d="cpu") -> torch.Tensor:
    """An empty tensor: E(4, 64), E((4, 64)) or E(()) (0-d)."""
    if len(shape) == 1 and isinstance(shape[0], tuple):
        shape = shape[0]
    return torch.empty(tuple(shape), dtype=dtype, device=d)


def round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def fake_like(t: torch.Tensor, device: str) -> torch.Tensor:
    """A tensor on `device` (call inside FakeTensorMode) with t's shape, dtype, strides, storage
    offset and storage size."""
    numel = t.untyped_storage().nbytes() // t.element_size()
    base = torch.empty(numel, dtype=t.dtype, device=device)
    return base.as_strided(t.shape, t.stride(), t.storage_offset())


def as_fake(obj, device):
    """obj with every tensor in it (tuples too) replaced by its fake_like on `device`."""
    if isinstance(obj, torch.Tensor):
        return fake_like(obj, device)
    if isinstance(obj, tuple):
        return tuple(as_fake(o, device) for o in obj)
    return obj


def layout(t: torch.Tensor, storage: bool = True) -> tuple:
    """Everything of a tensor but its values and device: shape, dtype, strides, storage offset and
    (unless storage=False) storage size."""
    found = (tuple(t.shape), t.dtype, tuple(t.stride()), t.storage_offset())
    return (*found, t.untyped_storage().nbytes()) if storage else found


def outputs(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def caught(fn) -> BaseException | None:
    """The exception fn() raises, or None."""
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def said_on(text: str, device: str) -> str:
    """The real CPU call's error text as a call on `device` says it."""
    return text.replace(" on cpu", f" on {device}")


# SchemaCheckMode (opcheck's "test_schema") compares every argument before and after the call with
# torch.allclose, which has no CPU kernel for float8_e4m3fn or float4_e2m1fn_x2 ("mul_cpu_reduced_float"
# / "copy_" not implemented). A pytorch limitation, not lowbit's: the opcheck cases run test_schema with
# the uint8 views the ops also take, and these test_utils only (no test_schema) on their native dtypes.
NO_SCHEMA_CHECK = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
