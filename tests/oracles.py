"""Test-only formulations shared by the test files: exact float32 rounding with Fractions,
neighbouring floats, tensors built from bit patterns, the packed-scale strides. Independent of
lowbit: nothing here imports it, so expectations built from these can disagree with the library."""

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


def up32(v):
    return float(np.nextafter(np.float32(v), np.float32(np.inf)))


def dn32(v):
    return float(np.nextafter(np.float32(v), np.float32(-np.inf)))


def bf16_from_bits(bits):
    arr = np.asarray(bits, dtype=np.uint32).astype(np.uint16).view(np.int16)
    return torch.from_numpy(arr.copy()).view(torch.bfloat16)


def f32_tensor(vals):
    return torch.from_numpy(np.array(vals, dtype=np.float32))


def f32_bits_tensor(bits):
    return torch.from_numpy(np.array(bits, dtype=np.uint32).view(np.float32).copy())


def u8(vals):
    return torch.tensor(vals, dtype=U8)


ALL16 = np.arange(65536, dtype=np.uint32)


NAN_BITS = {torch.float32: (torch.int32, 0x7FC00000), torch.bfloat16: (torch.int16, 0x7FC0),
            torch.float16: (torch.int16, 0x7E00)}


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


def arrangements16(bits: np.ndarray, anchor_bits: list[int]) -> np.ndarray:
    """All patterns in rows of 16 (NVFP4 blocks): in order, rotated by 7, and permuted by an odd
    multiplier; then 15 patterns a row next to one anchor pattern, which fixes the block's amax, so
    every pattern is rounded under several known block scales."""
    n = len(bits)
    rows = [bits, np.roll(bits, 7), bits[(np.arange(n) * 40503) % n]]
    padded = np.concatenate([bits, np.zeros(-n % 15, dtype=bits.dtype)]).reshape(-1, 15)
    for anchor in anchor_bits:
        rows.append(np.concatenate([padded, np.full((len(padded), 1), anchor, dtype=bits.dtype)], axis=1))
    return np.concatenate([r.reshape(-1) for r in rows]).reshape(-1, 16)


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
