"""Every public op captured in a torch.cuda.CUDAGraph on CUDA tensors, as auto-dispatch runs it and as
the forced reference (backend="cpu", what a fallback runs) runs it: warm-up off the capture stream,
capture, then new input values copied into the captured inputs and a replay, whose outputs must be the
bytes an eager call on the new values gives. A host-to-device copy or a host sync inside a call makes
the capture raise. unified_attention's reference reads cu_seqlens_q on the host: its record says
graph_safe=False, and that is what is asserted instead."""

import pytest
import torch
from oracles import raw
from preambles import on_cuda

import lowbit
from lowbit import registry

pytestmark = on_cuda()

ROWS, K = 37, 512  # an odd row count, four FP8 groups, 16 MX and 32 NVFP4 blocks a row


def randn(shape, seed: int, dtype=torch.bfloat16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2.0 ** torch.randint(-8, 8, shape[:-1] + (1,), generator=g)).to(dtype)


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    """A one-byte float (E4M3, E2M1 pairs, E8M0) goes between devices as bytes."""
    return t if t.element_size() != 1 or t.dtype == torch.uint8 else t.view(torch.uint8)


def to_cuda(t: torch.Tensor) -> torch.Tensor:
    return cpu_copy(t).cuda().view(t.dtype)


def copy_into(static: torch.Tensor, new: torch.Tensor) -> None:
    cpu_copy(static).copy_(cpu_copy(new))


# Each case: inputs(seed) -> tensors on the CPU (made by the reference where they are quantized data),
# and run(backend, *inputs) -> the op's outputs.

def _mx(seed):
    return lowbit.quantize_mxfp4(randn((ROWS, K), seed), backend="cpu")


def _fp8_packed(seed):
    return lowbit.quantize_fp8_group_packed(randn((ROWS, K), seed), backend="cpu")


def _fp8_group(seed):
    return lowbit.quantize_fp8_group(randn((ROWS, K), seed), scale_layout="column_major_tma", backend="cpu")


def _fp8_block(seed):
    return lowbit.quantize_fp8_block(randn((300, K), seed), backend="cpu")


def _nv(seed):
    return lowbit.quantize_nvfp4(randn((ROWS, K), seed), backend="cpu")


def _group_quant(backend, x):
    x_q = torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=torch.uint8, device=x.device)
    x_s = torch.empty((*x.shape[:-1], x.shape[-1] // 32), dtype=torch.float32, device=x.device)
    lowbit.per_token_group_quant_mxfp4(x, x_q, x_s, backend=backend)
    return x_q, x_s


def _fp8_packed_out(backend, x):
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    rows = -(-x.shape[0] // 4) * 4
    s = torch.empty(x.shape[-1] // 512, rows, dtype=torch.int32, device=x.device).t()[:x.shape[0]]
    return lowbit.quantize_fp8_group_packed(x, out=(q, s), backend=backend)


def _scaled_fp4_quant(backend, x, gs):
    # vLLM's signature has no backend: the case runs it under LOWBIT_BACKEND instead (see run_case)
    return lowbit.scaled_fp4_quant(x, gs)


CASES = {
    "quantize_mxfp4": (lambda s: (randn((ROWS, K), s),), lambda b, x: lowbit.quantize_mxfp4(x, backend=b)),
    "quantize_mxfp4 floor": (lambda s: (randn((ROWS, K), s),),
                             lambda b, x: lowbit.quantize_mxfp4(x, scale_rule="floor", backend=b)),
    "per_token_group_quant_mxfp4": (lambda s: (randn((ROWS, K), s),), _group_quant),
    "dequantize_mxfp4": (_mx, lambda b, q, s: lowbit.dequantize_mxfp4(q, s, backend=b)),
    "quantize_fp8_group_packed": (lambda s: (randn((ROWS, K), s),),
                                  lambda b, x: lowbit.quantize_fp8_group_packed(x, backend=b)),
    "quantize_fp8_group_packed out=": (lambda s: (randn((ROWS, K), s),), _fp8_packed_out),
    "dequantize_fp8_group_packed": (_fp8_packed, lambda b, q, s: lowbit.dequantize_fp8_group_packed(q, s, backend=b)),
    "quantize_fp8_group": (lambda s: (randn((ROWS, K), s),),
                           lambda b, x: lowbit.quantize_fp8_group(x, scale_layout="column_major_tma", backend=b)),
    "quantize_fp8_block": (lambda s: (randn((300, K), s),), lambda b, w: lowbit.quantize_fp8_block(w, backend=b)),
    "dequantize_fp8_group": (_fp8_group, lambda b, q, s: lowbit.dequantize_fp8_group(q, s, backend=b)),
    "dequantize_fp8_block": (_fp8_block, lambda b, q, s: lowbit.dequantize_fp8_block(q, s, backend=b)),
    "quantize_nvfp4": (lambda s: (randn((ROWS, K), s),), lambda b, x: lowbit.quantize_nvfp4(x, backend=b)),
    "quantize_nvfp4 per_row swizzled": (
        lambda s: (randn((ROWS, K), s),),
        lambda b, x: lowbit.quantize_nvfp4(x, per_row=True, scale_layout="swizzled", backend=b)),
    "quantize_nvfp4 global_scale given": (
        lambda s: (randn((ROWS, K), s), lowbit.nvfp4_global_scale(randn((ROWS, K), s), backend="cpu")),
        lambda b, x, gs: lowbit.quantize_nvfp4(x, gs, backend=b)),
    "nvfp4_global_scale": (lambda s: (randn((ROWS, K), s),), lambda b, x: lowbit.nvfp4_global_scale(x, backend=b)),
    "scaled_fp4_quant": (
        lambda s: (randn((ROWS, K), s), lowbit.nvfp4_global_scale(randn((ROWS, K), s), backend="cpu")),
        _scaled_fp4_quant),
    "dequantize_nvfp4": (_nv, lambda b, q, bs, gs: lowbit.dequantize_nvfp4(q, bs, gs, backend=b)),
}

def outputs(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def run_case(name: str, backend: str, monkeypatch) -> None:
    make, call = CASES[name]
    if name == "scaled_fp4_quant" and backend != "auto":
        monkeypatch.setenv("LOWBIT_BACKEND", backend)
    static = [to_cuda(t) for t in make(0)]

    side = torch.cuda.Stream()  # warm-up (compiles, fills the dispatch caches) off the capture stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call(backend, *static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = outputs(call(backend, *static))
    for seed in (1, 2):
        new = make(seed)
        for s, n in zip(static, new):
            copy_into(s, n)
        inputs = {t.untyped_storage().data_ptr() for t in static}
        for out in captured:  # the replay must write every byte; a global scale given is returned as it is
            if out.untyped_storage().data_ptr() not in inputs:
                cpu_copy(out).fill_(0x5A if out.element_size() == 1 else 7)
        graph.replay()
        torch.cuda.synchronize()
        eager = outputs(call(backend, *[to_cuda(t) for t in new]))
        assert len(eager) == len(captured)
        for i, (got, want) in enumerate(zip(captured, eager)):
            assert (got.dtype, got.shape) == (want.dtype, want.shape), (name, i)
            assert torch.equal(raw(got), raw(want)), f"{name} ({backend}): output {i} of the replay on seed {seed}"


@pytest.mark.parametrize("name", list(CASES))
def test_auto_dispatch_path_is_captured_and_replays_the_eager_bytes(name, monkeypatch):
    # whatever auto-dispatch picks on this GPU, a fallback included (tests/backends/cuda/
    # test_dispatch_on_gpu.py says which it should be)
    run_case(name, "auto", monkeypatch)


@pytest.mark.parametrize("name", list(CASES))
def test_forced_reference_on_cuda_tensors_is_captured_and_replays_the_eager_bytes(name, monkeypatch):
    run_case(name, "cpu", monkeypatch)


def _attention_case(seed: int, pages: int):
    g = torch.Generator().manual_seed(seed)
    seqs = 3
    q = torch.randn(seqs * 2 + 1, 8, 64, generator=g).bfloat16()
    cache = torch.randn(pages * seqs, 16, 2, 64, generator=g).bfloat16()
    table = torch.randperm(pages * seqs, generator=g).to(torch.int32).reshape(seqs, pages)
    cu = torch.arange(0, 2 * seqs + 1, 2, dtype=torch.int32)
    used = torch.randint(2, 16 * pages, (seqs,), generator=g, dtype=torch.int32)
    return q, cache, cache.flip(0).contiguous(), cu, used, table


def _attend(q, k, v, cu, used, table, out):
    return lowbit.unified_attention(q, k, v, cu_seqlens_q=cu, seqused_k=used, block_table=table, max_seqlen_q=2,
                                    max_seqlen_k=table.shape[1] * 16, out=out)


# 4 pages a sequence: one key tile, the 2-D launch; 32: split-KV and its reduction
@pytest.mark.parametrize("pages", [4, 32], ids=["2d", "split"])
def test_unified_attention_auto_dispatch_path_is_captured_and_replays_the_eager_bytes(pages):
    static = [t.cuda() for t in _attention_case(0, pages)]
    out = torch.zeros(static[0].shape, dtype=torch.bfloat16, device="cuda")  # rows outside sequences stay 0
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _attend(*static, out)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _attend(*static, out)
    for seed in (1, 2):
        new = _attention_case(seed, pages)
        for s, n in zip(static, new):
            s.copy_(n)
        graph.replay()
        torch.cuda.synchronize()
        want = _attend(*[t.cuda() for t in new], torch.zeros_like(out))
        assert torch.equal(raw(out), raw(want)), f"replay on seed {seed}"


def test_unified_attention_reference_says_it_cannot_be_captured():
    [record] = [k.capability for k in registry.get("cpu").kernels_for("unified_attention")]
    assert record.graph_safe is False
