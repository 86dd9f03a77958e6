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
