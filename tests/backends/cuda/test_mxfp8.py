"""MXFP8 on NVIDIA GPUs (lowbit.backends.cuda, sm_89+) against the CPU reference, byte for byte: every
bfloat16 and float16 pattern in sorted blocks and next to several anchors, under both scale rules and
both scale layouts; random tensors of every input dtype over a grid of row counts and last dims; N-D and
strided inputs; NaN/Inf/zero blocks and the rceil thresholds where fl32(amax * fl32(1/448)) is subnormal;
the hardware E4M3 cast against the kernel's integer path; dequantize of every E4M3 byte under every scale
byte into every dtype, in both layouts and from strided q; no host sync (torch's sync debug mode),
CUDA-graph capture of both ops replaying new data, and torch.compile(fullgraph=True).

The GPU side goes through the public API with auto-dispatch, which must pick cuda/triton (LOWBIT_STRICT=1
makes a fallback to the reference an error). The expectation is `backend="cpu"` on the CPU copy of the
same input. Never a tolerance.
"""

import numpy as np
import pytest
import torch
from oracles import ALL16, bits16

import lowbit
from lowbit import dispatch, spec

ARCH = (lambda c: c[0] * 10 + c[1])(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CI row cuda)"),
    pytest.mark.skipif(ARCH is not None and ARCH < 89,
                       reason="the cuda backend's MXFP8 kernels need sm_89+ (the hardware E4M3 cast)"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
RULES = ("rceil", "floor")
LAYOUTS = ("linear", "swizzled")
INT_VIEW = {4: torch.int32, 2: torch.int16, 1: torch.uint8}


@pytest.fixture(autouse=True)
def _strict(_fresh_dispatch, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bits of t on the CPU (viewed as integers first: float8_e8m0fnu has no copy kernels)."""
    return t.view(INT_VIEW[t.element_size()]).cpu()


def to_cuda(t: torch.Tensor) -> torch.Tensor:
    return t.view(INT_VIEW[t.element_size()]).cuda().view(t.dtype)


def same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal shapes and bits (got on the GPU)."""
    assert got.device.type == "cuda" and got.shape == want.shape, (what, got.device, got.shape, want.shape)
    g, w = bits(got), bits(want)
    if not torch.equal(g, w):
        bad = (g != w).nonzero()
        at = tuple(bad[0].tolist())
        raise AssertionError(f"{what}: {len(bad)} of {g.numel()} differ; first at {at}: got {int(g[at]):#x}, "
                             f"want {int(w[at]):#x}")


def check(x: torch.Tensor, rule: str, layout: str) -> tuple:
    got = lowbit.quantize_mxfp8(x, scale_rule=rule, scale_layout=layout)
    want = lowbit.quantize_mxfp8(x.cpu(), scale_rule=rule, scale_layout=layout, backend="cpu")
    what = f"({rule}, {layout}, {tuple(x.shape)}, {x.dtype})"
    assert (got[0].dtype, got[1].dtype) == (torch.float8_e4m3fn, torch.float8_e8m0fnu)
    same(got[1], want[1], "scales " + what)
    same(got[0], want[0], "q " + what)
    return got


def test_auto_dispatch_picks_the_cuda_kernels(resolved):
    x = torch.randn(8, 64, device="cuda", dtype=torch.bfloat16)
    q, s = lowbit.quantize_mxfp8(x)
    lowbit.dequantize_mxfp8(q, s)
    qs, ss = lowbit.quantize_mxfp8(x, scale_rule="floor", scale_layout="swizzled")
    lowbit.dequantize_mxfp8(qs, ss, scale_layout="swizzled", dtype=torch.float32)
    assert resolved == ["cuda/triton"] * 4


# --- every 16-bit pattern -------------------------------------------------------------------------

def every_pattern_blocks(anchors):
    """All 65,536 patterns sorted by magnitude in blocks of 32 (every block its own scale), then 31 a block
    next to each anchor pattern (which fixes the block's amax)."""
    with np.errstate(invalid="ignore"):
        values = np.abs((ALL16.astype(np.uint32) << 16).view(np.float32))
    rows = [ALL16[np.argsort(values, kind="stable")].reshape(-1, 32)]
    padded = np.concatenate([ALL16, np.zeros(-len(ALL16) % 31, dtype=ALL16.dtype)]).reshape(-1, 31)
    for anchor in anchors:
        rows.append(np.concatenate([padded, np.full((len(padded), 1), anchor, dtype=ALL16.dtype)], axis=1))
    return np.concatenate(rows)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rule", RULES)
def test_every_bfloat16_pattern(rule, layout):
    anchors = [bits16(448.0 * 2.0**k, torch.bfloat16) for k in (-126, -60, 0, 60, 119)] + [bits16(480.0, torch.bfloat16)]
    bits = every_pattern_blocks(anchors)
    x = torch.from_numpy(bits.astype(np.uint16).view(np.int16).copy()).view(torch.bfloat16).cuda()
    check(x, rule, layout)
    check(x.float(), rule, layout)  # every bfloat16 value as float32


@pytest.mark.parametrize("rule", RULES)
def test_every_float16_pattern(rule):
    values = np.arange(65536, dtype=np.uint16)
    order = np.argsort(np.abs(values.view(np.float16).astype(np.float64)), kind="stable")
    padded = np.concatenate([values, np.zeros(-len(values) % 31, dtype=np.uint16)]).reshape(-1, 31)
    rows = [values[order].reshape(-1, 32)] + [
        np.concatenate([padded, np.full((len(padded), 1), bits16(a, torch.float16), dtype=np.uint16)], axis=1)
        for a in (448.0 * 2.0**-20, 448.0, 480.0)]
    x = torch.from_numpy(np.concatenate(rows).view(np.float16).copy()).cuda()
    for layout in LAYOUTS:
        check(x, rule, layout)


# --- random tensors, shapes, strides --------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [0, 1, 3, 127, 129, 1000])
@pytest.mark.parametrize("k", [32, 96, 2048, 7168, 16416])
def test_random_tensors_over_rows_and_last_dims(spicy, dtype, rows, k):
    x = spicy((rows, k), dtype, exponent_run=32, seed=rows + k).cuda()
    for rule in RULES:
        for layout in LAYOUTS:
            check(x, rule, layout)


def test_n_d_and_strided_inputs(spicy):
    base = spicy((12, 5, 512), torch.float32, exponent_run=32, seed=21).cuda()
    for x in (base, base.transpose(0, 1)[:, ::2], base.reshape(60, 512)[::3, 128:], base[..., ::2],
              spicy((256, 64), torch.bfloat16, exponent_run=1, seed=22).cuda().t(), base[:1, :1].expand(7, 3, 512)):
        for rule in RULES:
            for layout in LAYOUTS:
                check(x, rule, layout)


def test_nan_inf_zero_blocks_and_the_rceil_thresholds():
    nan, inf = float("nan"), float("inf")
    blocks = [[nan] * 32, [-nan] + [1.0] * 31, [inf] * 32, [-inf, 1.0, -2.0, 2.0**127] + [0.5] * 28, [0.0] * 32,
              [-0.0] * 32, [3.4e38, -3.4e38] * 16, [2.0**-149] * 32, [500.0 - i for i in range(32)]]
    x = torch.tensor(blocks, dtype=torch.float32).reshape(1, -1).repeat(3, 1)
    x[2] = 0
    around = [b + d for b in (0x04600002, 0x04E00001, 0x00400000, 0x00800000) for d in range(-3, 4)]
    amax = torch.zeros(len(around), 64)
    amax.view(torch.int32)[:, 9] = torch.tensor(around, dtype=torch.int32)
    amax[:, 0] = amax[:, 9] * -0.75
    for t in (x.cuda(), amax.cuda()):
        for rule in RULES:
            for layout in LAYOUTS:
                check(t, rule, layout)


def test_the_hardware_e4m3_cast_gives_the_integer_paths_bits(spicy):
    from lowbit.backends.triton import mxfp8

    from lowbit.mxfp8 import quantize_outputs

    x = spicy((4096, 1024), torch.float32, exponent_run=32, seed=7).cuda()
    for rule in RULES:
        for layout in LAYOUTS:
            outputs = []
            for hardware in (True, False):
                q, s = quantize_outputs(x, layout)
                mxfp8.quantize(x, q, s, scale_rule=rule, swizzled=layout == "swizzled", hardware_e4m3=hardware)
                outputs.append((q.view(torch.uint8), s.view(torch.uint8)))
            assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


# --- dequantize -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dequantize_every_byte_under_every_scale_byte(dtype, layout):
    q = ((torch.arange(256).reshape(1, 256) + torch.arange(300).reshape(300, 1)) % 256).repeat(1, 4).to(torch.uint8)
    linear = ((torch.arange(300).reshape(300, 1) + torch.arange(0, 32 * 263, 263).reshape(1, 32)) % 256).to(torch.uint8)
    if layout == "swizzled":
        scales = torch.full((spec.round_up(300, 128) * 32,), 0xFF, dtype=torch.uint8)  # padding: never read
        scales[spec.swizzled_offsets(300, 32, "cpu")] = linear.reshape(-1)
        scales = scales.reshape(spec.swizzled_scale_shape(300, 32))
    else:
        scales = linear
    for qq, ss in ((q, scales), (q.view(torch.float8_e4m3fn), scales.view(torch.float8_e8m0fnu))):
        got = lowbit.dequantize_mxfp8(to_cuda(qq), to_cuda(ss), dtype=dtype, scale_layout=layout)
        want = lowbit.dequantize_mxfp8(qq, ss, dtype=dtype, scale_layout=layout, backend="cpu")
        same(got, want, f"{dtype} {layout}")


def test_dequantize_strided_and_n_d_q(spicy):
    x = spicy((6, 5, 256), torch.bfloat16, exponent_run=32, seed=9)
    q, s = lowbit.quantize_mxfp8(x, backend="cpu")
    wide = torch.zeros(6, 5, 512, dtype=torch.uint8)
    wide[..., ::2] = q.view(torch.uint8)
    views = {"contiguous": lambda t: t, "last_dim_strided": lambda t: t,
             "transposed": lambda t: t.transpose(0, 1)}
    for name, view in views.items():
        qq = wide[..., ::2] if name == "last_dim_strided" else view(q)
        q_gpu = to_cuda(wide)[..., ::2] if name == "last_dim_strided" else view(to_cuda(q))
        assert q_gpu.stride() == qq.stride()
        for dtype in DTYPES:
            got = lowbit.dequantize_mxfp8(q_gpu, view(to_cuda(s)), dtype=dtype)
            same(got, lowbit.dequantize_mxfp8(qq, view(s), dtype=dtype, backend="cpu"), f"{dtype} {name}")


# --- no host sync, CUDA graphs, torch.compile ------------------------------------------------------

def test_no_call_synchronises_with_the_host():
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    q, s = lowbit.quantize_mxfp8(x, scale_layout="swizzled")
    calls = [lambda: lowbit.quantize_mxfp8(x), lambda: lowbit.quantize_mxfp8(x, scale_rule="floor", scale_layout="swizzled"),
             lambda: lowbit.dequantize_mxfp8(q, s, scale_layout="swizzled"),
             lambda: lowbit.dequantize_mxfp8(q, s, scale_layout="swizzled", dtype=torch.float32)]
    for call in calls:
        call()  # compile and remember the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for call in calls:
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_graph_capture_of_both_ops_replays_new_data(rule, layout):
    x = torch.randn(200, 512, device="cuda", dtype=torch.bfloat16)
    q, s = lowbit.quantize_mxfp8(x, scale_rule=rule, scale_layout=layout)  # compile outside the capture
    lowbit.dequantize_mxfp8(q, s, scale_layout=layout)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q, s = lowbit.quantize_mxfp8(x, scale_rule=rule, scale_layout=layout)
        out = lowbit.dequantize_mxfp8(q, s, scale_layout=layout)
    for seed in (1, 2):
        x.copy_(torch.randn(200, 512, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16) * seed * 10)
        graph.replay()
        torch.cuda.synchronize()
        want = lowbit.quantize_mxfp8(x.cpu(), scale_rule=rule, scale_layout=layout, backend="cpu")
        same(q, want[0], f"q after replay {seed}")
        same(s, want[1], f"scales after replay {seed}")
        same(out, lowbit.dequantize_mxfp8(*want, scale_layout=layout, backend="cpu"), f"dequantized after replay {seed}")


def test_compile_fullgraph_matches_eager():
    x = torch.randn(33, 256, device="cuda", dtype=torch.bfloat16)

    def f(x):
        q, s = lowbit.quantize_mxfp8(x, scale_layout="swizzled")
        qf, sf = lowbit.quantize_mxfp8(x, scale_rule="floor")
        return q, s, qf, sf, lowbit.dequantize_mxfp8(q, s, scale_layout="swizzled", dtype=torch.float32)

    got, want = torch.compile(f, fullgraph=True)(x), f(x)
    for a, b, what in zip(got, want, ("q", "scales", "q floor", "scales floor", "dequantized")):
        same(a, b, what)
