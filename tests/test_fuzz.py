"""Seeded property tests (hypothesis) of every public op on the CPU reference (issue 15, item 10).

Each `test_fuzz_<op>` draws a case (shape with leading batch dims, input dtype, strides, options,
and a seed for the values), runs the op, and compares its raw bytes (`torch.equal` on
`.view(torch.uint8)`) with the independent float64 formulations of docs/SPEC.md in oracles.py;
unified_attention is compared with a float64 model within [ATTN-TOLERANCE]. The values are built
so that the interesting cases are common, not lucky: every scale group has one element at the
format's maximum times 2^k, which pins the group's scale to 2^k, and the other elements are the
format's grid points and the midpoints between them (exact ties) times 2^k, their neighbours one
input ulp away, random normals, and special values (±0, subnormals, ±Inf, NaN of both signs,
the dtype's max and smallest normal).

Hypothesis runs derandomized with no example database, so every run tries the same examples.
The planted-bug tests at the end break the reference in one place each (monkeypatch) and assert
that the same search then fails: a test of the tests.
"""

from __future__ import annotations

import itertools
import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from lowbit.backends.cpu import fp8_group as cpu_fp8_group
from lowbit.backends.cpu import fp8_group_packed as cpu_fp8_packed
from lowbit.backends.cpu import mxfp4 as cpu_mxfp4
from lowbit.backends.cpu import mxfp8 as cpu_mxfp8
from lowbit.backends.cpu import nvfp4 as cpu_nvfp4
from lowbit.backends.cpu import unified_attention as cpu_attention
from oracles import (
    E2M1_GRID,
    E4M3_ALL,
    E4M3_POS,
    U8,
    assert_bytes,
    attention_oracle,
    exact64,
    f8_element_oracle,
    f8_scale_oracle,
    f32_np,
    mxfp4_dequant_oracle,
    mxfp4_oracle,
    mxfp8_dequant_oracle,
    mxfp8_oracle,
    nan_masked_amax,
    nvfp4_dequant_oracle,
    nvfp4_global_scale_oracle,
    nvfp4_oracle,
    raw_bytes,
    rounded_bits,
    swizzled_bytes,
    ue8m0_byte_oracle,
)
from test_spec_attention import assert_attention_close  # [ATTN-TOLERANCE], checked against the spec

import lowbit

F32, F16, BF16, E4M3, I32 = torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.int32
FP4, E8M0 = torch.float4_e2m1fn_x2, torch.float8_e8m0fnu
IN_DTYPES = (F32, F16, BF16)
OUT_DTYPES = (BF16, F16, F32)
MANTISSA = {F32: 23, F16: 10, BF16: 7}

FUZZ = dict(derandomize=True, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow])


def fuzz(cases, max_examples: int):
    """The seeded property over `cases`; the undecorated check stays on the test (`.check`), so the
    planted-bug tests can rerun the very same search."""
    def wrap(check):
        test = settings(max_examples=max_examples, **FUZZ)(given(case=cases)(check))
        test.cases, test.check, test.max_examples = cases, check, max_examples
        return test
    return wrap


# --------------------------------------------------------------------------------------------
# Values: grid points, ties and their neighbours at a pinned group scale, normals, specials
# --------------------------------------------------------------------------------------------

# E2M1 magnitudes, the midpoints between them (ties), and points past 6 (saturation)
E2M1_POINTS = np.concatenate([E2M1_GRID, (E2M1_GRID[1:] + E2M1_GRID[:-1]) / 2, [6.5, 7.0, 12.0]])
# E4M3 values, the midpoints between them (subnormal ones included), and points past 448
E4M3_POINTS = np.concatenate([E4M3_POS, (E4M3_POS[1:] + E4M3_POS[:-1]) / 2, [464.0, 480.0, 1000.0]])
# Exponent ranges k (anchor * 2^k stays finite in the dtype; f32 and bf16 reach the subnormals)
K_RANGE = {"e2m1": {F32: (-152, 125), BF16: (-140, 125), F16: (-27, 13)},
           "e4m3": {F32: (-160, 119), BF16: (-150, 119), F16: (-36, 7)}}


def specials(dtype) -> np.ndarray:
    fi = torch.finfo(dtype)
    sub = fi.smallest_normal * 2.0 ** -MANTISSA[dtype]  # the smallest subnormal
    vals = [math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, fi.max, -fi.max, fi.smallest_normal,
            -fi.smallest_normal, sub, -sub, 3 * sub, fi.smallest_normal - sub, 1.0, -0.5]
    return np.array(vals, dtype=np.float64)


def anchors(fmt, dtype) -> np.ndarray:
    """Group maxima: mostly the format's max (the scale is then exactly 2^k), a step of the input
    dtype either side of it (the next scale up, or a non-power-of-two one), and golden values
    ([NV-GOLDEN] 6.375 and 7.125 put the E4M3 block scale on a tie; [FP8-GOLDEN] 672)."""
    step = 2.0 ** -(MANTISSA[dtype] - 1)
    top = 6.0 if fmt == "e2m1" else 448.0
    extra = [6.375, 7.125, 4.0, 5.0] if fmt == "e2m1" else [672.0, 240.0, 1.0]
    return np.array([top, top, top, top * (1 + step), top * (1 - step), *extra])


def values(rng, shape, group_of, fmt, dtype, k_range, p_special, anchor_rate=0.8):
    """float64 values of `shape` (then stored in `dtype`). `group_of` gives each element's scale
    group (flat, C order); each group gets an exponent k in `k_range` (two ints, or two arrays of
    one bound per group) and, most of the time, one anchor element (its max) times 2^k; the other
    elements are the format's grid points and midpoints times 2^k (exact ties when the anchor is
    the format's max), those one input ulp off, normals, and specials."""
    n = math.prod(shape)
    if n == 0:
        return np.zeros(shape)
    points, top = (E2M1_POINTS, 6.0) if fmt == "e2m1" else (E4M3_POINTS, 448.0)
    groups = int(group_of.max()) + 1
    lo, hi = (np.broadcast_to(np.asarray(b, dtype=np.int64), (groups,)) for b in k_range)
    k = rng.integers(lo, hi + 1)
    edge = np.choose(rng.integers(0, 4, size=groups), [lo, lo + 1, hi - 1, hi]).clip(lo, hi)
    k = np.where(rng.random(groups) < 0.3, edge, k)  # the ends of the range: clamps, subnormals, overflow
    anchor = rng.choice(anchors(fmt, dtype), size=groups)
    # points (half of them relative to the group's anchor: ties of a scale that is not a power of two)
    pts = points[rng.integers(len(points), size=n)] * np.where(rng.random(n) < 0.5, anchor[group_of] / top, 1.0)
    v = np.where(rng.random(n) < 0.45, pts, rng.standard_normal(n) * top / 3)
    nudge = rng.random(n) < 0.2  # one input ulp off a point or tie
    v = np.where(nudge, v * (1 + rng.choice([-1.0, 1.0], size=n) * 2.0 ** -MANTISSA[dtype]), v)
    order = rng.permutation(n)  # one anchor at a random place in each group
    _, first = np.unique(group_of[order], return_index=True)
    at = order[first][rng.random(len(first)) < anchor_rate]
    v[at] = anchor[group_of[at]]
    v = np.ldexp(v * rng.choice([-1.0, 1.0], size=n), k[group_of])
    special = rng.random(n) < p_special
    v[special] = rng.choice(specials(dtype), size=int(special.sum()))
    return v.reshape(shape)


def row_groups(shape, size):
    """Group index of each element when groups are `size` consecutive elements of the last dim."""
    return np.arange(math.prod(shape)) // max(size, 1)


def to_dtype(v: np.ndarray, dtype) -> torch.Tensor:
    """`v` stored in `dtype`, negative NaNs kept negative (float64 -> bfloat16 drops their sign)."""
    v = np.ascontiguousarray(v)
    t = torch.from_numpy(v).to(dtype)
    ints = t.view(torch.int32 if dtype == F32 else torch.int16)
    negative_nan = torch.from_numpy(np.isnan(v) & np.signbit(v))
    ints[negative_nan] |= -(2 ** (8 * t.element_size() - 1))
    return t


def laid_out(t: torch.Tensor, layout: str, poison) -> torch.Tensor:
    """The same logical values in other strides: transposed last two dims, every other element of a
    wider buffer (offset 1, the gaps poisoned), batch dims swapped, or a broadcast first dim (the
    rows of the first batch repeated: stride 0)."""
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":
        buf = torch.full((*t.shape[:-1], 2 * t.shape[-1] + 1), poison, dtype=t.dtype)
        buf[..., 1::2] = t
        return buf[..., 1::2]
    if layout == "batch_swapped" and t.dim() >= 3:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "broadcast" and t.dim() >= 2:
        return t[:1].expand(t.shape)
    return t


def bytes_of(t: torch.Tensor) -> torch.Tensor:
    """t.view(torch.uint8) of a logical copy of t (an empty tensor's copy may lack a unit stride)."""
    if t.numel() == 0:
        return torch.empty((*t.shape[:-1], t.shape[-1] * t.element_size()), dtype=U8)
    if t.element_size() == 1:  # no copy kernels for the shell dtypes (float4_e2m1fn_x2, e8m0): bytes first
        t = t.view(U8)
    return torch.empty(t.shape, dtype=t.dtype).copy_(t).view(U8)  # fresh strides: size-1 dims may have any


def u8_tensor(a) -> torch.Tensor:
    return raw_bytes(np.asarray(a, dtype=np.uint8))


def f32_bytes(a) -> torch.Tensor:
    """Raw bytes of float64 values that are float32 values (NaN stays NaN)."""
    return raw_bytes(np.asarray(a, dtype=np.float64).astype(np.float32))


LAYOUTS = st.sampled_from(["contiguous", "contiguous", "transposed", "sliced", "batch_swapped", "broadcast"])
SEEDS = st.integers(0, 2**32 - 1)
P_SPECIAL = st.sampled_from([0.0, 0.02, 0.3])
EPS = st.sampled_from([None, 0.0, 1e-10, 2.0**-126, 1e-40, 3.7e-7, 0.75, 2.0**100, 3e38])


def lead_dims(max_dims=2, max_size=3):
    return st.lists(st.integers(1, max_size), max_size=max_dims).map(tuple)


# --------------------------------------------------------------------------------------------
# MXFP4
# --------------------------------------------------------------------------------------------

@st.composite
def mx_inputs(draw):
    return dict(dtype=draw(st.sampled_from(IN_DTYPES)), lead=draw(lead_dims()),
                rows=draw(st.sampled_from([0, 1, 1, 2, 3, 5])), k=32 * draw(st.sampled_from([0, 1, 1, 2, 3, 4])),
                layout=draw(LAYOUTS), p_special=draw(P_SPECIAL), seed=draw(SEEDS))


def mx_input(case) -> torch.Tensor:
    rng = np.random.default_rng(case["seed"])
    shape = (*case["lead"], case["rows"], case["k"])
    v = values(rng, shape, row_groups(shape, 32), "e2m1", case["dtype"], K_RANGE["e2m1"][case["dtype"]],
               case["p_special"])
    return laid_out(to_dtype(v, case["dtype"]), case["layout"], math.nan)


@fuzz(st.builds(lambda i, rule: dict(i, rule=rule), mx_inputs(), st.sampled_from(["rceil", "floor"])), 300)
def test_fuzz_quantize_mxfp4(case):
    x = mx_input(case)
    q, s = lowbit.quantize_mxfp4(x, scale_rule=case["rule"])
    want_q, want_s = mxfp4_oracle(exact64(x), case["rule"])
    assert (q.dtype, s.dtype) == (FP4, E8M0)
    assert_bytes(bytes_of(s), u8_tensor(want_s), "scales")
    assert_bytes(bytes_of(q), u8_tensor(want_q), "q")


@fuzz(st.builds(lambda i, eps, q_dtype, s_dtype: dict(i, eps=eps, q_dtype=q_dtype, s_dtype=s_dtype), mx_inputs(),
                EPS, st.sampled_from([U8, FP4]), st.sampled_from([F32, E8M0, U8])), 200)
def test_fuzz_per_token_group_quant_mxfp4(case):
    x = mx_input(case)
    *lead, k = x.shape
    x_q = torch.full((*lead, k // 2), 0xA5, dtype=U8).view(case["q_dtype"])  # every byte must be written
    x_s = torch.full((*lead, k // 32), 0xA5, dtype=U8).view(U8 if case["s_dtype"] == U8 else E8M0)
    if case["s_dtype"] == F32:
        x_s = torch.full((*lead, k // 32), -1.5, dtype=F32)
    eps = {} if case["eps"] is None else {"eps": case["eps"]}
    assert lowbit.per_token_group_quant_mxfp4(x, x_q, x_s, **eps) is None
    want_q, want_s = mxfp4_oracle(exact64(x), "rceil", eps=1e-10 if case["eps"] is None else case["eps"])
    assert_bytes(bytes_of(x_q), u8_tensor(want_q), "x_q")
    if case["s_dtype"] == F32:  # [MX-SCALE-F32]: 2^e, always normal; a NaN block 0x7FC00000
        want = np.where(want_s == 255, 0x7FC00000, want_s.astype(np.int64) << 23).astype(np.uint32)
        assert_bytes(bytes_of(x_s), raw_bytes(want), "x_s")
    else:
        assert_bytes(bytes_of(x_s), u8_tensor(want_s), "x_s")


def byte_mix(rng, shape, extremes, p_extreme=0.4) -> np.ndarray:
    """Random bytes, a share of them from `extremes`."""
    b = rng.integers(0, 256, size=shape)
    return np.where(rng.random(shape) < p_extreme, rng.choice(extremes, size=shape), b).astype(np.uint8)


# scale bytes: clamps, NaN, 2^0, and where float16 outputs underflow (2^-24: ties) or overflow
E8M0_EXTREMES = [0, 1, 2, 126, 127, 128, 253, 254, 255, 127 - 14, 127 - 23, 127 - 24, 127 - 25, 127 - 26, 127 + 14,
                 127 + 15, 127 + 16]


def strided_bytes(a: np.ndarray, layout: str) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 tensor of `a` in `layout` (gaps of a sliced buffer hold 0xFF), and its logical bytes
    (a broadcast layout repeats the first batch)."""
    t = laid_out(u8_tensor(a), layout, 0xFF)
    return t, t.contiguous().numpy()


@fuzz(st.fixed_dictionaries(dict(lead=lead_dims(), rows=st.sampled_from([0, 1, 2, 3, 5]),
                                 k=st.sampled_from([0, 32, 64, 128]), q_dtype=st.sampled_from([U8, FP4]),
                                 s_dtype=st.sampled_from([U8, E8M0]), dtype=st.sampled_from(OUT_DTYPES),
                                 layout=LAYOUTS, seed=SEEDS)), 150)
def test_fuzz_dequantize_mxfp4(case):
    rng = np.random.default_rng(case["seed"])
    lead, k = (*case["lead"], case["rows"]), case["k"]
    qb = rng.integers(0, 256, size=(*lead, k // 2)).astype(np.uint8)
    sb = byte_mix(rng, (*lead, k // 32), E8M0_EXTREMES)
    q, qb = strided_bytes(qb, case["layout"])
    s, sb = strided_bytes(sb, case["layout"])
    q, s = q.view(case["q_dtype"]), s.view(case["s_dtype"])
    out = lowbit.dequantize_mxfp4(q, s, dtype=case["dtype"])
    assert (out.dtype, tuple(out.shape)) == (case["dtype"], (*lead, k))
    assert_bytes(bytes_of(out), rounded_bits(mxfp4_dequant_oracle(qb, sb), case["dtype"]), "out")


# --------------------------------------------------------------------------------------------
# MXFP8
# --------------------------------------------------------------------------------------------

SCALE_LAYOUTS = st.sampled_from(["linear", "swizzled"])


@st.composite
def mx8_inputs(draw):
    return dict(dtype=draw(st.sampled_from(IN_DTYPES)), lead=draw(lead_dims()),
                rows=draw(st.sampled_from([0, 1, 1, 2, 3, 5, 33])), k=32 * draw(st.sampled_from([0, 1, 1, 2, 3, 5])),
                layout=draw(LAYOUTS), p_special=draw(P_SPECIAL), seed=draw(SEEDS),
                rule=draw(st.sampled_from(["rceil", "floor"])), scale_layout=draw(SCALE_LAYOUTS))


def mx8_scale_bytes(want_s, lead, k, scale_layout) -> np.ndarray:
    """[MX8-LINEAR] as they are, or [MX8-SWIZZLE]: the linear bytes placed in the zero-padded tiles."""
    if scale_layout == "linear":
        return want_s
    return swizzled_bytes(want_s.reshape(math.prod(lead), k // 32))


@fuzz(mx8_inputs(), 300)
def test_fuzz_quantize_mxfp8(case):
    rng = np.random.default_rng(case["seed"])
    shape = (*case["lead"], case["rows"], case["k"])
    v = values(rng, shape, row_groups(shape, 32), "e4m3", case["dtype"], K_RANGE["e4m3"][case["dtype"]],
               case["p_special"])
    x = laid_out(to_dtype(v, case["dtype"]), case["layout"], math.nan)
    q, s = lowbit.quantize_mxfp8(x, scale_rule=case["rule"], scale_layout=case["scale_layout"])
    want_q, want_s = mxfp8_oracle(exact64(x), case["rule"])
    assert (q.dtype, s.dtype) == (E4M3, E8M0)
    assert_bytes(bytes_of(q), u8_tensor(want_q), "q")
    assert_bytes(bytes_of(s), u8_tensor(mx8_scale_bytes(want_s, x.shape[:-1], x.shape[-1], case["scale_layout"])),
                 "scales")


@fuzz(st.fixed_dictionaries(dict(lead=lead_dims(), rows=st.sampled_from([0, 1, 2, 3, 5, 33]),
                                 k=st.sampled_from([0, 32, 64, 160]), q_dtype=st.sampled_from([U8, E4M3]),
                                 s_dtype=st.sampled_from([U8, E8M0]), dtype=st.sampled_from(OUT_DTYPES),
                                 layout=LAYOUTS, scale_layout=SCALE_LAYOUTS, seed=SEEDS)), 150)
def test_fuzz_dequantize_mxfp8(case):
    rng = np.random.default_rng(case["seed"])
    lead, k = (*case["lead"], case["rows"]), case["k"]
    qb = byte_mix(rng, (*lead, k), E4M3_EXTREMES)
    sb = byte_mix(rng, (*lead, k // 32), E8M0_EXTREMES)
    if case["scale_layout"] == "swizzled":  # padding bytes hold garbage: they are never read
        tiles = mx8_scale_bytes(sb, lead, k, "swizzled")
        pad = mx8_scale_bytes(np.ones_like(sb), lead, k, "swizzled") == 0
        tiles[pad] = rng.integers(0, 256, size=int(pad.sum()))
        s = u8_tensor(tiles)
    else:
        s, sb = strided_bytes(sb, case["layout"])
    q, qb = strided_bytes(qb, case["layout"])
    out = lowbit.dequantize_mxfp8(q.view(case["q_dtype"]), s.view(case["s_dtype"]), dtype=case["dtype"],
                                  scale_layout=case["scale_layout"])
    assert (out.dtype, tuple(out.shape)) == (case["dtype"], (*lead, k))
    assert_bytes(bytes_of(out), rounded_bits(mxfp8_dequant_oracle(qb, sb), case["dtype"]), "out")


# --------------------------------------------------------------------------------------------
# FP8 groups: packed UE8M0 scales, float32 scales, 2-D weight blocks
# --------------------------------------------------------------------------------------------

@st.composite
def fp8_inputs(draw, layouts):
    """Inputs of the FP8 group ops; `layouts` (None): the packed op, which has no scale layout or ue8m0."""
    group_size = draw(st.sampled_from([1, 2, 3, 8, 16, 32, 64, 128]))
    groups = draw(st.sampled_from([0, 1, 1, 2, 3, 4, 5, 6])) if group_size < 128 else draw(st.integers(1, 3))
    return dict(dtype=draw(st.sampled_from(IN_DTYPES)), lead=draw(lead_dims()), mn=draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6])),
                group_size=group_size, k=groups * group_size, eps=draw(EPS), layout=draw(LAYOUTS),
                scale_layout=draw(st.sampled_from(layouts)), ue8m0=None if layouts == (None,) else draw(st.booleans()),
                out=draw(st.sampled_from([None, None, "full", "minimal"])), p_special=draw(P_SPECIAL), seed=draw(SEEDS))


def fp8_input(case) -> torch.Tensor:
    rng = np.random.default_rng(case["seed"])
    shape = (*case["lead"], case["mn"], case["k"])
    v = values(rng, shape, row_groups(shape, case["group_size"]), "e4m3", case["dtype"],
               K_RANGE["e4m3"][case["dtype"]], case["p_special"])
    return laid_out(to_dtype(v, case["dtype"]), case["layout"], math.nan)


def tma_rows(mn: int) -> int:
    return -(-mn // 4) * 4


def lead_strides(lead, inner: tuple, batch: int) -> tuple:
    """Strides of (..., R, C) with `inner` strides and batches of `batch` elements back to back."""
    strides = list(inner)
    for size in reversed(lead):
        strides.insert(0, batch)
        batch *= size
    return tuple(strides)


def assert_strides(t: torch.Tensor, strides: tuple):
    """The layout's strides (a dimension of size 1 has no stride to compare)."""
    assert all(n <= 1 or got == want for n, got, want in zip(t.shape, t.stride(), strides)), (t.stride(), strides)


def sentinel_view(shape, strides, batch: int, minimal: bool, dtype, sentinel):
    """A strided view over sentinel-filled storage of whole batches of `batch` elements, or, when
    `minimal`, only as much as the view spans (vLLM's allocation of TMA-aligned scales)."""
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if math.prod(shape) else 0
    size = span if minimal else max(math.prod(shape[:-2]) * batch, span)
    storage = torch.full((max(size, 1),), sentinel, dtype=dtype)
    return storage.as_strided(shape, strides), storage


def q_buffer(lead, mn, k, rng):
    """q_buf (..., R, K) with mn <= R <= A, contiguous, sentinel-filled."""
    rows = int(rng.integers(mn, tma_rows(mn) + 1))
    return torch.full((*lead, rows, k), 0x5A, dtype=U8).view(E4M3)


def check_q_rows(q, want_q, mn):
    """[FP8-OUT]: the first mn rows are the elements, the rest zeros."""
    want = torch.zeros(q.shape, dtype=U8)
    want[..., :mn, :] = u8_tensor(want_q)
    assert_bytes(bytes_of(q), want, "q")


@fuzz(fp8_inputs(layouts=(None,)), 300)
def test_fuzz_quantize_fp8_group_packed(case):
    x = fp8_input(case)
    *lead, mn, k = x.shape
    groups = k // case["group_size"]
    words, rows = -(-groups // 4), tma_rows(mn)
    strides = lead_strides(lead, (1, rows), words * rows)  # [FP8-PACK]
    kwargs = {"group_size": case["group_size"]} | ({} if case["eps"] is None else {"eps": case["eps"]})
    eps = 1e-10 if case["eps"] is None else case["eps"]
    storage = None
    if case["out"] and words:
        q_buf = q_buffer(lead, mn, k, np.random.default_rng(case["seed"]))
        s_buf, storage = sentinel_view((*lead, mn, words), strides, words * rows, case["out"] == "minimal", I32,
                                       0x3C3C3C3C)
        q, s = lowbit.quantize_fp8_group_packed(x, out=(q_buf, s_buf), **kwargs)
        assert q is q_buf and s is s_buf
    else:
        q, s = lowbit.quantize_fp8_group_packed(x, **kwargs)
        assert (q.dtype, tuple(q.shape), s.dtype, tuple(s.shape)) == (E4M3, tuple(x.shape), I32, (*lead, mn, words))
        assert_strides(s, strides)
    xv = exact64(x).reshape(*lead, mn, groups, case["group_size"])
    byte = ue8m0_byte_oracle(nan_masked_amax(xv, -1), eps)
    want_q = f8_element_oracle(xv, np.ldexp(1.0, byte - 127)[..., None]).reshape(*lead, mn, k)
    check_q_rows(q, want_q, mn)
    want_s = np.zeros((*lead, mn, words * 4), dtype=np.uint8)  # byte j of word c: group 4c + j, little-endian
    want_s[..., :groups] = byte
    assert_bytes(bytes_of(s), u8_tensor(want_s), "packed scales")
    if storage is not None:  # exactly the logical words are written
        untouched = torch.ones(storage.shape, dtype=torch.bool)
        untouched.as_strided(s.shape, s.stride()).fill_(False)
        assert (storage[untouched] == 0x3C3C3C3C).all(), "s_buf words outside the view were written"
    elif math.prod(lead) and words and mn:  # [FP8-STORAGE]: rows mn..A-1 of the owned storage are 0
        owned = s.as_strided((math.prod(lead), words, rows), (words * rows, rows, 1))
        assert (owned[..., mn:] == 0).all()


@fuzz(st.fixed_dictionaries(dict(lead=lead_dims(), mn=st.sampled_from([0, 1, 2, 3, 5]),
                                 group_size=st.sampled_from([1, 3, 16, 32, 128]), groups=st.integers(0, 6),
                                 q_dtype=st.sampled_from([U8, E4M3]), dtype=st.sampled_from(OUT_DTYPES),
                                 packed=st.booleans(), layout=LAYOUTS, seed=SEEDS)), 150)
def test_fuzz_dequantize_fp8_group_packed(case):
    rng = np.random.default_rng(case["seed"])
    lead, mn, gsz, groups = case["lead"], case["mn"], case["group_size"], case["groups"]
    words, rows = -(-groups // 4), tma_rows(mn)
    qb = rng.integers(0, 256, size=(*lead, mn, groups * gsz)).astype(np.uint8)
    sb = rng.integers(0, 256, size=(*lead, mn, words * 4)).astype(np.uint8)  # bytes past G: garbage, unread
    sb[..., :groups] = byte_mix(rng, (*lead, mn, groups), E8M0_EXTREMES)
    word_values = torch.from_numpy(np.ascontiguousarray(sb).view(np.int32))  # (..., mn, words), little-endian
    if case["packed"]:  # [FP8-PACK] strides, as quantize returns them
        s, _ = sentinel_view((*lead, mn, words), lead_strides(lead, (1, rows), words * rows), words * rows, False, I32,
                             -1)
        s.copy_(word_values)
    else:
        s = word_values
    q, qb = strided_bytes(qb, case["layout"])
    q = q.view(case["q_dtype"])
    out = lowbit.dequantize_fp8_group_packed(q, s, group_size=gsz, dtype=case["dtype"])
    factor = np.where(sb[..., :groups] == 255, np.nan, np.ldexp(1.0, sb[..., :groups].astype(np.int64) - 127))
    want = f32_np(E4M3_ALL[qb].reshape(*lead, mn, groups, gsz) * factor[..., None]).reshape(qb.shape)
    assert_bytes(bytes_of(out), rounded_bits(want, case["dtype"]), "out")


def f8_scale_strides(lead, mn, groups, layout):
    """[F8-LAYOUT] strides of (..., mn, G) float32 scales."""
    if layout == "row_major":
        return lead_strides(lead, (groups, 1), groups * mn)
    rows = tma_rows(mn) if layout == "column_major_tma" else mn
    return lead_strides(lead, (1, rows), groups * rows)


@fuzz(fp8_inputs(layouts=("row_major", "column_major", "column_major_tma")), 300)
def test_fuzz_quantize_fp8_group(case):
    x = fp8_input(case)
    *lead, mn, k = x.shape
    layout, groups = case["scale_layout"], k // case["group_size"]
    strides = f8_scale_strides(lead, mn, groups, layout)
    kwargs = dict(ue8m0=case["ue8m0"], scale_layout=layout) | ({} if case["eps"] is None else {"eps": case["eps"]})
    eps = 1e-10 if case["eps"] is None else case["eps"]
    storage = None
    if case["out"] and groups:
        minimal = case["out"] == "minimal" and layout == "column_major_tma"
        batch = groups * (tma_rows(mn) if layout == "column_major_tma" else mn)
        q_buf = q_buffer(lead, mn, k, np.random.default_rng(case["seed"]))
        s_buf, storage = sentinel_view((*lead, mn, groups), strides, batch, minimal, F32, -7.25)
        q, s = lowbit.quantize_fp8_group(x, case["group_size"], out=(q_buf, s_buf), **kwargs)
        assert q is q_buf and s is s_buf
    else:
        q, s = lowbit.quantize_fp8_group(x, case["group_size"], **kwargs)
        assert (q.dtype, tuple(q.shape), s.dtype, tuple(s.shape)) == (E4M3, tuple(x.shape), F32, (*lead, mn, groups))
        assert_strides(s, strides)
    xv = exact64(x).reshape(*lead, mn, groups, case["group_size"])
    scale = f8_scale_oracle(nan_masked_amax(xv, -1), eps, case["ue8m0"])
    check_q_rows(q, f8_element_oracle(xv, scale[..., None]).reshape(*lead, mn, k), mn)
    assert_bytes(bytes_of(s), f32_bytes(scale), "scales")
    if storage is not None:
        untouched = torch.ones(storage.shape, dtype=torch.bool)
        untouched.as_strided(s.shape, s.stride()).fill_(False)
        assert (storage[untouched] == -7.25).all(), "s_buf floats outside the view were written"
    elif layout == "column_major_tma" and math.prod(lead) and groups and mn:  # [F8-STORAGE]
        rows = tma_rows(mn)
        owned = s.as_strided((math.prod(lead), groups, rows), (groups * rows, rows, 1))
        assert (owned[..., mn:] == 0).all()


@st.composite
def block_cases(draw):
    br, bc = draw(st.sampled_from([1, 2, 3, 5, 16, 128])), draw(st.sampled_from([1, 2, 3, 8, 32, 128]))
    n = draw(st.integers(1, min(3 * br, 40)))
    return dict(dtype=draw(st.sampled_from(IN_DTYPES)), n=n, k=draw(st.integers(1, min(3 * bc, 4096 // n))),
                block=(br, bc), eps=draw(st.sampled_from([None, 0.0, 1e-10, 1e-4, 2.0**-20, 0.75, 3e38])),
                ue8m0=draw(st.booleans()), layout=draw(st.sampled_from(["contiguous", "transposed", "sliced", "broadcast"])),
                p_special=draw(P_SPECIAL), seed=draw(SEEDS))


def tile_groups(n, k, block):
    """Tile index (i * Kb + j) of each element of an (N, K) weight."""
    br, bc = block
    r, c = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    return ((r // br) * -(-k // bc) + c // bc).reshape(-1)


@fuzz(block_cases(), 200)
def test_fuzz_quantize_fp8_block(case):
    rng = np.random.default_rng(case["seed"])
    (n, k), (br, bc) = (case["n"], case["k"]), case["block"]
    v = values(rng, (n, k), tile_groups(n, k, case["block"]), "e4m3", case["dtype"], K_RANGE["e4m3"][case["dtype"]],
               case["p_special"])
    w = laid_out(to_dtype(v, case["dtype"]), case["layout"], math.nan)
    kwargs = dict(ue8m0=case["ue8m0"]) | ({} if case["eps"] is None else {"eps": case["eps"]})
    q, s = lowbit.quantize_fp8_block(w, case["block"], **kwargs)
    nb, kb = -(-n // br), -(-k // bc)
    kb4 = -(-kb // 4) * 4
    assert (q.dtype, tuple(q.shape), s.dtype, tuple(s.shape)) == (E4M3, (n, k), F32, (kb4, nb))
    assert nb == 1 or s.stride() == (1, kb4)
    wv = np.full((nb * br, kb * bc), np.nan)  # NaN padding: left out of every amax
    wv[:n, :k] = exact64(w)
    tiles = wv.reshape(nb, br, kb, bc)
    scale = f8_scale_oracle(nan_masked_amax(tiles, (1, 3)), 1e-4 if case["eps"] is None else case["eps"],
                            case["ue8m0"])  # (nb, kb)
    want_q = f8_element_oracle(tiles, scale[:, None, :, None]).reshape(nb * br, kb * bc)[:n, :k]
    assert_bytes(bytes_of(q), u8_tensor(want_q), "q")
    want_s = np.zeros((kb4, nb))  # [F8-BLOCK-SCALES]: scales[j, i] is tile (i, j)'s; rows kb.. are 0
    want_s[:kb] = scale.T
    assert_bytes(bytes_of(s), f32_bytes(want_s), "scales")


def f32_scale_mix(rng, shape) -> np.ndarray:
    """float32 scales: powers of two over the whole range, random values, and specials."""
    n = math.prod(shape)
    pow2 = np.ldexp(1.0, rng.integers(-149, 128, size=n))
    rand = f32_np(np.abs(rng.standard_normal(n)) * np.ldexp(1.0, rng.integers(-40, 40, size=n)))
    special = rng.choice([0.0, -0.0, math.inf, -math.inf, math.nan, 2.0**-149, 2.0**-126, 3.4028234663852886e38,
                          -1.5, 1.0], size=n)
    pick = rng.random(n)
    return np.where(pick < 0.4, pow2, np.where(pick < 0.85, rand, special)).reshape(shape)


@fuzz(st.fixed_dictionaries(dict(lead=lead_dims(), mn=st.sampled_from([0, 1, 2, 3, 5]),
                                 group_size=st.sampled_from([1, 3, 16, 32, 128]), groups=st.integers(0, 5),
                                 scale_layout=st.sampled_from(["row_major", "column_major", "column_major_tma"]),
                                 q_dtype=st.sampled_from([U8, E4M3]), dtype=st.sampled_from(OUT_DTYPES),
                                 layout=LAYOUTS, seed=SEEDS)), 150)
def test_fuzz_dequantize_fp8_group(case):
    rng = np.random.default_rng(case["seed"])
    lead, mn, gsz, groups = case["lead"], case["mn"], case["group_size"], case["groups"]
    qb = rng.integers(0, 256, size=(*lead, mn, groups * gsz)).astype(np.uint8)
    sv = f32_scale_mix(rng, (*lead, mn, groups))
    batch = groups * (tma_rows(mn) if case["scale_layout"] == "column_major_tma" else mn)
    s, _ = sentinel_view((*lead, mn, groups), f8_scale_strides(lead, mn, groups, case["scale_layout"]), batch, False,
                         F32, math.nan)
    s.copy_(torch.from_numpy(sv.astype(np.float32)))
    q, qb = strided_bytes(qb, case["layout"])
    q = q.view(case["q_dtype"])
    out = lowbit.dequantize_fp8_group(q, s, group_size=gsz, dtype=case["dtype"])
    with np.errstate(invalid="ignore"):
        want = f32_np(E4M3_ALL[qb].reshape(*lead, mn, groups, gsz) * sv[..., None]).reshape(qb.shape)
    assert_bytes(bytes_of(out), rounded_bits(want, case["dtype"]), "out")


@fuzz(st.fixed_dictionaries(dict(n=st.integers(1, 40), k=st.integers(1, 100),
                                 block=st.tuples(st.sampled_from([1, 2, 3, 16, 128]), st.sampled_from([1, 3, 8, 128])),
                                 padded=st.booleans(), contiguous_scales=st.booleans(),
                                 q_dtype=st.sampled_from([U8, E4M3]),
                                 dtype=st.sampled_from(OUT_DTYPES), layout=LAYOUTS, seed=SEEDS)), 150)
def test_fuzz_dequantize_fp8_block(case):
    rng = np.random.default_rng(case["seed"])
    (n, k), (br, bc) = (case["n"], case["k"]), case["block"]
    nb, kb = -(-n // br), -(-k // bc)
    rows = -(-kb // 4) * 4 if case["padded"] else kb  # quantize_fp8_block's scales, or weight_scale_inv.t()
    qb = rng.integers(0, 256, size=(n, k)).astype(np.uint8)
    sv = f32_scale_mix(rng, (nb, rows))
    s = torch.from_numpy(sv.astype(np.float32)).t()  # (rows, nb), strides (1, rows)
    if case["contiguous_scales"]:  # read through any strides
        s = s.contiguous()
    q, qb = strided_bytes(qb, case["layout"])
    q = q.view(case["q_dtype"])
    out = lowbit.dequantize_fp8_block(q, s, block=case["block"], dtype=case["dtype"])
    factor = np.repeat(np.repeat(sv[:, :kb], br, axis=0), bc, axis=1)[:n, :k]  # tile (i, j)'s scale
    with np.errstate(invalid="ignore"):
        want = f32_np(E4M3_ALL[qb] * factor)
    assert_bytes(bytes_of(out), rounded_bits(want, case["dtype"]), "out")


# --------------------------------------------------------------------------------------------
# NVFP4
# --------------------------------------------------------------------------------------------

# given global scales that no block can use, and the edges of the usable range [2^-118, 2^118]
UNUSABLE_GS = [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 2.0**-119, 2.0**-130, 2.0**118 * (1 + 2.0**-23)]
EDGE_GS = [2.0**-118, 2.0**118, 2.0**-118 * (1 + 2.0**-23), 2.0**118 * (1 - 2.0**-24), 1.0, 256.0, 448.0, 2688.0]


@st.composite
def nv_cases(draw, two_d=False):
    if two_d:
        lead = (draw(st.sampled_from([0, 1, 2, 3, 7, 33, 130])),)
    else:
        lead = draw(lead_dims()) + (draw(st.sampled_from([0, 1, 1, 2, 3, 5, 33, 130])),)
    rows = math.prod(lead)
    k = 16 * draw(st.sampled_from([0, 1, 1, 2, 3, 4, 5, 8] if rows <= 40 else [1, 2]))
    dtype = draw(st.sampled_from(IN_DTYPES))
    gs_mode = draw(st.sampled_from([None, None, "pow2", "random", "edge", "unusable"] if not two_d
                                   else ["pow2", "random", "edge", "unusable"]))
    gs_shape = draw(st.sampled_from([(), (1,), "rows"]))
    per_row = draw(st.booleans())
    if gs_mode is not None and per_row:
        gs_shape = "rows"
    return dict(dtype=dtype, lead=lead, k=k, gs_mode=gs_mode, gs_shape=gs_shape, per_row=per_row,
                scale_layout=draw(st.sampled_from(["linear", "swizzled"])), layout=draw(LAYOUTS),
                p_special=draw(P_SPECIAL), seed=draw(SEEDS))


def gs_values(rng, mode, n):
    """n given global scales of one mode (float32 values as float64)."""
    if mode == "pow2":
        return np.ldexp(1.0, rng.integers(-30, 31, size=n))
    if mode == "random":
        return f32_np(np.ldexp(rng.uniform(1, 2, size=n), rng.integers(-118, 118, size=n)))
    pool = EDGE_GS if mode == "edge" else UNUSABLE_GS + EDGE_GS  # unusable scales, some rows next to usable ones
    return f32_np(rng.choice(pool, size=n))


def nv_input(case):
    """(x, the given global scale tensor or None)."""
    rng = np.random.default_rng(case["seed"])
    dtype, lead, k = case["dtype"], case["lead"], case["k"]
    rows, shape = math.prod(lead), (*lead, k)
    gs = None
    if case["gs_mode"] is not None:
        gs_shape = lead if case["gs_shape"] == "rows" else case["gs_shape"]
        gs = gs_values(rng, case["gs_mode"], max(math.prod(gs_shape), 1))[:math.prod(gs_shape)].reshape(gs_shape)
    # block exponents where the E4M3 block scale is neither 0 nor saturated: 2^k near 1/gs for a given gs
    # (exact when gs is a power of two), up to 2^17 below the tensor's amax for a computed one
    lo, hi = K_RANGE["e2m1"][dtype]
    row_gs = np.broadcast_to(gs.reshape(-1), (rows,)) if gs is not None and gs.size in (1, rows) else None
    if row_gs is not None:
        usable = (row_gs >= 2.0**-118) & (row_gs <= 2.0**118)
        a = np.where(usable, np.round(np.log2(np.where(usable, row_gs, 1.0))), rng.integers(lo, hi + 1, size=rows))
        row_lo, row_hi = np.clip(-a - 10, lo, hi), np.clip(-a + 9, lo, hi)
        lo, hi = (np.repeat(b.astype(np.int64), k // 16) for b in (row_lo, row_hi))  # per block
    else:
        top = int(rng.integers(lo + 17, hi + 1))
        lo, hi = top - 17, top
    v = values(rng, shape, row_groups(shape, 16), "e2m1", dtype, (lo, hi), case["p_special"])
    x = laid_out(to_dtype(v, dtype), case["layout"], math.nan)
    gs_t = None if gs is None else torch.from_numpy(gs.astype(np.float32))
    return x, gs_t


def check_nv_scales(block_scales, want_sb, rows, layout):
    if layout == "swizzled":
        want_sb = swizzled_bytes(want_sb.reshape(rows, want_sb.shape[-1]))
    assert block_scales.dtype == torch.float8_e4m3fn
    assert_bytes(bytes_of(block_scales), u8_tensor(want_sb), "block scales")


@fuzz(nv_cases(), 300)
def test_fuzz_quantize_nvfp4(case):
    x, gs = nv_input(case)
    q, sf, g = lowbit.quantize_nvfp4(x, gs, per_row=case["per_row"], scale_layout=case["scale_layout"])
    xv = exact64(x)
    if gs is None:  # [NV-GLOBAL], on the device
        want_g = nvfp4_global_scale_oracle(xv, case["per_row"])
        assert g.dtype == F32 and tuple(g.shape) == (x.shape[:-1] if case["per_row"] else ())
        assert_bytes(bytes_of(g.reshape(-1)), f32_bytes(want_g.reshape(-1)), "gs")
        gv = want_g
    else:
        assert g is gs
        gv = gs.double().numpy()
    want_q, want_sb = nvfp4_oracle(xv, gv)
    assert q.dtype == FP4
    assert_bytes(bytes_of(q), u8_tensor(want_q), "q")
    check_nv_scales(sf, want_sb, math.prod(x.shape[:-1]), case["scale_layout"])


@fuzz(nv_cases(), 100)
def test_fuzz_nvfp4_global_scale(case):
    x, _ = nv_input(dict(case, gs_mode=None))
    g = lowbit.nvfp4_global_scale(x, per_row=case["per_row"])
    want = nvfp4_global_scale_oracle(exact64(x), case["per_row"])
    assert g.dtype == F32 and tuple(g.shape) == (tuple(x.shape[:-1]) if case["per_row"] else ())
    assert_bytes(bytes_of(g.reshape(-1)), f32_bytes(want.reshape(-1)), "gs")


@fuzz(nv_cases(two_d=True), 150)
def test_fuzz_scaled_fp4_quant(case):
    x, gs = nv_input(case)
    swizzled = case["scale_layout"] == "swizzled"
    q, sf = lowbit.scaled_fp4_quant(x, gs, is_sf_swizzled_layout=swizzled)
    want_q, want_sb = nvfp4_oracle(exact64(x), gs.double().numpy())
    assert q.dtype == U8 and tuple(q.shape) == (x.shape[0], x.shape[1] // 2)
    assert_bytes(q, u8_tensor(want_q), "q")
    check_nv_scales(sf, want_sb, x.shape[0], case["scale_layout"])


# E4M3 scale bytes: zeros, NaN (both signs), +-448, the smallest subnormal and normal, 1, 256
E4M3_EXTREMES = [0x00, 0x7F, 0xFF, 0x7E, 0xFE, 0x80, 0x01, 0x38, 0x78, 0x08]


@fuzz(st.builds(lambda c, dtype, q_dtype, s_dtype: dict(c, dtype=dtype, q_dtype=q_dtype, s_dtype=s_dtype), nv_cases(),
                st.sampled_from(OUT_DTYPES), st.sampled_from([U8, FP4]), st.sampled_from([U8, E4M3])), 150)
def test_fuzz_dequantize_nvfp4(case):
    rng = np.random.default_rng(case["seed"])
    lead, k = case["lead"], case["k"]
    rows, cols = math.prod(lead), k // 16
    qb = rng.integers(0, 256, size=(*lead, k // 2)).astype(np.uint8)
    sb = byte_mix(rng, (*lead, cols), E4M3_EXTREMES)
    mode = case["gs_mode"] or "random"
    gs_shape = lead if case["gs_shape"] == "rows" else case["gs_shape"]
    gs = gs_values(rng, mode, max(math.prod(gs_shape), 1))[:math.prod(gs_shape)].reshape(gs_shape)
    dtype = case["dtype"]
    if case["scale_layout"] == "swizzled":  # padding bytes hold garbage: they are never read
        tiles = swizzled_bytes(sb.reshape(rows, cols))
        pad = swizzled_bytes(np.ones((rows, cols), dtype=np.uint8)) == 0
        tiles[pad] = rng.integers(0, 256, size=int(pad.sum()))
        s = u8_tensor(tiles)
    else:
        s, sb = strided_bytes(sb, case["layout"])
    q, qb = strided_bytes(qb, case["layout"])
    q, s = q.view(case["q_dtype"]), s.view(case["s_dtype"])
    out = lowbit.dequantize_nvfp4(q, s, torch.from_numpy(gs.astype(np.float32)), scale_layout=case["scale_layout"],
                                  dtype=dtype)
    assert (out.dtype, tuple(out.shape)) == (dtype, (*lead, k))
    want = nvfp4_dequant_oracle(qb, sb, gs)
    assert_bytes(bytes_of(out), rounded_bits(want, dtype), "out")


# --------------------------------------------------------------------------------------------
# unified_attention
# --------------------------------------------------------------------------------------------

ATTN_DTYPES = [(BF16, BF16, None), (F16, F16, None), (E4M3, E4M3, None), (E4M3, E4M3, F16), (BF16, E4M3, None),
               (F16, E4M3, None)]
SENTINEL_BITS = 0x7A5A  # rows no sequence owns keep these bits


@st.composite
def attention_cases(draw):
    kv_heads, group = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2, 3]))
    return dict(lens=draw(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 24)), min_size=1, max_size=3)),
                heads=(kv_heads * group, kv_heads), d=draw(st.sampled_from([4, 8, 16, 32])),
                page=draw(st.sampled_from([1, 2, 4, 16])), causal=draw(st.booleans()),
                window=draw(st.sampled_from([(-1, -1), (-1, -1), (0, 0), (3, 0), (2, 2), (-1, 1), (1, -1)])),
                softcap=draw(st.sampled_from([0.0, 0.0, 1.0, 5.0, 30.0])), alibi=draw(st.booleans()),
                sinks=draw(st.booleans()), per_head_dtype=draw(st.sampled_from([F32, BF16, F16])),
                dtypes=draw(st.sampled_from(ATTN_DTYPES)), per_seq_descale=draw(st.booleans()),
                scale=draw(st.sampled_from([None, 0.05, 1.0])), out_given=draw(st.booleans()),
                spread=draw(st.sampled_from([0.5, 1.0, 3.0])), slack=draw(st.sampled_from([0, 0, 1, 7])),
                seed=draw(SEEDS))


def attention_call(case):
    """(args, kwargs, truth for the oracle, number of rows that belong to a sequence)."""
    g = torch.Generator().manual_seed(case["seed"])
    q_lens, kv_lens = [a for a, _ in case["lens"]], [b for _, b in case["lens"]]
    (heads, kv_heads), d, ps = case["heads"], case["d"], case["page"]
    q_dtype, kv_dtype, out_dtype = case["dtypes"]
    rand = lambda *shape, spread=case["spread"]: torch.randn(*shape, generator=g, dtype=torch.float64) * spread
    covered = sum(q_lens)
    q = torch.cat([rand(covered, heads, d), torch.full((2, heads, d), math.nan)]).to(q_dtype)  # 2 unowned rows
    keys = [rand(n, kv_heads, d).to(kv_dtype) for n in kv_lens]
    vals = [rand(n, kv_heads, d, spread=2.0).to(kv_dtype) for n in kv_lens]
    # pages in a random order among spare blocks; every slot that holds no key is NaN
    pages = [-(-n // ps) for n in kv_lens]
    blocks = sum(pages) + 2
    order = torch.randperm(blocks, generator=g).tolist()
    k_cache = torch.full((blocks, ps, kv_heads, d), math.nan).to(kv_dtype)
    v_cache = k_cache.clone()
    max_q, max_k = max(q_lens) + case["slack"], max(kv_lens) + case["slack"]  # bounds, not necessarily reached
    width = -(-max_k // ps) + 1
    table = torch.full((len(kv_lens), width), order[-1], dtype=I32)
    taken = iter(order)
    for s, n in enumerate(kv_lens):
        for c in range(pages[s]):
            block = next(taken)
            table[s, c] = block
            rows = slice(c * ps, min((c + 1) * ps, n))
            k_cache[block, : rows.stop - rows.start] = keys[s][rows]
            v_cache[block, : rows.stop - rows.start] = vals[s][rows]
    kwargs = dict(cu_seqlens_q=torch.tensor([0, *itertools.accumulate(q_lens)], dtype=I32),
                  seqused_k=torch.tensor(kv_lens, dtype=I32), block_table=table, max_seqlen_q=max_q,
                  max_seqlen_k=max_k, causal=case["causal"], window_size=case["window"],
                  softcap=case["softcap"])
    scale = d**-0.5 if case["scale"] is None else case["scale"]
    if case["scale"] is not None:
        kwargs["softmax_scale"] = case["scale"]
    alibi = sinks = None
    if case["alibi"]:
        alibi = (torch.rand(heads, generator=g) * 0.5).to(case["per_head_dtype"])
        kwargs["alibi_slopes"] = alibi
    if case["sinks"]:
        sinks = (torch.randn(heads, generator=g) * 2).to(case["per_head_dtype"])
        kwargs["sinks"] = sinks
    descales = {}
    for name, fp8 in (("q", q_dtype == E4M3), ("k", kv_dtype == E4M3), ("v", kv_dtype == E4M3)):
        table_ = torch.ones(len(kv_lens), kv_heads, dtype=torch.float64)
        if fp8:
            choices = torch.tensor([0.25, 0.5, 0.75, 1.0, 1.25])
            shape = (len(kv_lens), kv_heads) if case["per_seq_descale"] else (1,)
            t = choices[torch.randint(0, 5, shape, generator=g)]
            kwargs[f"{name}_descale"] = t
            table_ = t.double().expand(len(kv_lens), kv_heads)
        descales[name] = table_
    out_dtype = out_dtype or (BF16 if q_dtype == E4M3 else q_dtype)
    if case["out_given"] or case["dtypes"][2] is not None:
        kwargs["out"] = torch.empty(q.shape, dtype=out_dtype)
        kwargs["out"].view(torch.int16).fill_(SENTINEL_BITS)
    truth = dict(q=q[:covered].double(), keys=[k.double() for k in keys], values=[v.double() for v in vals],
                 q_lens=q_lens, scale=scale, causal=case["causal"], window=case["window"], softcap=case["softcap"],
                 alibi=None if alibi is None else alibi.double(), sinks=None if sinks is None else sinks.double(),
                 dq=descales["q"], dk=descales["k"], dv=descales["v"])
    return (q, k_cache, v_cache), kwargs, truth, covered


@fuzz(attention_cases(), 200)
def test_fuzz_unified_attention(case):
    args, kwargs, truth, covered = attention_call(case)
    given_out = kwargs.get("out")
    out = lowbit.unified_attention(*args, **kwargs)
    q_dtype, kv_dtype, _ = case["dtypes"]
    assert given_out is None or out is given_out
    assert tuple(out.shape) == tuple(args[0].shape)
    assert_attention_close(out[:covered], attention_oracle(**truth), q_dtype, kv_dtype)
    if given_out is not None:  # [ATTN-OUTPUT]: rows outside every sequence are not written
        assert (out[covered:].view(torch.int16) == SENTINEL_BITS).all()


# --------------------------------------------------------------------------------------------
# Tests of the tests: plant one bug in the reference, and the same search must fail
# --------------------------------------------------------------------------------------------

def search_fails(test) -> AssertionError | None:
    """Rerun `test`'s search (same check, cases, budget and seed; no shrinking) and return the
    AssertionError it stops on, or None if every example passes."""
    run = settings(max_examples=test.max_examples, phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False,
                   **FUZZ)(given(case=test.cases)(test.check))
    try:
        run()
    except AssertionError as error:
        return error
    return None


def _ties_away_from_zero(monkeypatch):
    """E2M1 ties at 0.25, 1.25, 2.5 and 5 round up (away from zero) instead of to the even code."""
    monkeypatch.setattr(cpu_mxfp4, "_E2M1_STEPS", tuple((t, False) for t, _ in cpu_mxfp4._E2M1_STEPS))


def _mx_floor_off_by_one(monkeypatch):
    """[MX-FLOOR] uses the exponent field - 127 - 1."""
    exponent_field = cpu_mxfp4.exponent_field
    monkeypatch.setattr(cpu_mxfp4, "exponent_field", lambda a: exponent_field(a) + 1)


def _mx_dequant_nibbles_swapped(monkeypatch):
    """[MX-PACK] read back with the odd element in the low nibble."""
    e2m1_values = cpu_mxfp4.e2m1_values
    monkeypatch.setattr(cpu_mxfp4, "e2m1_values",
                        lambda q, shape: e2m1_values((q.view(torch.uint8) >> 4) | (q.view(torch.uint8) << 4), shape))


def _ue8m0_ceiling_off_by_one_at_powers_of_two(monkeypatch):
    """[FP8-SCALE]: the byte is exponent field + 1 even when the mantissa is zero."""
    monkeypatch.setattr(cpu_fp8_packed, "ceil_exponent_field",
                        lambda y: ((y.view(torch.int32) >> 23) & 0xFF) + 1)


def _mx8_rceil_subnormal_product_rounds_up_past_2_pow_minus_127(monkeypatch):
    """[MX8-RCEIL]: a subnormal d takes exponent field + 1, so d <= 2^-127 gives -126 instead of -127."""
    monkeypatch.setattr(cpu_mxfp8, "rceil_exponent",
                        lambda d: ((d.view(torch.int32) >> 23) & 0xFF) - 127 + ((d.view(torch.int32) & 0x7FFFFF) != 0))


def _mx8_floor_off_by_one(monkeypatch):
    """[MX8-FLOOR] uses the exponent field - 127 - 7."""
    exponent_field = cpu_mxfp8.exponent_field
    monkeypatch.setattr(cpu_mxfp8, "exponent_field", lambda a: exponent_field(a) + 1)


def _mx8_dequant_flushes_2_pow_minus_127(monkeypatch):
    """[MX8-DEQUANT]: scale byte 0 multiplies by 0 instead of the float32 subnormal 2^-127."""
    pow2 = cpu_mxfp8.pow2
    monkeypatch.setattr(cpu_mxfp8, "pow2", lambda n: torch.where(n < -126, 0.0, pow2(n)))


def _fp8_nan_keeps_its_sign(monkeypatch):
    """[FP8-NAN]: a negative NaN becomes 0xFF instead of 0x7F."""
    e4m3_bytes = cpu_fp8_group.e4m3_bytes
    monkeypatch.setattr(cpu_fp8_group, "e4m3_bytes",
                        lambda xf, s: e4m3_bytes(xf, s) | (xf.isnan() & xf.signbit()).to(torch.uint8) << 7)


def _fp8_reciprocal_instead_of_division(monkeypatch):
    """[F8-ELEMENT]: x * fl32(1/s), the peers' formula, instead of the correctly rounded x / s."""
    e4m3_bytes = cpu_fp8_group.e4m3_bytes
    monkeypatch.setattr(cpu_fp8_group, "e4m3_bytes", lambda xf, s: e4m3_bytes(xf * (1 / s), torch.ones_like(s)))


def _nv_usable_excludes_its_lower_edge(monkeypatch):
    """[NV-GLOBAL-GIVEN]: gs = 2^-118 treated as unusable."""
    monkeypatch.setattr(cpu_nvfp4, "usable", lambda gs: (gs > 2.0**-118) & (gs <= 2.0**118))


def _nv_global_amax_keeps_inf(monkeypatch):
    """[NV-GLOBAL]: +-Inf counted in the global amax (NaN still left out)."""
    def global_scale(x, gs, *, per_row):
        a = x.to(torch.float32).reshape(math.prod(x.shape[:-1]), x.shape[-1]).abs().nan_to_num(nan=0.0, posinf=math.inf)
        if a.numel():
            amax = a.amax(-1) if per_row else a.amax()
            gs.copy_((torch.tensor(2688.0) / amax).clamp_max(2.0**118).reshape(gs.shape))
        else:
            gs.fill_(2.0**118)
    monkeypatch.setattr(cpu_nvfp4, "global_scale", global_scale)


def _attention_per_sequence_descale_heads_swapped(monkeypatch):
    """[ATTN-FP8]: query head h takes the descale of KV head h % KV instead of h // group."""
    per_query_head = cpu_attention._per_query_head

    def swapped(descale, s, group, q):
        if descale is None or descale.numel() == 1:
            return per_query_head(descale, s, group, q)
        return descale[s].float().repeat(group)
    monkeypatch.setattr(cpu_attention, "_per_query_head", swapped)


PLANTED = {
    "mxfp4_ties_away_from_zero": (_ties_away_from_zero, test_fuzz_quantize_mxfp4),
    "mxfp4_floor_off_by_one": (_mx_floor_off_by_one, test_fuzz_quantize_mxfp4),
    "group_quant_mxfp4_ties_away_from_zero": (_ties_away_from_zero, test_fuzz_per_token_group_quant_mxfp4),
    "mxfp4_dequant_nibbles_swapped": (_mx_dequant_nibbles_swapped, test_fuzz_dequantize_mxfp4),
    "mxfp8_rceil_subnormal": (_mx8_rceil_subnormal_product_rounds_up_past_2_pow_minus_127, test_fuzz_quantize_mxfp8),
    "mxfp8_floor_off_by_one": (_mx8_floor_off_by_one, test_fuzz_quantize_mxfp8),
    "mxfp8_dequant_flush": (_mx8_dequant_flushes_2_pow_minus_127, test_fuzz_dequantize_mxfp8),
    "fp8_packed_scale_off_by_one": (_ue8m0_ceiling_off_by_one_at_powers_of_two, test_fuzz_quantize_fp8_group_packed),
    "fp8_group_nan_sign": (_fp8_nan_keeps_its_sign, test_fuzz_quantize_fp8_group),
    "fp8_group_reciprocal": (_fp8_reciprocal_instead_of_division, test_fuzz_quantize_fp8_group),
    "fp8_block_nan_sign": (_fp8_nan_keeps_its_sign, test_fuzz_quantize_fp8_block),
    "nvfp4_ties_away_from_zero": (_ties_away_from_zero, test_fuzz_quantize_nvfp4),
    "nvfp4_usable_edge": (_nv_usable_excludes_its_lower_edge, test_fuzz_quantize_nvfp4),
    "nvfp4_dequant_usable_edge": (_nv_usable_excludes_its_lower_edge, test_fuzz_dequantize_nvfp4),
    "nvfp4_global_amax_inf": (_nv_global_amax_keeps_inf, test_fuzz_quantize_nvfp4),
    "attention_descale_heads": (_attention_per_sequence_descale_heads_swapped, test_fuzz_unified_attention),
}


@pytest.mark.parametrize("plant", PLANTED)
def test_fuzz_catches_planted_bug(plant, monkeypatch):
    """Each planted bug makes its property fail; the same search passes on the real reference (the
    property test itself)."""
    break_reference, test = PLANTED[plant]
    break_reference(monkeypatch)
    assert search_fails(test) is not None, f"the fuzz search did not notice the planted bug {plant!r}"
