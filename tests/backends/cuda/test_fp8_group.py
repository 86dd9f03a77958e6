"""quantize_fp8_group, quantize_fp8_block and their dequantizes on NVIDIA GPUs (lowbit.backends.cuda)
against the CPU reference, byte for byte: every bfloat16/float16 pattern in several arrangements, in
every scale layout with and without ue8m0, random tensors of every input dtype over rows, last dims
and both group sizes, N-D and strided inputs, eps, NaN/Inf/zero groups, out= buffers (TMA padding,
no allocation, CUDA-graph capture), weight blocks with partial edges, dequantize of every E4M3 byte
into every dtype, no host sync, torch.compile; the kernel's division against the correctly rounded
quotient; and torch's own `F.scaled_mm` consuming the outputs as they come [F8-SCALED-MM].

The GPU side goes through the public API with auto-dispatch, which must pick the cuda backend
(LOWBIT_STRICT=1 makes a fallback to the reference an error). The expectation is `backend="cpu"` on
the CPU copy of the same input. Never a tolerance, except for the GEMM's, stated where it is used.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracles import ALL16, bits16, raw, same
from preambles import ARCH, on_cuda

import lowbit
from lowbit import spec

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

pytestmark = [*on_cuda(89, "the cuda backend's FP8 kernels need sm_89+ (the hardware E4M3 cast)"),
              pytest.mark.usefixtures("strict_dispatch")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = spec.F8_SCALE_LAYOUTS


def storage_floats(scales: torch.Tensor) -> torch.Tensor:
    """Every float32 of the scales' storage (the TMA padding rows included)."""
    return torch.empty(0, dtype=torch.float32, device=scales.device).set_(scales.untyped_storage()).view(torch.int32)


def check(x, group_size=128, *, eps=spec.FP8_DEFAULT_EPS, ue8m0=False, layout="row_major"):
    got = lowbit.quantize_fp8_group(x, group_size, eps=eps, ue8m0=ue8m0, scale_layout=layout)
    want = lowbit.quantize_fp8_group(x.cpu(), group_size, eps=eps, ue8m0=ue8m0, scale_layout=layout, backend="cpu")
    what = f"({tuple(x.shape)}, {x.dtype}, group {group_size}, eps {eps}, ue8m0 {ue8m0}, {layout})"
    assert got[0].device.type == got[1].device.type == "cuda"
    same(got[0], want[0], "q " + what)
    same(got[1], want[1], "scales " + what)
    assert torch.equal(storage_floats(got[1]).cpu(), storage_floats(want[1])), "scale storage " + what
    return got


def test_auto_dispatch_picks_the_cuda_kernels():
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    q, s = lowbit.quantize_fp8_group(x)
    qb, sb = lowbit.quantize_fp8_block(torch.randn(256, 256, device="cuda"))
    for op, args in (("quantize_fp8_group", (x,)), ("dequantize_fp8_group", (q, s)),
                     ("quantize_fp8_block", (x,)), ("dequantize_fp8_block", (qb, sb))):
        verdict = lowbit.supports(op, *args)
        assert verdict.ok and verdict.backend == "cuda" and verdict.variant == "triton", verdict.explain()


@pytest.mark.parametrize("ue8m0", [False, True], ids=["float", "ue8m0"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_16_bit_pattern_in_several_arrangements(dtype, layout, ue8m0):
    """In order, rotated, permuted, and 127 patterns a group next to an anchor that fixes its amax."""
    n = len(ALL16)
    rows = [ALL16, np.roll(ALL16, 7), ALL16[(np.arange(n) * 40503) % n]]
    padded = np.concatenate([ALL16, np.zeros(-n % 127, dtype=ALL16.dtype)]).reshape(-1, 127)
    for value in (1.0, 448.0, 672.0, 1e-3, 2.0**-14):
        rows.append(np.concatenate([padded, np.full((len(padded), 1), bits16(value, dtype), dtype=ALL16.dtype)], 1))
    arranged = np.concatenate([r.reshape(-1) for r in rows])
    x = torch.from_numpy(arranged.astype(np.uint16).view(np.int16).copy()).view(dtype).reshape(-1, 128).cuda()
    check(x, ue8m0=ue8m0, layout=layout)
    check(x, 64, ue8m0=ue8m0, layout=layout)


def test_every_bfloat16_value_as_float32():
    x = torch.from_numpy((ALL16 << 16).astype(np.uint32).view(np.float32).copy()).reshape(-1, 512).cuda()
    for ue8m0 in (False, True):
        check(x, ue8m0=ue8m0, layout="column_major")


@pytest.mark.parametrize("group_size", [64, 128])
@pytest.mark.parametrize("k", [128, 384, 7168])
@pytest.mark.parametrize("rows", [0, 1, 3, 127, 4096])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_random_tensors_over_rows_last_dims_and_group_sizes(spicy, dtype, rows, k, group_size):
    x = spicy((rows, k), dtype, seed=rows * 7 + k, exponent_run=group_size).cuda()
    for layout in LAYOUTS:
        check(x, group_size, layout=layout)
    check(x, group_size, ue8m0=True, layout="column_major_tma")


@pytest.mark.parametrize("eps", [0.0, 1e-10, 1e-3, 5.0])
def test_eps(spicy, eps):
    x = spicy((64, 1024), torch.bfloat16, seed=3, exponent_run=128).cuda()
    x[5, :128] = 0
    for ue8m0 in (False, True):
        check(x, eps=eps, ue8m0=ue8m0, layout="column_major")


def test_n_d_and_strided_inputs(spicy):
    x = spicy((3, 5, 7, 512), torch.bfloat16, seed=4, exponent_run=128).cuda()
    for layout in LAYOUTS:
        check(x, layout=layout)
        check(x.transpose(0, 1), layout=layout)  # leading dims that do not merge: one copy
        check(x[:, :, :, 128:384], layout=layout)  # row stride 512, last dim 256
    wide = spicy((40, 1024), torch.float32, seed=5, exponent_run=128).cuda()
    check(wide[:, ::2], layout="column_major")  # last-dim stride 2


def test_nan_inf_zero_and_max_groups():
    x = torch.randn(8, 512, device="cuda", dtype=torch.bfloat16)
    x[0, :128] = float("nan")
    x[1, 3] = float("inf")
    x[1, 200] = -float("inf")
    x[2, :128] = 0
    x[2, 128:256] = -0.0
    x[3, 5] = torch.finfo(torch.bfloat16).max
    x[4, 7] = float("nan")
    x[5, :] = 672.0
    for ue8m0 in (False, True):
        for layout in LAYOUTS:
            check(x, ue8m0=ue8m0, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rows", [1, 5, 131])
def test_out_buffers_with_padding_rows_and_minimal_storage(spicy, layout, rows):
    x = spicy((rows, 512), torch.bfloat16, seed=rows, exponent_run=128).cuda()
    a, groups = spec.tma_rows(rows), 4
    q_buf = torch.full((a, 512), 0x55, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    if layout == "row_major":
        s_buf = torch.full((rows, groups), -7.0, device="cuda")
    elif layout == "column_major":
        s_buf = torch.full((groups, rows), -7.0, device="cuda").t()
    else:  # the minimal storage vLLM allocates: rows + (G - 1) * A floats
        s_buf = torch.full((rows + (groups - 1) * a,), -7.0, device="cuda").as_strided((rows, groups), (1, a))
    got = lowbit.quantize_fp8_group(x, scale_layout=layout, out=(q_buf, s_buf))
    assert got[0] is q_buf and got[1] is s_buf
    want_q, want_s = lowbit.quantize_fp8_group(x.cpu(), scale_layout=layout, backend="cpu")
    same(q_buf[:rows], want_q, "q")
    assert not raw(q_buf[rows:]).any(), "q rows past mn are 0"
    assert torch.equal(raw(s_buf), raw(want_s))


def test_out_buffers_allocate_nothing_and_capture_in_a_cuda_graph(spicy):
    x = spicy((200, 1024), torch.bfloat16, seed=9, exponent_run=128).cuda()
    q_buf = torch.empty(200, 1024, dtype=torch.float8_e4m3fn, device="cuda")
    s_buf = torch.empty(8, 200, device="cuda").t()
    lowbit.quantize_fp8_group(x, scale_layout="column_major", out=(q_buf, s_buf))  # compile outside the capture
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    lowbit.quantize_fp8_group(x, scale_layout="column_major", out=(q_buf, s_buf))
    assert torch.cuda.memory_allocated() == before
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lowbit.quantize_fp8_group(x, scale_layout="column_major", out=(q_buf, s_buf))
    for seed in (1, 2):
        x.copy_(spicy((200, 1024), torch.bfloat16, seed=seed, exponent_run=128))
        graph.replay()
        torch.cuda.synchronize()
        want_q, want_s = lowbit.quantize_fp8_group(x.cpu(), scale_layout="column_major", backend="cpu")
        same(q_buf, want_q, f"q after replay {seed}")
        same(s_buf, want_s, f"scales after replay {seed}")


def check_block(w, *, eps=spec.F8_BLOCK_EPS, ue8m0=False):
    got = lowbit.quantize_fp8_block(w, eps=eps, ue8m0=ue8m0)
    want = lowbit.quantize_fp8_block(w.cpu(), eps=eps, ue8m0=ue8m0, backend="cpu")
    what = f"({tuple(w.shape)}, {w.dtype}, ue8m0 {ue8m0})"
    same(got[0], want[0], "q " + what)
    same(got[1], want[1], "scales " + what)
    return got


@pytest.mark.parametrize("shape", [(128, 128), (300, 200), (129, 385), (1, 7168), (2048, 7168), (7168, 256)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_weight_blocks_with_partial_edges(spicy, dtype, shape):
    w = spicy(shape, dtype, seed=sum(shape), exponent_run=1).cuda()
    for ue8m0 in (False, True):
        check_block(w, ue8m0=ue8m0)
    check_block(w.t().contiguous().t())  # column-major weight
    check_block(w, eps=0.0)


def test_weight_blocks_every_bfloat16_pattern():
    w = torch.from_numpy(ALL16.astype(np.uint16).view(np.int16).copy()).view(torch.bfloat16).reshape(256, 256)
    for ue8m0 in (False, True):
        check_block(w.cuda(), ue8m0=ue8m0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dequantize_every_byte_under_spread_scales(dtype, layout):
    q = torch.arange(256, dtype=torch.int32).to(torch.uint8).repeat(2 * 126).reshape(126, 512)
    q = q.view(torch.float8_e4m3fn)
    scales = torch.exp2(torch.linspace(-126, 127, 126 * 4).round()).reshape(126, 4)
    scales[3] = 1.5
    scales[4] = float(np.float32(1e-10) / np.float32(448))
    scales[5] = float(np.float32(1) / np.float32(3))
    if layout != "row_major":
        rows = spec.tma_rows(126) if layout == "column_major_tma" else 126
        scales = torch.zeros(4, rows).t()[:126].copy_(scales)
    got = lowbit.dequantize_fp8_group(q.cuda(), scales.cuda(), dtype=dtype)
    want = lowbit.dequantize_fp8_group(q, scales, dtype=dtype, backend="cpu")
    same(got, want, f"dequantize to {dtype}")


def test_dequantize_blocks_padded_and_unpadded_scales(spicy):
    w = spicy((300, 200), torch.bfloat16, seed=12, exponent_run=1)
    q, s = lowbit.quantize_fp8_block(w, backend="cpu")
    for scales in (s, s[:2], s.contiguous(), s.t().contiguous()[:, :2].t()):
        for dtype in DTYPES:
            got = lowbit.dequantize_fp8_block(q.cuda(), scales.cuda(), dtype=dtype)
            same(got, lowbit.dequantize_fp8_block(q, scales, dtype=dtype, backend="cpu"), f"block dequantize {dtype}")


def test_no_call_synchronises_with_the_host():
    x = torch.randn(64, 512, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(256, 384, device="cuda", dtype=torch.bfloat16)
    q, s = lowbit.quantize_fp8_group(x, scale_layout="column_major_tma")
    qw, sw = lowbit.quantize_fp8_block(w)
    q_buf, s_buf = torch.empty_like(q), torch.empty(4, 64, device="cuda").t()
    calls = [lambda: lowbit.quantize_fp8_group(x, scale_layout="column_major_tma"),
             lambda: lowbit.quantize_fp8_group(x, ue8m0=True),
             lambda: lowbit.quantize_fp8_group(x, scale_layout="column_major", out=(q_buf, s_buf)),
             lambda: lowbit.dequantize_fp8_group(q, s), lambda: lowbit.quantize_fp8_block(w),
             lambda: lowbit.dequantize_fp8_block(qw, sw)]
    for call in calls:
        call()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for call in calls:
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_compile_fullgraph_matches_eager():
    x = torch.randn(33, 512, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(300, 512, device="cuda", dtype=torch.bfloat16)

    def f(x, w):
        q, s = lowbit.quantize_fp8_group(x, scale_layout="column_major")
        qw, sw = lowbit.quantize_fp8_block(w, ue8m0=True)
        return q, s, qw, sw, lowbit.dequantize_fp8_group(q, s), lowbit.dequantize_fp8_block(qw, sw)

    for got, want, what in zip(torch.compile(f, fullgraph=True)(x, w), f(x, w),
                               ("q", "scales", "qw", "sw", "x back", "w back")):
        same(got, want, what)


# --- the division is the correctly rounded quotient [F8-ELEMENT] -------------------------------------

@triton.jit
def _divide(x_ptr, s_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n)
    s = tl.load(s_ptr + i, mask=i < n)
    tl.store(out_ptr + i, tl.math.div_rn(x, s), mask=i < n)


def test_div_rn_is_the_correctly_rounded_quotient():
    """The kernel's division (tl.math.div_rn) against the CPU's IEEE division on 2^24 random float32
    pairs with the dividend anywhere (subnormals too) and divisors over [2^-126, 2^127], and near
    powers of two, where a division through the reciprocal goes wrong most often."""
    g = torch.Generator().manual_seed(0)
    n = 1 << 24
    x = torch.randint(0, 2**31 - 2**23, (n,), generator=g, dtype=torch.int32).view(torch.float32)
    x = torch.where(torch.rand(n, generator=g) < 0.5, -x, x)
    s = torch.randint(1 << 23, 254 << 23, (n,), generator=g, dtype=torch.int32)
    near_pow2 = (torch.randint(1, 254, (n,), generator=g, dtype=torch.int32) << 23) + \
        torch.randint(-3, 4, (n,), generator=g, dtype=torch.int32)
    s = torch.where(torch.rand(n, generator=g) < 0.25, near_pow2, s).view(torch.float32)
    out = torch.empty(n, device="cuda")
    _divide[(n // 1024,)](x.cuda(), s.cuda(), out, n, BLOCK=1024)
    assert torch.equal(out.cpu().view(torch.int32), (x / s).view(torch.int32))


# --- F.scaled_mm consumes the outputs as they come [F8-SCALED-MM] ---------------------------------

def _scaled_mm_available() -> bool:
    return hasattr(F, "scaled_mm") and ARCH == 90


def gemm_bound_check(out, a, b, what):
    """|out - ref| <= 2^-8 |ref| + 2^-10 (|a| @ |b|^T) per element, ref the float64 product of the
    dequantized operands: the bfloat16 output rounds by at most 2^-9 relative, and float32
    accumulation over K adds far less than 2^-10 of the sum of |products|. A scale in the wrong
    place is off by its own size, orders of magnitude above this."""
    ref = a.double() @ b.double().t()
    bound = 2.0**-8 * ref.abs() + 2.0**-10 * (a.double().abs() @ b.double().abs().t())
    err = (out.double() - ref).abs()
    assert bool((err <= bound).all()), f"{what}: max error {float(err.max()):.3g}, worst ratio " \
                                       f"{float((err / bound.clamp_min(1e-30)).max()):.3g}"


@pytest.mark.skipif(not _scaled_mm_available(), reason="F.scaled_mm's BlockWise1x128/128x128 run on sm_90 only")
@pytest.mark.parametrize("m", [4, 128, 256, 4096])
@pytest.mark.parametrize("k, n", [(512, 256), (7168, 2048), (384, 320)])
def test_f8_scaled_mm_consumes_activations_and_weights_as_they_come(m, k, n):
    g = torch.Generator().manual_seed(m + k)
    x = (torch.randn(m, k, generator=g) * torch.exp2(torch.randint(-4, 4, (m, 1), generator=g))).bfloat16().cuda()
    w = (torch.randn(n, k, generator=g) * 0.05).bfloat16().cuda()
    qx, sx = lowbit.quantize_fp8_group(x, scale_layout="column_major")
    a = lowbit.dequantize_fp8_group(qx, sx, dtype=torch.float32)
    qw, sw = lowbit.quantize_fp8_group(w, scale_layout="column_major")
    out = F.scaled_mm(qx, qw.t(), sx, F.ScalingType.BlockWise1x128, sw, F.ScalingType.BlockWise1x128)
    gemm_bound_check(out, a, lowbit.dequantize_fp8_group(qw, sw, dtype=torch.float32), "1x128 weights")
    qb, sb = lowbit.quantize_fp8_block(w)
    out = F.scaled_mm(qx, qb.t(), sx, F.ScalingType.BlockWise1x128, sb, F.ScalingType.BlockWise128x128)
    b = lowbit.dequantize_fp8_block(qb, sb, dtype=torch.float32)
    gemm_bound_check(out, a, b, "128x128 weights")
    with pytest.raises(AssertionError):  # the check can fail: the block scales of the wrong blocks
        wrong = sb.clone()
        wrong[0, 0] *= 1.5
        gemm_bound_check(F.scaled_mm(qx, qb.t(), sx, F.ScalingType.BlockWise1x128, wrong,
                                     F.ScalingType.BlockWise128x128), a, b, "wrong scales")


@pytest.mark.skipif(not _scaled_mm_available(), reason="F.scaled_mm's BlockWise1x128/128x128 run on sm_90 only")
@pytest.mark.parametrize("m", [1, 3, 131])
def test_f8_scaled_mm_rows_not_a_multiple_of_4_through_padded_out_buffers(m):
    """cuBLASLt takes BlockWise1x128 activations only for M % 4 == 0: quantize into A-row buffers as
    [F8-SCALED-MM] says and keep the first M rows."""
    k, n = 512, 256
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.05
    a_rows = spec.tma_rows(m)
    q_buf = torch.empty(a_rows, k, dtype=torch.float8_e4m3fn, device="cuda")
    s_full = torch.zeros(k // 128, a_rows, device="cuda").t()
    lowbit.quantize_fp8_group(x, scale_layout="column_major_tma", out=(q_buf, s_full[:m]))
    qb, sb = lowbit.quantize_fp8_block(w)
    out = F.scaled_mm(q_buf, qb.t(), s_full, F.ScalingType.BlockWise1x128, sb, F.ScalingType.BlockWise128x128)[:m]
    a = lowbit.dequantize_fp8_group(q_buf[:m], s_full[:m], dtype=torch.float32)
    gemm_bound_check(out, a, lowbit.dequantize_fp8_block(qb, sb, dtype=torch.float32), f"M={m} padded")
