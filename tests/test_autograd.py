"""lowbit's ops have no gradient ([ERR-GRAD]): no output requires grad, whatever the inputs do, and the
bits are those of the same call on detached inputs. A buffer that requires grad is refused before
anything is written (torch refuses an in-place write into a leaf that requires grad; lowbit refuses
every such buffer, since it writes no gradient): tests/test_refusals.py, *-requires-grad."""

import pytest
import torch

import lowbit


def x_grad():
    return torch.randn(4, 256, generator=torch.Generator().manual_seed(0)).requires_grad_()


def raw(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


QUANTIZE = {
    "quantize_mxfp4": lambda x: lowbit.quantize_mxfp4(x),
    "quantize_mxfp8": lambda x: lowbit.quantize_mxfp8(x, scale_layout="swizzled"),
    "quantize_nvfp4": lambda x: lowbit.quantize_nvfp4(x),
    "nvfp4_global_scale": lambda x: (lowbit.nvfp4_global_scale(x),),
    "quantize_fp8_group_packed": lambda x: lowbit.quantize_fp8_group_packed(x),
    "quantize_fp8_group": lambda x: lowbit.quantize_fp8_group(x, scale_layout="column_major"),
    "quantize_fp8_block": lambda x: lowbit.quantize_fp8_block(x),
}


@pytest.mark.parametrize("op", QUANTIZE)
def test_err_grad_no_quantize_output_requires_grad_and_the_bits_are_the_detached_calls(op):
    x = x_grad()
    got = QUANTIZE[op](x)
    assert not any(t.requires_grad for t in got)
    for g, w in zip(got, QUANTIZE[op](x.detach())):
        assert torch.equal(raw(g), raw(w))


def test_err_grad_no_dequantize_output_requires_grad_when_the_scales_do():
    x = x_grad().detach()
    q4, s4 = lowbit.quantize_mxfp4(x)
    qn, sn, gn = lowbit.quantize_nvfp4(x)
    q8, s8 = lowbit.quantize_fp8_group(x)
    qb, sb = lowbit.quantize_fp8_block(x)
    q8p, s8p = lowbit.quantize_fp8_group_packed(x)
    qm, sm = lowbit.quantize_mxfp8(x)
    outs = [lowbit.dequantize_mxfp4(q4, s4), lowbit.dequantize_nvfp4(qn, sn, gn.clone().requires_grad_()),
            lowbit.dequantize_fp8_group(q8, s8.clone().requires_grad_()),
            lowbit.dequantize_fp8_block(qb, sb.clone().requires_grad_()), lowbit.dequantize_fp8_group_packed(q8p, s8p),
            lowbit.dequantize_mxfp8(qm, sm)]
    assert not any(t.requires_grad for t in outs)
    assert torch.equal(raw(outs[2]), raw(lowbit.dequantize_fp8_group(q8, s8)))
