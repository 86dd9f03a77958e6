"""The portable Triton NVFP4 kernels (backends/triton/nvfp4.py), run by the Triton interpreter on CPU
tensors, byte for byte against the CPU reference: every bfloat16 and float16 pattern under several
block scales, random tensors over the whole exponent range in every global-scale mode and both
scale layouts, N-D and strided inputs, edge shapes, special blocks, unusable global scales, the
global scale on its own and dequantize into every dtype. The jit helpers are checked on their own
against independent numpy formulations. Outputs are poisoned before every launch, so a byte the
kernel fails to write shows up as a mismatch."""

import numpy as np
import pytest
import torch
from preambles import interpreted

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from lowbit.backends.cpu import nvfp4 as reference  # noqa: E402
from lowbit.backends.triton import nvfp4 as kernels  # noqa: E402
from lowbit.backends.triton.float_bits import e4m3_value  # noqa: E402
from lowbit.backends.triton.launch import LaunchConfig  # noqa: E402
from oracles import ALL16, E2M1_GRID, arrangements, bits16, from_bits16, nearest_even_e2m1_code  # noqa: E402

from lowbit import spec  # noqa: E402
from lowbit.nvfp4 import dequantize_output, global_scale_output, quantize_outputs  # noqa: E402

# the interpreter's numpy warns on signalling NaNs, overflows and x / 0 (all meant), and not only from
# triton.runtime.interpreter: every RuntimeWarning is ignored here
pytestmark = interpreted("ignore::RuntimeWarning")

POISON = 0xAA
WIDE = LaunchConfig(block_m=1024, block_k=64, num_warps=4)  # few, large programs: the interpreter pays per program
TALL = LaunchConfig(block_m=64, block_k=256, num_warps=4)
LAYOUTS = ("linear", "swizzled")
NAN, INF = float("nan"), float("inf")
# (per_row, compute_scale, given scale or None): every source of the global scale
MODES = {
    "tensor": (False, True, None),
    "row": (True, True, None),
    "given": (False, False, lambda rows: torch.tensor(271.5)),
    "given_1": (False, False, lambda rows: torch.tensor([3.0e5])),
    "given_per_row": (False, False, lambda rows: torch.exp2(torch.linspace(-30, 30, rows)) * 100),
}


# --- running both sides ---------------------------------------------------------------------------

def quantize_bytes(module, x, mode, layout, config=None):
    per_row, compute, given = MODES[mode]
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    q, s = quantize_outputs(x, layout)
    q.view(torch.uint8).fill_(POISON)
    s.view(torch.uint8).fill_(POISON)
    gs = global_scale_output(x, per_row).fill_(-1.0) if compute else given(rows).reshape(
        x.shape[:-1] if mode == "given_per_row" else given(rows).shape)
    options = {} if config is None or module is reference else {"config": config}
    module.quantize(x, q, s, gs, per_row=per_row, compute_scale=compute, swizzled=layout == "swizzled", **options)
    return q.view(torch.uint8), s.view(torch.uint8), gs


def assert_bytes_equal(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        first = [(tuple(i), got[tuple(i)].item(), want[tuple(i)].item()) for i in bad[:8].tolist()]
        raise AssertionError(f"{what}: {len(bad)} of {got.numel()} differ; first (index, triton, reference): {first}")


def assert_matches_reference(x, mode="given", layout="linear", config=None):
    got = quantize_bytes(kernels, x, mode, layout, config)
    want = quantize_bytes(reference, x, mode, layout)
    assert_bytes_equal(got[2].view(torch.int32), want[2].view(torch.int32), f"global scale ({mode})")
    assert_bytes_equal(got[1], want[1], f"block scales ({mode}, {layout})")
    assert_bytes_equal(got[0], want[0], f"q ({mode}, {layout})")
    return got


# --- every 16-bit pattern -------------------------------------------------------------------------

BF16_ANCHORS = [bits16(6.0 * 2.0**k, torch.bfloat16) for k in (-120, -3, 0, 60)] + [bits16(7.0, torch.bfloat16)]
F16_ANCHORS = [bits16(6.0 * 2.0**k, torch.float16) for k in (-14, 0, 10)] + [bits16(7.0, torch.float16)]


@pytest.mark.parametrize("mode", ["given", "row"])
def test_bfloat16_loads_of_every_pattern_under_several_block_scales_match_reference(mode):
    bits = arrangements(ALL16, BF16_ANCHORS, 16, (7,))
    x = from_bits16(bits.reshape(-1)).reshape(bits.shape)
    assert_matches_reference(x, mode, "linear", WIDE)


def test_every_bfloat16_value_as_float32_matches_reference_with_the_scale_computed():
    bits = arrangements(ALL16, BF16_ANCHORS, 16, (7,))
    x = torch.from_numpy((bits.astype(np.uint32) << 16).view(np.float32).copy())
    assert_matches_reference(x, "tensor", "swizzled", WIDE)


def test_every_float16_pattern_under_several_block_scales_matches_reference():
    bits = arrangements(ALL16, F16_ANCHORS, 16, (7,))
    x = torch.from_numpy(bits.astype(np.uint16).view(np.int16).copy()).view(torch.float16)
    assert_matches_reference(x, "given_per_row", "linear", WIDE)


# --- random tensors, modes, layouts, shapes, strides ---------------------------------------------

@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_random_values_over_the_whole_exponent_range_match_reference(spicy, mode, layout, dtype):
    x = spicy((96, 512), dtype, exponent_run=16, seed=len(mode) + dtype.itemsize + len(layout))
    assert_matches_reference(x, mode, layout, TALL)


@pytest.mark.parametrize("mode", list(MODES))
def test_default_launch_tables_match_reference(spicy, mode):
    x = spicy((37, 1536), torch.float32, exponent_run=16, seed=11)
    for layout in LAYOUTS:
        assert_matches_reference(x, mode, layout, config=None)


def test_rows_kernel_default_table_past_its_small_row_class_matches_reference(spicy):
    x = spicy((200, 48), torch.bfloat16, exponent_run=16, seed=200)  # 200 rows: ROWS_TABLE's second entry
    for layout in LAYOUTS:
        assert_matches_reference(x, "row", layout, config=None)


def test_rows_kernel_sweeps_rows_longer_than_its_tile_twice():
    # global_scale=None per row with K past the tile: the amax sweep, then the quantize sweep
    x = torch.randn(5, 4096 + 64, generator=torch.Generator().manual_seed(3)) * 3
    x[2, 4100] = INF
    for layout in LAYOUTS:
        assert_matches_reference(x, "row", layout, LaunchConfig(block_m=2, block_k=1024, num_warps=4))


@pytest.mark.parametrize("shape", [(1, 16), (1, 48), (13, 16), (13, 80), (3, 208), (2, 3, 5, 48)])
@pytest.mark.parametrize("config", [None, LaunchConfig(block_m=4, block_k=64, num_warps=4)], ids=["table", "m4k64"])
def test_rows_and_k_not_multiples_of_the_tile_or_the_swizzle_match_reference(spicy, shape, config):
    x = spicy(shape, torch.float32, exponent_run=16, seed=sum(shape))
    for mode in MODES:
        for layout in LAYOUTS:
            assert_matches_reference(x, mode, layout, config)


def test_rows_past_one_swizzle_tile_match_reference(spicy):
    x = spicy((130, 32), torch.bfloat16, exponent_run=16, seed=130)
    for mode in MODES:
        assert_matches_reference(x, mode, "swizzled", TALL)


@pytest.mark.parametrize("shape", [(0, 64), (4, 0), (2, 0, 96), (0, 0)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_inputs_give_empty_outputs_and_the_zero_amax_scale(shape, layout):
    x = torch.empty(shape, dtype=torch.bfloat16)
    for mode in ("tensor", "row"):
        got = quantize_bytes(kernels, x, mode, layout)
        want = quantize_bytes(reference, x, mode, layout)
        for g, w in zip(got, want):
            assert g.shape == w.shape and torch.equal(g, w)
        assert (got[2] == 2.0**118).all()


def strided_inputs(spicy):
    base = spicy((12, 5, 256), torch.float32, exponent_run=16, seed=21)
    return {
        "transposed": spicy((256, 48), torch.float32, exponent_run=1, seed=22).t(),
        "last_dim_sliced": base.reshape(60, 256)[:, ::2],
        "rows_sliced": base.reshape(60, 256)[::3, 64:],
        "nd_not_mergeable": base.transpose(0, 1)[:, ::2],
        "broadcast_rows": spicy((1, 256), torch.float16, exponent_run=16, seed=23).expand(9, 256),
    }


@pytest.mark.parametrize("kind", ["transposed", "last_dim_sliced", "rows_sliced", "nd_not_mergeable", "broadcast_rows"])
def test_non_contiguous_inputs_match_reference(spicy, kind):
    x = strided_inputs(spicy)[kind]
    for mode in ("tensor", "row", "given"):
        got = assert_matches_reference(x, mode, "swizzled", TALL)
        contiguous = quantize_bytes(reference, x.contiguous(), mode, "swizzled")
        assert all(torch.equal(g, c) for g, c in zip(got, contiguous))


def test_a_per_row_scale_given_with_strides_is_read_per_row():
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(5))
    gs = (torch.arange(12, dtype=torch.float32) * 37 + 5).reshape(6, 2)[:, 1]  # stride 2
    q, s = quantize_outputs(x, "linear")
    kernels.quantize(x, q, s, gs, per_row=False, compute_scale=False, swizzled=False)
    q2, s2 = quantize_outputs(x, "linear")
    reference.quantize(x, q2, s2, gs.contiguous(), per_row=False, compute_scale=False, swizzled=False)
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s.view(torch.uint8),
                                                                                   s2.view(torch.uint8))


# --- special blocks and unusable global scales -----------------------------------------------------

def test_nan_inf_and_zero_blocks_match_reference():
    blocks = [[NAN] * 16, [-NAN] + [1.0] * 15, [INF] * 16, [-INF, 1.0, -2.0] + [0.5] * 13, [0.0] * 16, [-0.0] * 16,
              [3.4e38, -3.4e38] * 8, [2.0**-149] * 16, [0.5 * i for i in range(16)]]
    x = torch.tensor(blocks, dtype=torch.float32).reshape(1, -1)
    x = torch.cat([x, x.roll(16, dims=1), torch.zeros_like(x)])
    for mode in MODES:
        for layout in LAYOUTS:
            assert_matches_reference(x, mode, layout, TALL)


@pytest.mark.parametrize("value", [0.0, -0.0, -1.0, NAN, INF, -INF, 1e-40, 2.0**-119, 2.0**119, 2.0**-118, 2.0**118])
def test_unusable_and_extreme_given_scales_match_reference(spicy, value):
    x = spicy((8, 64), torch.float32, exponent_run=16, seed=31)
    for layout in LAYOUTS:
        q, s = quantize_outputs(x, layout)
        reference.quantize(x, q, s, torch.tensor(value), per_row=False, compute_scale=False,
                           swizzled=layout == "swizzled")
        q2, s2 = quantize_outputs(x, layout)
        kernels.quantize(x, q2, s2, torch.tensor(value), per_row=False, compute_scale=False,
                         swizzled=layout == "swizzled", config=TALL)
        assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)), value
        assert torch.equal(s.view(torch.uint8), s2.view(torch.uint8)), value


# --- the global scale on its own, and dequantize ---------------------------------------------------

@pytest.mark.parametrize("per_row", [False, True])
def test_global_scale_matches_reference(spicy, per_row):
    for shape in [(37, 96), (2, 3, 48), (1500, 16), (3, 0)]:
        x = spicy(shape, torch.bfloat16, exponent_run=16, seed=shape[0]) if shape[-1] else torch.empty(shape)
        got, want = global_scale_output(x, per_row), global_scale_output(x, per_row)
        kernels.global_scale(x, got, per_row=per_row)
        reference.global_scale(x, want, per_row=per_row)
        assert_bytes_equal(got.view(torch.int32), want.view(torch.int32), f"global scale {shape}")


INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dequantize_matches_reference_for_every_byte_and_scale(dtype, layout):
    # every q byte in every position, under every E4M3 scale byte (NaN and negative ones included),
    # with per-row scales from tiny to huge and an unusable one
    g = torch.Generator().manual_seed(9)
    rows = 256
    q = torch.randint(0, 256, (rows, 64), generator=g, dtype=torch.uint8)
    q[:, :32] = torch.arange(256, dtype=torch.uint8).reshape(-1, 32)[torch.arange(rows) % 8]
    cols = 8
    linear = torch.arange(rows * cols, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(rows, cols)
    gs = torch.exp2(torch.linspace(-117, 117, rows))
    gs[5], gs[6], gs[7] = 0.0, NAN, -3.0
    if layout == "swizzled":
        scales = torch.zeros(rows * cols, dtype=torch.uint8)
        scales[spec.swizzled_offsets(rows, cols, "cpu")] = linear.reshape(-1)
        scales = scales.reshape(rows, cols)
    else:
        scales = linear
    for scale in (gs, torch.tensor(2688.0)):
        got, want = dequantize_output(q, dtype), dequantize_output(q, dtype)
        kernels.dequantize(q, scales, scale, got, swizzled=layout == "swizzled", config=TALL)
        reference.dequantize(q, scales, scale, want, swizzled=layout == "swizzled")
        assert_bytes_equal(got.view(INT_VIEW[dtype]), want.view(INT_VIEW[dtype]), f"{dtype} {layout}")


def test_dequantize_default_table_and_odd_shapes_match_reference():
    for shape in [(1, 8), (13, 40), (2, 3, 24), (0, 8)]:
        q = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
        scales = torch.randint(0, 0x7F, (*shape[:-1], shape[-1] // 8), dtype=torch.uint8)
        got, want = dequantize_output(q, torch.bfloat16), dequantize_output(q, torch.bfloat16)
        kernels.dequantize(q, scales, torch.tensor(448.0), got, swizzled=False)
        reference.dequantize(q, scales, torch.tensor(448.0), want, swizzled=False)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16))


# --- the jit helpers on their own -----------------------------------------------------------------

@triton.jit
def _encode_probe(y_ptr, out_ptr, blocks, BLOCK_M: tl.constexpr):
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = row < blocks
    y = tl.load(y_ptr + row[:, None] * 16 + tl.arange(0, 16)[None, :], mask=ok[:, None], other=0.0)
    packed = kernels.encode_portable(tl.reshape(y, (BLOCK_M, 1, 16)))
    tl.store(out_ptr + row[:, None] * 8 + tl.arange(0, 8)[None, :], packed.to(tl.uint8), mask=ok[:, None])


@triton.jit
def _e4m3_value_probe(byte_ptr, out_ptr, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(out_ptr + i, e4m3_value(tl.load(byte_ptr + i)))


@triton.jit
def _global_scale_probe(amax_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    tl.store(out_ptr + i, kernels.global_scale_of(tl.load(amax_ptr + i, mask=ok, other=1.0)), mask=ok)


def test_encode_portable_rounds_like_an_independent_nearest_even():
    mids = (E2M1_GRID[1:] + E2M1_GRID[:-1]) / 2
    points = np.concatenate([E2M1_GRID, mids, [6.5, 7.0, 1e30, np.inf, 2.0**-149, 2.0**-126]]).astype(np.float32)
    near = [points, np.nextafter(points, np.float32(0)), np.nextafter(points, np.float32(np.inf))]
    grid = np.arange(0, 0x40E00001, 163, dtype=np.uint32).view(np.float32)
    y = np.concatenate([grid, *near]).astype(np.float32)
    y = np.concatenate([y, -y])
    y = np.concatenate([y, np.zeros(-len(y) % 16, dtype=np.float32)]).reshape(-1, 16)
    out = torch.full((len(y), 8), POISON, dtype=torch.uint8)
    _encode_probe[(triton.cdiv(len(y), 4096),)](torch.from_numpy(y), out, len(y), BLOCK_M=4096)
    code = nearest_even_e2m1_code(np.abs(y.astype(np.float64)))
    nibble = np.where(np.signbit(y), code | 8, code).astype(np.uint8)
    np.testing.assert_array_equal(out.numpy(), nibble[:, 0::2] | (nibble[:, 1::2] << 4))


def test_e4m3_value_decodes_every_byte_by_the_format_definition():
    byte = np.arange(256, dtype=np.int32)
    out = torch.empty(256, dtype=torch.float32)
    _e4m3_value_probe[(1,)](torch.from_numpy(byte), out, BLOCK=256)
    exponent, mantissa, sign = (byte >> 3) & 15, byte & 7, np.where(byte & 0x80, -1.0, 1.0)
    want = sign * np.where(exponent == 0, mantissa / 8 * 2.0**-6, (1 + mantissa / 8) * np.exp2(exponent - 7.0))
    want = np.where((byte & 0x7F) == 0x7F, np.nan, want)
    np.testing.assert_array_equal(out.numpy(), want.astype(np.float32))


def test_global_scale_of_divides_exactly_and_caps_at_two_to_118():
    g = np.random.default_rng(2)
    amax = np.concatenate([[0.0, 2.0**-149, 2688 * 2.0**-118, 1.0, 6.0, 2688.0, 3.4e38],
                           g.uniform(-40, 40, 50_000)]).astype(np.float64)
    amax[7:] = np.exp2(amax[7:])
    amax = amax.astype(np.float32)
    out = torch.empty(len(amax), dtype=torch.float32)
    _global_scale_probe[(triton.cdiv(len(amax), 1 << 16),)](torch.from_numpy(amax), out, len(amax), BLOCK=1 << 16)
    with np.errstate(divide="ignore", over="ignore"):
        want = np.minimum((np.float32(2688.0) / amax).astype(np.float32), np.float32(2.0**118))
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize("layout", ["linear", "swizzled"])
def test_dequantize_strided_q_and_scales_match_reference(layout):
    """The records take any strides: a q sliced out of a wider buffer, linear scales likewise."""
    g = torch.Generator().manual_seed(8)
    wide_q = torch.randint(0, 256, (5, 48), dtype=torch.uint8, generator=g)
    q = wide_q[:, 8:40]  # (5, 32) bytes: K = 64, strided rows
    if layout == "linear":
        s = torch.randint(0x20, 0x60, (5, 9), dtype=torch.uint8, generator=g)[:, 2:6]
    else:
        s = torch.randint(0x20, 0x60, (128, 4), dtype=torch.uint8, generator=g)
    gs = torch.tensor(3.0)
    got, want = torch.empty(5, 64), torch.empty(5, 64)
    kernels.dequantize(q, s, gs, got, swizzled=layout == "swizzled")
    reference.dequantize(q, s, gs, want, swizzled=layout == "swizzled")
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
