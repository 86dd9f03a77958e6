"""FP8 with float32 scales on an Intel GPU (CI row xpu): xpu/triton against the CPU reference, byte for
byte: all 65,536 bfloat16 patterns in every scale layout with and without ue8m0, the `spicy` inputs
of every dtype (N-D, strided, both group sizes), out= buffers, weight blocks with partial edges, and
both dequantizes into every dtype. Auto-dispatch must pick xpu/triton (LOWBIT_STRICT=1 makes a
fallback an error)."""

import numpy as np
import pytest
import torch
from oracles import same
from preambles import on_xpu

import lowbit
from lowbit import spec

pytestmark = [*on_xpu(), pytest.mark.usefixtures("strict_dispatch")]

DEVICE, LABEL = "xpu", "xpu/triton"
LAYOUTS = spec.F8_SCALE_LAYOUTS
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check(x, group_size=128, *, ue8m0=False, layout="row_major"):
    assert lowbit.supports("quantize_fp8_group", x, group_size, scale_layout=layout).kernel.capability.label == LABEL
    got = lowbit.quantize_fp8_group(x, group_size, ue8m0=ue8m0, scale_layout=layout)
    want = lowbit.quantize_fp8_group(x.cpu(), group_size, ue8m0=ue8m0, scale_layout=layout, backend="cpu")
    what = f"({layout}, ue8m0 {ue8m0}, {tuple(x.shape)}, {x.dtype})"
    same(got[0], want[0], f"q {what}")
    same(got[1], want[1], f"scales {what}")
    return got


@pytest.mark.parametrize("ue8m0", [False, True], ids=["float", "ue8m0"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_bfloat16_pattern_matches_the_reference(layout, ue8m0):
    x = torch.from_numpy(np.arange(65536, dtype=np.uint16).view(np.int16).copy()).view(torch.bfloat16)
    check(x.reshape(-1, 128).to(DEVICE), ue8m0=ue8m0, layout=layout)
    check(x.reshape(-1, 128).to(DEVICE), 64, ue8m0=ue8m0, layout=layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 128), (37, 384), (3, 5, 512), (130, 7168)])
def test_spicy_n_d_inputs_match_the_reference(spicy, dtype, shape):
    x = spicy(shape, dtype, seed=sum(shape), exponent_run=128).to(DEVICE)
    for layout in LAYOUTS:
        check(x, layout=layout)
        check(x[..., : shape[-1] // 2 // 64 * 64] if shape[-1] >= 128 else x, 64, layout=layout)


def test_out_buffers_with_the_minimal_tma_storage(spicy):
    x = spicy((5, 512), torch.bfloat16, seed=3, exponent_run=128).to(DEVICE)
    q_buf = torch.empty(8, 512, dtype=torch.float8_e4m3fn, device=DEVICE)
    s_buf = torch.empty(5 + 3 * 8, device=DEVICE).as_strided((5, 4), (1, 8))
    lowbit.quantize_fp8_group(x, scale_layout="column_major_tma", out=(q_buf, s_buf))
    want_q, want_s = lowbit.quantize_fp8_group(x.cpu(), scale_layout="column_major_tma", backend="cpu")
    same(q_buf[:5], want_q, "q")
    assert not q_buf[5:].cpu().view(torch.uint8).any()
    assert torch.equal(s_buf.cpu(), want_s)


@pytest.mark.parametrize("shape", [(128, 128), (300, 200), (129, 385)])
def test_weight_blocks_and_both_dequantizes_match_the_reference(spicy, shape):
    w = spicy(shape, torch.bfloat16, seed=sum(shape), exponent_run=1).to(DEVICE)
    for ue8m0 in (False, True):
        got = lowbit.quantize_fp8_block(w, ue8m0=ue8m0)
        want = lowbit.quantize_fp8_block(w.cpu(), ue8m0=ue8m0, backend="cpu")
        same(got[0], want[0], f"block q, ue8m0 {ue8m0}")
        same(got[1], want[1], f"block scales, ue8m0 {ue8m0}")
        for dtype in DTYPES:
            same(lowbit.dequantize_fp8_block(*got, dtype=dtype),
                 lowbit.dequantize_fp8_block(*want, dtype=dtype, backend="cpu"), f"block dequantize to {dtype}")
    x = spicy((9, 512), torch.float32, seed=4, exponent_run=128).to(DEVICE)
    for layout in LAYOUTS:
        q, s = check(x, layout=layout)
        for dtype in DTYPES:
            same(lowbit.dequantize_fp8_group(q, s, dtype=dtype),
                 lowbit.dequantize_fp8_group(q.cpu(), s.cpu(), dtype=dtype, backend="cpu"),
                 f"dequantize to {dtype}, {layout}")
