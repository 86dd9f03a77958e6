"""The CPU reference's FP8 group-packed quantization against an independent numpy formulation
(frexp for the power-of-two ceiling, the E4M3 grid enumerated, words assembled per group), on
random tensors with every special value mixed in; the kernel is device-agnostic (meta tensors)."""

import numpy as np
import pytest
import torch
from lowbit.backends.cpu import fp8_group_packed as reference
from oracles import E4M3_POS

import lowbit


def e4m3_bytes(v: np.ndarray) -> np.ndarray:
    a = np.minimum(np.abs(v), 448.0)
    hi = np.clip(np.searchsorted(E4M3_POS, a), 1, len(E4M3_POS) - 1)
    lo = hi - 1
    d_lo, d_hi = a - E4M3_POS[lo], E4M3_POS[hi] - a
    code = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    code = np.where(a >= 448.0, 126, code)
    return np.where(np.isnan(v), 0x7F, np.where(np.signbit(v), code | 0x80, code)).astype(np.uint8)


def expected(x: torch.Tensor, group_size: int, eps: float):
    *lead, mn, k = x.shape
    groups, words, rows = k // group_size, -(-(k // group_size) // 4), -(-mn // 4) * 4
    v = x.float().numpy().astype(np.float64).reshape(-1, mn, groups, group_size)
    amax = np.where(np.isnan(v), 0, np.abs(v)).max(-1).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        y = np.maximum(np.maximum(np.float32(eps), amax) / np.float32(448), np.float32(1e-10))
        m, p = np.frexp(y.astype(np.float64))
        byte = np.where(np.isinf(y), 254, np.minimum(np.where(m == 0.5, p - 1, p) + 127, 254))
        q = e4m3_bytes(v / np.exp2(byte - 127.0)[..., None])
    storage = np.zeros((v.shape[0], words, rows), dtype=np.uint32)
    for g in range(groups):  # one group at a time: byte g % 4 of word g // 4
        storage[:, g // 4, :mn] |= byte[:, :, g].astype(np.uint32) << (8 * (g % 4))
    return q.reshape(*lead, mn, k), storage.view(np.int32).reshape(*lead, words, rows)


def scale_storage(s: torch.Tensor) -> torch.Tensor:
    """The (..., words, A) storage behind returned packed scales."""
    *lead, mn, words = s.shape
    rows = s.stride(-1) if words > 1 else -(-mn // 4) * 4
    return s.as_strided((*lead, words, rows), (*s.stride()[:-2], rows, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape, group_size", [((37, 1024), 128), ((2, 5, 384), 128), ((9, 96), 48),
                                               ((1, 640), 32), ((4, 7 * 16), 16)])
def test_reference_matches_an_independent_formulation(dtype, shape, group_size, spicy):
    x = spicy(shape, dtype, exponent_run=shape[-1], seed=shape[-1] + group_size)
    q, s = lowbit.quantize_fp8_group_packed(x, group_size=group_size)
    want_q, want_storage = expected(x, group_size, 1e-10)
    assert torch.equal(q.view(torch.uint8), torch.from_numpy(want_q))
    assert torch.equal(scale_storage(s), torch.from_numpy(want_storage))


def test_eps_raises_the_floor_of_amax():
    x = torch.full((4, 128), 1e-3)
    x[1] = 0.0
    q, s = lowbit.quantize_fp8_group_packed(x, eps=1.0)
    want_q, want_storage = expected(x, 128, 1.0)
    assert torch.equal(q.view(torch.uint8), torch.from_numpy(want_q))
    assert torch.equal(scale_storage(s), torch.from_numpy(want_storage))


def test_strided_input_gives_the_bits_of_its_contiguous_copy(spicy):
    x = spicy((8, 512), torch.bfloat16, exponent_run=512, seed=9)
    strided = x.t().contiguous().t()[1::2]  # column-major rows, every other one
    q, s = lowbit.quantize_fp8_group_packed(strided)
    q2, s2 = lowbit.quantize_fp8_group_packed(strided.contiguous())
    want_q, want_storage = expected(strided.contiguous(), 128, 1e-10)
    assert torch.equal(q.view(torch.uint8), torch.from_numpy(want_q))
    assert torch.equal(scale_storage(s), torch.from_numpy(want_storage))


def test_reference_kernel_runs_on_meta_tensors():
    x = torch.empty(2, 5, 256, dtype=torch.bfloat16, device="meta")
    q = torch.empty(2, 5, 256, dtype=torch.float8_e4m3fn, device="meta")
    s = torch.empty(2, 1, 8, dtype=torch.int32, device="meta").transpose(-1, -2)
    reference.quantize(x, q, s, group_size=128, eps=1e-10)
    out = torch.empty(2, 5, 256, dtype=torch.float32, device="meta")
    reference.dequantize(q, s[:, :5], out, group_size=128)
