"""quantize_mxfp4 on NVIDIA GPUs (lowbit.backends.cuda) against the CPU reference, byte for byte:
every bfloat16/float16 bit pattern in every position of a block, random tensors of every input
dtype over a grid of row counts and last dims, N-D and non-contiguous inputs, NaN/Inf/zero/max
blocks, and CUDA-graph capture. per_token_group_quant_mxfp4 (the caller's buffers, float32/E8M0/uint8
scales, the eps floor) the same way, and under CUDA-graph capture and torch.compile(fullgraph=True).

The GPU side always goes through the public API with auto-dispatch, which must pick the cuda
backend (asserted per input; LOWBIT_STRICT=1 makes a silent fallback to the reference an error).
The expectation is `backend="cpu"` on the CPU copy of the same input. Never a tolerance.
"""

import numpy as np
import pytest
import torch
from lowbit.backends.cuda import mxfp4 as cuda_mxfp4
from oracles import (
    all_patterns,
    big_spicy,
    bits,
    dtype_id,
    every_position,
    first_difference,
    randn_pow2,
    strides_for,
    to_rows,
)
from preambles import ARCH, on_cuda

import lowbit
from lowbit import spec

pytestmark = [*on_cuda(80, "the cuda backend's MXFP4 kernels need sm_80+"), pytest.mark.usefixtures("strict_dispatch")]

OP = "quantize_mxfp4"
BLOCK = 32
RULES = ("rceil", "floor")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KS = [32, 96, 2048, 7168, 16384]
ROWS = [0, 1, 3, 127, 4096]
BIG_ROWS = 4096


# --- comparison (module-scoped helpers) ------------------------------------------------------------

def assert_same_bytes(got: torch.Tensor, want: torch.Tensor, what: str, x: torch.Tensor | None = None,
                      elements_per_byte: int = 1) -> None:
    """torch.equal on the raw bytes; on a mismatch, say where, and show the input block behind it."""
    g, w = got.view(torch.uint8).cpu(), want.view(torch.uint8).cpu()
    assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} != {tuple(w.shape)}"
    if torch.equal(g, w):
        return
    message, at = first_difference(g, w, what)
    if x is not None and x.dim() >= 1:
        start = at[-1] * elements_per_byte // BLOCK * BLOCK
        block = x.reshape(-1, x.shape[-1])[int(np.ravel_multi_index(at[:-1], x.shape[:-1])) if x.dim() > 1 else 0]
        values = block[start:start + BLOCK].float()
        message += f"; its block of x (float32 bits): {[hex(v & 0xFFFFFFFF) for v in values.view(torch.int32).tolist()]}"
    raise AssertionError(message)


def assert_same_mx(got, want, x: torch.Tensor | None = None) -> None:
    """Compare (q, scales) from the GPU with the reference's, byte for byte."""
    (q, s), (want_q, want_s) = got, want
    assert q.device.type == "cuda" and s.device.type == "cuda"
    assert (q.dtype, s.dtype) == (torch.float4_e2m1fn_x2, torch.float8_e8m0fnu)
    assert (q.shape, s.shape) == (want_q.shape, want_s.shape)
    assert q.is_contiguous() and s.is_contiguous()
    assert_same_bytes(s, want_s, "scales", x, elements_per_byte=BLOCK)
    assert_same_bytes(q, want_q, "q", x, elements_per_byte=2)


def gpu_backends(verdict) -> list[str]:
    """Auto, plus the portable variant forced when auto picked another one (PTX on sm_100+, bfloat16 pairs
    on sm_90)."""
    return ["auto"] + ([] if verdict.variant == "triton" else ["cuda/triton"])


def check(x: torch.Tensor, xd: torch.Tensor | None = None, rules=RULES) -> None:
    """x: the CPU input; xd: the same values on the GPU (default x.cuda(); pass a view of a GPU
    base to keep a layout that .cuda() would make contiguous)."""
    xd = x.cuda() if xd is None else xd
    assert xd.shape == x.shape and xd.dtype == x.dtype
    for rule in rules:
        verdict = lowbit.supports(OP, xd, scale_rule=rule)
        assert (verdict.backend, verdict.fallback) == ("cuda", False), verdict.explain()
        want = lowbit.quantize_mxfp4(x, scale_rule=rule, backend="cpu")
        for backend in gpu_backends(verdict):
            got = lowbit.quantize_mxfp4(xd, scale_rule=rule, backend=backend)
            assert_same_mx(got, want, x)


# --- every 16-bit pattern --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_every_finite_16_bit_pattern_in_every_block_position(dtype):
    finite, _ = all_patterns(dtype)
    # blocks spanning a quarter binade (every element near the amax), 2, 6 and 24 binades
    blocks = torch.cat([every_position(finite, BLOCK, s) for s in strides_for(dtype, BLOCK, (0.25, 2, 6, 24))])
    x = to_rows(blocks, 16)  # K = 512: 16 blocks a row
    check(x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_every_non_finite_16_bit_pattern_in_every_block_position(dtype):
    finite, nonfinite = all_patterns(dtype)
    n = nonfinite.numel() * BLOCK
    pool = every_position(finite, BLOCK, strides_for(dtype, BLOCK, (2,))[0])
    blocks = pool.repeat(-(-n // pool.shape[0]), 1)[:n].clone()
    i = torch.arange(n)
    blocks[i, i % BLOCK] = nonfinite.repeat_interleave(BLOCK)  # pattern j at position p: block 32j + p
    # and blocks with two non-finite values (NaN with Inf, +Inf with -Inf, ...), at random positions
    g = torch.Generator().manual_seed(7)
    pairs = pool[:4096].clone()
    rows = torch.arange(pairs.shape[0])
    first, second = torch.randint(0, BLOCK, (2, pairs.shape[0]), generator=g)
    pairs[rows, first] = nonfinite[torch.randint(0, nonfinite.numel(), (pairs.shape[0],), generator=g)]
    pairs[rows, second] = nonfinite[torch.randint(0, nonfinite.numel(), (pairs.shape[0],), generator=g)]
    check(to_rows(torch.cat([blocks, pairs]), 8))


# --- random tensors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_random_spicy_tensors_match_the_reference(dtype, k, spicy, big_inputs):
    for rows in ROWS:
        if rows == BIG_ROWS:
            x = big_spicy(big_inputs, spicy, (BIG_ROWS, KS[-1]), dtype, width=BLOCK, seed=1000, shift=37)
            x = x[:, :k].contiguous()
        else:  # a fresh seed per shape; exponent runs of a block, or one per element
            x = spicy((rows, k), dtype, seed=rows * 100_003 + k * 7 + dtype.itemsize,
                      exponent_run=1 if rows == 3 else BLOCK)
        check(x)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_random_normal_tensors_scaled_by_powers_of_two_match_the_reference(dtype, k):
    for rows in ROWS:
        check(randn_pow2(rows, k, dtype, seed=rows * 31 + k + dtype.itemsize, width=BLOCK))


@pytest.mark.parametrize("seed", range(4))
def test_spicy_tensors_over_several_seeds(seed, spicy):
    for dtype in DTYPES:
        for run in (1, 7, BLOCK):
            check(spicy((127, 7168), dtype, seed=seed * 97 + run, exponent_run=run))


# --- layouts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7168,), (3, 5, 2048), (2, 3, 7, 96), (2, 0, 64), (2, 1, 2, 3, 32), (4, 3, 0)],
                         ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_n_d_inputs(dtype, shape, spicy):
    x = spicy(shape, dtype, seed=len(shape) * 1000 + shape[-1], exponent_run=BLOCK if shape[-1] else 1)
    check(x)


ROWS_NC, K_NC = 37, 2048
# name: (shape of the contiguous base, the view of it that is the input)
LAYOUTS = {
    "transposed": ((K_NC, ROWS_NC), lambda t: t.t()),
    "row_stride_gt_k": ((ROWS_NC, K_NC + 96), lambda t: t[:, 32:32 + K_NC]),
    "unaligned_offset": ((ROWS_NC, K_NC + 32), lambda t: t[:, 1:1 + K_NC]),
    "every_other_row": ((2 * ROWS_NC, K_NC), lambda t: t[::2]),
    "last_dim_stride_2": ((ROWS_NC, 2 * K_NC), lambda t: t[:, ::2]),
    "expanded_batch": ((1, ROWS_NC, K_NC), lambda t: t.expand(3, ROWS_NC, K_NC)),
    "expanded_4d": ((2, 1, ROWS_NC, K_NC), lambda t: t.expand(2, 3, ROWS_NC, K_NC)),
    "broadcast_rows": ((3, 1, K_NC), lambda t: t.expand(3, ROWS_NC, K_NC)),
    "permuted_batch": ((ROWS_NC, 3, K_NC), lambda t: t.transpose(0, 1)),
    "transposed_3d": ((2, K_NC, ROWS_NC), lambda t: t.transpose(-1, -2)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_non_contiguous_inputs(dtype, layout, spicy):
    shape, view = LAYOUTS[layout]
    base = spicy(shape, dtype, seed=len(layout), exponent_run=1 if layout.startswith("transposed") else BLOCK)
    x, xd = view(base), view(base.cuda())
    assert not xd.is_contiguous() and xd.stride() == x.stride()
    check(x, xd)
    assert torch.equal(bits(xd.cpu()), bits(x))  # the input is not written


# --- special blocks -------------------------------------------------------------------------------

def special_blocks(dtype: torch.dtype, width: int, seed: int) -> torch.Tensor:
    """Rows of `width`: NaN, ±Inf, ±0, finfo.max, tiny and subnormal values, alone, together and
    mixed with ordinary values; ties of the E2M1 grid; the FP8 golden 672."""
    fi = torch.finfo(dtype)
    sub = fi.tiny * fi.eps  # the smallest subnormal
    nan, inf = float("nan"), float("inf")
    g = torch.Generator().manual_seed(seed)
    rows = []

    def full(v):
        rows.append(torch.full((width,), v, dtype=torch.float64))

    def mixed(*placed):
        b = torch.randn(width, generator=g, dtype=torch.float64)
        for p, v in placed:
            b[p] = v
        rows.append(b)

    for v in (nan, -nan, inf, -inf, 0.0, -0.0, fi.max, -fi.max, fi.tiny, -fi.tiny, sub, -sub, 672.0, 6.0):
        full(v)
    last = width - 1
    for placed in (
        [(0, nan)], [(last, nan)], [(width // 2, -nan)], [(1, nan), (2, inf)], [(3, inf)], [(last, -inf)],
        [(0, inf), (last, -inf)], [(5, inf), (6, fi.max)], [(4, fi.max)], [(0, -fi.max), (1, fi.max)],
        [(2, fi.max), (3, fi.tiny), (4, sub)], [(0, 672.0)], [(1, -672.0), (2, 336.0)],
        [(0, nan), (1, -0.0), (2, fi.max)],
    ):
        mixed(*placed)
    b = torch.zeros(width, dtype=torch.float64)
    b[::2], b[1::2] = fi.max, -fi.max
    rows.append(b)
    rows.append(torch.where(torch.arange(width) % 3 == 0, -0.0, 0.0).double())
    z = torch.zeros(width, dtype=torch.float64)
    z[width // 3] = sub
    rows.append(z)
    rows.append(torch.arange(width, dtype=torch.float64) * sub)  # subnormals only
    # E2M1 ties: with amax 6 * 2^j both rules give e = j, so these land exactly on 0.25, 0.75, ...
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 0.0, 0.125],
                        dtype=torch.float64)
    ties = torch.cat([ties, -ties]).repeat(-(-width // 32))[:width]
    for j in (-130, -127, -126, -100, -20, -3, 0, 5, 14, 100, 120, 126):
        rows.append(ties * 2.0**j)
    x = torch.stack(rows)
    ordinary = torch.randn(x.shape, generator=g, dtype=torch.float64)
    # each special block between ordinary ones, and mirrored in another block of its row
    return torch.cat([ordinary, x, ordinary * 2.0**-30, x.flip(-1), ordinary * 2.0**20], dim=-1).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_nan_inf_zero_and_max_blocks(dtype):
    x = special_blocks(dtype, BLOCK, seed=3)
    check(x)
    check(x.reshape(2, -1, x.shape[-1]) if x.shape[0] % 2 == 0 else x[None])


# --- CUDA graphs ---------------------------------------------------------------------------------

def test_cuda_graph_capture_and_replay_on_new_data(spicy):
    """The op allocates its outputs inside the capture (from the graph's pool); replays write the
    quantization of whatever the static inputs hold, bit-exact to the reference."""
    shape, shape_b = (127, 2048), (1, 5, 512)
    static = spicy(shape, torch.bfloat16, seed=70, exponent_run=BLOCK).cuda()
    static_b = spicy(shape_b, torch.float32, seed=71, exponent_run=BLOCK).cuda()

    def run(rule):
        # the expanded input cannot be flattened without a copy: the copy is captured too
        return (lowbit.quantize_mxfp4(static, scale_rule=rule),
                lowbit.quantize_mxfp4(static_b.expand(3, 5, 512), scale_rule=rule))

    for rule in RULES:
        side = torch.cuda.Stream()  # warm-up (compiles, fills the dispatch caches) off the capture stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run(rule)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = run(rule)
        for seed in (72, 73, 74):
            new = spicy(shape, torch.bfloat16, seed=seed, exponent_run=1 if seed == 73 else BLOCK)
            new_b = spicy(shape_b, torch.float32, seed=seed + 10, exponent_run=BLOCK)
            static.copy_(new)
            static_b.copy_(new_b)
            for q, s in outs:
                q.view(torch.uint8).fill_(0xAB)
                s.view(torch.uint8).fill_(0xCD)
            graph.replay()
            torch.cuda.synchronize()
            assert_same_mx(outs[0], lowbit.quantize_mxfp4(new, scale_rule=rule, backend="cpu"), new)
            expanded = new_b.expand(3, 5, 512)
            assert_same_mx(outs[1], lowbit.quantize_mxfp4(expanded, scale_rule=rule, backend="cpu"), expanded)


# --- per_token_group_quant_mxfp4 ---------------------------------------------------------------------
# The same kernel with the caller's buffers, the eps floor [MX-EPS] and float32 scales [MX-SCALE-F32].
# Expectation: the reference (backend="cpu") into its own buffers on the CPU copy of the input.

GROUP_OP = "per_token_group_quant_mxfp4"
SCALE_DTYPES = [torch.float32, torch.float8_e8m0fnu, torch.uint8]
EPSES = [0.0, 1e-10, 0.75]
POISON = 0xAB


def group_buffers(x: torch.Tensor, scale_dtype: torch.dtype, q_dtype: torch.dtype = torch.uint8):
    """(x_q, x_s) for x (..., K) on x's device, contiguous, every byte POISON (so an unwritten one shows)."""
    *lead, k = x.shape
    x_q = torch.empty((*lead, k // 2), dtype=q_dtype, device=x.device)
    x_s = torch.empty((*lead, k // BLOCK), dtype=scale_dtype, device=x.device)
    x_q.view(torch.uint8).fill_(POISON)
    x_s.view(torch.uint8).fill_(POISON)
    return x_q, x_s


def reference_group_quant(x: torch.Tensor, scale_dtype: torch.dtype, eps: float, q_dtype=torch.uint8):
    want_q, want_s = group_buffers(x, scale_dtype, q_dtype)
    lowbit.per_token_group_quant_mxfp4(x, want_q, want_s, BLOCK, eps, backend="cpu")
    return want_q, want_s


def assert_same_group_quant(got, want, x: torch.Tensor, what: str) -> None:
    (x_q, x_s), (want_q, want_s) = got, want
    assert x_q.device.type == "cuda" and x_s.device.type == "cuda"
    assert (x_q.dtype, x_s.dtype) == (want_q.dtype, want_s.dtype)
    assert_same_bytes(x_s, want_s, f"x_s ({what})", x, elements_per_byte=BLOCK // x_s.element_size())
    assert_same_bytes(x_q, want_q, f"x_q ({what})", x, elements_per_byte=2)


def check_group_quant(x: torch.Tensor, xd: torch.Tensor | None = None, scale_dtypes=SCALE_DTYPES, epses=EPSES,
                      q_dtype=torch.uint8) -> None:
    """As check() above: x the CPU input, xd the same values on the GPU. Auto-dispatch must pick the
    cuda backend; the portable variant also runs forced where auto picked the PTX one."""
    xd = x.cuda() if xd is None else xd
    assert xd.shape == x.shape and xd.dtype == x.dtype
    for scale_dtype in scale_dtypes:
        for eps in epses:
            want = reference_group_quant(x, scale_dtype, eps, q_dtype)
            verdict = lowbit.supports(GROUP_OP, xd, *group_buffers(xd, scale_dtype, q_dtype), eps=eps)
            assert (verdict.backend, verdict.fallback) == ("cuda", False), verdict.explain()
            for backend in gpu_backends(verdict):
                got = group_buffers(xd, scale_dtype, q_dtype)
                lowbit.per_token_group_quant_mxfp4(xd, *got, BLOCK, eps, backend=backend)
                assert_same_group_quant(got, want, x, f"{dtype_id(scale_dtype)} x_s, eps {eps}, {backend}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_per_token_group_quant_auto_dispatch_on_sm90_and_the_arch_variant_here(dtype):
    """sm_90 (asked with arch=, so any GPU answers it) has no PTX variant: bfloat16 pairs for bfloat16, else
    the portable kernel. On this GPU: the PTX variant on the sm_100 families, and the same as sm_90 below."""
    x = torch.zeros(4, 256, dtype=dtype, device="cuda")
    on_sm90 = "bf16x2" if dtype == torch.bfloat16 else "triton"
    for scale_dtype in SCALE_DTYPES:
        buffers = group_buffers(x, scale_dtype)
        sm90 = lowbit.supports(GROUP_OP, x, *buffers, arch="sm_90")
        assert (sm90.backend, sm90.variant, sm90.fallback) == ("cuda", on_sm90, False), sm90.explain()
        here = lowbit.supports(GROUP_OP, x, *buffers)
        want = "ptx" if ARCH in cuda_mxfp4.PTX_ARCHS else on_sm90 if ARCH in cuda_mxfp4.BF16X2_ARCHS else "triton"
        assert (here.backend, here.variant, here.fallback) == ("cuda", want, False), here.explain()


@pytest.mark.parametrize("shape", [(7168,), (96,), (3, 5, 2048), (2, 3, 7, 96), (127, 7168), (2, 0, 64)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_per_token_group_quant_matches_the_reference_on_spicy_n_d_and_1_d_inputs(dtype, shape, spicy):
    x = spicy(shape, dtype, seed=len(shape) * 1000 + shape[-1] + 7, exponent_run=BLOCK if shape[0] != 3 else 1)
    check_group_quant(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_per_token_group_quant_nan_inf_zero_and_max_blocks(dtype):
    check_group_quant(special_blocks(dtype, BLOCK, seed=5))


def test_per_token_group_quant_every_bfloat16_pattern_in_order():
    """All 65,536 patterns, 32 neighbours to a block: NaN-only, Inf, subnormal-only and zero blocks
    among every binade."""
    values = torch.from_numpy(np.arange(1 << 16, dtype=np.uint16).view(np.int16).copy()).view(torch.bfloat16)
    check_group_quant(values.reshape(128, 512))


@pytest.mark.parametrize("eps", EPSES)
def test_per_token_group_quant_every_finite_bfloat16_pattern_in_every_block_position(eps):
    finite, _ = all_patterns(torch.bfloat16)
    # blocks spanning a quarter binade (the eps floor decides near 0.75 * 6 and 1e-10 * 6) and 6 binades
    blocks = torch.cat([every_position(finite, BLOCK, s) for s in strides_for(torch.bfloat16, BLOCK, (0.25, 6))])
    check_group_quant(to_rows(blocks, 16), epses=[eps])


@pytest.mark.parametrize("layout", ["transposed", "every_other_row", "expanded_batch"])
def test_per_token_group_quant_non_contiguous_inputs(layout, spicy):
    shape, view = LAYOUTS[layout]
    base = spicy(shape, torch.bfloat16, seed=len(layout) + 50, exponent_run=1 if layout == "transposed" else BLOCK)
    x, xd = view(base), view(base.cuda())
    assert not xd.is_contiguous() and xd.stride() == x.stride()
    check_group_quant(x, xd, epses=[1e-10])
    assert torch.equal(bits(xd.cpu()), bits(x))  # the input is not written


def test_per_token_group_quant_takes_float4_e2m1fn_x2_q_buffers(spicy):
    check_group_quant(spicy((37, 2048), torch.bfloat16, seed=60, exponent_run=BLOCK), epses=[1e-10],
                      q_dtype=torch.float4_e2m1fn_x2)


def test_per_token_group_quant_cuda_graph_capture_and_replay_on_new_data(spicy):
    """Captured once (the buffers are the caller's, nothing is allocated), each replay quantizes
    whatever the static input holds into the same buffers, bit-exact to the reference: a 2-D
    bfloat16 input with float32 scales and a 3-D float32 input with E8M0 and uint8 scales."""
    shape, shape_b = (127, 2048), (2, 5, 512)
    static = spicy(shape, torch.bfloat16, seed=80, exponent_run=BLOCK).cuda()
    static_b = spicy(shape_b, torch.float32, seed=81, exponent_run=BLOCK).cuda()
    calls = [(static, torch.float32, 1e-10), (static_b, torch.float8_e8m0fnu, 0.75), (static_b, torch.uint8, 0.0)]
    buffers = [group_buffers(x, scale_dtype) for x, scale_dtype, _ in calls]

    def run():
        for (x, _, eps), (x_q, x_s) in zip(calls, buffers):
            lowbit.per_token_group_quant_mxfp4(x, x_q, x_s, BLOCK, eps)

    side = torch.cuda.Stream()  # warm-up (compiles, fills the dispatch caches) off the capture stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for seed in (82, 83, 84):
        new = spicy(shape, torch.bfloat16, seed=seed, exponent_run=1 if seed == 83 else BLOCK)
        new_b = spicy(shape_b, torch.float32, seed=seed + 10, exponent_run=BLOCK)
        static.copy_(new)  # in place: the graph reads these addresses
        static_b.copy_(new_b)
        for x_q, x_s in buffers:
            x_q.view(torch.uint8).fill_(POISON)
            x_s.view(torch.uint8).fill_(POISON)
        graph.replay()
        torch.cuda.synchronize()
        for (x, scale_dtype, eps), got in zip(calls, buffers):
            host = new if x is static else new_b
            want = reference_group_quant(host, scale_dtype, eps)
            assert_same_group_quant(got, want, host, f"replay with seed {seed}, {dtype_id(scale_dtype)} x_s, eps {eps}")


def _group_quant_twice(x, x_q, x_s, x_q2, x_s2):
    lowbit.per_token_group_quant_mxfp4(x, x_q, x_s)  # the defaults: group_size 32, eps 1e-10
    lowbit.per_token_group_quant_mxfp4(x, x_q2, x_s2, 32, 0.75)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES, ids=dtype_id)
def test_per_token_group_quant_under_compile_fullgraph_writes_the_eager_bytes(scale_dtype, dynamic, spicy):
    torch._dynamo.reset()
    compiled = torch.compile(_group_quant_twice, fullgraph=True, dynamic=dynamic)
    for rows, seed in [(13, 91), (5, 92)] if dynamic else [(5, 90)]:
        x = spicy((2, rows, 2048), torch.bfloat16, seed=seed, exponent_run=BLOCK)
        xd = x.cuda()
        got = [*group_buffers(xd, scale_dtype), *group_buffers(xd, scale_dtype)]
        # Inductor does not lower a mutated float8_e8m0fnu input (torch <= 2.13): E8M0 buffers go in
        # as their uint8 view, as the docstring of per_token_group_quant_mxfp4 says
        compiled(xd, *(t.view(torch.uint8) if t.dtype == torch.float8_e8m0fnu else t for t in got))
        for (x_q, x_s), eps in ((got[:2], 1e-10), (got[2:], 0.75)):
            assert_same_group_quant((x_q, x_s), reference_group_quant(x, scale_dtype, eps), x,
                                    f"compiled, {rows} rows, eps {eps}")


# --- [MX-SWIZZLE] and dequantize_mxfp4 on the GPU ---------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("shape", [(130, 96), (3, 32), (2, 65, 7168), (4096, 7168)], ids=str)
def test_swizzled_scales_match_the_reference(shape, rule, spicy):
    x = spicy(shape, torch.bfloat16, seed=41, exponent_run=BLOCK)
    q, s = lowbit.quantize_mxfp4(x.cuda(), scale_rule=rule, scale_layout="swizzled")
    q_want, s_want = lowbit.quantize_mxfp4(x, scale_rule=rule, scale_layout="swizzled", backend="cpu")
    assert_same_bytes(q, q_want, "q", x, elements_per_byte=2)
    assert_same_bytes(s, s_want, "swizzled scales")


@pytest.mark.parametrize("scale_dtype", [torch.float8_e8m0fnu, torch.uint8], ids=dtype_id)
def test_group_quant_into_swizzled_scales_matches_the_reference(scale_dtype, spicy):
    x = spicy((3, 50, 2048), torch.bfloat16, seed=42, exponent_run=BLOCK)
    bufs = []
    for device in ("cuda", "cpu"):
        x_q = torch.full((3, 50, 1024), 0x5A, dtype=torch.uint8, device=device)
        x_s = torch.full((256, 64), 0x5A, dtype=torch.uint8, device=device).view(scale_dtype)
        lowbit.per_token_group_quant_mxfp4(x.to(device), x_q, x_s, scale_layout="swizzled",
                                           backend="auto" if device == "cuda" else "cpu")
        bufs.append((x_q, x_s))
    assert_same_bytes(bufs[0][0], bufs[1][0], "x_q")
    assert_same_bytes(bufs[0][1], bufs[1][1], "swizzled x_s")


def _every_byte_under_every_scale(layout):
    q = torch.arange(256, dtype=torch.uint8).repeat(256, 1)  # every element byte, in every row
    linear = torch.arange(256, dtype=torch.uint8)[:, None].expand(256, 16).contiguous()  # row r: scale byte r
    if layout == "linear":
        return q, linear
    scales = torch.zeros(spec.swizzled_scale_shape(256, 16), dtype=torch.uint8)
    scales.view(-1)[spec.swizzled_offsets(256, 16, "cpu")] = linear.reshape(-1)
    return q, scales


@pytest.mark.parametrize("out_dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", ["linear", "swizzled"])
def test_dequantize_every_byte_under_every_scale_byte_matches_the_reference(layout, out_dtype):
    q, scales = _every_byte_under_every_scale(layout)
    got = lowbit.dequantize_mxfp4(q.cuda(), scales.cuda(), dtype=out_dtype, scale_layout=layout)
    want = lowbit.dequantize_mxfp4(q, scales, dtype=out_dtype, scale_layout=layout, backend="cpu")
    assert_same_bytes(got, want, f"dequantize {layout} {out_dtype}")


@pytest.mark.parametrize("layout", ["linear", "swizzled"])
def test_dequantize_runs_on_cuda_and_round_trips_a_large_tensor(layout, spicy):
    x = spicy((4096, 7168), torch.bfloat16, seed=43, exponent_run=BLOCK).cuda()
    verdict = lowbit.supports("dequantize_mxfp4", *lowbit.quantize_mxfp4(x, scale_layout=layout),
                              scale_layout=layout)
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton", False)
    q, s = lowbit.quantize_mxfp4(x, scale_layout=layout)
    got = lowbit.dequantize_mxfp4(q, s, scale_layout=layout)
    want = lowbit.dequantize_mxfp4(q.cpu(), s.cpu(), scale_layout=layout, backend="cpu")
    assert_same_bytes(got, want, f"dequantize {layout}")


def test_quantize_and_dequantize_are_captured_in_a_cuda_graph(spicy):
    """The issue's failure: dequantize_mxfp4 on CUDA tensors could not be captured (a host-to-device copy)."""
    static = spicy((256, 2048), torch.bfloat16, seed=44, exponent_run=BLOCK).cuda()
    for layout in ("linear", "swizzled"):
        lowbit.dequantize_mxfp4(*lowbit.quantize_mxfp4(static, scale_layout=layout), scale_layout=layout)  # warm-up
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            q, s = lowbit.quantize_mxfp4(static, scale_layout=layout)
            back = lowbit.dequantize_mxfp4(q, s, scale_layout=layout)
        new = spicy((256, 2048), torch.bfloat16, seed=45, exponent_run=BLOCK)
        static.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        q_want, s_want = lowbit.quantize_mxfp4(new, scale_layout=layout, backend="cpu")
        assert_same_bytes(q, q_want, f"q, replayed ({layout})")
        assert_same_bytes(s, s_want, f"scales, replayed ({layout})")
        assert_same_bytes(back, lowbit.dequantize_mxfp4(q_want, s_want, scale_layout=layout, backend="cpu"),
                          f"dequantized, replayed ({layout})")
