"""NVFP4 on an Intel GPU (CI row xpu): xpu/triton against the CPU reference, byte for byte, in every
global-scale mode and both scale layouts: all 65,536 bfloat16 patterns, the `spicy` inputs, N-D
and strided inputs, unusable given scales; the global scale on its own; dequantize into every dtype.
Auto-dispatch must pick xpu/triton (LOWBIT_STRICT=1 makes a fallback an error)."""

import numpy as np
import pytest
import torch
from preambles import on_xpu

import lowbit

pytestmark = [*on_xpu(), pytest.mark.usefixtures("strict_dispatch")]

DEVICE, LABEL = "xpu", "xpu/triton"
LAYOUTS = ("linear", "swizzled")
MODES = ("tensor", "row", "given", "given_per_row")


def same_bytes(got: torch.Tensor, want: torch.Tensor) -> bool:
    view = torch.int32 if got.dtype == torch.float32 else torch.uint8
    return got.shape == want.shape and torch.equal(got.cpu().contiguous().view(view), want.contiguous().view(view))


def check(x: torch.Tensor, mode: str, layout: str) -> None:
    rows = x.shape[:-1]
    gs = {"tensor": None, "row": None, "given": torch.tensor(271.5),
          "given_per_row": torch.exp2(torch.linspace(-20, 40, max(1, int(np.prod(rows)))))[:int(np.prod(rows))]
          .reshape(rows)}[mode]
    per_row = mode == "row"
    given = None if gs is None else gs.to(DEVICE)
    assert lowbit.supports("quantize_nvfp4", x, given, per_row=per_row, scale_layout=layout).kernel.capability.label \
        == LABEL
    got = lowbit.quantize_nvfp4(x, given, per_row=per_row, scale_layout=layout)
    want = lowbit.quantize_nvfp4(x.cpu(), gs, per_row=per_row, scale_layout=layout, backend="cpu")
    for g, w, what in zip(got, want, ("q", "block scales", "global scale")):
        assert same_bytes(g, w), (what, mode, layout, tuple(x.shape), x.dtype)


@pytest.mark.parametrize("mode", MODES)
def test_every_bfloat16_pattern_matches_the_reference(mode):
    x = torch.from_numpy(np.arange(65536, dtype=np.uint16).view(np.int16).copy()).view(torch.bfloat16)
    for layout in LAYOUTS:
        check(x.reshape(-1, 64).to(DEVICE), mode, layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 16), (37, 96), (3, 5, 64), (130, 7168), (2, 4160)])
def test_spicy_n_d_inputs_match_the_reference(spicy, dtype, shape):
    x = spicy(shape, dtype, exponent_run=16, seed=sum(shape)).to(DEVICE)
    for mode in MODES:
        for layout in LAYOUTS:
            check(x, mode, layout)


def test_strided_inputs_and_unusable_scales_match_the_reference(spicy):
    base = spicy((12, 5, 512), torch.float32, exponent_run=16, seed=21).to(DEVICE)
    for x in (base.transpose(0, 1)[:, ::2], base.reshape(60, 512)[::3, 128:], base[..., ::2]):
        for mode in MODES:
            check(x, mode, "swizzled")
    x = base.reshape(60, 512)
    for value in (0.0, -1.0, float("nan"), float("inf"), 1e-40, 2.0**119):
        got = lowbit.quantize_nvfp4(x, torch.tensor(value, device=DEVICE), scale_layout="swizzled")
        want = lowbit.quantize_nvfp4(x.cpu(), torch.tensor(value), scale_layout="swizzled", backend="cpu")
        assert same_bytes(got[0], want[0]) and same_bytes(got[1], want[1]), value


@pytest.mark.parametrize("per_row", [False, True])
def test_global_scale_matches_the_reference(spicy, per_row):
    x = spicy((300, 7168), torch.bfloat16, exponent_run=16, seed=3).to(DEVICE)
    assert same_bytes(lowbit.nvfp4_global_scale(x, per_row=per_row),
                      lowbit.nvfp4_global_scale(x.cpu(), per_row=per_row, backend="cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dequantize_matches_the_reference(spicy, dtype, layout):
    q, s, gs = lowbit.quantize_nvfp4(spicy((300, 256), torch.float32, exponent_run=16, seed=5), per_row=True,
                                     scale_layout=layout, backend="cpu")
    got = lowbit.dequantize_nvfp4(q.to(DEVICE), s.to(DEVICE), gs.to(DEVICE), scale_layout=layout, dtype=dtype)
    want = lowbit.dequantize_nvfp4(q, s, gs, scale_layout=layout, dtype=dtype, backend="cpu")
    view = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(got.cpu().view(view), want.view(view))
