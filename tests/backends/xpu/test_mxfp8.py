"""MXFP8 on an Intel GPU (CI row xpu): xpu/triton against the CPU reference, byte for byte, under both scale
rules and both scale layouts: all 65,536 bfloat16 patterns, the `spicy` inputs of every dtype (N-D and
strided), NaN/Inf/zero blocks; dequantize of every E4M3 byte under every scale byte into every dtype.
Auto-dispatch must pick xpu/triton (LOWBIT_STRICT=1 makes a fallback an error)."""

import numpy as np
import pytest
import torch

import lowbit
from lowbit import dispatch, spec

HAS_XPU = hasattr(torch, "xpu") and torch.xpu.is_available()

pytestmark = [
    pytest.mark.xpu,
    pytest.mark.skipif(not HAS_XPU, reason="needs an Intel GPU (torch XPU build); CI row xpu on a self-hosted "
                                           "Intel runner"),
]

DEVICE, LABEL = "xpu", "xpu/triton"
RULES = ("rceil", "floor")
LAYOUTS = ("linear", "swizzled")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT_VIEW = {4: torch.int32, 2: torch.int16, 1: torch.uint8}


@pytest.fixture(autouse=True)
def _strict(_fresh_dispatch, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(INT_VIEW[t.element_size()]).cpu()


def to_device(t: torch.Tensor) -> torch.Tensor:
    return t.view(INT_VIEW[t.element_size()]).to(DEVICE).view(t.dtype)


def check(x: torch.Tensor, rule: str, layout: str) -> None:
    assert lowbit.supports("quantize_mxfp8", x, scale_rule=rule, scale_layout=layout).kernel.capability.label == LABEL
    got = lowbit.quantize_mxfp8(x, scale_rule=rule, scale_layout=layout)
    want = lowbit.quantize_mxfp8(x.cpu(), scale_rule=rule, scale_layout=layout, backend="cpu")
    for g, w, what in zip(got, want, ("q", "scales")):
        assert g.shape == w.shape and torch.equal(bits(g), bits(w)), (what, rule, layout, tuple(x.shape), x.dtype)


@pytest.mark.parametrize("rule", RULES)
def test_every_bfloat16_pattern_matches_the_reference(rule):
    x = torch.from_numpy(np.arange(65536, dtype=np.uint16).view(np.int16).copy()).view(torch.bfloat16)
    for layout in LAYOUTS:
        check(x.reshape(-1, 64).to(DEVICE), rule, layout)
        check(x.reshape(-1, 64).to(DEVICE).float(), rule, layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 32), (37, 96), (3, 5, 64), (130, 7168), (2, 4160)])
def test_spicy_n_d_inputs_match_the_reference(spicy, dtype, shape):
    x = spicy(shape, dtype, exponent_run=32, seed=sum(shape)).to(DEVICE)
    for rule in RULES:
        for layout in LAYOUTS:
            check(x, rule, layout)


def test_strided_inputs_and_special_blocks_match_the_reference(spicy):
    base = spicy((12, 5, 512), torch.float32, exponent_run=32, seed=21).to(DEVICE)
    nan, inf = float("nan"), float("inf")
    special = torch.tensor([[nan] * 32 + [inf, -1.0] + [0.0] * 30 + [2.0**-149] * 32 + [-0.0] * 32], device=DEVICE)
    for x in (base.transpose(0, 1)[:, ::2], base.reshape(60, 512)[::3, 128:], base[..., ::2], special):
        for rule in RULES:
            for layout in LAYOUTS:
                check(x, rule, layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dequantize_every_byte_under_every_scale_byte_matches_the_reference(dtype, layout):
    q = ((torch.arange(256).reshape(1, 256) + torch.arange(300).reshape(300, 1)) % 256).repeat(1, 4).to(torch.uint8)
    linear = ((torch.arange(300).reshape(300, 1) + torch.arange(0, 32 * 263, 263).reshape(1, 32)) % 256).to(torch.uint8)
    if layout == "swizzled":
        scales = torch.zeros(spec.swizzled_scale_shape(300, 32), dtype=torch.uint8).reshape(-1)
        scales[spec.swizzled_offsets(300, 32, "cpu")] = linear.reshape(-1)
        scales = scales.reshape(spec.swizzled_scale_shape(300, 32))
    else:
        scales = linear
    got = lowbit.dequantize_mxfp8(to_device(q), to_device(scales), dtype=dtype, scale_layout=layout)
    want = lowbit.dequantize_mxfp8(q, scales, dtype=dtype, scale_layout=layout, backend="cpu")
    assert torch.equal(bits(got), bits(want))
