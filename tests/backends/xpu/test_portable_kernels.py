"""The portable Triton kernels exactly as the XPU backend calls them (its run functions), interpreted on CPU tensors.

Each test takes the `run` of the xpu backend's "triton" record for its op (so the test follows the
records, whatever launcher arguments they pass) and calls it as the torch.library op would, on CPU
tensors under TRITON_INTERPRET=1. The expectation is the CPU reference through the public API
(backend="cpu"): the quantizers byte for byte (outputs are poisoned first, so an unwritten byte
shows), attention within [ATTN-TOLERANCE]. The interpreter's float -> fp8 cast is wrong near
binade edges, so the FP8 test puts values there: the xpu record must use the integer E4M3 path.
"""

import math

import numpy as np
import pytest
import torch
from preambles import interpreted

pytest.importorskip("triton")

from lowbit.backends.xpu import BACKEND as XPU  # noqa: E402
from oracles import ALL16, assert_same_bits, bits, dtype_id, from_bits16, storage_words  # noqa: E402
from test_spec_attention import attention_tolerance  # noqa: E402  [ATTN-TOLERANCE], checked against the spec

import lowbit  # noqa: E402
from lowbit import fp8_group_packed, mxfp4  # noqa: E402

pytestmark = interpreted()

BF16, F16, F32, E4M3, I32 = torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.int32
DTYPES = [F32, F16, BF16]
RULES = ("rceil", "floor")
EPSES = [0.0, 1e-10, 2.0**-20, 0.75]
EPS_IDS = ["0", "1e-10", "2^-20", "0.75"]
SCALE_DTYPES = [F32, torch.float8_e8m0fnu, torch.uint8]
POISON = 0xAA
NAN, INF = float("nan"), float("inf")


def xpu_run(op: str):
    """The run function of the xpu backend's portable ("triton") record for `op`."""
    (kernel,) = [k for k in XPU.kernels_for(op) if k.capability.variant == "triton"]
    assert kernel.capability.devices == ("xpu",) and kernel.unavailable is None
    return kernel.run


def poisoned(*tensors):
    for t in tensors:
        t.view(torch.uint8).fill_(POISON)
    return tensors


# --- quantize_mxfp4 ---------------------------------------------------------------------------------

def check_quantize_mxfp4(x: torch.Tensor, rules=RULES) -> None:
    run = xpu_run("quantize_mxfp4")
    for rule in rules:
        q, s = poisoned(*mxfp4.quantize_outputs(x))
        run(x, q, s, scale_rule=rule, swizzled=False)
        want_q, want_s = lowbit.quantize_mxfp4(x, scale_rule=rule, backend="cpu")
        assert_same_bits(s, want_s, f"scales ({rule})")
        assert_same_bits(q, want_q, f"q ({rule})")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_quantize_mxfp4_matches_the_reference_on_spicy_n_d_inputs(dtype, spicy):
    for shape, run_length in (((2, 3, 512), 32), ((4, 1, 96), 1), ((1024,), 32), ((2, 1, 2, 64), 1)):
        check_quantize_mxfp4(spicy(shape, dtype, seed=sum(shape) + dtype.itemsize, exponent_run=run_length))


def strided_inputs(spicy) -> dict:
    base = spicy((6, 5, 256), F32, exponent_run=32, seed=21)
    return {
        "transposed": spicy((128, 24), BF16, exponent_run=1, seed=22).t(),  # last-dim stride 24
        "last_dim_sliced": base.reshape(30, 256)[:, ::2],  # last-dim stride 2
        "rows_sliced_with_offset": base.reshape(30, 256)[1::3, 64:],  # row stride 768
        "n_d_not_mergeable": base.transpose(0, 1)[:, :, :128],  # (5, 6, 128): the launcher copies
        "broadcast_rows": spicy((1, 96), F16, exponent_run=32, seed=23).expand(5, 96),  # row stride 0
    }


@pytest.mark.parametrize("kind", ["transposed", "last_dim_sliced", "rows_sliced_with_offset", "n_d_not_mergeable",
                                  "broadcast_rows"])
def test_quantize_mxfp4_matches_the_reference_on_strided_inputs(kind, spicy):
    x = strided_inputs(spicy)[kind]
    assert not x.is_contiguous()
    check_quantize_mxfp4(x)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=dtype_id)
def test_quantize_mxfp4_matches_the_reference_on_every_16_bit_pattern(dtype):
    """Blocks of 32 neighbouring patterns: subnormal-only blocks (bfloat16 widens them by a bit
    shift in the kernel), NaN and Inf blocks, and every binade, under both rules."""
    check_quantize_mxfp4(from_bits16(ALL16, dtype).reshape(128, 512))


# --- per_token_group_quant_mxfp4 ----------------------------------------------------------------------

# the scale exponent e of a block by hand: [MX-RCEIL] d = max(amax, 6 * 2^-126) * fl32(1/6), raised
# to fl32(eps) [MX-EPS]; e = ceil(log2 d). All-zero blocks: d = 2^-126, or fl32(eps) above it
# (fl32(1e-10) lies in (2^-34, 2^-33)). amax 3: d = 0.5 (e = -1), or 0.75 with eps 0.75 (e = 0).
ZERO_BLOCK_E = {0.0: -126, 1e-10: -33, 2.0**-20: -20, 0.75: 0}
AMAX_3_BLOCK_E = {0.0: -1, 1e-10: -1, 2.0**-20: -1, 0.75: 0}
# (name, 32 values, scale exponent by eps, or "nan"/"inf", or None: the reference comparison only)
SPECIAL_BLOCKS = [
    ("zero", [0.0] * 32, ZERO_BLOCK_E),
    ("neg_zero", [-0.0] * 32, ZERO_BLOCK_E),
    ("nan", [1.0, NAN] + [-2.0] * 30, "nan"),
    ("inf", [-INF, 1.0] + [4.0] * 30, "inf"),
    ("amax_3", [3.0, -3.0, 1.5, -0.75, 0.25, 0.0] + [0.5] * 26, AMAX_3_BLOCK_E),
    ("tiny", [2.0**-24, -(2.0**-14), 2.0**-20, 1e-7] * 8, None),
    ("near_eps", [2.0**-20 * 6 * (1 + i / 32) for i in range(32)], None),  # amax / 6 just above 2^-20
]


def scale_bits_by_hand(expected, eps: float, scale_dtype: torch.dtype) -> int:
    """The scale of a block as the buffer holds it: float32 bits of 2^e (NaN 0x7FC00000), or the
    E8M0 byte e + 127 (NaN 0xFF)."""
    if expected == "nan":
        return 0x7FC00000 if scale_dtype == F32 else 0xFF
    e = 127 if expected == "inf" else expected[eps]
    return (e + 127) << 23 if scale_dtype == F32 else e + 127


def special_rows(dtype: torch.dtype) -> torch.Tensor:
    """Two rows: every special block, the second row in reverse block order."""
    row = torch.tensor([v for _, values, _ in SPECIAL_BLOCKS for v in values], dtype=torch.float64)
    return torch.stack([row, row.reshape(-1, 32).flip(0).reshape(-1)]).to(dtype)


def group_quant_buffers(x: torch.Tensor, scale_dtype: torch.dtype, q_dtype=torch.uint8):
    *lead, k = x.shape
    return torch.empty((*lead, k // 2), dtype=q_dtype), torch.empty((*lead, k // 32), dtype=scale_dtype)


def check_group_quant(x: torch.Tensor, scale_dtype: torch.dtype, eps: float, q_dtype=torch.uint8):
    """The xpu run's (x_q, x_s) against the reference's, bit for bit; returns the xpu run's."""
    x_q, x_s = poisoned(*group_quant_buffers(x, scale_dtype, q_dtype))
    xpu_run("per_token_group_quant_mxfp4")(x, x_q, x_s, eps=eps, swizzled=False)
    want_q, want_s = group_quant_buffers(x, scale_dtype, q_dtype)
    lowbit.per_token_group_quant_mxfp4(x, want_q, want_s, 32, eps, backend="cpu")
    assert_same_bits(x_s, want_s, f"x_s ({dtype_id(scale_dtype)}, eps {eps})")
    assert_same_bits(x_q, want_q, f"x_q (eps {eps})")
    return x_q, x_s


@pytest.mark.parametrize("eps", EPSES, ids=EPS_IDS)
@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES, ids=dtype_id)
def test_per_token_group_quant_matches_the_reference_and_the_hand_scales_of_special_blocks(scale_dtype, eps):
    for dtype in DTYPES:
        x = special_rows(dtype)
        x_q, x_s = check_group_quant(x, scale_dtype, eps)
        got = bits(x_s)[0].tolist()
        for i, (name, _, expected) in enumerate(SPECIAL_BLOCKS):
            if expected is not None:
                assert got[i] & 0xFFFFFFFF == scale_bits_by_hand(expected, eps, scale_dtype), (name, dtype)
        # [MX-SIGN, MX-NAN]: zero blocks give nibble 0 (0x8 for -0.0), a NaN block 0x7 throughout
        assert (x_q[0, 0:16] == 0x00).all() and (x_q[0, 16:32] == 0x88).all() and (x_q[0, 32:48] == 0x77).all()


@pytest.mark.parametrize("eps", EPSES, ids=EPS_IDS)
@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES, ids=dtype_id)
def test_per_token_group_quant_matches_the_reference_on_spicy_n_d_and_1_d_inputs(scale_dtype, eps, spicy):
    for i, (shape, dtype) in enumerate((((2, 3, 256), BF16), ((5, 96), F16), ((512,), F32))):
        x = spicy(shape, dtype, seed=100 * i + len(str(eps)), exponent_run=1 if i == 1 else 32)
        check_group_quant(x, scale_dtype, eps, q_dtype=torch.float4_e2m1fn_x2 if i == 0 else torch.uint8)


@pytest.mark.parametrize("eps", EPSES, ids=EPS_IDS)
def test_per_token_group_quant_matches_the_reference_on_every_bfloat16_pattern(eps):
    check_group_quant(from_bits16(ALL16, BF16).reshape(128, 512), F32, eps)


# --- quantize_fp8_group_packed -----------------------------------------------------------------------

GROUP = 128


def check_fp8(x: torch.Tensor) -> None:
    q, scales_all_rows, scales = fp8_group_packed.quantize_outputs(x, GROUP)
    poisoned(q, storage_words(scales))
    xpu_run("quantize_fp8_group_packed")(x, q, scales_all_rows, group_size=GROUP, eps=1e-10)
    want_q, want_scales = lowbit.quantize_fp8_group_packed(x, group_size=GROUP, eps=1e-10, backend="cpu")
    assert want_scales.stride() == scales.stride()
    assert_same_bits(storage_words(scales), storage_words(want_scales), "scale storage")
    assert_same_bits(q, want_q, "q")


@pytest.mark.parametrize(("shape", "dtype"), [((37, 640), F32), ((13, 384), BF16), ((2, 13, 512), F16),
                                               ((3, 1, 128), BF16)], ids=str)
def test_fp8_group_packed_matches_the_reference_on_spicy_2_d_and_3_d_inputs(shape, dtype, spicy):
    check_fp8(spicy(shape, dtype, seed=sum(shape) + dtype.itemsize, exponent_run=64))


def test_fp8_group_packed_rounds_values_at_every_e4m3_binade_edge_and_midpoint_exactly():
    """Groups anchored by 448 (scale 1): every E4M3 value, every midpoint between neighbours and
    their float32 neighbours, as they are. Only an exact round-to-nearest-even passes: the
    interpreter's own float8e4nv cast, put in place of the kernel's integer E4M3, gets about 200
    of these bytes wrong."""
    codes = np.arange(127)
    exp, man = codes >> 3, codes & 7
    grid = np.where(exp == 0, man / 8 * 2.0**-6, (1 + man / 8) * 2.0 ** (exp - 7)).astype(np.float32)
    mids = ((grid[1:].astype(np.float64) + grid[:-1]) / 2).astype(np.float32)  # exact in float32
    points = np.concatenate([grid, mids])
    v = np.concatenate([points, np.nextafter(points, np.float32(0)), np.nextafter(points, np.float32(np.inf))])
    v = np.concatenate([v, -v])
    per_group = np.concatenate([v, np.zeros(-len(v) % 127, dtype=np.float32)]).reshape(-1, 127)
    groups = np.concatenate([np.full((len(per_group), 1), 448.0, dtype=np.float32), per_group], axis=1)
    x = torch.from_numpy(np.concatenate([groups, np.zeros((-len(groups) % 4, GROUP), np.float32)]).reshape(-1, 512))
    check_fp8(x)
    check_fp8(x.to(BF16))  # bfloat16 holds some of them exactly, and rounds others onto new edges


# --- unified_attention --------------------------------------------------------------------------------

SENTINEL = -7.25  # exact in bfloat16 and float16: rows past cu_seqlens_q[-1] must keep it


def paged_batch(lens, heads, head_size, page, q_dtype, kv_dtype, seed, q_spread=1.0, v_spread=2.0):
    """q (tokens + 2 rows of NaN) and paged caches through a shuffled block table; every slot past a
    sequence's keys, a spare block and table entries past a sequence's last page hold NaN, so a key
    the kernel must not read poisons the output."""
    g = torch.Generator().manual_seed(seed)
    num_heads, kv_heads = heads
    q_lens, kv_lens = [a for a, _ in lens], [b for _, b in lens]
    q = torch.randn((sum(q_lens) + 2, num_heads, head_size), generator=g) * q_spread
    q[sum(q_lens):] = NAN
    pages = [-(-n // page) for n in kv_lens]
    order = torch.randperm(sum(pages) + 1, generator=g).tolist()
    k_cache = torch.full((len(order), page, kv_heads, head_size), NAN)
    v_cache = k_cache.clone()
    table = torch.full((len(lens), max(pages) + 1), order[-1], dtype=I32)
    for s, n in enumerate(kv_lens):
        for c in range(pages[s]):
            block = table[s, c] = order.pop(0)
            used = min(page, n - c * page)
            k_cache[block, :used] = torch.randn((used, kv_heads, head_size), generator=g)
            v_cache[block, :used] = torch.randn((used, kv_heads, head_size), generator=g) * v_spread
    index = dict(cu_seqlens_q=torch.tensor([0, *np.cumsum(q_lens).tolist()], dtype=I32),
                 seqused_k=torch.tensor(kv_lens, dtype=I32), block_table=table, max_seqlen_q=max(q_lens),
                 max_seqlen_k=max(kv_lens))
    return q.to(q_dtype), k_cache.to(kv_dtype), v_cache.to(kv_dtype), index


ATTENTION_CASES = {
    # name: (lens, (heads, kv heads), head size, page, (q, cache, out) dtypes, options)
    "bf16-mixed-causal": ([(1, 50), (5, 18), (0, 7), (17, 33)], (8, 2), 64, 16, (BF16, BF16, BF16), {}),
    # the plan splits these keys in two (the reduction kernel runs); scores of a few units and values
    # of tens, so a wrong scale or descale shows past the FP8 tolerance
    "fp8kv-decode-split-sinks-window": ([(1, 300), (1, 140), (1, 37)], (4, 2), 80, 32, (BF16, E4M3, BF16),
                                        dict(window=(200, -1), sinks=True, k_descale=0.5, v_descale=0.25,
                                             spread=(4.0, 20.0))),
    "fp16-full-alibi-softcap": ([(3, 40), (4, 9)], (5, 1), 32, 16, (F16, F16, F16),
                                dict(causal=False, window=(6, 3), alibi=True, softcap=5.0)),
}


@pytest.mark.parametrize("name", list(ATTENTION_CASES))
def test_unified_attention_is_within_the_spec_tolerance_of_the_reference(name):
    lens, heads, head_size, page, (q_dtype, kv_dtype, out_dtype), extra = ATTENTION_CASES[name]
    q, k_cache, v_cache, index = paged_batch(lens, heads, head_size, page, q_dtype, kv_dtype, seed=len(name),
                                             q_spread=extra.get("spread", (1.0, 2.0))[0],
                                             v_spread=extra.get("spread", (1.0, 2.0))[1])
    num_heads = heads[0]
    opts = dict(softmax_scale=head_size**-0.5, causal=extra.get("causal", True), window=extra.get("window", (-1, -1)),
                softcap=extra.get("softcap", 0.0), alibi_slopes=None, sinks=None, q_descale=None, k_descale=None,
                v_descale=None)
    if extra.get("alibi"):
        opts["alibi_slopes"] = torch.tensor([2.0 ** (-4.0 * (h + 1) / num_heads) for h in range(num_heads)])
    if extra.get("sinks"):
        opts["sinks"] = torch.randn(num_heads, generator=torch.Generator().manual_seed(9)) * 2
    for which in ("k_descale", "v_descale"):
        if which in extra:
            opts[which] = torch.tensor([extra[which]])

    got = torch.full(q.shape, SENTINEL, dtype=out_dtype)
    xpu_run("unified_attention")(q, k_cache, v_cache, got, **index, **opts)
    want = torch.full(q.shape, SENTINEL, dtype=out_dtype)
    reference_opts = {("window_size" if key == "window" else key): value for key, value in opts.items()}
    lowbit.unified_attention(q, k_cache, v_cache, out=want, backend="cpu", **index, **reference_opts)

    rows = int(index["cu_seqlens_q"][-1])
    assert torch.all(got[rows:] == SENTINEL), "the xpu run wrote rows past cu_seqlens_q[-1]"
    assert not torch.isnan(got[:rows]).any(), "NaN in the output: the kernel read a slot that holds no key"
    atol, rtol = attention_tolerance(q_dtype, kv_dtype)
    g, w = got[:rows].double(), want[:rows].double()
    bad = ~((g - w).abs() <= atol + rtol * w.abs())
    assert not bad.any(), (f"{int(bad.sum())} of {bad.numel()} elements outside atol {atol}, rtol {rtol}; "
                           f"max |diff| {float((g - w).abs().max()):.3g}")
    assert math.isfinite(float(w.abs().max())) and float(w.abs().max()) > 0.1  # the comparison is not vacuous
