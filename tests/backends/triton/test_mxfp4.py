"""The portable Triton MXFP4 kernel (backends/triton/mxfp4.py), run by the Triton interpreter on CPU
tensors, byte for byte against the CPU reference: every bfloat16 and float16 bit pattern in several
positions of a block and under several block scales, random tensors over the whole exponent range,
N-D and strided inputs, edge shapes, special blocks. The kernel's jit helpers are checked on their
own against independent numpy formulations. Outputs are poisoned with 0xAA before every launch, so
a byte the kernel fails to write shows up as a mismatch."""

import numpy as np
import pytest
import torch
from preambles import interpreted

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from lowbit.backends.cpu import mxfp4 as reference  # noqa: E402
from lowbit.backends.triton import mxfp4 as kernels  # noqa: E402
from lowbit.backends.triton.float_bits import pow2, to_f32  # noqa: E402
from lowbit.backends.triton.launch import LaunchConfig  # noqa: E402
from oracles import (  # noqa: E402
    ALL16,
    E2M1_GRID,
    F32_MAX,
    arrangements,
    bits16,
    f32_bits_tensor,
    from_bits16,
    nearest_even_e2m1_code,
)

from lowbit import spec  # noqa: E402
from lowbit.mxfp4 import quantize_outputs  # noqa: E402

pytestmark = interpreted()

RULES = ("rceil", "floor")
POISON = 0xAA
# Few, large programs: the interpreter's cost is per program, not per element.
WIDE = LaunchConfig(block_m=1024, block_k=32, num_warps=4)
TALL = LaunchConfig(block_m=64, block_k=512, num_warps=4)
LARGE_M = kernels.LAUNCH_TABLE[-1][2]
NAN, INF = float("nan"), float("inf")


# --- running both sides ---------------------------------------------------------------------------

def triton_bytes(x, rule, config):
    q, s = quantize_outputs(x)
    q.view(torch.uint8).fill_(POISON)
    s.view(torch.uint8).fill_(POISON)
    kernels.quantize(x, q, s, scale_rule=rule, config=config)
    return q.view(torch.uint8), s.view(torch.uint8)


def reference_bytes(x, rule):
    q, s = quantize_outputs(x)
    reference.quantize(x, q, s, scale_rule=rule)
    return q.view(torch.uint8), s.view(torch.uint8)


def assert_bytes_equal(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        first = [(tuple(i), hex(got[tuple(i)].item()), hex(want[tuple(i)].item())) for i in bad[:8].tolist()]
        raise AssertionError(f"{what}: {len(bad)} of {got.numel()} bytes differ; first (index, triton, "
                             f"reference): {first}")


def assert_matches_reference(x, rule, config=None):
    got_q, got_s = triton_bytes(x, rule, config)
    want_q, want_s = reference_bytes(x, rule)
    assert_bytes_equal(got_s, want_s, f"scales ({rule})")
    assert_bytes_equal(got_q, want_q, f"q ({rule})")
    return got_q, got_s


# --- every 16-bit pattern -------------------------------------------------------------------------

# anchors for arrangements(): each fixes the block scale, so every pattern's value is rounded at several
# known scales (anchor 6.0: y = x for |x| <= 6, all the E2M1 thresholds hit)
BF16_ANCHORS = [bits16(v, torch.bfloat16) for v in [6.0 * 2.0**k for k in (-120, -60, -3, 0, 1, 60, 120)] + [7.0]]
F16_ANCHORS = [bits16(v, torch.float16) for v in [6.0 * 2.0**k for k in (-14, -3, 0, 1, 10)] + [7.0]]
BF16_SUBNORMAL = ((ALL16 & 0x7F80) == 0) & ((ALL16 & 0x7F) != 0)


@pytest.mark.parametrize("rule", RULES)
def test_every_bfloat16_value_in_several_block_positions_and_scales_matches_reference(rule):
    # float32 input holding exactly the bfloat16 values (widening is exact): the float32 load path
    bits = arrangements(ALL16, BF16_ANCHORS, 32, (1, 19))
    x = f32_bits_tensor(bits.astype(np.uint32) << 16)
    assert_matches_reference(x, rule, WIDE)


@pytest.mark.parametrize("rule", RULES)
def test_bfloat16_loads_of_every_pattern_in_several_block_positions_and_scales_match_reference(rule):
    bits = arrangements(ALL16, BF16_ANCHORS, 32, (1, 19))
    x = from_bits16(bits.reshape(-1)).reshape(bits.shape)
    assert_matches_reference(x, rule, WIDE)


@pytest.mark.parametrize("rule", RULES)
def test_bfloat16_subnormal_blocks_match_reference(rule):
    # floor: a subnormal amax gives e = -127, and y = x * 2^127 < 2 spreads over codes 0..4
    sub = ALL16[BF16_SUBNORMAL]
    x = from_bits16(np.concatenate([sub, np.roll(sub, 5), np.zeros(-2 * len(sub) % 32, dtype=sub.dtype)]))
    assert_matches_reference(x.reshape(-1, 32), rule, WIDE)


@pytest.mark.parametrize("rule", RULES)
def test_every_float16_pattern_in_several_block_positions_and_scales_matches_reference(rule):
    bits = arrangements(ALL16, F16_ANCHORS, 32, (1, 19))
    x = torch.from_numpy(bits.astype(np.uint16).view(np.int16).copy()).view(torch.float16)
    assert_matches_reference(x, rule, WIDE)


# --- random tensors, shapes, strides --------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("exponent_run", [1, 32])
def test_random_values_over_the_whole_exponent_range_match_reference(spicy, rule, dtype, exponent_run):
    x = spicy((96, 1024), dtype, exponent_run=exponent_run, seed=exponent_run + dtype.itemsize + len(rule))
    assert_matches_reference(x, rule, TALL)


@pytest.mark.parametrize("rule", RULES)
def test_default_launch_table_matches_reference(spicy, rule):
    x = spicy((37, 1536), torch.float32, exponent_run=32, seed=11)
    assert_matches_reference(x, rule, config=None)


@pytest.mark.parametrize("shape", [(1, 32), (1, 96), (13, 32), (13, 96), (3, 160), (2, 3, 5, 96), (7, 2, 64)])
@pytest.mark.parametrize("config", [None, LaunchConfig(block_m=4, block_k=64, num_warps=4)],
                         ids=["table", "m4k64"])
def test_rows_and_k_not_multiples_of_the_tile_match_reference(spicy, shape, config):
    # K = 96 with a 64-wide tile: the second program's block half-masked; 13 rows over tiles of 4
    x = spicy(shape, torch.float32, exponent_run=32, seed=sum(shape))
    for rule in RULES:
        got_q, got_s = assert_matches_reference(x, rule, config)
        assert got_q.shape == (*shape[:-1], shape[-1] // 2) and got_s.shape == (*shape[:-1], shape[-1] // 32)


@pytest.mark.parametrize("shape", [(0, 64), (4, 0), (2, 0, 96), (0, 0)])
def test_empty_inputs_give_empty_outputs(shape):
    x = torch.empty(shape, dtype=torch.bfloat16)
    got_q, got_s = triton_bytes(x, "rceil", None)
    assert got_q.shape == (*shape[:-1], shape[-1] // 2) and got_s.shape == (*shape[:-1], shape[-1] // 32)


def strided_inputs(spicy):
    base = spicy((12, 5, 512), torch.float32, exponent_run=32, seed=21)
    return {
        "transposed": spicy((256, 48), torch.float32, exponent_run=1, seed=22).t(),  # last-dim stride 48
        "last_dim_sliced": base.reshape(60, 512)[:, ::2],  # last-dim stride 2
        "rows_sliced": base.reshape(60, 512)[::3, 128:],  # row stride 1536, offset
        "nd_not_mergeable": base.transpose(0, 1)[:, ::2],  # (5, 6, 512): rows_view copies
        "nd_mergeable": base[2:10],  # (8, 5, 512) with an offset: a view
        "broadcast_rows": spicy((1, 256), torch.float16, exponent_run=32, seed=23).expand(9, 256),  # row stride 0
    }


@pytest.mark.parametrize("kind", ["transposed", "last_dim_sliced", "rows_sliced", "nd_not_mergeable", "nd_mergeable",
                                  "broadcast_rows"])
def test_non_contiguous_inputs_match_reference(spicy, kind):
    x = strided_inputs(spicy)[kind]
    for rule in RULES:
        got_q, got_s = assert_matches_reference(x, rule, TALL)
        want_q, want_s = reference_bytes(x.contiguous(), rule)
        assert torch.equal(got_q, want_q) and torch.equal(got_s, want_s)


# --- scale boundaries -----------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
def test_amax_next_to_every_scale_boundary_matches_reference(rule):
    # rceil changes e where fl32(amax * fl32(1/6)) crosses a power of two, i.e. near 6 * 2^k, where
    # one float32 ulp of amax decides (6 * 2^k -> d = 2^k, its successor -> d = 2^k + ulp); floor
    # changes e at 2^k. Every k, 1..3 ulps either side, as the max of a block of smaller values.
    g = np.random.default_rng(7)
    edges = np.concatenate([6.0 * np.exp2(np.arange(-150.0, 126.0)), np.exp2(np.arange(-149.0, 128.0))])
    edges = edges[edges <= F32_MAX].astype(np.float32)
    amax = [edges]
    down = up = edges
    for _ in range(3):
        with np.errstate(over="ignore"):  # float32 max's successors are Inf
            down, up = np.nextafter(down, np.float32(0)), np.nextafter(up, np.float32(np.inf))
        amax += [down, up]
    amax = np.concatenate(amax)
    rest = amax[:, None] * g.uniform(-1, 1, (len(amax), 31)).astype(np.float32)
    blocks = np.concatenate([amax[:, None], rest], axis=1)
    blocks = np.take_along_axis(blocks, g.permuted(np.tile(np.arange(32), (len(amax), 1)), axis=1), axis=1)
    blocks[::2] *= -1  # the amax element negative in every other block
    assert_matches_reference(torch.from_numpy(blocks.astype(np.float32)), rule, WIDE)


# --- special blocks -------------------------------------------------------------------------------


def special_blocks():
    """(name, 32 values, {rule: (scale byte, 32 nibbles)}) worked out by hand from the spec; None
    where only the reference comparison checks the block."""
    ramp = [0.5 * i for i in range(32)]
    both = lambda byte, nibbles: {"rceil": (byte, nibbles), "floor": (byte, nibbles)}
    return [
        ("all_nan", [NAN] * 32, both(0xFF, [0x7] * 32)),  # [MX-NAN]
        ("all_neg_nan", [-NAN] * 32, both(0xFF, [0x7] * 32)),
        ("nan_among_values", [-1.0] * 31 + [NAN], both(0xFF, [0x7] * 32)),
        ("nan_and_inf", [INF, NAN] + [2.0] * 30, both(0xFF, [0x7] * 32)),
        ("all_pos_inf", [INF] * 32, both(254, [0x7] * 32)),  # [MX-INF]
        ("all_neg_inf", [-INF] * 32, both(254, [0xF] * 32)),
        # e = 127: 1.0 * 2^-127 -> 0; -F32_MAX * 2^-127 = -(2 - 2^-23) -> -2 (code 4); 2^127 -> 1 (code 2)
        ("inf_with_finite", [-INF, INF, 1.0, -F32_MAX] + [2.0**127] * 28, both(254, [0xF, 0x7, 0x0, 0xC] + [0x2] * 28)),
        ("all_pos_zero", [0.0] * 32, {"rceil": (0x01, [0x0] * 32), "floor": (0x00, [0x0] * 32)}),  # [MX-GOLDEN]
        ("all_neg_zero", [-0.0] * 32, {"rceil": (0x01, [0x8] * 32), "floor": (0x00, [0x8] * 32)}),  # [MX-SIGN]
        # rceil: F32_MAX * fl32(1/6) ~ 1.33 * 2^125 -> e = 126, y = 4 - 2^-22 -> code 6;
        # floor: e = 127 - 2 = 125, y = 8 - 2^-21 -> saturates to code 7
        ("f32_max", [F32_MAX, -F32_MAX] * 16, {"rceil": (253, [0x6, 0xE] * 16), "floor": (252, [0x7, 0xF] * 16)}),
        # rceil: d = fl32(6 * 2^-126 * fl32(1/6)) = 2^-126 -> byte 1; floor: e = -129 -> clamped to -127
        ("min_subnormal", [2.0**-149, -(2.0**-149)] * 16, {"rceil": (0x01, [0x0, 0x8] * 16),
                                                            "floor": (0x00, [0x0, 0x8] * 16)}),
        ("ramp", ramp, None),
        ("neg_ramp", [-v for v in ramp], None),
    ]


NOT_IN_16_BITS = ("inf_with_finite", "f32_max", "min_subnormal")  # values that overflow or vanish in 16 bits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nan_inf_and_zero_blocks_match_reference_and_the_spec_bytes(dtype):
    blocks = special_blocks()
    x = torch.tensor([values for _, values, _ in blocks], dtype=torch.float64).to(dtype).reshape(1, -1)
    x = torch.cat([x, x.roll(32, dims=1)])  # each block in two positions of a row
    for rule in RULES:
        got_q, got_s = assert_matches_reference(x, rule, TALL)
        for i, (name, _, expected) in enumerate(blocks):
            if expected is None or (dtype != torch.float32 and name in NOT_IN_16_BITS):
                continue
            byte, nibbles = expected[rule]
            assert got_s[0, i].item() == byte, (name, rule)
            want = torch.tensor(nibbles[0::2], dtype=torch.uint8) | (torch.tensor(nibbles[1::2], dtype=torch.uint8) << 4)
            assert torch.equal(got_q[0, 16 * i:16 * (i + 1)], want), (name, rule)


NAN_BITS = [0x7F800001, 0xFF800001, 0x7FC00000, 0xFFC00000, 0x7FBFFFFF, 0x7FFFFFFF, 0xFFFFFFFF]  # signalling, quiet


@pytest.mark.parametrize("rule", RULES)
def test_every_kind_of_float32_nan_marks_its_block(rule):
    # one NaN (smallest and largest payloads, either sign, signalling or quiet) in a block of Infs,
    # float32 max, zeros or small values, at each position
    fill = [0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000000, 0x3F800000, 0x00000001]
    blocks = []
    for nan in NAN_BITS:
        for other in fill:
            for position in (0, 13, 31):
                block = [other] * 32
                block[position] = nan
                blocks.append(block)
    x = f32_bits_tensor(np.array(blocks, dtype=np.uint32))
    got_q, got_s = assert_matches_reference(x, rule, TALL)
    assert (got_s == 0xFF).all() and (got_q == 0x77).all()


# --- per_token_group_quant_mxfp4: the eps floor [MX-EPS] and float32 scales [MX-SCALE-F32] --------------

def group_quant_bytes(quantize, x, scale_dtype):
    q, _ = quantize_outputs(x)
    s = torch.empty((*x.shape[:-1], x.shape[-1] // 32), dtype=scale_dtype)
    q.view(torch.uint8).fill_(POISON)
    s.view(torch.uint8).fill_(POISON)
    quantize(x, q, s)
    return q.view(torch.uint8), s.view(torch.uint8)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.uint8], ids=["f32_scales", "e8m0_scales"])
@pytest.mark.parametrize("eps", [0.0, 1e-10, 2.0**-100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_quant_eps_and_float32_scales_match_reference(spicy, scale_dtype, eps, dtype):
    special = torch.tensor([values for _, values, _ in special_blocks()], dtype=torch.float64).to(dtype)
    for x in (spicy((64, 512), dtype, exponent_run=32, seed=7), special.reshape(1, -1)):
        got = group_quant_bytes(lambda x, q, s: kernels.quantize(x, q, s, scale_rule="rceil", eps=eps, config=TALL),
                                x, scale_dtype)
        want = group_quant_bytes(lambda x, q, s: reference.quantize_into(x, q, s, eps=eps), x, scale_dtype)
        assert_bytes_equal(got[1], want[1], f"scales (eps {eps})")
        assert_bytes_equal(got[0], want[0], f"q (eps {eps})")


# --- the jit helpers on their own -----------------------------------------------------------------

@triton.jit
def _encode_probe(y_ptr, half_ptr, nan_ptr, out_ptr, blocks, BLOCK_M: tl.constexpr):
    """e2m1_portable over `blocks` blocks of 32 values, one block per row: bytes (blocks, 16)."""
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = row < blocks
    y = tl.load(y_ptr + row[:, None] * 32 + tl.arange(0, 32)[None, :], mask=ok[:, None], other=0.0)
    half = tl.load(half_ptr + row, mask=ok, other=0) != 0
    nan = tl.load(nan_ptr + row, mask=ok, other=0) != 0
    packed = kernels.e2m1_portable(tl.reshape(y, (BLOCK_M, 1, 32)), half[:, None], nan[:, None])
    tl.store(out_ptr + row[:, None] * 16 + tl.arange(0, 16)[None, :], packed.to(tl.uint8), mask=ok[:, None])


@triton.jit
def _rceil_probe(d_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    tl.store(out_ptr + i, kernels.rceil_exponent_portable(tl.load(d_ptr + i, mask=ok, other=1.0)), mask=ok)


@triton.jit
def _pow2_probe(n_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    tl.store(out_ptr + i, pow2(tl.load(n_ptr + i, mask=ok, other=0)), mask=ok)


@triton.jit
def _to_f32_probe(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    tl.store(out_ptr + i, to_f32(tl.load(x_ptr + i, mask=ok, other=0.0)), mask=ok)


PROBE_BLOCK = 1 << 16


def probe(kernel, inputs, out_dtype):
    n = inputs[0].numel()
    out = torch.full((n,), -7, dtype=out_dtype)
    kernel[(triton.cdiv(n, PROBE_BLOCK),)](*inputs, out, n, BLOCK=PROBE_BLOCK)
    return out


def expected_bytes(v: np.ndarray) -> np.ndarray:
    """[MX-ROUND, MX-SATURATE, MX-SIGN, MX-PACK] bytes of the values v (rows of 32), exactly."""
    code = nearest_even_e2m1_code(np.abs(v.astype(np.float64)))
    nibble = np.where(np.signbit(v), code | 8, code).astype(np.uint8)
    return nibble[:, 0::2] | (nibble[:, 1::2] << 4)


def encode_probe_values() -> np.ndarray:
    """Every float32 in [0, 12] whose bits are a multiple of 251, the E2M1_GRID values and midpoints and
    their doubles (the halved blocks' grid) with their float32 neighbours, large values, Inf,
    float32 max, subnormals and the smallest normals; each with both signs; rows of 32."""
    mids = (E2M1_GRID[1:] + E2M1_GRID[:-1]) / 2
    points = np.concatenate([E2M1_GRID, mids, 2 * E2M1_GRID, 2 * mids, [6.5, 7.0, 12.5, 1e30, F32_MAX, np.inf],
                             [2.0**-149, 2.0**-127, 2.0**-126, 2.0**-125, 3 * 2.0**-126]]).astype(np.float32)
    with np.errstate(over="ignore"):  # float32 max's successor is Inf
        near = [points, np.nextafter(points, np.float32(0)), np.nextafter(points, np.float32(np.inf))]
    grid = np.arange(0, 0x41400001, 251, dtype=np.uint32).view(np.float32)
    y = np.concatenate([grid, *near]).astype(np.float32)
    y = np.concatenate([y, -y])
    return np.concatenate([y, np.zeros(-len(y) % 32, dtype=np.float32)]).reshape(-1, 32)


def run_encode_probe(y: np.ndarray, half: bool, nan: bool) -> np.ndarray:
    blocks = len(y)
    out = torch.full((blocks, 16), POISON, dtype=torch.uint8)
    flags = [torch.full((blocks,), int(flag), dtype=torch.int32) for flag in (half, nan)]
    _encode_probe[(triton.cdiv(blocks, 1024),)](torch.from_numpy(y), *flags, out, blocks, BLOCK_M=1024)
    return out.numpy()


def test_e2m1_portable_rounds_like_an_independent_nearest_even():
    y = encode_probe_values()
    np.testing.assert_array_equal(run_encode_probe(y, half=False, nan=False), expected_bytes(y))


def test_e2m1_portable_halved_blocks_round_the_halved_values():
    # the kernel passes Inf blocks (e = 127) scaled by 2^-126 with `half` set: the value is y / 2
    y = encode_probe_values()
    np.testing.assert_array_equal(run_encode_probe(y, half=True, nan=False), expected_bytes(y / np.float32(2)))


def test_e2m1_portable_nan_blocks_are_all_0x7():
    y = encode_probe_values()[:64]
    y[1, 3] = np.nan
    for half in (False, True):
        assert (run_encode_probe(y, half=half, nan=True) == 0x77).all()


def test_rceil_exponent_portable_is_the_ceiling_of_log2():
    g = np.random.default_rng(1)
    powers = (np.arange(1, 255, dtype=np.uint32) << 23)
    bits = np.concatenate([g.integers(0x00800000, 0x7F800000, 200_000, dtype=np.uint32), powers, powers + 1,
                           powers[1:] - 1, [0x7F7FFFFF]]).astype(np.uint32)
    d = bits.view(np.float32)
    got = probe(_rceil_probe, [torch.from_numpy(d.copy())], torch.int32).numpy()
    m, p = np.frexp(d.astype(np.float64))  # d = m * 2^p, m in [0.5, 1)
    np.testing.assert_array_equal(got, np.where(m == 0.5, p - 1, p))


def test_pow2_is_exact_for_every_exponent_the_kernels_use():
    n = np.arange(-126, 128, dtype=np.int32)
    got = probe(_pow2_probe, [torch.from_numpy(n)], torch.float32).numpy()
    np.testing.assert_array_equal(got, np.exp2(n.astype(np.float64)).astype(np.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_to_f32_widens_every_16_bit_pattern_exactly(dtype):
    # against torch's CPU widening, bit for bit; NaN payloads may differ (a signalling NaN may come
    # out quiet) and the kernels treat every NaN alike, so NaN only needs to stay NaN
    x = torch.from_numpy(ALL16.astype(np.uint16).view(np.int16).copy()).view(dtype)
    got, want = probe(_to_f32_probe, [x], torch.float32), x.float()
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))


# --- [MX-SWIZZLE]: the kernel writes the tiles itself, padding included --------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(("shape", "config"), [((130, 96), None), ((3, 32), None), ((2, 65, 64), TALL),
                                               ((257, 1024), WIDE), ((300, 160), LARGE_M),
                                               ((2, 100, 384), LARGE_M)], ids=str)
def test_swizzled_scales_match_reference(spicy, rule, shape, config):
    """Rows past one tile, scale columns not a multiple of 4 (the padding columns), a 3-D input; the
    kernel's row order within 128 rows under tiles of 4 to 1024 rows."""
    x = spicy(shape, torch.bfloat16, seed=31, exponent_run=32)
    q, s = quantize_outputs(x, "swizzled")
    q.view(torch.uint8).fill_(POISON)
    s.view(torch.uint8).fill_(POISON)  # padding bytes must be written as 0, not left
    kernels.quantize(x, q, s, scale_rule=rule, swizzled=True, config=config)
    q_want, s_want = quantize_outputs(x, "swizzled")
    reference.quantize(x, q_want, s_want, scale_rule=rule, swizzled=True)
    assert_bytes_equal(q.view(torch.uint8), q_want.view(torch.uint8), "q")
    assert_bytes_equal(s.view(torch.uint8), s_want.view(torch.uint8), "swizzled scales")


# --- [MX-DEQUANT] on the kernel: every nibble pair under every scale byte -------------------------------

@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["linear", "swizzled"])
def test_dequantize_every_byte_under_every_scale_byte_matches_reference(out_dtype, layout):
    """256 rows, one per scale byte (0 and 255, E8M0's NaN, included); each row holds all 256 element
    bytes, so every E2M1 pair meets every scale, in every output dtype."""
    q = torch.arange(256, dtype=torch.uint8).repeat(256, 1)  # (256, 256): K = 512, 16 blocks a row
    linear = torch.arange(256, dtype=torch.uint8)[:, None].expand(256, 16).contiguous()
    if layout == "swizzled":
        scales = torch.full(spec.swizzled_scale_shape(256, 16), POISON, dtype=torch.uint8)
        scales.view(-1)[spec.swizzled_offsets(256, 16, "cpu")] = linear.reshape(-1)
    else:
        scales = linear
    got = torch.full((256, 512), 7.0, dtype=out_dtype)
    want = torch.empty((256, 512), dtype=out_dtype)
    kernels.dequantize(q, scales, got, swizzled=layout == "swizzled")
    reference.dequantize(q, scales, want, swizzled=layout == "swizzled")
    ints = torch.int32 if out_dtype == torch.float32 else torch.int16
    assert_bytes_equal(got.view(ints), want.view(ints), f"{layout} {out_dtype}")


def test_dequantize_reads_column_major_swizzled_scales_as_the_row_major_ones():
    g = torch.Generator().manual_seed(6)
    q = torch.randint(0, 256, (130, 48), dtype=torch.uint8, generator=g)  # K = 96: 3 scale columns, padded to 4
    s = torch.randint(100, 160, (256, 4), dtype=torch.uint8, generator=g)
    got, want = torch.empty(130, 96), torch.empty(130, 96)
    kernels.dequantize(q, s.t().contiguous().t(), got, swizzled=True, config=TALL)
    reference.dequantize(q, s, want, swizzled=True)
    assert_bytes_equal(got.view(torch.int32), want.view(torch.int32), "column-major swizzled scales")


def test_dequantize_strided_q_and_scales_and_3d_match_reference():
    g = torch.Generator().manual_seed(5)
    wide_q = torch.randint(0, 256, (2, 5, 80), dtype=torch.uint8, generator=g)
    wide_s = torch.randint(100, 160, (2, 5, 7), dtype=torch.uint8, generator=g)
    q, s = wide_q[..., 8:72], wide_s[..., 1:5]  # (2, 5, 64) bytes: K = 128, 4 scales a row, strided rows
    got, want = torch.empty(2, 5, 128), torch.empty(2, 5, 128)
    kernels.dequantize(q, s, got, config=TALL)
    reference.dequantize(q, s, want)
    assert_bytes_equal(got.view(torch.int32), want.view(torch.int32), "strided")
