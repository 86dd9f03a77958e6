"""The CPU reference's MXFP4 against an independent numpy formulation (frexp and exact float64
scaling instead of exponent bits), on random tensors with every special value mixed in; and the
reference kernel runs on meta tensors, so it is device-agnostic and never reads data on the host."""

import numpy as np
import pytest
import torch
from lowbit.backends.cpu import mxfp4 as reference
from oracles import E2M1_GRID, nearest_even_e2m1_code

import lowbit


def expected_mxfp4(x: torch.Tensor, rule: str) -> tuple[np.ndarray, np.ndarray]:
    v = x.float().numpy().astype(np.float64).reshape(-1, x.shape[-1] // 32, 32)
    nan = np.isnan(v)
    amax = np.where(nan, 0, np.abs(v)).max(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        if rule == "rceil":
            d = np.maximum(amax, 6 * 2.0**-126).astype(np.float32) * np.float32(1 / 6)
            m, p = np.frexp(d.astype(np.float64))  # d = m * 2^p, m in [0.5, 1)
            e = np.where(m == 0.5, p - 1, p)
        else:
            m, p = np.frexp(amax)
            e = np.where(amax > 0, p - 1, -127) - 2
        e = np.clip(e, -127, 127)
        e = np.where(np.isinf(amax), 127, e)
        y = np.abs(v) * np.exp2(-e.astype(np.float64))[..., None]  # exact in float64
    code = nearest_even_e2m1_code(np.where(np.isnan(y), 0, y))
    nibble = np.where(np.signbit(v), code | 8, code)
    nibble = np.where(nan.any(-1, keepdims=True), 7, nibble).reshape(x.shape).astype(np.uint8)
    scale = np.where(nan.any(-1), 255, e + 127).reshape(*x.shape[:-1], -1).astype(np.uint8)
    return nibble[..., 0::2] | (nibble[..., 1::2] << 4), scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rule", ["rceil", "floor"])
def test_reference_matches_an_independent_formulation(dtype, rule, spicy):
    x = spicy((64, 1024), dtype, exponent_run=32, seed=len(rule) * 10 + dtype.itemsize)
    q, s = lowbit.quantize_mxfp4(x, scale_rule=rule)
    want_q, want_s = expected_mxfp4(x, rule)
    assert torch.equal(q.view(torch.uint8), torch.from_numpy(want_q))
    assert torch.equal(s.view(torch.uint8), torch.from_numpy(want_s))


def test_nd_and_strided_inputs_give_the_bits_of_their_contiguous_copy(spicy):
    x = spicy((6, 5, 256), torch.bfloat16, exponent_run=32, seed=3)
    strided = x.transpose(0, 1)[:, ::2]  # (5, 3, 256), not contiguous
    q, s = lowbit.quantize_mxfp4(strided)
    want_q, want_s = expected_mxfp4(strided.contiguous(), "rceil")
    assert q.shape == (5, 3, 128) and s.shape == (5, 3, 8)
    assert torch.equal(q.view(torch.uint8), torch.from_numpy(want_q))
    assert torch.equal(s.view(torch.uint8), torch.from_numpy(want_s))


def test_strided_last_dim_is_taken(spicy):
    x = spicy((4, 128), torch.float32, exponent_run=32, seed=4)
    q, _ = lowbit.quantize_mxfp4(x[:, ::2])
    assert torch.equal(q.view(torch.uint8), torch.from_numpy(expected_mxfp4(x[:, ::2].contiguous(), "rceil")[0]))


def test_dequantize_inverts_exactly_representable_values():
    codes = torch.randint(0, 16, (8, 64), generator=torch.Generator().manual_seed(5))
    exps = torch.randint(-20, 20, (8, 2), generator=torch.Generator().manual_seed(6))
    values = torch.tensor(E2M1_GRID)[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
    x = (values.reshape(8, 2, 32) * torch.exp2(exps.double()).unsqueeze(-1) * 4).reshape(8, 64)
    # max |value| per block is <= 6 * 2^exp * 4; rceil picks e = exp + 2 when a block holds a 6
    q, s = lowbit.quantize_mxfp4(x.float())
    back = lowbit.dequantize_mxfp4(q, s, dtype=torch.float32)
    amax = x.reshape(8, 2, 32).abs().amax(-1)
    exact_blocks = (amax == 6 * 4 * torch.exp2(exps.double()))  # scale 2^(exp+2) reproduces every code
    assert exact_blocks.any()
    assert torch.equal(back.reshape(8, 2, 32)[exact_blocks], x.float().reshape(8, 2, 32)[exact_blocks])


def test_reference_kernel_runs_on_meta_tensors():
    """Pure torch, no .item() or host reads: the same code runs on any device's tensors."""
    x = torch.empty(3, 64, dtype=torch.bfloat16, device="meta")
    q = torch.empty(3, 32, dtype=torch.float4_e2m1fn_x2, device="meta")
    s = torch.empty(3, 2, dtype=torch.float8_e8m0fnu, device="meta")
    reference.quantize(x, q, s, scale_rule="rceil")
    out = torch.empty(3, 64, dtype=torch.bfloat16, device="meta")
    reference.dequantize(q, s, out)
