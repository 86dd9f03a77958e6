"""The eager fast path on the GPU: a later call of a kind runs Triton's compiled launcher directly
(no JIT binding, no launch-table resolution, no capability check), with the bits of the first call's
JIT launch and of the reference; calls of another specialisation (an unaligned input, another row
count class) get their own compiled kernel. Graph capture of the fast path is in each op's suite."""

import pytest
import torch
import triton
from lowbit.backends.triton import launch as triton_launch
from lowbit.backends.triton import mxfp4 as triton_mxfp4
from oracles import raw
from preambles import on_cuda

import lowbit
from lowbit.capability import Capability

pytestmark = on_cuda(89, "the cuda FP8 and attention kernels used here need sm_89+")


def sample(shape, seed, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2.0 ** torch.randint(-20, 20, shape, generator=g)).to(dtype)


def attention_inputs(seqs, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    pages = 4 * seqs
    table = torch.randperm(pages, device="cuda", generator=g).to(torch.int32).reshape(seqs, 4)
    cache = lambda: torch.randn(pages, 16, 2, 64, device="cuda", generator=g, dtype=torch.bfloat16)  # noqa: E731
    return dict(q=torch.randn(seqs, 8, 64, device="cuda", generator=g, dtype=torch.bfloat16), k_cache=cache(),
                v_cache=cache(), cu_seqlens_q=torch.arange(seqs + 1, device="cuda", dtype=torch.int32),
                seqused_k=torch.full((seqs,), 60, device="cuda", dtype=torch.int32), block_table=table,
                max_seqlen_q=1, max_seqlen_k=60)


CALLS = {
    "quantize_mxfp4": lambda seed: lowbit.quantize_mxfp4(sample((24, 2048), seed).cuda()),
    "per_token_group_quant_mxfp4": lambda seed: (lambda x, q, s: (lowbit.per_token_group_quant_mxfp4(x, q, s), q, s)[1:])(
        sample((24, 2048), seed).cuda(), torch.empty(24, 1024, dtype=torch.uint8, device="cuda"),
        torch.empty(24, 64, device="cuda")),
    "quantize_fp8_group_packed": lambda seed: lowbit.quantize_fp8_group_packed(sample((24, 2048), seed).cuda()),
    "quantize_mxfp8": lambda seed: lowbit.quantize_mxfp8(sample((24, 2048), seed).cuda(), scale_layout="swizzled"),
    "dequantize_mxfp8": lambda seed: (lowbit.dequantize_mxfp8(*lowbit.quantize_mxfp8(sample((24, 2048), seed).cuda())),),
    "unified_attention": lambda seed: (lowbit.unified_attention(**attention_inputs(4, seed)),),
}


@pytest.fixture(name="counted")
def _counted(monkeypatch):
    """Counts of Triton JIT entry-point calls, launch-table resolutions and capability checks."""
    counts = {"jit": 0, "fitting": 0, "unmet": 0}

    def wrap(owner, name, key):
        real = getattr(owner, name)

        def counting(*args, **kwargs):
            counts[key] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, counting)

    wrap(triton.runtime.jit.JITFunction, "run", "jit")
    wrap(triton_mxfp4, "fitting", "fitting")
    wrap(Capability, "unmet", "unmet")
    return counts


@pytest.mark.parametrize("op", CALLS)
def test_a_later_call_of_a_kind_binds_nothing_and_gives_the_first_calls_bits(op, counted):
    call = CALLS[op]
    first = call(0)  # resolved afresh (each test starts with no decisions); compiled kernels may be kept
    assert counted["unmet"] >= 1
    for key in counted:
        counted[key] = 0
    again = call(0)  # the same data through the compiled launcher
    other = call(1)
    torch.cuda.synchronize()
    assert counted == {"jit": 0, "fitting": 0, "unmet": 0}
    for a, b in zip(first, again):
        assert torch.equal(raw(a), raw(b))
    assert any(not torch.equal(raw(a), raw(b)) for a, b in zip(first, other))


def test_the_fast_path_matches_the_reference_across_specialisations():
    """Row counts in every size class; aligned and unaligned inputs; row strides that are and are not
    multiples of 16: each its own compiled kernel, each with the reference's bits."""
    base = sample((1100, 2049 + 32), 3)  # rows of 2081 elements: a stride that is no multiple of 16
    base_gpu = base.cuda()
    views = (lambda t, rows: t[:rows, :2048], lambda t, rows: t[:rows, 1:2049],
             lambda t, rows: t[:rows, 32:2048 + 32].contiguous(), lambda t, rows: t[:rows, 1:2048 + 33])
    for rows in (1, 7, 16, 128, 129, 1024, 1100):
        for view in views:
            want = lowbit.quantize_mxfp4(view(base, rows), backend="cpu")
            for _ in range(2):  # the second call takes the compiled launcher
                got = lowbit.quantize_mxfp4(view(base_gpu, rows))
                assert all(torch.equal(raw(g), raw(w)) for g, w in zip(got, want)), (rows, view(base, rows).stride())


def test_a_launch_keeps_one_compiled_kernel_per_specialisation():
    x = sample((16, 4096), 5).cuda()
    portable = "cuda/triton"  # the launches looked up below are the portable hooks'
    lowbit.quantize_mxfp4(x, backend=portable)
    lowbit.quantize_mxfp4(x, backend=portable)
    # unaligned, row stride 8192: another specialisation
    lowbit.quantize_mxfp4(torch.cat([x, x], 1)[:, 1:4097], backend=portable)
    tiers = triton_mxfp4.launches(4096, False, False, False, False, triton_mxfp4.amax_bits_portable,
                                  triton_mxfp4.encode_portable, triton_mxfp4.rceil_exponent_portable, None)
    max_rows, _, _, launch = tiers[0]
    assert max_rows >= 16 and len(launch.compiled) >= 2


def test_launches_honour_the_current_stream():
    x = sample((64, 2048), 7).cuda()
    lowbit.quantize_mxfp4(x)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        q, s = lowbit.quantize_mxfp4(x)
        assert triton_launch._driver()[1](torch.cuda.current_device()) == stream.cuda_stream
    stream.synchronize()
    want = lowbit.quantize_mxfp4(x.cpu(), backend="cpu")
    assert torch.equal(raw(q), raw(want[0])) and torch.equal(raw(s), raw(want[1]))
