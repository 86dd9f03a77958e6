"""The portable Triton FP8 group-packed kernels (backends/triton/fp8_group_packed.py), run by the
Triton interpreter on CPU tensors, byte for byte against the CPU reference. Dequantize: every E4M3
byte under every scale byte (0xFF included) for each group size the GPU records take, into every
output dtype, also against an independent oracle; random bytes with odd row counts, 3-D and 4-D
batches, G not a multiple of 4, strided q and scales in any layout. Quantize: every bfloat16 and
float16 bit pattern under several group scales, random tensors for K = 128, 384 (G not a multiple
of 4), 640 and 1024, batches, strided inputs, eps, special groups, and caller out= buffers with the
minimal storage [FP8-OUT]. Only the integer E4M3 path runs here (hardware_e4m3=False): the
interpreter's own float8 cast is wrong. The kernel's jit helpers are checked on their own against
torch's float32 -> float8_e4m3fn cast and the spec's division formula in numpy float32. Outputs are
poisoned before every launch (q bytes 0xAA, scale words -7), so anything left unwritten shows."""

import math

import numpy as np
import pytest
import torch
from preambles import interpreted

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from lowbit.backends.cpu import fp8_group_packed as reference  # noqa: E402
from lowbit.backends.cuda import fp8_group_packed as cuda_records  # noqa: E402
from lowbit.backends.triton import fp8_group_packed as kernels  # noqa: E402
from lowbit.backends.triton.float_bits import e4m3_integer, times_pow2  # noqa: E402
from lowbit.backends.triton.launch import LaunchConfig  # noqa: E402
from oracles import (  # noqa: E402
    ALL16,
    E4M3_ALL,
    E4M3_POS,
    F32_MAX,
    arrangements,
    bits16,
    from_bits16,
    packed_strides,
    rounded_bits,
)

from lowbit.fp8_group_packed import check_out_buffers, quantize_outputs  # noqa: E402

pytestmark = interpreted()

GROUP = 128
EPS = 1e-10
POISON_Q = 0xAA
POISON_S = -7
# Few, large programs: the interpreter's cost is per program, not per element. (block_k is fixed by
# the kernel: one packed word, 4 groups, per program.)
TALL = LaunchConfig(block_m=64, block_k=4 * GROUP, num_warps=4)
ODD = LaunchConfig(block_m=2, block_k=4 * GROUP, num_warps=4)  # tiles that straddle an odd mn
# --- running both sides ---------------------------------------------------------------------------

def storage_of(scales_all_rows: torch.Tensor) -> torch.Tensor:
    """The owned (..., words, A) words behind quantize_outputs' scales."""
    return scales_all_rows.transpose(-1, -2)


def triton_outputs(x, *, group_size=GROUP, eps=EPS, config=TALL):
    q, scales_all_rows, scales = quantize_outputs(x, group_size)
    q.view(torch.uint8).fill_(POISON_Q)
    storage_of(scales_all_rows).fill_(POISON_S)
    kernels.quantize(x, q, scales_all_rows, group_size=group_size, eps=eps, hardware_e4m3=False, config=config)
    return q.view(torch.uint8), storage_of(scales_all_rows), scales


def reference_outputs(x, *, group_size=GROUP, eps=EPS):
    q, scales_all_rows, scales = quantize_outputs(x, group_size)
    reference.quantize(x, q, scales_all_rows, group_size=group_size, eps=eps)
    return q.view(torch.uint8), storage_of(scales_all_rows), scales


def assert_equal(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        first = [(tuple(i), hex(got[tuple(i)].item() & 0xFFFFFFFF), hex(want[tuple(i)].item() & 0xFFFFFFFF))
                 for i in bad[:8].tolist()]
        raise AssertionError(f"{what}: {len(bad)} of {got.numel()} differ; first (index, triton, reference): {first}")


def assert_matches_reference(x, *, group_size=GROUP, eps=EPS, config=TALL):
    """Compares q bytes and every word of the scale storage, the TMA padding rows included."""
    got_q, got_storage, got_scales = triton_outputs(x, group_size=group_size, eps=eps, config=config)
    want_q, want_storage, want_scales = reference_outputs(x, group_size=group_size, eps=eps)
    assert_equal(got_storage, want_storage, "scale storage")
    assert_equal(got_q, want_q, "q")
    *lead, mn, k = x.shape
    assert got_scales.shape == (*lead, mn, -(-(k // group_size) // 4))
    if got_scales.numel():
        assert got_scales.stride() == packed_strides(tuple(lead), mn, got_scales.shape[-1])
        assert (got_storage[..., mn:] == 0).all(), "[FP8-STORAGE] padding rows mn..A-1 are not 0"
    return got_q, got_storage, got_scales


# --- every 16-bit pattern -------------------------------------------------------------------------

# anchors for arrangements(): each fixes the group's scale (anchor 448: the scale is 1, every value in
# [-448, 448] is rounded onto E4M3 as it is, subnormals and ties included)
BF16_ANCHORS = [bits16(448.0 * 2.0**k, torch.bfloat16) for k in (-130, -100, -20, 0, 1, 20, 110)]
F16_ANCHORS = [bits16(448.0 * 2.0**k, torch.float16) for k in (-20, -8, 0, 6)]


@pytest.mark.parametrize("k", [128, 384, 640, 1024])
def test_every_bfloat16_value_under_several_group_scales_matches_reference(k):
    # float32 holding exactly the bfloat16 values (widening is exact)
    bits = arrangements(ALL16, BF16_ANCHORS, GROUP, (1, 77), anchor_first=True, row=k)
    x = torch.from_numpy((bits.astype(np.uint32) << 16).view(np.float32).copy())
    assert_matches_reference(x)


@pytest.mark.parametrize("k", [128, 640])
def test_bfloat16_loads_of_every_pattern_match_reference(k):
    x = from_bits16(arrangements(ALL16, BF16_ANCHORS, GROUP, (1, 77), anchor_first=True, row=k), torch.bfloat16)
    assert_matches_reference(x)


# block_m 32, 16, 8 and 4 rows of 4 warps: a group's 16-element pieces split between one thread's registers
# and 1, 2, 4 or 8 threads (GROUP_THREADS)
SPLITS = [LaunchConfig(block_m=m, block_k=4 * GROUP, num_warps=4) for m in (32, 16, 8, 4)]


@pytest.mark.parametrize("config", SPLITS, ids=lambda c: f"{kernels.group_threads(c, GROUP)}_threads")
def test_every_split_of_a_group_between_threads_matches_reference(config):
    x = from_bits16(arrangements(ALL16, BF16_ANCHORS, GROUP, (1, 77), anchor_first=True, row=640), torch.bfloat16)
    assert_matches_reference(x, config=config)


@pytest.mark.parametrize("k", [128, 384])
def test_every_float16_pattern_under_several_group_scales_matches_reference(k):
    x = from_bits16(arrangements(ALL16, F16_ANCHORS, GROUP, (1, 77), anchor_first=True, row=k), torch.float16)
    assert_matches_reference(x)


# --- random tensors, shapes, strides --------------------------------------------------------------

@pytest.mark.parametrize("k", [128, 384, 640, 1024])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_random_values_over_the_whole_exponent_range_match_reference(spicy, k, dtype):
    # mn = 37: A = 40, three padding rows; exponent runs of 64 put two magnitudes in each group
    x = spicy((37, k), dtype, exponent_run=64, seed=k + dtype.itemsize)
    assert_matches_reference(x)


@pytest.mark.parametrize("shape", [(2, 3, 13, 384), (4, 6, 1024), (2, 1, 1, 640)])
def test_batched_inputs_match_reference(spicy, shape):
    x = spicy(shape, torch.float32, exponent_run=128, seed=sum(shape))
    assert_matches_reference(x)
    assert_matches_reference(x, config=ODD)


@pytest.mark.parametrize("shape", [(1, 128), (1, 384), (5, 640), (8, 1024), (3, 2, 1, 384)])
def test_default_launch_table_matches_reference(spicy, shape):
    assert_matches_reference(spicy(shape, torch.float16, exponent_run=128, seed=len(shape)), config=None)


@pytest.mark.parametrize("shape", [(0, 128), (0, 640), (2, 0, 384), (3, 0)])
def test_empty_inputs_give_empty_outputs(shape):
    x = torch.empty(shape, dtype=torch.bfloat16)
    got_q, got_storage, got_scales = triton_outputs(x)
    *lead, mn, k = shape
    assert got_q.shape == shape and got_scales.shape == (*lead, mn, -(-(k // GROUP) // 4))
    assert got_storage.numel() == 0  # mn = 0 gives A = 0 rows, K = 0 no words


def strided_inputs(spicy):
    base = spicy((4, 3, 10, 768), torch.float32, exponent_run=128, seed=31)
    return {
        "transposed": spicy((384, 37), torch.float32, exponent_run=1, seed=32).t(),  # last-dim stride 37
        "last_dim_sliced": base.reshape(120, 768)[:, ::2],  # (120, 384), last-dim stride 2
        "rows_sliced": base.reshape(120, 768)[1::3, 256:],  # (40, 512), row stride 2304, offset
        "batch_transposed": base.transpose(0, 1)[..., :640],  # (3, 4, 10, 640): reshape copies
        "batch_sliced": base[::2, :, 3:9, :640],  # batch stride 2 * 3 * 10 * 768, mn 6
        "broadcast_batch": spicy((1, 10, 384), torch.float16, exponent_run=128, seed=33).expand(3, 10, 384),
    }


@pytest.mark.parametrize("kind", ["transposed", "last_dim_sliced", "rows_sliced", "batch_transposed", "batch_sliced",
                                  "broadcast_batch"])
def test_non_contiguous_inputs_match_reference(spicy, kind):
    x = strided_inputs(spicy)[kind]
    got_q, got_storage, _ = assert_matches_reference(x)
    want_q, want_storage, _ = reference_outputs(x.contiguous())
    assert torch.equal(got_q, want_q) and torch.equal(got_storage, want_storage)


@pytest.mark.parametrize("eps", [0.0, 1e-10, 0.1, 1.0, 1e3, 3e38])
def test_eps_matches_reference(spicy, eps):
    # 0.1 is not a float32: the kernel must use fl32(eps) [FP8-SCALE]
    x = spicy((24, 640), torch.float32, exponent_run=128, seed=41)
    x[:4] = 0.0  # all-zero groups: a = fl32(eps)
    x[4:8] = torch.rand(4, 640, generator=torch.Generator().manual_seed(42)) * 2.0  # amax near 1e0 vs eps
    assert_matches_reference(x, eps=eps)


# --- special groups -------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


def test_nan_inf_zero_and_golden_groups_match_reference_and_the_spec_bytes():
    groups = {  # name: (128 values, scale byte, q bytes of the first 4 elements)
        "zero": ([0.0] * 128, 0x5E, [0x00] * 4),  # [FP8-GOLDEN]
        "neg_zero": ([-0.0] * 128, 0x5E, [0x80] * 4),  # the sign of zero is kept [FP8-ELEMENT]
        "all_nan": ([NAN, -NAN] * 64, 0x5E, [0x7F] * 4),  # [FP8-NAN]: amax ignores NaN
        "nan_among_values": ([-NAN, 672.0, -1.0] + [0.0] * 125, 0x80, [0x7F, 0x7A, 0xB0, 0x00]),
        "inf": ([INF, -INF, 1.0, 2.0**127] + [0.0] * 124, 254, [0x7E, 0xFE, 0x00, 0x38]),  # [FP8-INF]
        # 672 / 2 = 336: a tie of 320 and 352 -> 320; 336 / 2 = 168: a tie of 160 and 176 -> 160
        "golden_672": ([672.0, -672.0, 336.0, 0.0] + [1.0] * 124, 0x80, [0x7A, 0xFA, 0x72, 0x00]),
        # y = F32_MAX / 448 ~ 1.14 * 2^119 -> 2^120; F32_MAX / 2^120 = 256 - 2^-16 -> 256
        "f32_max": ([F32_MAX, -F32_MAX] * 64, 247, [0x78, 0xF8] * 2),
        # y = fl32(1e-10 / 448) < fl32(1e-10) -> 2^-33; 1e-10 * 2^33 = 0.859 -> 0.875 (0x36)
        "tiny": ([2.0**-149, -(2.0**-149), 2.0**-126, 1e-10] * 32, 0x5E, [0x00, 0x80, 0x00, 0x36]),
    }
    values = [v for vals, _, _ in groups.values() for v in vals]
    x = torch.tensor(values, dtype=torch.float64).to(torch.float32).reshape(2, -1)  # 2 rows of 4 groups
    got_q, got_storage, got_scales = assert_matches_reference(x, config=ODD)
    bytes_by_group = [(int(w) >> (8 * j)) & 0xFF for row in got_scales.tolist() for w in row for j in range(4)]
    for i, (name, (_, byte, first_q)) in enumerate(groups.items()):
        row, col = divmod(i * GROUP, x.shape[1])
        assert bytes_by_group[i] == byte, name
        assert got_q[row, col:col + 4].tolist() == first_q, name


def test_every_kind_of_float32_nan_becomes_0x7f_and_is_ignored_by_amax():
    # smallest and largest payloads, either sign, signalling or quiet, next to Inf, float32 max,
    # zeros and small values: every NaN gives 0x7F, the group's byte comes from the rest
    nans = [0x7F800001, 0xFF800001, 0x7FC00000, 0xFFC00000, 0x7FBFFFFF, 0x7FFFFFFF, 0xFFFFFFFF]
    fill = [0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000000, 0x3F800000, 0x00000001]
    groups = []
    for nan in nans:
        for other in fill:
            group = [other] * GROUP
            group[7::40] = [nan] * len(group[7::40])
            groups.append(group)
    bits = np.array(groups, dtype=np.uint32).reshape(-1, 2 * GROUP)
    x = torch.from_numpy(bits.view(np.float32).copy())
    got_q, _, _ = assert_matches_reference(x)
    assert (got_q[torch.from_numpy(np.isnan(bits.view(np.float32)))] == 0x7F).all()


# --- caller buffers [FP8-OUT] ---------------------------------------------------------------------

def out_buffers(lead, mn, k, r, guard):
    """q_buf (..., R, K) poisoned; s_buf (..., mn, words) with strides (..., 1, A) over the minimal
    storage mn + (words - 1) * A words for the last batch, plus `guard` words after it."""
    words, rows, batches = -(-(k // GROUP) // 4), -(-mn // 4) * 4, math.prod(lead)
    q_buf = torch.full((*lead, r, k), POISON_Q, dtype=torch.uint8).view(torch.float8_e4m3fn)
    need = (batches - 1) * words * rows + mn + (words - 1) * rows
    storage = torch.full((need + guard,), POISON_S, dtype=torch.int32)
    s_buf = storage.as_strided((*lead, mn, words), packed_strides(tuple(lead), mn, words))
    return q_buf, s_buf, storage


def logical_mask(storage, lead, mn, k):
    """True at the storage words s_buf's logical elements occupy."""
    words, rows = -(-(k // GROUP) // 4), -(-mn // 4) * 4
    index = torch.arange(storage.numel())
    view = index.as_strided((*lead, mn, words), packed_strides(tuple(lead), mn, words))
    mask = torch.zeros(storage.numel(), dtype=torch.bool)
    mask[view.reshape(-1)] = True
    assert mask.sum() == math.prod(lead) * mn * words and rows >= mn
    return mask


# guarded storage first: a stray write past the minimal storage fails there cleanly, before the
# exact-size buffers of the second run could corrupt the heap
@pytest.mark.parametrize("lead, mn, k, r", [((), 5, 384, 5), ((), 5, 384, 7), ((), 5, 640, 8), ((), 8, 1024, 8),
                                            ((), 1, 128, 4), ((2, 3), 6, 640, 7), ((2,), 1, 1024, 1),
                                            ((3,), 13, 384, 16)])
@pytest.mark.parametrize("guard", [16, 0], ids=["guarded_storage", "exact_storage"])
def test_out_buffers_get_exactly_their_words_and_zero_rows_past_mn(spicy, lead, mn, k, r, guard):
    x = spicy((*lead, mn, k), torch.float32, exponent_run=128, seed=mn * k + r)
    q_buf, s_buf, storage = out_buffers(lead, mn, k, r, guard)
    check_out_buffers(x, q_buf, s_buf, GROUP)  # the buffers are ones [FP8-OUT] accepts
    kernels.quantize(x, q_buf, s_buf, group_size=GROUP, eps=EPS, hardware_e4m3=False, config=ODD)
    want_q_buf, want_s_buf, want_storage = out_buffers(lead, mn, k, r, guard)
    reference.quantize(x, want_q_buf, want_s_buf, group_size=GROUP, eps=EPS)

    assert_equal(storage, want_storage, "s_buf storage")
    assert_equal(q_buf.view(torch.uint8), want_q_buf.view(torch.uint8), "q_buf")
    mask = logical_mask(storage, lead, mn, k)
    assert (storage[~mask] == POISON_S).all(), "s_buf words outside its logical view were written"
    assert (q_buf.view(torch.uint8)[..., mn:, :] == 0).all(), "q_buf rows >= mn are not 0"
    want_q, _, want_scales = reference_outputs(x)  # the same bits as the allocating call
    assert torch.equal(s_buf, want_scales) and torch.equal(q_buf[..., :mn, :].view(torch.uint8), want_q)


# --- the jit helpers on their own -----------------------------------------------------------------

@triton.jit
def _e4m3_probe(v_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    tl.store(out_ptr + i, e4m3_integer(tl.load(v_ptr + i, mask=ok, other=0.0)), mask=ok)


@triton.jit
def _scale_byte_probe(a_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    tl.store(out_ptr + i, kernels.fp8_scale_byte(tl.load(a_ptr + i, mask=ok, other=0.0)), mask=ok)


@triton.jit
def _times_pow2_probe(x_ptr, n_ptr, out_ptr, count, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < count
    x = tl.load(x_ptr + i, mask=ok, other=0.0)
    tl.store(out_ptr + i, times_pow2(x, tl.load(n_ptr + i, mask=ok, other=0)), mask=ok)


PROBE_BLOCK = 1 << 17


def probe(kernel, values: np.ndarray) -> np.ndarray:
    v = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    out = torch.full(v.shape, -7, dtype=torch.int32)
    kernel[(triton.cdiv(v.numel(), PROBE_BLOCK),)](v, out, v.numel(), BLOCK=PROBE_BLOCK)
    return out.numpy()


def test_e4m3_integer_rounds_and_saturates_like_torchs_e4m3_cast():
    # every float32 in [0, 448] whose bits are a multiple of 97, every E4M3 value and every midpoint
    # between neighbours with their float32 neighbours, float32 subnormals, values past 448 (464 is
    # the midpoint to the 480 E4M3FN lacks) up to Inf; each with both signs
    grid = E4M3_POS.astype(np.float32)
    mids = ((grid[1:].astype(np.float64) + grid[:-1]) / 2).astype(np.float32)  # exact in float32
    points = np.concatenate([grid, mids, [2.0**-10, 2.0**-7, 2.0**-6, 2.0**-149, 2.0**-126, 1e-10],
                             [464.0, 480.0, 512.0, 1e30, F32_MAX, np.inf]]).astype(np.float32)
    with np.errstate(over="ignore"):  # float32 max's successor is Inf
        near = [points, np.nextafter(points, np.float32(0)), np.nextafter(points, np.float32(np.inf))]
    stride = np.arange(0, 0x43E00001, 97, dtype=np.uint32).view(np.float32)
    v = np.concatenate([stride, *near]).astype(np.float32)
    v = np.concatenate([v, -v])
    got = probe(_e4m3_probe, v) & 0xFF
    want = torch.from_numpy(v).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    mismatch = np.nonzero(got != want)[0]
    assert len(mismatch) == 0, [(float(v[i]), hex(got[i]), hex(want[i])) for i in mismatch[:8]]


def test_fp8_scale_byte_is_the_spec_division_formula_in_float32():
    # [FP8-SCALE]: byte = ceil-exponent of max(fl32(a / 448), fl32(1e-10)), clamped to 254, for a >= 0
    g = np.random.default_rng(3)
    pos16 = ALL16[ALL16 <= 0x7F80]  # non-negative bfloat16 patterns up to +Inf
    powers = 448.0 * np.exp2(np.arange(-160, 121, dtype=np.float64))
    powers = powers[(powers >= 2.0**-149) & (powers <= F32_MAX)].astype(np.float32)
    floor_edge = np.float32(np.float32(1e-10) * np.float32(448))
    edges = np.concatenate([powers, [floor_edge, np.float32(2.0**-33) * np.float32(448), F32_MAX, np.inf, 0.0]])
    down = up = edges.astype(np.float32)
    near = [down]
    for _ in range(3):  # 1, 2 and 3 ulps either side
        with np.errstate(over="ignore"):  # float32 max's successors are Inf
            down, up = np.nextafter(down, np.float32(0)), np.nextafter(up, np.float32(np.inf))
        near += [down, up]
    a = np.concatenate([
        (pos16.astype(np.uint32) << 16).view(np.float32),
        g.integers(0, 0x7F800001, 400_000, dtype=np.uint32).view(np.float32),
        *near,
    ]).astype(np.float32)
    got = probe(_scale_byte_probe, a)
    with np.errstate(over="ignore"):
        y = np.maximum(a / np.float32(448), np.float32(1e-10))  # numpy float32 division: correctly rounded
    assert y.dtype == np.float32
    m, p = np.frexp(y.astype(np.float64))  # y = m * 2^p, m in [0.5, 1): ceil(log2 y) = p, or p - 1 at m = 0.5
    want = np.where(np.isinf(y), 254, np.minimum(np.where(m == 0.5, p - 1, p) + 127, 254))
    mismatch = np.nonzero(got != want)[0]
    assert len(mismatch) == 0, [(float(a[i]), int(got[i]), int(want[i])) for i in mismatch[:8]]


def test_times_pow2_is_exact_whenever_the_product_is_a_normal_float32():
    g = np.random.default_rng(2)
    x = g.integers(0, 0x7F800000, 300_000, dtype=np.uint32).view(np.float32)
    x = np.where(g.random(len(x)) < 0.5, -x, x).astype(np.float32)
    n = g.integers(-127, 128, len(x)).astype(np.int32)
    n[:255] = np.arange(-127, 128)  # every exponent at least once
    got = torch.empty(len(x), dtype=torch.float32)
    _times_pow2_probe[(triton.cdiv(len(x), PROBE_BLOCK),)](torch.from_numpy(x), torch.from_numpy(n), got, len(x),
                                                           BLOCK=PROBE_BLOCK)
    got = got.numpy()
    exact = x.astype(np.float64) * np.exp2(n.astype(np.float64))
    normal = (np.abs(exact) >= 2.0**-126) & (np.abs(exact) <= F32_MAX)
    assert normal.sum() > 100_000
    np.testing.assert_array_equal(got[normal], exact[normal].astype(np.float32))
    # [FP8-ELEMENT] an underflowing product keeps its sign (-0.0 stays 0x80) and stays below 2^-126
    tiny = np.abs(exact) < 2.0**-126
    assert (np.signbit(got[tiny]) == np.signbit(x[tiny])).all() and (np.abs(got[tiny]) <= 2.0**-126).all()


# --- dequantize [FP8-DEQUANT] ---------------------------------------------------------------------

DEQUANTIZE_GROUPS = next(k.capability.group_sizes for k in cuda_records.KERNELS
                         if k.capability.op == "dequantize_fp8_group_packed")
OUT_DTYPES = [torch.bfloat16, torch.float16, torch.float32]
OUT_IDS = ["bf16", "f16", "f32"]
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
DEQUANT_TALL = LaunchConfig(block_m=64, block_k=512, num_warps=4)
DEQUANT_ODD = LaunchConfig(block_m=2, block_k=256, num_warps=4)  # tiles that straddle an odd mn


def packed(scale_bytes: torch.Tensor) -> torch.Tensor:
    """Scale bytes (..., mn, G) as packed words in the [FP8-PACK] layout, the padding rows poisoned."""
    *lead, mn, groups = scale_bytes.shape
    words = -(-groups // 4)
    padded = torch.nn.functional.pad(scale_bytes.to(torch.int64), (0, 4 * words - groups))
    word = sum(padded[..., j::4] << (8 * j) for j in range(4))
    word = torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)
    rows = -(-mn // 4) * 4
    storage = torch.full((*lead, words, rows), POISON_S, dtype=torch.int32)
    scales = storage.transpose(-1, -2)[..., :mn, :]
    scales.copy_(word)
    return scales


def dequantize_both(q, scales, group_size, dtype, config=DEQUANT_TALL):
    """(kernel, reference) output bits, the kernel's from a poisoned buffer."""
    got = torch.full(q.shape, -21555, dtype=INT_VIEW[dtype]).view(dtype)  # 0xABCD
    kernels.dequantize(q, scales, got, group_size=group_size, config=config)
    want = torch.empty(q.shape, dtype=dtype)
    reference.dequantize(q, scales, want, group_size=group_size)
    return got.view(INT_VIEW[dtype]), want.view(INT_VIEW[dtype])


def dequantize_oracle(q_bytes: torch.Tensor, scale_bytes: torch.Tensor, dtype) -> torch.Tensor:
    """[FP8-DEQUANT] from the value tables: E4M3 value * 2^(byte - 127) in float64 (exact), NaN for
    byte 0xFF, rounded once to float32 and then to dtype; as the dtype's integer bits."""
    group = q_bytes.shape[-1] // scale_bytes.shape[-1]
    exponent = np.repeat(scale_bytes.numpy().astype(np.int64), group, axis=-1)
    value = np.ldexp(E4M3_ALL[q_bytes.numpy().astype(np.int64)], exponent - 127)
    value = np.where(exponent == 0xFF, np.nan, value)
    return rounded_bits(value, dtype).view(INT_VIEW[dtype])


@pytest.mark.parametrize("group_size", DEQUANTIZE_GROUPS)
@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=OUT_IDS)
def test_dequantize_every_e4m3_byte_under_every_scale_byte(group_size, dtype):
    # each run of 256 elements holds every E4M3 byte under one scale byte; 2 runs a row x 128 rows
    # give all 256 scale bytes, and row 128 (mn odd, a tile of one row) repeats 0xFF and 0x7F
    mn, k = 129, 512
    q = torch.arange(256, dtype=torch.int32).to(torch.uint8).repeat(mn, k // 256)
    run = torch.cat([torch.arange(256), torch.tensor([0xFF, 0x7F])]).reshape(mn, 2)
    scale_bytes = run.repeat_interleave(256 // group_size, dim=1)
    scales = packed(scale_bytes)
    for config in (DEQUANT_TALL, DEQUANT_ODD):
        got, want = dequantize_both(q.view(torch.float8_e4m3fn), scales, group_size, dtype, config)
        assert_equal(got, want, f"{dtype} group {group_size} {config}")
    assert_equal(want, dequantize_oracle(q, scale_bytes, dtype), "reference against the oracle")
    nan_bits = {torch.float32: 0x7FC00000, torch.bfloat16: 0x7FC0, torch.float16: 0x7E00}[dtype]
    assert (got[run.repeat_interleave(256, dim=1) == 0xFF] == nan_bits).all(), "byte 0xFF: NaN for its whole group"


def random_bytes(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.int32).to(torch.uint8)


@pytest.mark.parametrize("group_size", DEQUANTIZE_GROUPS)
@pytest.mark.parametrize("shape", [(1, 384), (7, 640), (3, 5, 1280), (2, 3, 13, 384), (2, 1, 1, 768)])
def test_dequantize_random_bytes_odd_rows_and_batches(group_size, shape):
    q = random_bytes(shape, seed=sum(shape) + group_size)
    scale_bytes = random_bytes((*shape[:-1], shape[-1] // group_size), seed=group_size)
    scales = packed(scale_bytes)
    for dtype in OUT_DTYPES:
        for config in (DEQUANT_ODD, None):  # None: the launch table
            got, want = dequantize_both(q, scales, group_size, dtype, config)
            assert_equal(got, want, f"{shape} {dtype} {config}")


@pytest.mark.parametrize("kind", ["row_major_scales", "vllm_minimal_storage", "q_rows_sliced", "q_batch_transposed",
                                  "q_columns_strided"])
def test_dequantize_reads_q_and_scales_through_their_strides(kind):
    group_size = 128
    q = random_bytes((2, 9, 1024), seed=3)
    scale_bytes = random_bytes((2, 9, 8), seed=4)
    scales = packed(scale_bytes)
    if kind == "row_major_scales":
        scales = scales.contiguous()
    elif kind == "vllm_minimal_storage":  # mn + (words - 1) * A words per batch [FP8-OUT]
        flat = torch.full((2 * 9 * 2 + 64,), POISON_S, dtype=torch.int32)
        minimal = flat.as_strided((2, 9, 2), (9 + 12, 1, 12))
        minimal.copy_(scales)
        scales = minimal
    elif kind == "q_rows_sliced":
        q = random_bytes((2, 17, 1024), seed=5)[:, ::2]
    elif kind == "q_batch_transposed":
        q = random_bytes((9, 2, 1024), seed=6).transpose(0, 1)
    else:
        q = random_bytes((2, 9, 2048), seed=7)[..., ::2]
    for dtype in OUT_DTYPES:
        got, want = dequantize_both(q.view(torch.float8_e4m3fn), scales, group_size, dtype, DEQUANT_ODD)
        assert_equal(got, want, f"{kind} {dtype}")


@pytest.mark.parametrize("shape", [(0, 128), (2, 0, 256), (0, 3, 128)])
def test_dequantize_of_empty_tensors_writes_nothing(shape):
    q = torch.empty(shape, dtype=torch.float8_e4m3fn)
    scales = packed(torch.empty((*shape[:-1], shape[-1] // 128), dtype=torch.uint8))
    out = torch.empty(shape, dtype=torch.bfloat16)
    kernels.dequantize(q, scales, out, group_size=128)
