"""NVFP4 on NVIDIA GPUs (lowbit.backends.cuda) against the CPU reference, byte for byte: every
bfloat16/float16 pattern under several block scales, random tensors of every input dtype over a
grid of row counts and last dims in every global-scale mode and both scale layouts, N-D and strided
inputs, NaN/Inf/zero blocks and unusable scales, the global scale on its own, dequantize into every
dtype; no host sync (torch's sync debug mode), CUDA-graph capture with the scale computed inside
the graph, torch.compile(fullgraph=True), and vLLM's scaled_fp4_quant.

The GPU side goes through the public API with auto-dispatch, which must pick the cuda backend
(LOWBIT_STRICT=1 makes a fallback to the reference an error). The expectation is `backend="cpu"` on
the CPU copy of the same input. Never a tolerance.
"""

import numpy as np
import pytest
import torch
from oracles import ALL16, arrangements, bits16
from preambles import ARCH, on_cuda

import lowbit
from lowbit import spec

pytestmark = [*on_cuda(80, "the cuda backend's NVFP4 kernels need sm_80+"), pytest.mark.usefixtures("strict_dispatch")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ("linear", "swizzled")
MODES = ("tensor", "row", "given", "given_per_row")


def scale_for(mode: str, x: torch.Tensor):
    """(global_scale argument, per_row) for a mode: None computes it; given ones are spread over the range."""
    if mode == "tensor":
        return None, False
    if mode == "row":
        return None, True
    if mode == "given":
        return torch.tensor(271.5, device=x.device), False
    rows = x.shape[:-1]
    return torch.exp2(torch.linspace(-20, 40, max(1, int(np.prod(rows))), device=x.device))[:int(np.prod(rows))]\
        .reshape(rows), False


def assert_same_bytes(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    g = got.view(torch.uint8).cpu() if got.dtype != torch.float32 else got.view(torch.int32).cpu()
    w = want.view(torch.uint8).cpu() if want.dtype != torch.float32 else want.view(torch.int32).cpu()
    assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} != {tuple(w.shape)}"
    if not torch.equal(g, w):
        bad = (g != w).nonzero()
        at = tuple(bad[0].tolist())
        raise AssertionError(f"{what}: {len(bad)} of {g.numel()} differ; first at {at}: got {int(g[at]):#x}, "
                             f"want {int(w[at]):#x}")


def check(x: torch.Tensor, mode: str, layout: str, resolved=None) -> tuple:
    gs, per_row = scale_for(mode, x)
    got = lowbit.quantize_nvfp4(x, gs, per_row=per_row, scale_layout=layout)
    want = lowbit.quantize_nvfp4(x.cpu(), None if gs is None else gs.cpu(), per_row=per_row, scale_layout=layout,
                                 backend="cpu")
    assert got[0].device.type == got[1].device.type == got[2].device.type == "cuda"
    assert (got[0].dtype, got[1].dtype, got[2].dtype) == (torch.float4_e2m1fn_x2, torch.float8_e4m3fn, torch.float32)
    for g, w, what in zip(got, want, ("q", "block scales", "global scale")):
        assert_same_bytes(g, w, f"{what} ({mode}, {layout}, {tuple(x.shape)}, {x.dtype})")
    if gs is not None:
        assert got[2] is gs
    return got


def test_auto_dispatch_picks_the_cuda_kernels(resolved):
    x = torch.randn(8, 64, device="cuda")
    lowbit.quantize_nvfp4(x)
    q, s, g = lowbit.quantize_nvfp4(x, scale_layout="swizzled")
    lowbit.nvfp4_global_scale(x)
    lowbit.dequantize_nvfp4(q, s, g, scale_layout="swizzled")
    want = "cuda/ptx" if ARCH in (100, 103, 110, 120, 121) else "cuda/triton"
    assert resolved[:2] == [want, want] and resolved[2:] == ["cuda/triton", "cuda/triton"]


# --- every 16-bit pattern -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_16_bit_pattern_under_several_block_scales(mode, dtype):
    anchors = [bits16(6.0 * 2.0**k, dtype) for k in ((-120, -3, 0, 60) if dtype == torch.bfloat16 else (-14, 0, 10))]
    bits = arrangements(ALL16, anchors + [bits16(7.0, dtype)], 16, (7,))
    x = torch.from_numpy(bits.astype(np.uint16).view(np.int16).copy()).view(dtype).cuda()
    for layout in LAYOUTS:
        check(x.reshape(-1, 32), mode, layout)  # 2 blocks a row


def test_every_bfloat16_value_as_float32():
    bits = arrangements(ALL16, [bits16(6.0, torch.bfloat16)], 16, (7,))
    x = torch.from_numpy((bits.astype(np.uint32) << 16).view(np.float32).copy()).cuda()
    for mode in MODES:
        check(x.reshape(-1, 32), mode, "swizzled")


# --- random tensors, shapes, strides --------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [0, 1, 3, 127, 129, 1000])
@pytest.mark.parametrize("k", [16, 48, 2048, 7168, 16400])
def test_random_tensors_over_rows_and_last_dims(spicy, dtype, rows, k):
    x = spicy((rows, k), dtype, exponent_run=16, seed=rows + k).cuda()
    for mode in MODES:
        for layout in LAYOUTS:
            check(x, mode, layout)


def test_n_d_and_strided_inputs(spicy):
    base = spicy((12, 5, 512), torch.float32, exponent_run=16, seed=21).cuda()
    for x in (base, base.transpose(0, 1)[:, ::2], base.reshape(60, 512)[::3, 128:], base[..., ::2],
              spicy((256, 48), torch.bfloat16, exponent_run=1, seed=22).cuda().t()):
        for mode in MODES:
            for layout in LAYOUTS:
                check(x, mode, layout)


def test_nan_inf_zero_blocks_and_unusable_scales():
    nan, inf = float("nan"), float("inf")
    blocks = [[nan] * 16, [-nan] + [1.0] * 15, [inf] * 16, [-inf, 1.0, -2.0] + [0.5] * 13, [0.0] * 16, [-0.0] * 16,
              [3.4e38, -3.4e38] * 8, [2.0**-149] * 16, [0.5 * i for i in range(16)]]
    x = torch.tensor(blocks, dtype=torch.float32).reshape(1, -1).repeat(3, 1).cuda()
    x[2] = 0
    for mode in MODES:
        for layout in LAYOUTS:
            check(x, mode, layout)
    for value in (0.0, -1.0, nan, inf, 1e-40, 2.0**119, 2.0**-119, 2.0**118, 2.0**-118):
        gs = torch.tensor(value, device="cuda")
        for layout in LAYOUTS:
            got = lowbit.quantize_nvfp4(x, gs, scale_layout=layout)
            want = lowbit.quantize_nvfp4(x.cpu(), gs.cpu(), scale_layout=layout, backend="cpu")
            assert_same_bytes(got[0], want[0], f"q, gs {value}")
            assert_same_bytes(got[1], want[1], f"scales, gs {value}")


@pytest.mark.parametrize("per_row", [False, True])
def test_global_scale_on_its_own(spicy, per_row):
    for shape in [(1, 16), (37, 96), (4096, 7168), (3, 5, 64), (3, 0)]:
        x = spicy(shape, torch.bfloat16, exponent_run=16, seed=shape[0]).cuda() if shape[-1] else \
            torch.empty(shape, device="cuda")
        got = lowbit.nvfp4_global_scale(x, per_row=per_row)
        assert_same_bytes(got, lowbit.nvfp4_global_scale(x.cpu(), per_row=per_row, backend="cpu"), f"gs {shape}")
        assert_same_bytes(got, lowbit.quantize_nvfp4(x, per_row=per_row)[2], "the scale quantize computes")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dequantize_every_byte_and_scale(dtype, layout):
    g = torch.Generator().manual_seed(9)
    rows, k = 300, 128
    q = torch.randint(0, 256, (rows, k // 2), generator=g, dtype=torch.uint8)
    q[:256, :1] = torch.arange(256, dtype=torch.uint8).reshape(-1, 1)
    linear = torch.randint(0, 256, (rows, k // 16), generator=g, dtype=torch.uint8)
    linear[:256, 0] = torch.arange(256, dtype=torch.uint8)
    scales = lowbit.quantize_nvfp4(torch.zeros(rows, k), torch.tensor(1.0), scale_layout=layout)[1].view(torch.uint8)
    if layout == "swizzled":

        scales.view(-1)[spec.swizzled_offsets(rows, k // 16, "cpu")] = linear.reshape(-1)
    else:
        scales.copy_(linear)
    gs = torch.exp2(torch.linspace(-117, 117, rows))
    gs[5], gs[6] = 0.0, float("nan")
    for scale in (gs, torch.tensor(2688.0)):
        got = lowbit.dequantize_nvfp4(q.cuda(), scales.cuda(), scale.cuda(), scale_layout=layout, dtype=dtype)
        want = lowbit.dequantize_nvfp4(q, scales, scale, scale_layout=layout, dtype=dtype, backend="cpu")
        view = torch.int32 if dtype == torch.float32 else torch.int16
        assert torch.equal(got.cpu().view(view), want.view(view)), (dtype, layout, scale.shape)


# --- no host sync, CUDA graphs, torch.compile ------------------------------------------------------

def test_no_call_synchronises_with_the_host():
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    gs = torch.tensor(100.0, device="cuda")
    calls = [lambda: lowbit.quantize_nvfp4(x), lambda: lowbit.quantize_nvfp4(x, per_row=True),
             lambda: lowbit.quantize_nvfp4(x, gs, scale_layout="swizzled"), lambda: lowbit.nvfp4_global_scale(x)]
    q, s, g = lowbit.quantize_nvfp4(x)
    calls.append(lambda: lowbit.dequantize_nvfp4(q, s, g))
    for call in calls:
        call()  # compile and remember the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for call in calls:
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_graph_capture_with_the_scale_computed_inside_replays_new_data(per_row, layout):
    x = torch.randn(200, 512, device="cuda", dtype=torch.bfloat16)
    lowbit.quantize_nvfp4(x, per_row=per_row, scale_layout=layout)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q, s, g = lowbit.quantize_nvfp4(x, per_row=per_row, scale_layout=layout)
    for seed in (1, 2):
        x.copy_(torch.randn(200, 512, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16) * seed * 10)
        graph.replay()
        torch.cuda.synchronize()
        want = lowbit.quantize_nvfp4(x.cpu(), per_row=per_row, scale_layout=layout, backend="cpu")
        for got, w, what in zip((q, s, g), want, ("q", "scales", "gs")):
            assert_same_bytes(got, w, f"{what} after replay {seed}")


def test_compile_fullgraph_matches_eager():
    x = torch.randn(33, 256, device="cuda", dtype=torch.bfloat16)

    def f(x):
        q, s, g = lowbit.quantize_nvfp4(x, scale_layout="swizzled")
        return q, s, g, lowbit.dequantize_nvfp4(q, s, g, scale_layout="swizzled", dtype=torch.float32)

    got, want = torch.compile(f, fullgraph=True)(x), f(x)
    for a, b, what in zip(got, want, ("q", "scales", "gs", "dequantized")):
        assert_same_bytes(a, b, what)


def test_scaled_fp4_quant_vllm_conventions():
    x = torch.randn(300, 256, device="cuda", dtype=torch.float16)
    gs = 2688.0 / x.abs().max().float()
    for swizzled in (True, False):
        q, s = lowbit.scaled_fp4_quant(x, gs, is_sf_swizzled_layout=swizzled)
        assert q.dtype == torch.uint8 and q.shape == (300, 128) and s.dtype == torch.float8_e4m3fn
        assert s.shape == ((384, 16) if swizzled else (300, 16))
        want = lowbit.quantize_nvfp4(x.cpu(), gs.cpu(), scale_layout="swizzled" if swizzled else "linear",
                                     backend="cpu")
        assert_same_bytes(q, want[0], "q")
        assert_same_bytes(s, want[1], "scales")
