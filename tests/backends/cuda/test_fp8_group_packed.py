"""quantize_fp8_group_packed and dequantize_fp8_group_packed on NVIDIA GPUs (lowbit.backends.cuda)
against the CPU reference, byte for byte. Dequantize: every E4M3 byte under every scale byte (0xFF
included) for both group sizes into every dtype, random bytes over odd row counts, N-D and strided
q and scales, quantize's own output, dispatch without a warning, CUDA-graph capture and replay,
torch.compile. Quantize: every bfloat16/float16 bit pattern in every position of a group, random tensors of every
input dtype over a grid of row counts and last dims, N-D and non-contiguous inputs, NaN/Inf/zero/
max groups, eps, preallocated out= buffers (TMA padding, no allocation, CUDA-graph capture), the
two E4M3 conversions of the Triton kernel (integer and hardware) against each other over all 2^32
float32 patterns, its scale byte against the spec formula over every non-negative float32, and
torch.compile.

The GPU side goes through the public API with auto-dispatch, which must pick the cuda backend
(asserted per input; LOWBIT_STRICT=1 makes a silent fallback to the reference an error). The
expectation is `backend="cpu"` on the CPU copy of the same input. Never a tolerance.
"""

import logging
import math
from fractions import Fraction

import pytest
import torch
from oracles import (
    all_patterns,
    big_spicy,
    bits,
    dtype_id,
    every_position,
    first_difference,
    fl32,
    packed_strides,
    randn_pow2,
    storage_words,
    strides_for,
    tma_rows,
    to_rows,
)
from preambles import on_cuda

import lowbit
from lowbit import fp8_group_packed as fp8_op

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
triton_fp8 = pytest.importorskip("lowbit.backends.triton.fp8_group_packed")
float_bits = pytest.importorskip("lowbit.backends.triton.float_bits")

pytestmark = [*on_cuda(89, "the cuda backend's FP8 kernel needs sm_89+ (the hardware E4M3 cast)"),
              pytest.mark.usefixtures("strict_dispatch")]

OP = "quantize_fp8_group_packed"
GROUP = 128
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KS = [128, 384, 2048, 7168, 16384]
ROWS = [0, 1, 3, 127, 4096]
BIG_ROWS = 4096
POISON_Q = 0xAB
POISON_S = 0x5A5A5A5A


def scale_words(k: int) -> int:
    return -(-(k // GROUP) // 4)


# --- comparison (module-scoped helpers) ------------------------------------------------------------

def assert_same_bytes(got: torch.Tensor, want: torch.Tensor, what: str, x: torch.Tensor | None = None) -> None:
    """torch.equal on the raw bytes of E4M3 tensors; on a mismatch, say where, with the input
    element and its group's amax."""
    g, w = got.view(torch.uint8).cpu(), want.view(torch.uint8).cpu()
    assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} != {tuple(w.shape)}"
    if torch.equal(g, w):
        return
    message, at = first_difference(g, w, what)
    if x is not None:
        start = at[-1] // GROUP * GROUP
        group = x[at[:-1]][start:start + GROUP].float()
        amax = group.abs().nan_to_num(0.0).max()
        message += f"; x there is {x[at].float().item()!r}, its group's amax {amax.item()!r}"
    raise AssertionError(message)


def assert_same_words(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == want.dtype == torch.int32 and got.shape == want.shape, what
    if not torch.equal(got, want):
        raise AssertionError(first_difference(got, want, what)[0])


def assert_same_fp8(got, want, x: torch.Tensor | None = None) -> None:
    """Compare (q, packed scales) from the GPU with the reference's: q's bytes, the scales' logical
    words, layout and whole owned storage [FP8-PACK, FP8-STORAGE]."""
    (q, s), (want_q, want_s) = got, want
    assert q.device.type == "cuda" and s.device.type == "cuda"
    assert (q.dtype, s.dtype) == (torch.float8_e4m3fn, torch.int32)
    assert q.shape == want_q.shape and q.is_contiguous()
    assert_same_bytes(q, want_q, "q", x)
    *lead, mn, words = s.shape
    assert s.shape == want_s.shape and s.stride() == want_s.stride()
    if s.numel():
        assert all(n == 1 or a == b for n, a, b in zip(s.shape, s.stride(), packed_strides(tuple(lead), mn, words)))
    assert_same_words(s.cpu(), want_s.cpu(), "packed scales (logical words)")
    owned = storage_words(s)
    assert s.storage_offset() == 0 and owned.numel() == math.prod(lead) * words * tma_rows(mn)
    assert not owned.reshape(math.prod(lead), words, tma_rows(mn))[..., mn:].any(), "TMA padding rows are not 0"
    assert_same_words(owned, storage_words(want_s), "packed scales (owned storage)")


def check(x: torch.Tensor, xd: torch.Tensor | None = None, eps: float = 1e-10) -> None:
    """x: the CPU input; xd: the same values on the GPU (default x.cuda(); pass a view of a GPU
    base to keep a layout that .cuda() would make contiguous)."""
    xd = x.cuda() if xd is None else xd
    assert xd.shape == x.shape and xd.dtype == x.dtype
    verdict = lowbit.supports(OP, xd, eps=eps)
    assert (verdict.backend, verdict.fallback) == ("cuda", False), verdict.explain()
    want = lowbit.quantize_fp8_group_packed(x, eps=eps, backend="cpu")
    got = lowbit.quantize_fp8_group_packed(xd, eps=eps)
    assert_same_fp8(got, want, x)


# --- every 16-bit pattern --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_every_finite_16_bit_pattern_in_every_group_position(dtype):
    finite, _ = all_patterns(dtype)
    # groups spanning one binade (every element near the amax), 4 and 20 binades (down to E4M3 subnormals and 0)
    groups = torch.cat([every_position(finite, GROUP, s) for s in strides_for(dtype, GROUP, (1, 4, 20))])
    check(to_rows(groups, 16))  # K = 2048: 16 groups, 4 scale words a row


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_every_non_finite_16_bit_pattern_in_every_group_position(dtype):
    finite, nonfinite = all_patterns(dtype)
    n = nonfinite.numel() * GROUP
    pool = every_position(finite, GROUP, strides_for(dtype, GROUP, (4,))[0])
    groups = pool.repeat(-(-n // pool.shape[0]), 1)[:n].clone()
    i = torch.arange(n)
    groups[i, i % GROUP] = nonfinite.repeat_interleave(GROUP)  # pattern j at position p: group 128j + p
    g = torch.Generator().manual_seed(8)  # and groups with two non-finite values at random positions
    pairs = pool[:4096].clone()
    rows = torch.arange(pairs.shape[0])
    for _ in range(2):
        pairs[rows, torch.randint(0, GROUP, (pairs.shape[0],), generator=g)] = \
            nonfinite[torch.randint(0, nonfinite.numel(), (pairs.shape[0],), generator=g)]
    check(to_rows(torch.cat([groups, pairs]), 8))


# --- random tensors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_random_spicy_tensors_match_the_reference(dtype, k, spicy, big_inputs):
    for rows in ROWS:
        if rows == BIG_ROWS:
            x = big_spicy(big_inputs, spicy, (BIG_ROWS, KS[-1]), dtype, width=GROUP, seed=2000, shift=11)
            x = x[:, :k].contiguous()
        else:  # a fresh seed per shape; exponent runs of a group, of the row, or one per element
            x = spicy((rows, k), dtype, seed=rows * 100_003 + k * 7 + dtype.itemsize,
                      exponent_run={1: k, 3: 1}.get(rows, GROUP))
        check(x)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_random_normal_tensors_scaled_by_powers_of_two_match_the_reference(dtype, k):
    for rows in ROWS:
        check(randn_pow2(rows, k, dtype, seed=rows * 31 + k + dtype.itemsize, width=GROUP))


@pytest.mark.parametrize("seed", range(4))
def test_spicy_tensors_over_several_seeds(seed, spicy):
    for dtype in DTYPES:
        for run in (1, 7, GROUP):
            check(spicy((127, 7168), dtype, seed=seed * 89 + run, exponent_run=run))


EPSILONS = [0.0, 1e-45, 1e-6, 3.0, 1e38]  # 1e-45: a float32 subnormal


@pytest.mark.parametrize("eps", EPSILONS)
def test_eps(eps, spicy):
    for dtype in DTYPES:
        check(spicy((37, 2048), dtype, seed=EPSILONS.index(eps), exponent_run=GROUP), eps=eps)


# --- layouts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 5, 2048), (2, 3, 7, 384), (2, 1, 4, 128), (3, 0, 256), (3, 5, 0), (1, 1, 1, 128),
                                   (2, 2, 2, 3, 512)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_n_d_inputs(dtype, shape, spicy):
    check(spicy(shape, dtype, seed=len(shape) * 1000 + shape[-1], exponent_run=GROUP if shape[-1] else 1))


ROWS_NC, K_NC = 37, 2048
# name: (shape of the contiguous base, the view of it that is the input)
LAYOUTS = {
    "transposed": ((K_NC, ROWS_NC), lambda t: t.t()),
    "row_stride_gt_k": ((ROWS_NC, K_NC + 256), lambda t: t[:, 128:128 + K_NC]),
    "unaligned_offset": ((ROWS_NC, K_NC + 128), lambda t: t[:, 1:1 + K_NC]),
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
    base = spicy(shape, dtype, seed=len(layout) + 50, exponent_run=1 if layout.startswith("transposed") else GROUP)
    x, xd = view(base), view(base.cuda())
    assert not xd.is_contiguous() and xd.stride() == x.stride()
    check(x, xd)
    assert torch.equal(bits(xd.cpu()), bits(x))  # the input is not written


# --- special groups -------------------------------------------------------------------------------

def special_groups(dtype: torch.dtype, width: int, seed: int) -> torch.Tensor:
    """Rows of `width`: NaN, ±Inf, ±0, finfo.max, tiny and subnormal values, alone, together and
    mixed with ordinary values; the golden 672 (tie between 320 and 352 after scaling by 2)."""
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

    for v in (nan, -nan, inf, -inf, 0.0, -0.0, fi.max, -fi.max, fi.tiny, -fi.tiny, sub, -sub, 672.0, 448.0, 464.0):
        full(v)
    last = width - 1
    for placed in (
        [(0, nan)], [(last, nan)], [(width // 2, -nan)], [(1, nan), (2, inf)], [(3, inf)], [(last, -inf)],
        [(0, inf), (last, -inf)], [(5, inf), (6, fi.max)], [(4, fi.max)], [(0, -fi.max), (1, fi.max)],
        [(2, fi.max), (3, fi.tiny), (4, sub)], [(0, 672.0)], [(1, -672.0), (2, 336.0)],
        [(0, nan), (1, -0.0), (2, fi.max)], [(7, 2.0**-40)], [(7, 1e-10), (8, -1e-12)],
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
    # every E4M3 magnitude (and the midpoints between neighbours: ties) at several group scales
    codes = torch.arange(127)
    grid = torch.where(codes < 8, codes / 8 * 2.0**-6, (1 + (codes % 8) / 8) * 2.0 ** (codes // 8 - 7)).double()
    ladder = torch.cat([grid, (grid[:-1] + grid[1:]) / 2])[:width]
    ladder[0] = 448.0  # the amax: the scale is 2^0 times 2^j
    for j in (-140, -133, -126, -100, -24, -3, 0, 5, 15, 100, 120):
        rows.append(ladder * 2.0**j)
        rows.append(-torch.cat([grid, (grid[:-1] + grid[1:]) / 2])[-width:] * 2.0**j)
    x = torch.stack(rows)
    ordinary = torch.randn(x.shape, generator=g, dtype=torch.float64)
    # each special group between ordinary ones, and mirrored in another group of its row; G = 5:
    # a partly filled second scale word
    return torch.cat([ordinary, x, ordinary * 2.0**-30, x.flip(-1), ordinary * 2.0**20], dim=-1).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_nan_inf_zero_and_max_groups(dtype):
    x = special_groups(dtype, GROUP, seed=4)
    check(x)
    check(x[None].expand(2, *x.shape))


# --- out= buffers ---------------------------------------------------------------------------------

def out_buffers(x: torch.Tensor, rows: str):
    """(q_buf, s_buf, s_storage) as [FP8-OUT] allows, poisoned: q_buf with R = mn or R = A rows,
    s_buf with vLLM's minimal storage (mn + (words-1)*A words per batch, batch stride words*A)."""
    *lead, mn, k = x.shape
    a, words, batches = tma_rows(mn), scale_words(k), math.prod(lead)
    r = mn if rows == "mn" else a
    q_buf = torch.full((*lead, r, k), POISON_Q, dtype=torch.uint8, device=x.device).view(torch.float8_e4m3fn)
    total = 0 if mn == 0 or batches == 0 else (batches - 1) * words * a + mn + (words - 1) * a
    storage = torch.empty(total, dtype=torch.int32, device=x.device)
    storage.fill_(POISON_S)
    s_buf = storage.as_strided((*lead, mn, words), packed_strides(tuple(lead), mn, words))
    return q_buf, s_buf, storage


def assert_out_buffers(q_buf, s_buf, storage, want, x=None) -> None:
    """q_buf: rows < mn the reference's bytes, rows >= mn zero; s_buf: its logical words the
    reference's, every other word of its storage still the poison."""
    want_q, want_s = want
    mn = want_q.shape[-2]
    assert_same_bytes(q_buf[..., :mn, :], want_q, "q_buf rows < mn", x)
    assert not q_buf.view(torch.uint8)[..., mn:, :].any(), "q_buf rows >= mn are not 0"
    assert_same_words(s_buf.cpu(), want_s.cpu(), "s_buf (logical words)")
    logical = torch.zeros(storage.numel(), dtype=torch.bool)
    logical[torch.arange(storage.numel()).as_strided(s_buf.shape, s_buf.stride()).reshape(-1)] = True
    rest = storage.cpu()[~logical]
    assert (rest == POISON_S).all(), f"{int((rest != POISON_S).sum())} words of s_buf's storage outside its view changed"


OUT_SHAPES = [(5, 2048), (127, 7168), (2, 3, 384), (2, 2, 13, 1024), (1, 128), (4, 512), (0, 256), (3, 6, 16384)]


@pytest.mark.parametrize("rows", ["A", "mn"])
@pytest.mark.parametrize("shape", OUT_SHAPES, ids=str)
def test_out_buffers_with_tma_rows(shape, rows, spicy):
    dtype = DTYPES[OUT_SHAPES.index(shape) % 3]
    x = spicy(shape, dtype, seed=sum(shape), exponent_run=GROUP)
    xd = x.cuda()
    q_buf, s_buf, storage = out_buffers(xd, rows)
    assert lowbit.supports(OP, xd, out=(q_buf, s_buf)).backend == "cuda"
    result = lowbit.quantize_fp8_group_packed(xd, out=(q_buf, s_buf))
    assert result[0] is q_buf and result[1] is s_buf
    assert_out_buffers(q_buf, s_buf, storage, lowbit.quantize_fp8_group_packed(x, backend="cpu"), x)


def test_out_buffers_that_do_not_fit_raise_before_anything_is_written(spicy):
    xd = spicy((5, 2048), torch.bfloat16, seed=5, exponent_run=GROUP).cuda()
    q_buf, s_buf, storage = out_buffers(xd, "A")
    dense_s = torch.full((5, scale_words(2048)), POISON_S, dtype=torch.int32, device="cuda")  # not MN-major
    tall_q = torch.full((9, 2048), POISON_Q, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)  # R > A
    with pytest.raises(ValueError, match="s_buf strides"):
        lowbit.quantize_fp8_group_packed(xd, out=(q_buf, dense_s))
    with pytest.raises(ValueError, match="q_buf shape"):
        lowbit.quantize_fp8_group_packed(xd, out=(tall_q, s_buf))
    for buf, poison in ((q_buf, POISON_Q), (tall_q, POISON_Q), (storage, POISON_S), (dense_s, POISON_S)):
        assert (buf.view(torch.uint8) == poison).all() if poison == POISON_Q else (buf == poison).all()


@pytest.mark.parametrize("layout", ["2d", "3d", "transposed"])
def test_out_buffers_allocate_nothing(layout, spicy):
    x = {"2d": lambda: spicy((127, 7168), torch.bfloat16, seed=60, exponent_run=GROUP).cuda(),
         "3d": lambda: spicy((2, 5, 2048), torch.float32, seed=61, exponent_run=GROUP).cuda(),
         "transposed": lambda: spicy((1024, 37), torch.float16, seed=62, exponent_run=1).cuda().t()}[layout]()
    q_buf, s_buf, _ = out_buffers(x, "A")
    lowbit.quantize_fp8_group_packed(x, out=(q_buf, s_buf))  # warm-up: compiles, caches the decision
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    lowbit.quantize_fp8_group_packed(x, out=(q_buf, s_buf))
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    assert torch.cuda.max_memory_allocated() == before, "the call allocated (and freed) device memory"


def test_out_buffers_cuda_graph_capture_and_replay_on_new_data(spicy):
    shapes = {"3d": ((2, 5, 2048), torch.bfloat16), "2d": ((127, 7168), torch.float32)}
    static = {n: spicy(s, d, seed=80 + i, exponent_run=GROUP).cuda() for i, (n, (s, d)) in enumerate(shapes.items())}
    bufs = {n: out_buffers(static[n], "A") for n in shapes}

    def run():
        for n in shapes:
            lowbit.quantize_fp8_group_packed(static[n], out=bufs[n][:2])

    side = torch.cuda.Stream()  # warm-up (compiles, fills the dispatch caches) off the capture stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for seed in (83, 84, 85):
        new = {n: spicy(s, d, seed=seed + i, exponent_run=1 if seed == 84 else GROUP)
               for i, (n, (s, d)) in enumerate(shapes.items())}
        for n in shapes:
            static[n].copy_(new[n])
            q_buf, s_buf, _ = bufs[n]
            q_buf.view(torch.uint8).fill_(POISON_Q)
            s_buf.fill_(POISON_S)  # its logical words only
        graph.replay()
        torch.cuda.synchronize()
        for n in shapes:
            assert_out_buffers(*bufs[n], lowbit.quantize_fp8_group_packed(new[n], backend="cpu"), new[n])


# --- the Triton kernel's two E4M3 conversions ------------------------------------------------------

def _direct(x: torch.Tensor, hardware_e4m3: bool):
    """The portable kernel called directly, with one E4M3 conversion or the other."""
    q, all_rows, scales = fp8_op.quantize_outputs(x, GROUP)
    q.view(torch.uint8).fill_(POISON_Q)
    all_rows.fill_(POISON_S)
    triton_fp8.quantize(x, q, all_rows, group_size=GROUP, eps=1e-10, hardware_e4m3=hardware_e4m3)
    return q, scales


def test_integer_and_hardware_e4m3_kernels_agree(spicy):
    finite, nonfinite = all_patterns(torch.bfloat16)
    patterns = to_rows(torch.cat([every_position(finite, GROUP, s) for s in strides_for(torch.bfloat16, GROUP, (1, 20))]
                                 + [nonfinite.reshape(-1, GROUP)]), 16)
    inputs = [patterns, spicy((1024, 7168), torch.float32, seed=9, exponent_run=GROUP),
              spicy((333, 2048), torch.float32, seed=10, exponent_run=1)]
    for x in inputs:
        xd = x.cuda()
        integer, hardware = _direct(xd, False), _direct(xd, True)
        assert_same_fp8(integer, hardware, x)
        assert_same_fp8(hardware, lowbit.quantize_fp8_group_packed(x, backend="cpu"), x)


@triton.jit
def _e4m3_both_kernel(integer_ptr, hardware_ptr, first, BLOCK: tl.constexpr):
    """Float32 patterns first + i, clamped to +-448 as the quantize kernel does, through both
    conversions; NaN (which the quantize kernel replaces before converting) stores 0xFF in both."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = (first + i).to(tl.float32, bitcast=True)
    keep = v == v
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    tl.store(integer_ptr + i, tl.where(keep, e4m3_integer(v), 0xFF).to(tl.uint8))
    tl.store(hardware_ptr + i, tl.where(keep, e4m3_hardware(v), 0xFF).to(tl.uint8))


@triton.jit
def _scale_byte_kernel(out_ptr, first, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    a = (first + i).to(tl.float32, bitcast=True)
    tl.store(out_ptr + i, fp8_scale_byte(a).to(tl.uint8), mask=i < n)


e4m3_integer, e4m3_hardware, fp8_scale_byte = float_bits.e4m3_integer, triton_fp8.e4m3_hardware, triton_fp8.fp8_scale_byte
CHUNK = 1 << 28
SWEEP_BLOCK = 1024
F32_NAN_PATTERNS = 2 * ((1 << 23) - 1)


def test_e4m3_integer_and_hardware_agree_on_every_float32():
    integer = torch.empty(CHUNK, dtype=torch.uint8, device="cuda")
    hardware = torch.empty_like(integer)
    skipped = 0
    for first in range(-(1 << 31), 1 << 31, CHUNK):  # int32 patterns: first + i never overflows
        _e4m3_both_kernel[(CHUNK // SWEEP_BLOCK,)](integer, hardware, first, BLOCK=SWEEP_BLOCK)
        if not torch.equal(integer, hardware):
            bad = (integer != hardware).nonzero().flatten()[:8].tolist()
            raise AssertionError("e4m3_integer and e4m3_hardware differ for float32 patterns " + ", ".join(
                f"{(first + i) & 0xFFFFFFFF:#010x} (integer {int(integer[i]):#04x}, hardware {int(hardware[i]):#04x})"
                for i in bad))
        skipped += int((integer == 0xFF).sum())
    assert skipped == F32_NAN_PATTERNS  # exactly the NaNs left out: no finite input converts to 0xFF


def spec_scale_bytes(a_bits: torch.Tensor) -> torch.Tensor:
    """[FP8-SCALE] byte of non-negative float32 a (given by its bits), with torch on the GPU:
    y = fl32(a / 448), y = max(y, fl32(1e-10)), exponent field + (mantissa != 0), at most 254.
    The divisor is a 0-dim CUDA tensor: PyTorch computes division by a *CPU* scalar (a Python
    number) as a product with its reciprocal, which is not fl32(a / 448)."""
    a = a_bits.view(torch.float32)
    y = a / torch.full((), 448.0, dtype=torch.float32, device=a.device)
    y = torch.maximum(y, torch.full((), 1e-10, dtype=torch.float32, device=a.device))
    yb = y.view(torch.int32)
    byte = ((yb >> 23) & 0xFF) + ((yb & 0x7FFFFF) != 0).to(torch.int32)
    return byte.clamp(max=254).to(torch.uint8)


def test_spec_scale_formula_on_the_gpu_divides_exactly():
    """The oracle below trusts torch's float32 division on CUDA to round to nearest: check it
    against exact rational arithmetic on random and edge patterns."""
    g = torch.Generator().manual_seed(11)
    a_bits = torch.cat([torch.randint(0, 0x7F800000, (3000,), generator=g, dtype=torch.int32),
                        torch.tensor([0, 1, 0x00800000, 0x43E00000, 0x44280000, 0x7F7FFFFF], dtype=torch.int32)])
    y = (a_bits.cuda().view(torch.float32) / torch.full((), 448.0, device="cuda")).cpu()
    want = [float(fl32(Fraction(a) / 448)) for a in a_bits.view(torch.float32).tolist()]
    assert torch.equal(y, torch.tensor(want, dtype=torch.float32))


def test_fp8_scale_byte_matches_the_spec_formula_on_every_non_negative_float32():
    end = 0x7F800000 + 1  # +0 .. +Inf
    out = torch.empty(CHUNK, dtype=torch.uint8, device="cuda")
    for first in range(0, end, CHUNK):
        n = min(CHUNK, end - first)
        _scale_byte_kernel[(triton.cdiv(n, SWEEP_BLOCK),)](out, first, n, BLOCK=SWEEP_BLOCK)
        want = spec_scale_bytes(torch.arange(first, first + n, dtype=torch.int32, device="cuda"))
        got = out[:n]
        if not torch.equal(got, want):
            bad = (got != want).nonzero().flatten()[:8].tolist()
            raise AssertionError("fp8_scale_byte differs from [FP8-SCALE] for float32 patterns " + ", ".join(
                f"{first + i:#010x} (kernel {int(got[i])}, spec {int(want[i])})" for i in bad))


# --- torch.compile ----------------------------------------------------------------------------------

def _quantize_both(x, q_buf, s_buf):
    q, s = lowbit.quantize_mxfp4(x)
    qf, sf = lowbit.quantize_mxfp4(x, scale_rule="floor")
    q8, s8 = lowbit.quantize_fp8_group_packed(x)
    lowbit.quantize_fp8_group_packed(x, out=(q_buf, s_buf))
    return q, s, qf, sf, q8, s8


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int32 else t.view(torch.uint8)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_fullgraph_matches_eager(dynamic, spicy):
    torch._dynamo.reset()
    compiled = torch.compile(_quantize_both, fullgraph=True, dynamic=dynamic)
    cases = [(13, 91), (5, 92)] if dynamic else [(5, 90)]
    for mn, seed in cases:
        x = spicy((2, mn, 2048), torch.bfloat16, seed=seed, exponent_run=32).cuda()
        assert lowbit.supports("quantize_mxfp4", x).backend == "cuda" and lowbit.supports(OP, x).backend == "cuda"
        rows = "mn" if dynamic else "A"
        got_bufs, want_bufs = out_buffers(x, rows), out_buffers(x, rows)
        got = compiled(x, *got_bufs[:2])
        want = _quantize_both(x, *want_bufs[:2])
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.device == w.device and (g.dtype, g.shape) == (w.dtype, w.shape), i
            assert torch.equal(_raw(g), _raw(w)), f"output {i} differs from eager"
        assert got[5].stride() == want[5].stride()  # the packed layout and its owned storage survive
        assert torch.equal(storage_words(got[5]), storage_words(want[5]))
        assert torch.equal(got_bufs[0].view(torch.uint8), want_bufs[0].view(torch.uint8))
        assert torch.equal(got_bufs[2], want_bufs[2])
        assert_same_fp8(want[4:], lowbit.quantize_fp8_group_packed(x.cpu(), backend="cpu"))


# --- dequantize [FP8-DEQUANT] ---------------------------------------------------------------------

DEQUANTIZE = "dequantize_fp8_group_packed"
DEQUANTIZE_GROUPS = [64, 128]  # what the cuda record says it takes, written out here
OUT_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def packed_scales(scale_bytes: torch.Tensor) -> torch.Tensor:
    """Scale bytes (..., mn, G) as packed words in the [FP8-PACK] layout (built on the CPU), the padding
    rows poisoned."""
    *lead, mn, groups = scale_bytes.shape
    words = -(-groups // 4)
    padded = torch.nn.functional.pad(scale_bytes.to(torch.int64), (0, 4 * words - groups))
    word = sum(padded[..., j::4] << (8 * j) for j in range(4))
    storage = torch.full((*lead, words, tma_rows(mn)), POISON_S, dtype=torch.int32)
    scales = storage.transpose(-1, -2)[..., :mn, :]
    scales.copy_(torch.where(word >= 2**31, word - 2**32, word).to(torch.int32))
    return scales


def random_bytes(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.int32).to(torch.uint8)


def check_dequantize(q: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Auto-dispatch on the GPU copies (cuda/triton, asserted) against the reference on the CPU ones."""
    qd, sd = q.cuda(), scales.cuda()
    verdict = lowbit.supports(DEQUANTIZE, qd, sd, group_size=group_size, dtype=dtype)
    assert (verdict.kernel.capability.label, verdict.fallback) == ("cuda/triton", False), verdict.explain()
    got = lowbit.dequantize_fp8_group_packed(qd, sd, group_size=group_size, dtype=dtype)
    want = lowbit.dequantize_fp8_group_packed(q, scales, group_size=group_size, dtype=dtype, backend="cpu")
    assert got.device.type == "cuda" and (got.dtype, got.shape) == (want.dtype, want.shape)
    g, w = bits(got).cpu(), bits(want)
    if not torch.equal(g, w):
        raise AssertionError(first_difference(g, w, f"{dtype_id(dtype)} group {group_size} {tuple(q.shape)}")[0])
    return got


@pytest.mark.parametrize("group_size", DEQUANTIZE_GROUPS)
@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=dtype_id)
def test_dequantize_every_e4m3_byte_under_every_scale_byte(group_size, dtype):
    # runs of 256 elements hold every E4M3 byte under one scale byte: 2 runs a row x 128 rows give all
    # 256 scale bytes; row 128 (an odd mn) repeats 0xFF and 0x7F
    q = torch.arange(256, dtype=torch.int32).to(torch.uint8).repeat(129, 2)
    run = torch.cat([torch.arange(256), torch.tensor([0xFF, 0x7F])]).reshape(129, 2)
    got = check_dequantize(q.view(torch.float8_e4m3fn), packed_scales(run.repeat_interleave(256 // group_size, 1)),
                           group_size, dtype)
    nan_bits = {torch.float32: 0x7FC00000, torch.bfloat16: 0x7FC0, torch.float16: 0x7E00}[dtype]
    assert (bits(got).cpu()[run.repeat_interleave(256, 1) == 0xFF] == nan_bits).all()


@pytest.mark.parametrize("group_size", DEQUANTIZE_GROUPS)
@pytest.mark.parametrize("shape", [(1, 128), (3, 384), (127, 7168), (4097, 2048), (3, 5, 1280), (2, 3, 13, 384),
                                   (2, 0, 256), (8192, 7168)], ids=str)
def test_dequantize_random_bytes(group_size, shape):
    q = random_bytes(shape, seed=sum(shape) + group_size)
    scales = packed_scales(random_bytes((*shape[:-1], shape[-1] // group_size), seed=group_size))
    for dtype in OUT_DTYPES:
        check_dequantize(q, scales, group_size, dtype)


@pytest.mark.parametrize("kind", ["row_major_scales", "vllm_minimal_storage", "q_rows_sliced", "q_batch_transposed",
                                  "q_columns_strided"])
def test_dequantize_reads_q_and_scales_through_their_strides(kind):
    q = random_bytes((2, 9, 1024), seed=3)
    scales = packed_scales(random_bytes((2, 9, 8), seed=4))
    if kind == "row_major_scales":
        scales = scales.contiguous()
    elif kind == "vllm_minimal_storage":  # mn + (words - 1) * A words per batch [FP8-OUT]
        minimal = torch.full((2 * 21 + 64,), POISON_S, dtype=torch.int32).as_strided((2, 9, 2), (21, 1, 12))
        minimal.copy_(scales)
        scales = minimal
    elif kind == "q_rows_sliced":
        q = random_bytes((2, 17, 1024), seed=5)[:, ::2]
    elif kind == "q_batch_transposed":
        q = random_bytes((9, 2, 1024), seed=6).transpose(0, 1)
    else:
        q = random_bytes((2, 9, 2048), seed=7)[..., ::2]
    qd, sd = q.cuda(), scales.cuda()
    if kind != "q_batch_transposed":  # a copy to the device keeps the strides the test means
        qd, sd = torch.empty_strided(q.shape, q.stride(), dtype=q.dtype, device="cuda").copy_(q), \
            torch.empty_strided(scales.shape, scales.stride(), dtype=torch.int32, device="cuda").copy_(scales)
    for dtype in OUT_DTYPES:
        got = lowbit.dequantize_fp8_group_packed(qd.view(torch.float8_e4m3fn), sd, dtype=dtype)
        want = lowbit.dequantize_fp8_group_packed(q.view(torch.float8_e4m3fn), scales, dtype=dtype, backend="cpu")
        assert torch.equal(bits(got).cpu(), bits(want)), (kind, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dequantize_of_quantize_on_the_gpu(dtype, spicy):
    x = spicy((3, 77, 7168), dtype, seed=60, exponent_run=GROUP).cuda()
    q, s = lowbit.quantize_fp8_group_packed(x)
    for out in OUT_DTYPES:
        got = lowbit.dequantize_fp8_group_packed(q, s, dtype=out)
        want = lowbit.dequantize_fp8_group_packed(q.cpu(), s.cpu(), dtype=out, backend="cpu")
        assert torch.equal(bits(got).cpu(), bits(want)), out


def test_dequantize_dispatch_picks_cuda_without_a_warning(caplog, monkeypatch):
    monkeypatch.delenv("LOWBIT_STRICT", raising=False)  # a fallback would run and warn: the warning is the check
    q, s = lowbit.quantize_fp8_group_packed(torch.randn(5, 2048, device="cuda", dtype=torch.bfloat16))
    verdict = lowbit.supports(DEQUANTIZE, q, s)
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton", False), verdict.explain()
    assert "falls back" not in verdict.explain()
    with caplog.at_level(logging.DEBUG, logger="lowbit"):
        lowbit.dequantize_fp8_group_packed(q, s)
        lowbit.dequantize_fp8_group_packed(q.view(torch.uint8), s, dtype=torch.float32)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_dequantize_cuda_graph_capture_and_replay_on_new_data():
    shapes = {"2d": ((127, 7168), 128, torch.bfloat16), "3d": ((2, 5, 1280), 64, torch.float32)}
    static = {}
    for i, (name, (shape, group, _)) in enumerate(shapes.items()):
        static[name] = (random_bytes(shape, seed=90 + i).cuda(),
                        packed_scales(random_bytes((*shape[:-1], shape[-1] // group), seed=95 + i)).cuda())
    outs = {}

    def run():
        for name, (_, group, dtype) in shapes.items():
            outs[name] = lowbit.dequantize_fp8_group_packed(*static[name], group_size=group, dtype=dtype)

    side = torch.cuda.Stream()  # warm-up (compiles, fills the dispatch caches) off the capture stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for seed in (100, 101):
        for i, (name, (shape, group, _)) in enumerate(shapes.items()):
            q, s = static[name]
            q.copy_(random_bytes(shape, seed=seed + i))
            s.copy_(packed_scales(random_bytes((*shape[:-1], shape[-1] // group), seed=seed + 10 + i)))
            outs[name].view(torch.uint8).fill_(0xAB)
        graph.replay()
        torch.cuda.synchronize()
        for name, (_, group, dtype) in shapes.items():
            q, s = static[name]
            want = lowbit.dequantize_fp8_group_packed(q.cpu(), s.cpu(), group_size=group, dtype=dtype, backend="cpu")
            assert torch.equal(bits(outs[name]).cpu(), bits(want)), (name, seed)


def test_dequantize_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, s: lowbit.dequantize_fp8_group_packed(q, s, dtype=torch.float16),
                             fullgraph=True)
    q, s = random_bytes((7, 1024), seed=110).cuda(), packed_scales(random_bytes((7, 8), seed=111)).cuda()
    got = compiled(q, s)
    assert torch.equal(bits(got), bits(lowbit.dequantize_fp8_group_packed(q, s, dtype=torch.float16)))
