"""The reference takes any device's tensors: forced onto CUDA tensors (and as auto-dispatch's
answer there, until a faster backend exists) it writes the bits it writes on the CPU."""

import pytest
import torch
from oracles import raw, storage_words
from preambles import on_cuda

import lowbit

pytestmark = on_cuda()

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def test_the_probed_arch_is_the_devices_compute_capability():
    major, minor = torch.cuda.get_device_capability()
    verdict = lowbit.supports("quantize_mxfp4", torch.empty(2, 32, device="cuda"))
    assert verdict.call.arch == major * 10 + minor


@pytest.mark.parametrize("backend", ["cpu", "auto"])
@pytest.mark.parametrize("rule", ["rceil", "floor"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mxfp4_on_cuda_tensors_matches_the_cpu_bits(spicy, dtype, rule, backend):
    x = spicy((257, 2048), dtype, exponent_run=32, seed=dtype.itemsize)
    q, s = lowbit.quantize_mxfp4(x.cuda(), scale_rule=rule, backend=backend)
    want_q, want_s = lowbit.quantize_mxfp4(x, scale_rule=rule)
    assert q.device.type == "cuda"
    assert torch.equal(raw(q), raw(want_q)) and torch.equal(raw(s), raw(want_s))
    back = lowbit.dequantize_mxfp4(q, s, dtype=torch.float32, backend=backend)
    assert torch.equal(raw(back), raw(lowbit.dequantize_mxfp4(want_q, want_s, dtype=torch.float32)))


@pytest.mark.parametrize("backend", ["cpu", "auto"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(127, 7168), (3, 5, 384), (1, 128), (0, 256)])
def test_fp8_group_packed_on_cuda_tensors_matches_the_cpu_bits(spicy, dtype, shape, backend):
    x = spicy(shape, dtype, exponent_run=shape[-1], seed=shape[-1])
    q, s = lowbit.quantize_fp8_group_packed(x.cuda(), backend=backend)
    want_q, want_s = lowbit.quantize_fp8_group_packed(x)
    assert (s.shape, s.stride()) == (want_s.shape, want_s.stride())
    assert torch.equal(raw(q), raw(want_q)) and torch.equal(storage_words(s), storage_words(want_s))
    back = lowbit.dequantize_fp8_group_packed(q, s, dtype=torch.float32, backend=backend)
    assert torch.equal(raw(back), raw(lowbit.dequantize_fp8_group_packed(want_q, want_s, dtype=torch.float32)))


def test_fp8_out_buffers_on_cuda(spicy):
    x = spicy((5, 1024), torch.bfloat16, exponent_run=1024, seed=1)
    q_buf = torch.full((8, 1024), 0xAB, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    s_buf = torch.empty_strided((5, 2), (1, 8), dtype=torch.int32, device="cuda")
    lowbit.quantize_fp8_group_packed(x.cuda(), out=(q_buf, s_buf), backend="cpu")
    want_q, want_s = lowbit.quantize_fp8_group_packed(x)
    assert torch.equal(raw(q_buf[:5]), raw(want_q)) and not raw(q_buf[5:]).any()
    assert torch.equal(s_buf.cpu(), want_s.cpu())
