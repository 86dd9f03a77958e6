"""The portable Triton MXFP8 kernels (backends/triton/mxfp8.py), run by the Triton interpreter on CPU
tensors, byte for byte against the CPU reference: every bfloat16 and float16 bit pattern in sorted
blocks and next to several anchors, under both scale rules and both scale layouts; random tensors over
the whole exponent range; N-D, strided and broadcast inputs; odd row counts around the 128-row swizzle
tiles; special blocks; the rceil thresholds where fl32(amax * fl32(1/448)) is subnormal; dequantize of
every E4M3 byte under every scale byte into every dtype, in both layouts and from strided q. Only the
integer E4M3 path runs here (hardware_e4m3=False): the interpreter's own float8 cast is wrong. Outputs
are poisoned before every launch, so a byte the kernel fails to write shows up as a mismatch."""

import os
import struct
from fractions import Fraction

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")

from lowbit.backends.cpu import mxfp8 as reference  # noqa: E402
from lowbit.backends.triton import mxfp8 as kernels  # noqa: E402
from lowbit.backends.triton.launch import LaunchConfig  # noqa: E402
from oracles import ALL16, F32_RECIP448, fl32, from_bits16  # noqa: E402

from lowbit import spec  # noqa: E402
from lowbit.mxfp8 import dequantize_output, quantize_outputs  # noqa: E402

pytestmark = [
    pytest.mark.interpret,
    # the interpreter computes with numpy, which warns on signalling NaNs and overflows: both meant
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                       reason="needs TRITON_INTERPRET=1 (CI row triton-interpret): without the interpreter the "
                              "Triton kernels need a GPU"),
]

RULES = ("rceil", "floor")
LAYOUTS = ("linear", "swizzled")
POISON = 0xAA
# Few, large programs: the interpreter's cost is per program, not per element.
WIDE = LaunchConfig(block_m=256, block_k=128, num_warps=4)
TALL = LaunchConfig(block_m=64, block_k=512, num_warps=4)
NAN, INF = float("nan"), float("inf")
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


# --- running both sides ---------------------------------------------------------------------------

def quantize_bytes(module, x, rule, layout, config=None):
    q, s = quantize_outputs(x, layout)
    q.view(torch.uint8).fill_(POISON)
    s.view(torch.uint8).fill_(POISON)
    if module is reference:
        reference.quantize(x, q, s, scale_rule=rule, swizzled=layout == "swizzled")
    else:
        kernels.quantize(x, q, s, scale_rule=rule, swizzled=layout == "swizzled", hardware_e4m3=False, config=config)
    return q.view(torch.uint8), s.view(torch.uint8)


def assert_bytes_equal(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        first = [(tuple(i), got[tuple(i)].item(), want[tuple(i)].item()) for i in bad[:8].tolist()]
        raise AssertionError(f"{what}: {len(bad)} of {got.numel()} differ; first (index, triton, reference): {first}")


def assert_matches_reference(x, rule, layout, config=TALL):
    got = quantize_bytes(kernels, x, rule, layout, config)
    want = quantize_bytes(reference, x, rule, layout)
    assert_bytes_equal(got[1], want[1], f"scales ({rule}, {layout})")
    assert_bytes_equal(got[0], want[0], f"q ({rule}, {layout})")
    return got


def bf16_bits(v):
    return struct.unpack("<I", struct.pack("<f", v))[0] >> 16


def every_pattern_blocks(anchors):
    """All 65,536 patterns sorted by magnitude in blocks of 32 (every block its own scale), then 31 a block
    next to each anchor pattern (which fixes the block's amax)."""
    values = (ALL16.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(invalid="ignore"):
        rows = [ALL16[np.argsort(np.abs(values), kind="stable")].reshape(-1, 32)]
    padded = np.concatenate([ALL16, np.zeros(-len(ALL16) % 31, dtype=ALL16.dtype)]).reshape(-1, 31)
    for anchor in anchors:
        rows.append(np.concatenate([padded, np.full((len(padded), 1), anchor, dtype=ALL16.dtype)], axis=1))
    return np.concatenate(rows)


# --- every 16-bit pattern -------------------------------------------------------------------------

BF16_ANCHORS = [bf16_bits(448.0 * 2.0**k) for k in (-126, -60, 0, 60, 119)] + [bf16_bits(480.0)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rule", RULES)
def test_every_bfloat16_pattern_matches_reference(rule, layout):
    bits = every_pattern_blocks(BF16_ANCHORS)
    assert_matches_reference(from_bits16(bits), rule, layout, WIDE)


@pytest.mark.parametrize("rule", RULES)
def test_every_bfloat16_value_as_float32_matches_reference(rule):
    bits = every_pattern_blocks(BF16_ANCHORS[:3])
    x = torch.from_numpy((bits.astype(np.uint32) << 16).view(np.float32).copy())
    assert_matches_reference(x, rule, "swizzled", WIDE)


@pytest.mark.parametrize("rule", RULES)
def test_every_float16_pattern_matches_reference(rule):
    anchors = [int(np.float16(v).view(np.uint16)) for v in (448.0 * 2.0**-20, 448.0, 480.0)]
    values = np.arange(65536, dtype=np.uint16)
    order = np.argsort(np.abs(values.view(np.float16).astype(np.float64)), kind="stable")
    padded = np.concatenate([values, np.zeros(-len(values) % 31, dtype=np.uint16)]).reshape(-1, 31)
    rows = [values[order].reshape(-1, 32)] + [
        np.concatenate([padded, np.full((len(padded), 1), a, dtype=np.uint16)], axis=1) for a in anchors]
    x = torch.from_numpy(np.concatenate(rows).view(np.float16).copy())
    for layout in LAYOUTS:
        assert_matches_reference(x, rule, layout, WIDE)


# --- random tensors, shapes, strides ----------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_random_values_over_the_whole_exponent_range_match_reference(spicy, rule, layout, dtype):
    x = spicy((96, 512), dtype, exponent_run=32, seed=len(rule) + dtype.itemsize + len(layout))
    assert_matches_reference(x, rule, layout)


def test_default_launch_tables_match_reference(spicy):
    for rows, k in ((37, 1536), (200, 128), (1030, 32)):  # every size class of QUANTIZE_TABLE
        x = spicy((rows, k), torch.bfloat16, exponent_run=32, seed=rows)
        for rule, layout in (("rceil", "swizzled"), ("floor", "linear")):
            assert_matches_reference(x, rule, layout, config=None)


@pytest.mark.parametrize("shape", [(1, 32), (1, 96), (13, 32), (13, 160), (129, 64), (130, 224), (257, 32),
                                   (2, 3, 5, 96), (64,)])
@pytest.mark.parametrize("config", [None, LaunchConfig(block_m=4, block_k=128, num_warps=4)], ids=["table", "m4k128"])
def test_rows_and_k_not_multiples_of_the_tile_or_the_swizzle_match_reference(spicy, shape, config):
    x = spicy(shape, torch.float32, exponent_run=32, seed=sum(shape))
    for rule in RULES:
        for layout in LAYOUTS:
            assert_matches_reference(x, rule, layout, config)


@pytest.mark.parametrize("shape", [(0, 64), (4, 0), (2, 0, 96), (0, 0)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_inputs_give_empty_outputs(shape, layout):
    x = torch.empty(shape, dtype=torch.bfloat16)
    got = quantize_bytes(kernels, x, "rceil", layout)
    want = quantize_bytes(reference, x, "rceil", layout)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.equal(g, w)


def strided_inputs(spicy):
    base = spicy((12, 5, 256), torch.float32, exponent_run=32, seed=21)
    return {
        "transposed": spicy((256, 48), torch.float32, exponent_run=1, seed=22).t(),
        "last_dim_sliced": base.reshape(60, 256)[:, ::2],
        "rows_sliced": base.reshape(60, 256)[::3, 64:],
        "nd_not_mergeable": base.transpose(0, 1)[:, ::2],
        "broadcast_rows": spicy((1, 256), torch.float16, exponent_run=32, seed=23).expand(9, 256),
    }


@pytest.mark.parametrize("kind", ["transposed", "last_dim_sliced", "rows_sliced", "nd_not_mergeable", "broadcast_rows"])
def test_non_contiguous_inputs_match_reference(spicy, kind):
    x = strided_inputs(spicy)[kind]
    for rule in RULES:
        for layout in LAYOUTS:
            got = assert_matches_reference(x, rule, layout)
            contiguous = quantize_bytes(reference, x.contiguous(), rule, layout)
            assert all(torch.equal(g, c) for g, c in zip(got, contiguous))


def test_nan_inf_and_zero_blocks_match_reference():
    blocks = [[NAN] * 32, [-NAN] + [1.0] * 31, [INF] * 32, [-INF, 1.0, -2.0, 2.0**127] + [0.5] * 28, [0.0] * 32,
              [-0.0] * 32, [3.4e38, -3.4e38] * 16, [2.0**-149] * 32, [500.0 - i for i in range(32)]]
    x = torch.tensor(blocks, dtype=torch.float32).reshape(1, -1)
    x = torch.cat([x, x.roll(32, dims=1), torch.zeros_like(x)])
    for rule in RULES:
        for layout in LAYOUTS:
            assert_matches_reference(x, rule, layout)


# --- the rceil thresholds where d is subnormal --------------------------------------------------------

def f32_from_bits(b):
    return struct.unpack("<f", struct.pack("<I", b))[0]


def smallest_amax_above(t: Fraction) -> int:
    """The bits of the smallest float32 amax >= 0 with fl32(amax * fl32(1/448)) > t (rounding is monotonic)."""
    c, lo, hi = Fraction(F32_RECIP448), 0, 0x7F800000
    while lo < hi:
        mid = (lo + hi) // 2
        if fl32(Fraction(f32_from_bits(mid)) * c) > t:
            hi = mid
        else:
            lo = mid + 1
    return lo


def test_the_kernels_rceil_thresholds_are_derived_from_exact_rounding():
    assert kernels.RCEIL_MINUS_126_BITS.value == smallest_amax_above(Fraction(1, 2**127)) == 0x04600002
    assert kernels.RCEIL_MINUS_125_BITS.value == smallest_amax_above(Fraction(1, 2**126)) == 0x04E00001
    assert kernels.ONE_OVER_448_BITS.value == struct.unpack("<I", struct.pack("<f", F32_RECIP448))[0]


def test_amax_around_the_rceil_thresholds_and_subnormal_amax_match_reference():
    around = [b + d for b in (0x04600002, 0x04E00001, 0x00400000, 0x00800000, 0x05000000) for d in range(-3, 4)]
    around += [0, 1, 0x007FFFFF, 0x04000000, 0x04800000]
    x = torch.zeros(len(around), 64)
    x.view(torch.int32)[:, 7] = torch.tensor(around, dtype=torch.int32)
    x[:, 0] = x[:, 7] * 0.75  # a smaller element in every block
    x[len(around) // 2:] *= -1
    for rule in RULES:
        for layout in LAYOUTS:
            assert_matches_reference(x, rule, layout)


# --- dequantize ---------------------------------------------------------------------------------------

def every_byte_under_every_scale():
    """q (256, 1024): row r holds all 256 E4M3 bytes (rotated by r) in each 8 of its 32 blocks; block j of
    row r has scale byte (r + 263 j) % 256, so every (byte, scale byte) pair occurs."""
    q = (torch.arange(256).reshape(1, 256) + torch.arange(256).reshape(256, 1)) % 256
    q = q.repeat(1, 4).to(torch.uint8)
    s = (torch.arange(256).reshape(256, 1) + torch.arange(0, 256 * 32, 256 + 7).reshape(1, 32)[:, :256]) % 256
    return q, s.to(torch.uint8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dequantize_every_byte_under_every_scale_byte_matches_reference(dtype, layout):
    q, linear = every_byte_under_every_scale()
    rows, cols = linear.shape
    if layout == "swizzled":
        scales = torch.full((rows * cols,), 0xFF, dtype=torch.uint8)  # padding bytes: never read
        scales[spec.swizzled_offsets(rows, cols, "cpu")] = linear.reshape(-1)
        scales = scales.reshape(spec.swizzled_scale_shape(rows, cols))
    else:
        scales = linear
    got, want = dequantize_output(q, dtype), dequantize_output(q, dtype)
    got.view(INT_VIEW[dtype]).fill_(0x5A5A)
    kernels.dequantize(q, scales, got, swizzled=layout == "swizzled", config=TALL)
    reference.dequantize(q, scales, want, swizzled=layout == "swizzled")
    assert_bytes_equal(got.view(INT_VIEW[dtype]), want.view(INT_VIEW[dtype]), f"{dtype} {layout}")


def test_dequantize_strided_q_and_scales_odd_shapes_and_the_default_table():
    g = torch.Generator().manual_seed(1)
    for shape in [(1, 32), (13, 96), (2, 3, 64), (130, 160), (0, 32)]:  # one table entry: no row classes
        q = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).view(torch.float8_e4m3fn)
        s = torch.randint(0, 256, (*shape[:-1], shape[-1] // 32), generator=g, dtype=torch.uint8)
        for qq, ss in ((q, s), (q.view(torch.uint8).repeat_interleave(2, -1)[..., ::2], s.repeat_interleave(3, -1)[..., ::3])):
            for dtype in (torch.bfloat16, torch.float16):
                got, want = dequantize_output(qq, dtype), dequantize_output(qq, dtype)
                kernels.dequantize(qq, ss, got, swizzled=False)
                reference.dequantize(qq, ss, want, swizzled=False)
                assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (shape, dtype, qq.stride())


def test_round_trip_through_both_kernels_matches_reference(spicy):
    x = spicy((130, 224), torch.bfloat16, exponent_run=32, seed=5)
    for rule in RULES:
        for layout in LAYOUTS:
            q, s = assert_matches_reference(x, rule, layout)
            for dtype in (torch.float32, torch.bfloat16):
                got, want = dequantize_output(x, dtype), dequantize_output(x, dtype)
                kernels.dequantize(q, s, got, swizzled=layout == "swizzled")
                reference.dequantize(q, s, want, swizzled=layout == "swizzled")
                assert torch.equal(got.view(INT_VIEW[dtype]), want.view(INT_VIEW[dtype])), (rule, layout, dtype)
