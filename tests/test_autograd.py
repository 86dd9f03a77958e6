"""lowbit's ops have no gradient: no output requires grad, whatever the inputs do, and a buffer that
requires grad is refused before anything is written (torch refuses an in-place write into a leaf
that requires grad; lowbit refuses every such buffer, since it writes no gradient), by the call, its
fake and lowbit.supports alike. The bits are those of the same call on detached inputs."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit

POISON = 0x5A


def x_grad():
    return torch.randn(4, 256, generator=torch.Generator().manual_seed(0)).requires_grad_()


def raw(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


QUANTIZE = {
    "quantize_mxfp4": lambda x: lowbit.quantize_mxfp4(x),
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
    outs = [lowbit.dequantize_mxfp4(q4, s4), lowbit.dequantize_nvfp4(qn, sn, gn.clone().requires_grad_()),
            lowbit.dequantize_fp8_group(q8, s8.clone().requires_grad_()),
            lowbit.dequantize_fp8_block(qb, sb.clone().requires_grad_()), lowbit.dequantize_fp8_group_packed(q8p, s8p)]
    assert not any(t.requires_grad for t in outs)
    assert torch.equal(raw(outs[2]), raw(lowbit.dequantize_fp8_group(q8, s8)))


def _buffers(which):
    """(op name, call(x, buffers), supports kwargs builder, buffers with `which` requiring grad)."""
    if which.startswith("mx"):
        bufs = [torch.full((4, 128), POISON, dtype=torch.uint8), torch.full((4, 8), 0.5)]
        call = lambda x, b: lowbit.per_token_group_quant_mxfp4(x, *b)  # noqa: E731
        query = lambda x, b: lowbit.supports("per_token_group_quant_mxfp4", x, *b)  # noqa: E731
        grad_at = 1
    elif which.startswith("fp8-group"):
        bufs = [torch.full((4, 256), POISON, dtype=torch.uint8).view(torch.float8_e4m3fn), torch.full((4, 2), 0.5)]
        call = lambda x, b: lowbit.quantize_fp8_group(x, out=tuple(b))  # noqa: E731
        query = lambda x, b: lowbit.supports("quantize_fp8_group", x, out=tuple(b))  # noqa: E731
        grad_at = 1
    else:  # the packed op's q_buf: a float8 tensor that requires grad
        bufs = [torch.full((4, 256), POISON, dtype=torch.uint8).view(torch.float8_e4m3fn),
                torch.full((1, 4), 7, dtype=torch.int32).t()]
        call = lambda x, b: lowbit.quantize_fp8_group_packed(x, out=tuple(b))  # noqa: E731
        query = lambda x, b: lowbit.supports("quantize_fp8_group_packed", x, out=tuple(b))  # noqa: E731
        grad_at = 0
    bufs[grad_at] = bufs[grad_at].requires_grad_() if bufs[grad_at].is_floating_point() else bufs[grad_at]
    return call, query, bufs, grad_at


def _error(fn) -> str:
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("which", ["mx x_s", "fp8-group s_buf", "fp8-packed q_buf"])
def test_err_grad_a_buffer_that_requires_grad_is_refused_alike_before_anything_is_written(which):
    call, query, bufs, grad_at = _buffers(which)
    assert bufs[grad_at].requires_grad
    before = [raw(b).clone() for b in bufs]
    x = x_grad().detach()
    real = _error(lambda: call(x, bufs))
    assert "requires grad, and lowbit writes it in place without a gradient" in real
    assert all(torch.equal(raw(b), w) for b, w in zip(bufs, before))
    assert _error(lambda: query(x, bufs)) == real
    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(b) for b in bufs]
        fake = _error(lambda: call(mode.from_tensor(x), fakes))
    assert fake.replace("FakeTensor", "Tensor") == real
