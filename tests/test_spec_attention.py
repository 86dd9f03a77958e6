"""The attention clauses of docs/SPEC.md ([ATTN-*]) on lowbit.unified_attention (the CPU reference).

Every expectation is derived by hand from the clause it tests: tiny cases whose scores are chosen
so the weights have a closed form (one key: weight 1; equal scores: 1/n; two keys with a score gap
g: sigmoid(g)), value vectors that are one-hot rows (v_j = e_j), so each output row *is* the
weight vector and shows which keys were seen, and a sink that takes a known share. The caches
are built here from the per-sequence keys: pages in reverse order of allocation, NaN in every
slot that holds no key. Nothing here computes attention the way the code under test does.

This file also holds the [ATTN-TOLERANCE] constants and the comparison helper for kernels.
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import registry
from lowbit.backend import Backend, Kernel
from lowbit.capability import Capability

BF16, F16, F32, E4M3, I32 = torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.int32
NAN = float("nan")
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# [ATTN-TOLERANCE]: the kernel-vs-reference comparison, with the constants the clause states
# --------------------------------------------------------------------------------------------

ATTN_TOLERANCE_16BIT = (1.5e-2, 1e-2)  # (atol, rtol): bfloat16/float16 q and cache
ATTN_TOLERANCE_FP8 = (0.15, 0.15)  # q or the cache is float8_e4m3fn


def attention_tolerance(q_dtype: torch.dtype, kv_dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) of [ATTN-TOLERANCE] for a call with these q and cache dtypes."""
    return ATTN_TOLERANCE_FP8 if E4M3 in (q_dtype, kv_dtype) else ATTN_TOLERANCE_16BIT


def assert_attention_close(got: torch.Tensor, want: torch.Tensor, q_dtype: torch.dtype, kv_dtype: torch.dtype):
    """|got − want| ≤ atol + rtol·|want| elementwise (want: the reference's output)."""
    atol, rtol = attention_tolerance(q_dtype, kv_dtype)
    g, w = got.double().cpu(), want.double().cpu()
    bad = ~((g - w).abs() <= atol + rtol * w.abs())
    assert not bad.any(), f"{int(bad.sum())} elements outside atol {atol}, rtol {rtol}; first at {bad.nonzero()[0].tolist()}"


def test_attn_tolerance_constants_are_the_spec_text():
    text = (ROOT / "docs" / "SPEC.md").read_text()
    clause = re.search(r"\*\*\[ATTN-TOLERANCE\]\*\*(.*?)(?=\n- \*\*\[|\n## )", text, re.S).group(1)
    clause = " ".join(clause.split())
    m = re.search(r"atol ([0-9.e-]+), rtol ([0-9.e-]+) for bfloat16/float16 inputs; "
                  r"atol ([0-9.e-]+), rtol ([0-9.e-]+) when q or the cache is FP8", clause)
    assert m, clause
    assert ATTN_TOLERANCE_16BIT == (float(m.group(1)), float(m.group(2)))
    assert ATTN_TOLERANCE_FP8 == (float(m.group(3)), float(m.group(4)))
    assert "|got − want| ≤ atol + rtol · |want|" in clause


@pytest.mark.parametrize(("q_dtype", "kv_dtype", "atol", "rtol"), [
    (BF16, BF16, 1.5e-2, 1e-2), (F16, F16, 1.5e-2, 1e-2),
    (E4M3, E4M3, 0.15, 0.15), (BF16, E4M3, 0.15, 0.15), (F16, E4M3, 0.15, 0.15),
])
def test_attn_tolerance_helper_accepts_the_bound_and_refuses_past_it(q_dtype, kv_dtype, atol, rtol):
    assert attention_tolerance(q_dtype, kv_dtype) == (atol, rtol)
    want = torch.tensor([0.0, 2.0, -4.0], dtype=torch.float64)
    edge = want + torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64) * (atol + rtol * want.abs()) * 0.999
    assert_attention_close(edge, want, q_dtype, kv_dtype)
    for i in range(3):
        past = edge.clone()
        past[i] = want[i] + (1 if i != 1 else -1) * (atol + rtol * want[i].abs()) * 1.01
        with pytest.raises(AssertionError):
            assert_attention_close(past, want, q_dtype, kv_dtype)
    with pytest.raises(AssertionError):
        assert_attention_close(torch.tensor([NAN]), torch.tensor([0.0]), q_dtype, kv_dtype)


# --------------------------------------------------------------------------------------------
# Building calls by hand
# --------------------------------------------------------------------------------------------

def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softmax(scores, sink=None) -> list[float]:
    """The weights of [ATTN-SINK] (a plain softmax without a sink), straight from the formula."""
    cols = list(scores) + ([] if sink is None else [sink])
    m = max(cols)
    e = [math.exp(s - m) for s in cols]
    return [x / sum(e) for x in e[: len(scores)]]


def onehot(d: int, i: int, value: float = 1.0) -> list[float]:
    row = [0.0] * d
    row[i] = value
    return row


def heads(rows, n: int) -> torch.Tensor:
    """(len(rows), n, d): every head holds the same row."""
    return torch.tensor(rows, dtype=torch.float64)[:, None, :].expand(-1, n, -1).clone()


def attend(q, keys, values, *, q_lens=None, page_size=2, dtype=BF16, kv_dtype=None, past_entry=None,
           max_seqlen_q=None, max_seqlen_k=None, table_width=None, softmax_scale=1.0, **kwargs):
    """lowbit.unified_attention on hand-made tensors.

    q: (num_tokens, heads, d) values; keys, values: one (kv_len, kv_heads, d) tensor per sequence,
    the contiguous truth. q_lens: query rows per sequence (default: all rows, one sequence).
    Pages are laid out in reverse order of allocation (block 0 is a spare); every cache slot that
    holds no key is NaN, and table entries past a sequence's last page are `past_entry` (default:
    the NaN spare block)."""
    q = torch.as_tensor(q, dtype=torch.float64)
    keys = [torch.as_tensor(k, dtype=torch.float64) for k in keys]
    values = [torch.as_tensor(v, dtype=torch.float64) for v in values]
    q_lens = [q.shape[0]] if q_lens is None else list(q_lens)
    kv_lens = [k.shape[0] for k in keys]
    kv_heads, d = keys[0].shape[1], keys[0].shape[2]
    kv_dtype = dtype if kv_dtype is None else kv_dtype
    pages = [-(-n // page_size) for n in kv_lens]
    blocks = sum(pages) + 1
    k_cache = torch.full((blocks, page_size, kv_heads, d), NAN, dtype=torch.float64)
    v_cache = k_cache.clone()
    max_seqlen_k = max(kv_lens, default=0) if max_seqlen_k is None else max_seqlen_k
    width = max(-(-max_seqlen_k // page_size), 1) if table_width is None else table_width
    table = torch.full((len(kv_lens), width), 0 if past_entry is None else past_entry, dtype=I32)
    logical = 0
    for s, (k, v) in enumerate(zip(keys, values)):
        for c in range(pages[s]):
            block = blocks - 1 - logical  # first allocated page at the end of the cache
            logical += 1
            if c < width:  # a too-narrow table (a refusal test) keeps its first pages
                table[s, c] = block
            rows = slice(c * page_size, min((c + 1) * page_size, kv_lens[s]))
            k_cache[block, : rows.stop - rows.start] = k[rows]
            v_cache[block, : rows.stop - rows.start] = v[rows]
    cu = torch.tensor([0, *torch.tensor(q_lens, dtype=torch.int64).cumsum(0).tolist()], dtype=I32)
    out = lowbit.unified_attention(
        q.to(dtype), k_cache.to(kv_dtype), v_cache.to(kv_dtype), cu_seqlens_q=cu,
        seqused_k=torch.tensor(kv_lens, dtype=I32), block_table=table,
        max_seqlen_q=max(q_lens, default=0) if max_seqlen_q is None else max_seqlen_q, max_seqlen_k=max_seqlen_k,
        softmax_scale=softmax_scale, **kwargs)
    return out


def close(got: torch.Tensor, want, *, rtol=2.0**-8, atol=1e-6):
    """got (a bfloat16/float16 output) equals the hand-derived `want` up to its rounding (1/2 ulp
    of bfloat16 is at most 2^-9 relative) and the reference's float32 arithmetic."""
    want = torch.as_tensor(want, dtype=torch.float64)
    torch.testing.assert_close(got.double(), want.expand_as(got), rtol=rtol, atol=atol)


def one_hot_values(kv_len: int, kv_heads: int, d: int) -> torch.Tensor:
    """v_j = e_j: an output row is the weight vector of its keys."""
    return torch.eye(kv_len, d, dtype=torch.float64)[:, None, :].expand(-1, kv_heads, -1).clone()


def zeros(n: int, kv_heads: int, d: int) -> torch.Tensor:
    return torch.zeros(n, kv_heads, d, dtype=torch.float64)


def weights_row(d: int, visible) -> list[float]:
    """A uniform weight vector over the `visible` key indices, padded with zeros to d."""
    row = [0.0] * d
    for j in visible:
        row[j] = 1.0 / len(visible)
    return row


# --------------------------------------------------------------------------------------------
# [ATTN-INPUT]
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (6, 3), (6, 2), (8, 2), (5, 1)])
def test_attn_input_query_head_reads_kv_head_of_its_group(num_heads, num_kv_heads):
    """One key per KV head, distinct values: query head h outputs KV head h // (H / KV)'s value."""
    d = 4
    v = torch.tensor([[[g + 1.0, -(g + 1.0), 2.0 * g, 0.5]] for g in range(num_kv_heads)],
                     dtype=torch.float64).permute(1, 0, 2)  # (1 key, kv_heads, d)
    k = torch.ones(1, num_kv_heads, d, dtype=torch.float64)
    out = attend(heads([[1.0, 0, 0, 0]] * 2, num_heads), [k], [v], causal=False)
    group = num_heads // num_kv_heads
    want = torch.stack([v[0, h // group] for h in range(num_heads)])
    assert torch.equal(out.double(), want.expand(2, -1, -1))


def test_attn_input_each_sequence_owns_its_rows_and_keys():
    """q_lens (2, 0, 3) with one key each, distinct values; the last token row belongs to no
    sequence. A sequence's rows output its own key's value."""
    d = 4
    vals = [[1.0, 2.0, 3.0, 4.0], [8.0, 8.0, 8.0, 8.0], [-1.0, 0.5, 0.25, 6.0]]
    keys = [torch.ones(1, 1, d, dtype=torch.float64)] * 3
    values = [torch.tensor([[row]], dtype=torch.float64) for row in vals]
    out = torch.full((6, 2, d), 5.0, dtype=BF16)
    attend(heads([[1.0, 0, 0, 0]] * 6, 2), keys, values, q_lens=(2, 0, 3), causal=False, out=out)
    want = torch.tensor([vals[0]] * 2 + [vals[2]] * 3 + [[5.0] * 4], dtype=torch.float64)
    assert torch.equal(out.double(), want[:, None, :].expand(-1, 2, -1))


@pytest.mark.parametrize(("q_dtype", "kv_dtype"), [(BF16, BF16), (F16, F16), (E4M3, E4M3), (BF16, E4M3),
                                                   (F16, E4M3)])
def test_attn_input_accepted_dtype_pairs(q_dtype, kv_dtype):
    d = 4
    descales = {}
    if q_dtype == E4M3:
        descales["q_descale"] = torch.ones(1)
    if kv_dtype == E4M3:
        descales.update(k_descale=torch.ones(1), v_descale=torch.ones(1))
    v = [[[1.5, -2.0, 0.25, 3.0]]]
    out = attend([[[1.0, 0, 0, 0]]], [torch.ones(1, 1, d)], [v], dtype=q_dtype, kv_dtype=kv_dtype, **descales)
    assert out.dtype == (BF16 if q_dtype == E4M3 else q_dtype)
    assert torch.equal(out.double(), torch.tensor(v, dtype=torch.float64))


@pytest.mark.parametrize(("q_dtype", "kv_dtype", "descales", "needs"), [
    (BF16, F16, {}, "a bfloat16 query takes a KV cache of bfloat16, float8_e4m3fn, not float16"),
    (F16, BF16, {}, "a float16 query takes a KV cache of float16, float8_e4m3fn, not bfloat16"),
    (E4M3, BF16, {"q_descale": torch.ones(1)}, "a float8_e4m3fn query takes a KV cache of float8_e4m3fn, not bfloat16"),
])
def test_attn_input_other_dtype_pairs_are_unsupported(q_dtype, kv_dtype, descales, needs):
    with pytest.raises(lowbit.UnsupportedError) as info:
        attend([[[1.0, 0, 0, 0]]], [torch.ones(1, 1, 4)], [torch.ones(1, 1, 4)], dtype=q_dtype, kv_dtype=kv_dtype,
               **descales)
    assert needs in str(info.value)


def test_attn_input_index_tensors_are_int32():
    q, cache = torch.zeros(1, 1, 4, dtype=BF16), torch.zeros(1, 2, 1, 4, dtype=BF16)
    good = dict(cu_seqlens_q=torch.tensor([0, 1], dtype=I32), seqused_k=torch.tensor([1], dtype=I32),
                block_table=torch.zeros(1, 1, dtype=I32))
    lowbit.unified_attention(q, cache, cache, max_seqlen_q=1, max_seqlen_k=1, **good)
    for name in good:
        bad = dict(good, **{name: good[name].long()})
        with pytest.raises(ValueError, match=f"{name} must be a .*int32 tensor"):
            lowbit.unified_attention(q, cache, cache, max_seqlen_q=1, max_seqlen_k=1, **bad)


def test_attn_input_head_count_not_a_multiple_is_unsupported():
    with pytest.raises(lowbit.UnsupportedError, match="q has 6 heads, not a multiple of k_cache's 4 KV heads"):
        attend(heads([[1.0, 0, 0, 0]], 6), [torch.ones(1, 4, 4)], [torch.ones(1, 4, 4)])


# --------------------------------------------------------------------------------------------
# [ATTN-PAGES]
# --------------------------------------------------------------------------------------------

def _key_detector(kv_lens, d=8, big=30.0):
    """Query row i of sequence s asks for key i alone (q_i = big·e_i, k_j = e_j: score big against 0,
    so the other keys' weight is below e^-big·kv_len ≈ 1e-12); v_j = (100·s + j + 1) in every
    component. Row i outputs key i's value: any misread page shows as another number."""
    q, keys, values = [], [], []
    for s, n in enumerate(kv_lens):
        q += [onehot(d, i, big) for i in range(n)]
        keys.append(torch.eye(n, d, dtype=torch.float64)[:, None, :])
        values.append(torch.tensor([[[100.0 * s + j + 1] * d] for j in range(n)], dtype=torch.float64))
    want = torch.tensor([[100.0 * s + i + 1] * d for s, n in enumerate(kv_lens) for i in range(n)],
                        dtype=torch.float64)[:, None, :]
    return heads(q, 1), keys, values, want


@pytest.mark.parametrize("page_size", [1, 2, 3, 8])
def test_attn_pages_key_j_is_read_through_the_block_table(page_size):
    q, keys, values, want = _key_detector((7, 5, 8))
    out = attend(q, keys, values, q_lens=(7, 5, 8), page_size=page_size, causal=False)
    assert torch.equal(out.double(), want)


@pytest.mark.parametrize("past_entry", [-1, 2**31 - 1, 10_000])
def test_attn_pages_entries_past_the_last_page_are_never_read(past_entry, monkeypatch):
    """Table entries past each sequence's last page point nowhere; with LOWBIT_DEBUG=1 too (the
    debug check looks at used pages only)."""
    q, keys, values, want = _key_detector((3, 6, 1))
    for debug in ("0", "1"):
        monkeypatch.setenv("LOWBIT_DEBUG", debug)
        out = attend(q, keys, values, q_lens=(3, 6, 1), page_size=2, causal=False, past_entry=past_entry,
                     table_width=5)
        assert torch.equal(out.double(), want)


def test_attn_pages_block_table_needs_ceil_max_seqlen_k_over_block_size_columns():
    k = torch.ones(9, 1, 4, dtype=torch.float64)
    args = ([[[1.0, 0, 0, 0]]], [k], [k])
    with pytest.raises(lowbit.UnsupportedError, match=r"block_table has 2 pages per sequence of 4 tokens = 8 tokens, "
                                                      r"fewer than max_seqlen_k=9"):
        attend(*args, page_size=4, table_width=2)
    close(attend(*args, page_size=4, table_width=3), 1.0)  # ceil(9 / 4) = 3 columns suffice
    k8 = torch.ones(8, 1, 4, dtype=torch.float64)
    close(attend([[[1.0, 0, 0, 0]]], [k8], [k8], page_size=4, table_width=2), 1.0)  # ceil(8 / 4) = 2


def test_attn_pages_slots_past_kv_len_in_the_last_page_are_not_keys():
    """kv_len 3 in pages of 4: slot 3 of the last page holds a key that would win every score
    and a huge value; it is not key 3, so the row averages keys 0..2 (scores all 0)."""
    d = 4
    q = [[[1.0, 0, 0, 0]]]
    k = zeros(3, 1, d)
    v = torch.tensor([[[3.0, 0, 0, 0]], [[6.0, 0, 0, 0]], [[9.0, 0, 0, 0]]], dtype=torch.float64)
    block_k = torch.tensor([[[0.0] * d]] * 3 + [[[100.0, 0, 0, 0]]], dtype=BF16)[None]
    block_v = torch.tensor([[[0.0] * d]] * 3 + [[[1000.0] * d]], dtype=BF16)[None]
    block_k[0, :3], block_v[0, :3] = k.to(BF16), v.to(BF16)
    out = lowbit.unified_attention(torch.tensor(q, dtype=BF16), block_k, block_v,
                                   cu_seqlens_q=torch.tensor([0, 1], dtype=I32), seqused_k=torch.tensor([3], dtype=I32),
                                   block_table=torch.zeros(1, 1, dtype=I32), max_seqlen_q=1, max_seqlen_k=3,
                                   softmax_scale=1.0)
    close(out, [[[6.0, 0, 0, 0]]])  # (3 + 6 + 9) / 3


# --------------------------------------------------------------------------------------------
# [ATTN-POSITION]
# --------------------------------------------------------------------------------------------

def test_attn_position_bottom_right_alignment():
    """Causal, q_len 2, kv_len 4: row 0 sits at p = 0 + 4 − 2 = 2 (keys 0..2), row 1 at p = 3
    (keys 0..3). All scores 0, so the weights are uniform over what each row sees."""
    d = 4
    out = attend(heads([[0.0] * d] * 2, 1), [zeros(4, 1, d)], [one_hot_values(4, 1, d)], causal=True)
    close(out, [[[1 / 3, 1 / 3, 1 / 3, 0.0]], [[0.25, 0.25, 0.25, 0.25]]])
    assert out[0, 0, 3] == 0  # the masked key has weight exactly 0


def test_attn_position_q_len_equal_to_kv_len_is_plain_causal():
    d = 4
    out = attend(heads([[0.0] * d] * 3, 2), [zeros(3, 1, d)], [one_hot_values(3, 1, d)], causal=True)
    close(out, heads([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0]], 2))


def test_attn_position_rows_before_the_first_key_see_nothing():
    """q_len 3, kv_len 1: rows at p = −2, −1, 0. Causal: only the last row sees key 0."""
    d = 4
    v = torch.tensor([[[2.0, -4.0, 0.5, 1.0]]], dtype=torch.float64)
    out = torch.full((3, 1, d), 9.0, dtype=BF16)
    attend(heads([[1.0, 0, 0, 0]] * 3, 1), [torch.ones(1, 1, d)], [v], causal=True, out=out)
    assert torch.equal(out.double(), torch.tensor([[[0.0] * d], [[0.0] * d], [[2.0, -4.0, 0.5, 1.0]]]).double())


def test_attn_position_is_per_sequence():
    """Two sequences in one batch: (q_len 1, kv_len 3) → p = 2; (q_len 2, kv_len 2) → p = 0, 1."""
    d = 4
    out = attend(heads([[0.0] * d] * 3, 1), [zeros(3, 1, d), zeros(2, 1, d)],
                 [one_hot_values(3, 1, d), one_hot_values(2, 1, d)], q_lens=(1, 2), causal=True)
    close(out, [[[1 / 3, 1 / 3, 1 / 3, 0]], [[1.0, 0, 0, 0]], [[0.5, 0.5, 0, 0]]])


# --------------------------------------------------------------------------------------------
# [ATTN-SCORE]
# --------------------------------------------------------------------------------------------

def _two_keys(d, q0, k0=1.0):
    """q = q0·e_0; key 0 = k0·e_0 and key 1 = 0 (scores c·q0·k0 and 0); v_j = e_j."""
    return ([[onehot(d, 0, q0)]], [torch.tensor([[onehot(d, 0, k0)], [[0.0] * d]], dtype=torch.float64)],
            [one_hot_values(2, 1, d)])


@pytest.mark.parametrize("d", [4, 16, 64])
def test_attn_score_default_scale_is_head_size_to_the_minus_half(d):
    """q·k_0 = sqrt(d), q·k_1 = 0; with c = d^-0.5 the gap is 1: w_0 = sigmoid(1) (without the
    scale it would be sigmoid(sqrt(d)))."""
    q, k, v = _two_keys(d, math.sqrt(d))
    w0 = sigmoid(1.0)
    close(attend(q, k, v, softmax_scale=None), [[[w0, 1 - w0] + [0.0] * (d - 2)]])


@pytest.mark.parametrize(("scale", "q0"), [(0.25, 4.0), (2.0, 0.5), (1.0, 1.0), (0.125, 8.0)])
def test_attn_score_softmax_scale_replaces_the_default(scale, q0):
    q, k, v = _two_keys(4, q0)
    w0 = sigmoid(1.0)  # c · q0 = 1 each time
    close(attend(q, k, v, softmax_scale=scale), [[[w0, 1 - w0, 0.0, 0.0]]])


def test_attn_score_sums_over_the_head_in_float32():
    """q = 1 in 64 components, k_0 = (1, 2^-8 × 63): q·k_0 = 1 + 63/256 = 1.24609375 in float32;
    summed in bfloat16 it would stay 1 (1 + 2^-8 rounds back to 1). k_1 = 0."""
    d = 64
    k0 = [1.0] + [2.0**-8] * 63
    out = attend([[[1.0] * d]], [torch.tensor([[k0], [[0.0] * d]], dtype=torch.float64)],
                 [one_hot_values(2, 1, d)])
    w0 = sigmoid(1.24609375)
    close(out[..., :2], [[[w0, 1 - w0]]])
    assert abs(out[0, 0, 0].item() - sigmoid(1.0)) > 0.03


# --------------------------------------------------------------------------------------------
# [ATTN-SOFTCAP]
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("softcap", "w0"), [
    (0.0, sigmoid(1.0)),  # off: score gap 1
    (2.0, sigmoid(2.0 * math.tanh(0.5))),
    (0.5, sigmoid(0.5 * math.tanh(2.0))),
    (100.0, sigmoid(100.0 * math.tanh(0.01))),
])
def test_attn_softcap_is_softcap_times_tanh_of_the_scaled_score(softcap, w0):
    """Scores c·(q·k) = 0.5 · 2 = 1 and 0; the cap applies to the scaled score (tanh(0) = 0)."""
    q, k, v = _two_keys(4, 2.0)
    close(attend(q, k, v, softmax_scale=0.5, softcap=softcap), [[[w0, 1 - w0, 0.0, 0.0]]])


def test_attn_softcap_bounds_large_scores():
    """Scores 1000 and −1000 with softcap 1 become tanh(±1000) = ±1: w_0 = sigmoid(2)."""
    d = 4
    k = torch.tensor([[onehot(d, 0)], [onehot(d, 0, -1.0)]], dtype=torch.float64)
    out = attend([[onehot(d, 0, 1000.0)]], [k], [one_hot_values(2, 1, d)], softcap=1.0)
    close(out, [[[sigmoid(2.0), 1 - sigmoid(2.0), 0.0, 0.0]]])


# --------------------------------------------------------------------------------------------
# [ATTN-ALIBI]
# --------------------------------------------------------------------------------------------

def test_attn_alibi_subtracts_slope_times_distance():
    """Non-causal, q_len 2, kv_len 4 (rows at p = 2, 3), all raw scores 0. Head 0 slope 0.5:
    scores −0.5·|p − j|; head 1 slope 0: uniform; head 2 slope 1."""
    d = 4
    slopes = torch.tensor([0.5, 0.0, 1.0])
    out = attend(heads([[0.0] * d] * 2, 3), [zeros(4, 1, d)], [one_hot_values(4, 1, d)], causal=False,
                 alibi_slopes=slopes)
    want = []
    for p in (2, 3):
        dist = [abs(p - j) for j in range(4)]
        want.append([softmax([-0.5 * x for x in dist]), [0.25] * 4, softmax([-1.0 * x for x in dist])])
    close(out, want)


def test_attn_alibi_is_applied_after_softcap():
    """softcap 1, slope 1, q_len 1, kv_len 2 (p = 1): key 0 raw score 10 at distance 1, key 1 raw
    0 at distance 0. After the cap: tanh(10) − 1 ≈ 0 against 0, w ≈ 1/2. (Before the cap it
    would be tanh(9) ≈ 1 against 0: w_0 = sigmoid(1) = 0.73.)"""
    q, k, v = _two_keys(4, 10.0)
    out = attend(q, k, v, softcap=1.0, alibi_slopes=torch.tensor([1.0]))
    w0 = sigmoid(math.tanh(10.0) - 1.0)
    close(out, [[[w0, 1 - w0, 0.0, 0.0]]])


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_attn_alibi_slopes_in_any_float_dtype(dtype):
    d = 4
    out = attend(heads([[0.0] * d], 1), [zeros(2, 1, d)], [one_hot_values(2, 1, d)],
                 alibi_slopes=torch.tensor([2.0], dtype=dtype))
    close(out, [[softmax([-2.0, 0.0]) + [0.0, 0.0]]])


# --------------------------------------------------------------------------------------------
# [ATTN-MASK]
# --------------------------------------------------------------------------------------------

A = list(range(8))


@pytest.mark.parametrize(("causal", "window", "visible"), [
    # rows at p = 5, 6, 7 (q_len 3, kv_len 8): the keys each row sees, written out by hand
    (False, (-1, -1), [A, A, A]),
    (True, (-1, -1), [A[:6], A[:7], A]),
    (False, (2, 1), [[3, 4, 5, 6], [4, 5, 6, 7], [5, 6, 7]]),
    (True, (2, 1), [[3, 4, 5], [4, 5, 6], [5, 6, 7]]),
    (True, (0, -1), [[5], [6], [7]]),
    (False, (0, 0), [[5], [6], [7]]),
    (False, (-1, 0), [A[:6], A[:7], A]),
    (False, (1, -1), [[4, 5, 6, 7], [5, 6, 7], [6, 7]]),
    (False, (-1, 1), [A[:7], A, A]),
    (True, (3, 4), [[2, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7]]),
])
def test_attn_mask_window_and_causal_visibility(causal, window, visible):
    d = 8
    out = attend(heads([[0.0] * d] * 3, 2), [zeros(8, 1, d)], [one_hot_values(8, 1, d)], causal=causal,
                 window_size=window)
    close(out, heads([weights_row(d, vis) for vis in visible], 2))
    for i, vis in enumerate(visible):
        hidden = [j for j in range(8) if j not in vis]
        assert (out[i, :, hidden] == 0).all(), f"row {i}: a masked key has weight"


def test_attn_mask_a_masked_key_gets_no_weight_however_high_its_score():
    """Causal: key 3 (past the row at p = 2) has score 50 against 0; it stays invisible."""
    d = 4
    k = torch.tensor([[[0.0] * d]] * 3 + [[onehot(d, 0)]], dtype=torch.float64)
    out = attend([[onehot(d, 0, 50.0)], [onehot(d, 0, 50.0)]], [k], [one_hot_values(4, 1, d)], causal=True)
    close(out[0], [[1 / 3, 1 / 3, 1 / 3, 0.0]])
    assert out[0, 0, 3] == 0
    assert out[1, 0, 3] > 0.99  # row 1 (p = 3) sees key 3


# --------------------------------------------------------------------------------------------
# [ATTN-SINK]
# --------------------------------------------------------------------------------------------

def test_attn_sink_takes_weight_from_keys():
    """One key (score 0), value v. Sink 0: weight e^0 / (e^0 + e^0) = 1/2; sink ln 3: 1/4; sink
    −100: ≈ 1 (e^-100 is below float32's resolution of 1)."""
    d = 4
    v = [[[2.0, 4.0, -6.0, 8.0]]]
    sinks = torch.tensor([0.0, math.log(3.0), -100.0])
    out = attend(heads([[1.0, 0, 0, 0]], 3), [zeros(1, 1, d)], [v], sinks=sinks)
    assert torch.equal(out[0, 0].double(), torch.tensor([1.0, 2.0, -3.0, 4.0], dtype=torch.float64))
    close(out[0, 1], [0.5, 1.0, -1.5, 2.0])
    assert torch.equal(out[0, 2].double(), torch.tensor(v[0][0], dtype=torch.float64))


def test_attn_sink_counts_once_in_the_denominator():
    """Two keys with score 0 and sink 0: each key 1/3; the sink has no value vector."""
    d = 4
    out = attend(heads([[0.0] * d], 2), [zeros(2, 1, d)], [one_hot_values(2, 1, d)],
                 sinks=torch.tensor([0.0, -1.0]))
    close(out, [[[1 / 3, 1 / 3, 0, 0], softmax([0.0, 0.0], -1.0) + [0.0, 0.0]]])


def test_attn_sink_joins_the_max():
    """Scores 1000: a sink 1000 still takes half (no overflow: m = max(scores, sink)); a sink
    1000 over a score 0 takes all the weight (the output is 0, not NaN); a sink −1000 under a
    score 1000 takes none."""
    d = 4
    v = [[[1.0, 2.0, 3.0, 4.0]]]
    k = [[onehot(d, 0)]]
    big = attend(heads([onehot(d, 0, 1000.0)], 2), [k], [v], sinks=torch.tensor([1000.0, -1000.0]))
    close(big[0, 0], [0.5, 1.0, 1.5, 2.0])
    assert torch.equal(big[0, 1].double(), torch.tensor(v[0][0], dtype=torch.float64))
    small = attend(heads([[0.0] * d], 1), [k], [v], sinks=torch.tensor([1000.0]))
    assert torch.equal(small.double(), torch.zeros(1, 1, d, dtype=torch.float64))


def test_attn_sink_with_no_visible_key_writes_zeros():
    """kv_len 0, and a causal row before its keys: the sink takes everything, nothing is added."""
    d = 4
    out = torch.full((3, 1, d), 7.0, dtype=BF16)
    attend(heads([[1.0, 0, 0, 0]] * 3, 1), [zeros(0, 1, d), torch.ones(1, 1, d)],
           [zeros(0, 1, d), torch.ones(1, 1, d)], q_lens=(1, 2), sinks=torch.tensor([0.5]), causal=True, out=out)
    assert torch.equal(out[:2].double(), torch.zeros(2, 1, d, dtype=torch.float64))
    close(out[2], [[sigmoid(1.0 - 0.5)] * d])  # the row at p = 0: key score 1 against sink 0.5


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_attn_sink_in_any_float_dtype(dtype):
    out = attend(heads([[0.0] * 4], 1), [zeros(1, 1, 4)], [torch.full((1, 1, 4), 2.0)],
                 sinks=torch.tensor([0.0], dtype=dtype))
    assert torch.equal(out.double(), torch.ones(1, 1, 4, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# [ATTN-OUTPUT]
# --------------------------------------------------------------------------------------------

def test_attn_output_single_key_gives_its_value_row():
    d = 8
    v = torch.tensor([[[1.5, -2.0, 0.0, 3.25, -0.125, 100.0, 7.0, -0.5]]], dtype=torch.float64)
    out = attend(heads([[0.3] * d], 2), [torch.ones(1, 1, d)], [v])
    assert torch.equal(out.double(), v.expand(1, 2, d))


@pytest.mark.parametrize(("dtype", "ulp"), [(BF16, 2.0**-7), (F16, 2.0**-10)])
def test_attn_output_rounds_to_nearest_even_in_out_dtype(dtype, ulp):
    """Two equal scores, values 1 + u and 1 + 2u (u: the ulp of 1): the sum 1 + 1.5u is a tie
    between 1 + u (odd) and 1 + 2u (even); nearest-even gives 1 + 2u, truncation 1 + u."""
    d = 4
    v = torch.tensor([[[1 + ulp] * d], [[1 + 2 * ulp] * d]], dtype=torch.float64)
    out = attend(heads([[0.0] * d], 1), [zeros(2, 1, d)], [v], dtype=dtype)
    assert out.dtype == dtype
    assert torch.equal(out.double(), torch.full((1, 1, d), 1 + 2 * ulp, dtype=torch.float64))


def test_attn_output_row_that_sees_no_key_writes_zeros():
    """Out starts at 7. kv_len 0 (q_len 2); a window (0, 0) row whose own position has no key
    (q_len 3, kv_len 1, non-causal: rows at p = −2, −1, 0)."""
    d = 4
    out = torch.full((5, 2, d), 7.0, dtype=BF16)
    v = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]], dtype=torch.float64)
    attend(heads([[1.0, 0, 0, 0]] * 5, 2), [zeros(0, 1, d), torch.ones(1, 1, d)], [zeros(0, 1, d), v],
           q_lens=(2, 3), causal=False, window_size=(0, 0), out=out)
    assert torch.equal(out[:4].double(), torch.zeros(4, 2, d, dtype=torch.float64))
    assert torch.equal(out[4].double(), v[0].expand(2, d))


@pytest.mark.parametrize("dtype", [BF16, F16])
def test_attn_output_rows_past_the_last_sequence_are_not_written(dtype):
    """6 token rows, sequences cover rows 0..3: rows 4 and 5 keep their bits (an arbitrary pattern)."""
    d = 4
    out = torch.full((6, 1, d), NAN, dtype=dtype)
    out.view(torch.int16)[4:] = 0x7ABC
    before = out.view(torch.int16)[4:].clone()
    returned = attend(heads([[1.0, 0, 0, 0]] * 6, 1), [torch.ones(1, 1, d)] * 2, [torch.ones(1, 1, d)] * 2,
                      q_lens=(3, 1), causal=False, dtype=dtype, out=out)
    assert returned is out
    assert torch.equal(out[:4].double(), torch.ones(4, 1, d, dtype=torch.float64))
    assert torch.equal(out.view(torch.int16)[4:], before)


@pytest.mark.parametrize(("q_dtype", "kv_dtype", "out_dtype", "want"), [
    (BF16, BF16, None, BF16), (F16, F16, None, F16), (E4M3, E4M3, None, BF16), (E4M3, E4M3, F16, F16),
    (E4M3, E4M3, BF16, BF16), (BF16, E4M3, None, BF16), (F16, E4M3, None, F16),
])
def test_attn_output_dtype(q_dtype, kv_dtype, out_dtype, want):
    d = 4
    kw = {}
    if q_dtype == E4M3:
        kw["q_descale"] = torch.ones(1)
    if kv_dtype == E4M3:
        kw.update(k_descale=torch.ones(1), v_descale=torch.full((1,), 0.5))
    if out_dtype is not None:
        kw["out"] = torch.empty(1, 1, d, dtype=out_dtype)
    v = [[[3.0, -1.5, 0.25, 448.0]]]
    got = attend([[[1.0, 0, 0, 0]]], [torch.ones(1, 1, d)], [v], dtype=q_dtype, kv_dtype=kv_dtype, **kw)
    assert got.dtype == want
    if out_dtype is not None:
        assert got is kw["out"]
    scale = 0.5 if kv_dtype == E4M3 else 1.0
    assert torch.equal(got.double(), torch.tensor(v, dtype=torch.float64) * scale)


@pytest.mark.parametrize(("q_dtype", "out_dtype"), [(BF16, F16), (F16, BF16), (E4M3, F32), (BF16, F32)])
def test_attn_output_other_out_dtypes_are_refused(q_dtype, out_dtype):
    kw = {"q_descale": torch.ones(1), "k_descale": torch.ones(1), "v_descale": torch.ones(1)} if q_dtype == E4M3 else {}
    with pytest.raises(ValueError, match="out dtype"):
        attend([[[1.0, 0, 0, 0]]], [torch.ones(1, 1, 4)], [torch.ones(1, 1, 4)], dtype=q_dtype,
               out=torch.empty(1, 1, 4, dtype=out_dtype), **kw)


# --------------------------------------------------------------------------------------------
# [ATTN-FP8]
# --------------------------------------------------------------------------------------------

ONE = torch.ones(1)
PER_SEQ_HEAD = torch.tensor([[0.75, 0.5], [0.25, 1.0]])  # (num_seqs 2, num_kv_heads 2)
FP8_VALUE = {"q": 0.75, "k": 0.5, "v": 0.25}


def _fp8_case(descales, dtype=E4M3, kv_dtype=E4M3, out=None):
    """2 sequences (q_len 1, kv_len 2 each), 4 query heads on 2 KV heads, d 4, softmax_scale 1.
    q = 2·e_0, key 0 = e_0, key 1 = 0, v_j = e_j (all exact in E4M3). Unscaled: w_0 = sigmoid(2)."""
    d = 4
    q = heads([onehot(d, 0, 2.0)] * 2, 4)
    k = torch.tensor([[onehot(d, 0)] * 2, [[0.0] * d] * 2], dtype=torch.float64)
    return attend(q, [k, k], [one_hot_values(2, 2, d)] * 2, q_lens=(1, 1), dtype=dtype, kv_dtype=kv_dtype, out=out,
                  **descales)


def _descale_at(t: torch.Tensor, s: int, h: int) -> float:
    """The descale of sequence s, query head h (KV head h // 2)."""
    return t.reshape(-1)[0].item() if t.numel() == 1 else t[s, h // 2].item()


def _fp8_want(dq, dk, dv):
    """Per (sequence, query head): w_0 = sigmoid(2·dq·dk), output dv·(w_0, 1 − w_0, 0, 0)."""
    want = torch.zeros(2, 4, 4, dtype=torch.float64)
    for s in range(2):
        for h in range(4):
            a, b, c = (_descale_at(t, s, h) for t in (dq, dk, dv))
            w0 = sigmoid(2.0 * a * b)
            want[s, h, :2] = torch.tensor([c * w0, c * (1 - w0)], dtype=torch.float64)
    return want


@pytest.mark.parametrize("shape", ["per_tensor", "scalar", "per_seq_kv_head"])
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_attn_fp8_each_descale_applied_with_non_unit_value(which, shape):
    """One descale at a time is not 1 (q 0.75, k 0.5, v 0.25 per tensor; a (seq, KV head) table);
    the others are 1. q and k descales scale the score gap 2, v scales the output."""
    value = {"per_tensor": torch.tensor([FP8_VALUE[which]]), "scalar": torch.tensor(FP8_VALUE[which]),
             "per_seq_kv_head": PER_SEQ_HEAD}[shape]
    descales = {"q_descale": ONE, "k_descale": ONE, "v_descale": ONE, f"{which}_descale": value}
    out = _fp8_case(descales)
    want = _fp8_want(descales["q_descale"], descales["k_descale"], descales["v_descale"])
    close(out, want)
    unscaled = _fp8_want(ONE, ONE, ONE)
    assert (want - unscaled).abs().max() > 0.03  # the descale visibly changes the answer


def test_attn_fp8_all_three_descales_together():
    """q 0.75 · k 0.5 fold into the score (gap 2 · 0.375 = 0.75), v 0.25 into the output."""
    out = _fp8_case({"q_descale": torch.tensor([0.75]), "k_descale": torch.tensor([0.5]),
                     "v_descale": torch.tensor([0.25])})
    w0 = sigmoid(0.75)
    close(out, torch.tensor([0.25 * w0, 0.25 * (1 - w0), 0, 0], dtype=torch.float64).expand(2, 4, 4))


def test_attn_fp8_per_sequence_and_kv_head_tables_for_all_three():
    dq = torch.tensor([[0.75, 1.0], [0.5, 0.25]])
    dk = torch.tensor([[0.5, 0.25], [1.0, 0.75]])
    dv = torch.tensor([[0.25, 0.5], [0.75, 1.0]])
    close(_fp8_case({"q_descale": dq, "k_descale": dk, "v_descale": dv}), _fp8_want(dq, dk, dv))


@pytest.mark.parametrize("dtype", [BF16, F16])
def test_attn_fp8_cache_under_a_16bit_query(dtype):
    dk, dv = torch.tensor([[0.5, 1.0], [0.25, 0.75]]), torch.tensor([0.25])
    out = _fp8_case({"k_descale": dk, "v_descale": dv}, dtype=dtype)
    assert out.dtype == dtype
    close(out, _fp8_want(ONE, dk, dv))


def test_attn_fp8_query_writes_a_given_float16_out():
    out = torch.empty(2, 4, 4, dtype=F16)
    got = _fp8_case({"q_descale": torch.tensor([0.75]), "k_descale": ONE, "v_descale": torch.tensor([0.5])}, out=out)
    assert got is out
    close(out, _fp8_want(torch.tensor([0.75]), ONE, torch.tensor([0.5])), rtol=2.0**-10)


def test_attn_fp8_descales_fold_into_the_score_before_softcap():
    """q_descale 0.5 on a raw gap 4 gives the score gap 2, then softcap 1: tanh(2). (Scaling after
    the cap would give 0.5·tanh(4).)"""
    out = _fp8_case({"q_descale": torch.tensor([0.5]), "k_descale": ONE, "v_descale": ONE, "softcap": 1.0,
                     "softmax_scale": 2.0})
    w0 = sigmoid(math.tanh(2.0))
    close(out, torch.tensor([w0, 1 - w0, 0, 0], dtype=torch.float64).expand(2, 4, 4))


@pytest.mark.parametrize(("q_dtype", "kv_dtype", "descales", "message"), [
    (E4M3, E4M3, {"k_descale": ONE, "v_descale": ONE}, "q_descale is required with a float8_e4m3fn q"),
    (E4M3, E4M3, {"q_descale": ONE, "v_descale": ONE}, "k_descale is required with a float8_e4m3fn k_cache"),
    (E4M3, E4M3, {"q_descale": ONE, "k_descale": ONE}, "v_descale is required with a float8_e4m3fn v_cache"),
    (BF16, E4M3, {"k_descale": ONE}, "v_descale is required"),
    (BF16, BF16, {"q_descale": ONE}, "q_descale applies to float8_e4m3fn tensors only"),
    (BF16, BF16, {"k_descale": ONE}, "k_descale applies to float8_e4m3fn tensors only"),
    (BF16, BF16, {"v_descale": ONE}, "v_descale applies to float8_e4m3fn tensors only"),
    (BF16, E4M3, {"q_descale": ONE, "k_descale": ONE, "v_descale": ONE}, "q_descale applies to float8_e4m3fn"),
    (E4M3, E4M3, {"q_descale": ONE.double(), "k_descale": ONE, "v_descale": ONE}, "q_descale must be float32"),
    (E4M3, E4M3, {"q_descale": ONE, "k_descale": ONE.half(), "v_descale": ONE}, "k_descale must be float32"),
    (E4M3, E4M3, {"q_descale": ONE, "k_descale": ONE, "v_descale": torch.ones(2)}, r"v_descale must be float32 .* shape \(2, 2\)"),
    (E4M3, E4M3, {"q_descale": torch.ones(2, 4), "k_descale": ONE, "v_descale": ONE}, r"q_descale must be float32 .* shape \(2, 2\)"),
    (E4M3, E4M3, {"q_descale": ONE, "k_descale": torch.ones(2, 2, 1), "v_descale": ONE}, "k_descale must be float32"),
])
def test_attn_fp8_descale_needed_exactly_with_fp8_tensors(q_dtype, kv_dtype, descales, message):
    with pytest.raises(ValueError, match=message):
        _fp8_case(descales, dtype=q_dtype, kv_dtype=kv_dtype)


# --------------------------------------------------------------------------------------------
# [ATTN-METADATA] and [ATTN-DEBUG]
# --------------------------------------------------------------------------------------------

def _probe_backend(calls):
    """A stand-in kernel that records its calls and writes nothing (never reads a value). It takes
    meta tensors too: a device whose values the host cannot read, as a GPU's."""
    capability = Capability(op="unified_attention", backend="probe", devices=("cpu", "meta"),
                            dtypes=(BF16, F16, E4M3), fidelity="test stand-in: writes nothing", graph_safe=True,
                            compile_safe=True, min_ndim=3, max_ndim=3)

    def run(q, k_cache, v_cache, out, **arguments):
        calls.append(tuple(q.shape))

    return Backend(name="probe", priority=100, summary="test stand-in", kernels=(Kernel(capability, run),))


def _debug_call(**changes):
    """A valid call (2 sequences: q_lens 2 and 1, kv_lens 3 and 5, pages of 2 in a 6-block cache)
    with `changes` applied to its arguments."""
    args = dict(q=torch.zeros(4, 2, 4, dtype=BF16), k_cache=torch.zeros(6, 2, 1, 4, dtype=BF16),
                v_cache=torch.zeros(6, 2, 1, 4, dtype=BF16), cu_seqlens_q=torch.tensor([0, 2, 3], dtype=I32),
                seqused_k=torch.tensor([3, 5], dtype=I32),
                block_table=torch.tensor([[5, 4, 99], [0, 1, 2]], dtype=I32), max_seqlen_q=2, max_seqlen_k=5)
    args.update(changes)
    q, k, v = args.pop("q"), args.pop("k_cache"), args.pop("v_cache")
    return (q, k, v), args


ints = lambda *v: torch.tensor(v, dtype=I32)

# Each breaks one condition of [ATTN-METADATA] (block_table[0, 2] = 99 is past seq 0's 2 pages: unused)
METADATA_CASES = {
    "cu_seqlens_q_starts_at_1": ({"cu_seqlens_q": ints(1, 2, 3)}, r"cu_seqlens_q\[0\]=1 is not 0"),
    "cu_seqlens_q_starts_below_0": ({"cu_seqlens_q": ints(-1, 2, 3), "max_seqlen_q": 3},
                                    r"cu_seqlens_q\[0\]=-1 is not 0"),
    "cu_seqlens_q_decreases": ({"cu_seqlens_q": ints(0, 3, 2)}, "cu_seqlens_q decreases from 3 to 2 at entry 2"),
    "cu_seqlens_q_past_the_tokens": ({"cu_seqlens_q": ints(0, 2, 5), "max_seqlen_q": 3},
                                     r"cu_seqlens_q\[2\]=5 is past q's 4 rows"),
    "q_len_above_max_seqlen_q": ({"max_seqlen_q": 1},
                                 r"cu_seqlens_q gives sequence 0 2 query rows, more than max_seqlen_q=1 \(pass max_seqlen_q=2\)"),
    "seqused_k_above_max_seqlen_k": ({"seqused_k": ints(3, 6), "max_seqlen_k": 5},
                                     r"seqused_k\[1\]=6 is outside 0..max_seqlen_k=5"),
    "seqused_k_negative": ({"seqused_k": ints(-1, 5)}, r"seqused_k\[0\]=-1 is outside 0..max_seqlen_k=5"),
    "page_past_the_cache": ({"block_table": ints([5, 6, 0], [0, 1, 2])},
                            r"block_table\[0, 1\]=6 is not a block of the cache \(0..5\)"),
    "page_negative": ({"block_table": ints([5, 4, 0], [0, -1, 2])}, r"block_table\[1, 1\]=-1 is not a block"),
    "page_int32_max": ({"block_table": ints([5, 4, 0], [0, 1, 2**31 - 1])}, r"block_table\[1, 2\]=2147483647"),
}
METADATA_FIX = "; pass index tensors that docs/SPEC.md [ATTN-METADATA] calls well-formed"


@pytest.mark.parametrize("debug", ["", "1"])
@pytest.mark.parametrize("case", METADATA_CASES)
def test_attn_metadata_cpu_tensors_are_checked_on_every_call_before_anything_is_written(case, debug, monkeypatch):
    """On CPU tensors the values are on the host: every call checks them, with or without
    LOWBIT_DEBUG, and raises ValueError naming the entry and the fix before any kernel runs."""
    changes, message = METADATA_CASES[case]
    monkeypatch.setenv("LOWBIT_DEBUG", debug)
    calls = []
    registry.register(_probe_backend(calls))
    args, kwargs = _debug_call(**changes)
    for backend in ("probe", "cpu"):
        out = torch.full(args[0].shape, -7.25, dtype=BF16)
        with pytest.raises(ValueError, match=message) as info:
            lowbit.unified_attention(*args, **kwargs, out=out, backend=backend)
        assert str(info.value).startswith("lowbit.unified_attention: ") and METADATA_FIX in str(info.value)
        assert not isinstance(info.value, lowbit.UnsupportedError)
        assert torch.all(out == -7.25)
    assert calls == []


def test_attn_metadata_names_the_first_bad_entry_of_each_kind():
    args, kwargs = _debug_call(cu_seqlens_q=ints(0, 3, 2), seqused_k=ints(-1, 9), max_seqlen_k=5,
                               block_table=ints([5, 4, 0], [7, 8, 2]))
    with pytest.raises(ValueError) as info:
        lowbit.unified_attention(*args, **kwargs)
    text = str(info.value)
    for part in ("cu_seqlens_q decreases from 3 to 2 at entry 2", "seqused_k[0]=-1 is outside",
                 "block_table[1, 0]=7 is not a block of the cache (0..5)"):
        assert part in text
    assert "seqused_k[1]" not in text and "block_table[1, 1]" not in text  # the first of each kind only


@pytest.mark.parametrize("name", ["q_descale", "k_descale", "v_descale"])
@pytest.mark.parametrize("value", [0.0, -0.5, float("nan")])
def test_attn_metadata_cpu_descales_must_be_positive(name, value):
    """[ATTN-FP8] descales are positive; on CPU tensors every call reads them and refuses a zero,
    negative or NaN one."""
    fp8 = torch.float8_e4m3fn
    (q, k, v), kwargs = _debug_call()
    descales = {"q_descale": torch.ones(1), "k_descale": torch.ones(1), "v_descale": torch.ones(2, 1)}
    args = (q.to(fp8), k.to(fp8), v.to(fp8))
    lowbit.unified_attention(*args, **kwargs, **descales, backend="cpu")
    descales[name] = torch.full_like(descales[name], value)
    with pytest.raises(ValueError, match=f"{name} holds a value <= 0"):
        lowbit.unified_attention(*args, **kwargs, **descales, backend="cpu")


def test_attn_metadata_valid_values_pass_and_change_nothing(monkeypatch):
    """A valid call (including a kv_len 0 sequence, a q_len 0 one and unused table entries that
    point nowhere) passes the checks and gives the same output with LOWBIT_DEBUG=1."""
    q, keys, values, want = _key_detector((3, 6, 1))
    keys.insert(1, zeros(0, 1, 8))
    values.insert(1, zeros(0, 1, 8))
    outs = []
    for debug in ("", "1"):
        monkeypatch.setenv("LOWBIT_DEBUG", debug)
        outs.append(attend(q, keys, values, q_lens=(3, 0, 6, 1), causal=False, past_entry=-7))
    assert torch.equal(outs[0].double(), want) and torch.equal(outs[1].double(), want)


def _on_meta(args, kwargs):
    """The call's tensors on the meta device."""
    return tuple(a.to("meta") for a in args), {k: v.to("meta") if isinstance(v, torch.Tensor) else v
                                               for k, v in kwargs.items()}


# --- [ATTN-METADATA] off the CPU: the clause as a model of what a kernel may leave in each row -----

METADATA_LENS = {  # (q_len, kv_len) per sequence: the 2-D launch, and decode (split-KV where it pays)
    "prefill": [(1, 50), (5, 18), (0, 7), (17, 33)],
    "decode": [(1, 40), (1, 70), (1, 9), (1, 33)],
}
METADATA_EXTRA_ROWS = 2  # q rows past cu_seqlens_q[-1]


def metadata_call(lens, seed=0):
    """A well-formed call on CPU tensors (4 query heads on 2 KV heads, head size 64, pages of 16,
    blocks in random order, a spare one): (args, kwargs) for lowbit.unified_attention."""
    g = torch.Generator().manual_seed(seed)
    q_lens, kv_lens = [a for a, _ in lens], [b for _, b in lens]
    pages = [-(-n // 16) for n in kv_lens]
    blocks = sum(pages) + 1
    order = torch.randperm(blocks, generator=g).tolist()
    table = torch.full((len(lens), max(pages) + 1), order[-1], dtype=I32)
    for s, row in enumerate(torch.tensor(order[:-1]).split(pages)):
        table[s, : len(row)] = row
    q = torch.randn(sum(q_lens) + METADATA_EXTRA_ROWS, 4, 64, generator=g).to(BF16)
    k, v = (torch.randn(blocks, 16, 2, 64, generator=g).to(BF16) for _ in range(2))
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=I32)
    return (q, k, v), dict(cu_seqlens_q=cu, seqused_k=torch.tensor(kv_lens, dtype=I32), block_table=table,
                           max_seqlen_q=max(q_lens), max_seqlen_k=max(kv_lens))


def _set(name, index, value):
    def change(kw, blocks, tokens):
        kw[name] = kw[name].clone()
        kw[name][index] = value(kw, blocks, tokens) if callable(value) else value
    return change


# Ways to break [ATTN-METADATA] for a call of metadata_call: change(kwargs, num_blocks, num_tokens)
METADATA_BREAKS = {
    "page-negative": _set("block_table", (1, 0), -1),
    "page-past-the-cache": _set("block_table", (3, 1), lambda kw, blocks, tokens: blocks),
    "page-int32-max": _set("block_table", (0, 0), 2**31 - 1),
    "page-int32-min": _set("block_table", (3, 0), -(2**31)),
    "seqused-k-negative": _set("seqused_k", 0, -5),
    "seqused-k-past-max": _set("seqused_k", 3, lambda kw, blocks, tokens: kw["max_seqlen_k"] + 1),
    "seqused-k-int32-max": _set("seqused_k", 1, 2**31 - 1),
    "q-len-past-max": lambda kw, blocks, tokens: kw.update(max_seqlen_q=max(kw["max_seqlen_q"] - 1, 0)),
    "cu-past-the-tokens": _set("cu_seqlens_q", 4, lambda kw, blocks, tokens: tokens + 40),
    "cu-int32-max": _set("cu_seqlens_q", 4, 2**31 - 1),
    "cu-first-not-0": _set("cu_seqlens_q", 0, 1),
    "cu-decreasing": _set("cu_seqlens_q", 2, lambda kw, blocks, tokens: int(kw["cu_seqlens_q"][3]) + 1),
    "cu-negative-start": _set("cu_seqlens_q", 0, -3),
    "cu-int32-min": _set("cu_seqlens_q", 1, -(2**31)),
}


def broken_call(lens, breaks):
    """metadata_call(lens) with each of `breaks` (names of METADATA_BREAKS) applied."""
    args, kwargs = metadata_call(lens)
    for name in breaks:
        METADATA_BREAKS[name](kwargs, args[1].shape[0], args[0].shape[0])
    return args, kwargs


NAN_ROW = "NaN"


def metadata_outcomes(q, k_cache, v_cache, *, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
                      out_dtype=BF16, **options) -> list[list]:
    """Per row of `out`, the candidates [ATTN-METADATA] allows a GPU call to leave in each of its
    elements, as the clause reads: None (not written), NAN_ROW, or a (num_heads, head_size) float64
    row, the attention of a well-formed sequence that claims the row (the reference run on that
    sequence alone). When cu_seqlens_q never decreases and starts at 0 or more, one candidate a row."""
    cu, used, table = cu_seqlens_q.tolist(), seqused_k.tolist(), block_table.tolist()
    tokens, blocks, page = q.shape[0], k_cache.shape[0], k_cache.shape[1]

    def well_formed(s):
        rows_in_order = 0 <= cu[s] <= cu[s + 1] <= tokens and (s > 0 or cu[0] == 0)
        if not (rows_in_order and cu[s + 1] - cu[s] <= max_seqlen_q and 0 <= used[s] <= max_seqlen_k):
            return False
        return all(0 <= b < blocks for b in table[s][: -(-used[s] // page)])

    def alone(s):  # the reference on sequence s by itself: a well-formed call
        n = cu[s + 1] - cu[s]
        per_seq = {name: (t[s:s + 1] if name.endswith("descale") and t is not None and t.dim() == 2 else t)
                   for name, t in options.items()}
        return lowbit.unified_attention(
            q[cu[s]:cu[s + 1]], k_cache, v_cache, cu_seqlens_q=torch.tensor([0, n], dtype=I32),
            seqused_k=seqused_k[s:s + 1], block_table=block_table[s:s + 1], max_seqlen_q=n, max_seqlen_k=used[s],
            out=torch.empty(q[cu[s]:cu[s + 1]].shape, dtype=out_dtype), backend="cpu", **per_seq).double()

    ordered = cu[0] >= 0 and all(a <= b for a, b in zip(cu, cu[1:]))
    results = {s: alone(s) for s in range(len(used)) if well_formed(s)}
    outcomes = [[None] for _ in range(tokens)]  # rows no sequence claims are not written
    for s in range(len(used)):
        for row in range(max(cu[s], 0), min(cu[s + 1], tokens)):
            mine = results[s][row - cu[s]] if s in results else NAN_ROW
            outcomes[row] = [mine] if ordered else [*outcomes[row], NAN_ROW, mine]
    return outcomes


def assert_metadata_outcomes(out, outcomes, tolerance, sentinel, what=""):
    """Each element of `out` is one of its row's candidates: the sentinel it started with (None),
    NaN, or within [ATTN-TOLERANCE] of a candidate row's element. Element by element: programs of
    two sequences that claim one row write their heads of it concurrently."""
    atol, rtol = tolerance

    def matches(got, want):
        if want is None:
            return got == sentinel
        if isinstance(want, str):
            return torch.isnan(got)
        return (got - want).abs() <= atol + rtol * want.abs()

    for row, candidates in enumerate(outcomes):
        got = out[row].double()
        ok = torch.zeros(got.shape, dtype=torch.bool)
        for want in candidates:
            ok |= matches(got, want)
        assert bool(ok.all()), (
            f"{what}: row {row} holds {got.flatten()[:4].tolist()}..., none of "
            f"{[w if w is None or isinstance(w, str) else 'a result row' for w in candidates]} at "
            f"{(~ok).nonzero()[:3].tolist()}")


@pytest.mark.parametrize("lens", METADATA_LENS)
@pytest.mark.parametrize("name", METADATA_BREAKS)
def test_attn_metadata_each_break_is_refused_on_cpu_and_changes_what_a_gpu_may_write(name, lens):
    """The breaks the kernel tests use: each is one the CPU refuses, and each leaves the model of a
    GPU call with a row that differs from the well-formed call's."""
    args, kwargs = broken_call(METADATA_LENS[lens], [name])
    with pytest.raises(ValueError, match=re.escape(METADATA_FIX)):
        lowbit.unified_attention(*args, **kwargs)
    good_args, good_kwargs = metadata_call(METADATA_LENS[lens])
    good = metadata_outcomes(*good_args, **good_kwargs)
    broken = metadata_outcomes(*args, **kwargs)
    assert all(len(c) == 1 for c in good)
    assert any(len(b) != 1 or (b[0] is None) != (g[0] is None) or isinstance(b[0], str) for b, g in zip(broken, good))


class _HostRead(Exception):
    pass


@pytest.mark.parametrize("case", ["valid", *METADATA_CASES])
def test_attn_debug_off_the_cpu_a_call_reads_no_value(case, monkeypatch):
    """Every way of bringing a tensor value to the host raises here. Off the CPU (meta tensors: a
    device whose values the host cannot read, as a GPU's) and without LOWBIT_DEBUG, a call (checks,
    dispatch, the op) reads none, whatever the metadata; tests/backends/cuda shows the same on a GPU
    with torch's sync detection, and that LOWBIT_DEBUG=1 reads them there."""
    calls = []
    registry.register(_probe_backend(calls))
    args, kwargs = _on_meta(*_debug_call(**(METADATA_CASES[case][0] if case != "valid" else {})))

    def refuse(*a, **k):
        raise _HostRead

    with monkeypatch.context() as patch:
        for name in ("tolist", "item", "__int__", "__index__", "__float__", "__bool__", "numpy"):
            patch.setattr(torch.Tensor, name, refuse)
        patch.delenv("LOWBIT_DEBUG", raising=False)
        for backend in ("probe", "auto"):
            out = lowbit.unified_attention(*args, **kwargs, backend=backend)
            assert out.shape == (4, 2, 4) and out.device.type == "meta"


@pytest.mark.parametrize("debug", ["", "1"])
def test_attn_debug_fake_call_needs_no_device_value(debug, monkeypatch):
    """Fake tensors have no values: the fake runs with or without LOWBIT_DEBUG (its checks are
    the shape checks only)."""
    monkeypatch.setenv("LOWBIT_DEBUG", debug)
    with FakeTensorMode():
        args, kwargs = _debug_call()
        out = lowbit.unified_attention(*args, **kwargs)
        assert (tuple(out.shape), out.dtype) == ((4, 2, 4), BF16)


@pytest.mark.parametrize("fake", [False, True])
def test_attn_debug_shape_checks_run_on_every_call(fake, monkeypatch):
    """Without LOWBIT_DEBUG, the head ratio and the block-table width are still checked, real or fake."""
    monkeypatch.delenv("LOWBIT_DEBUG", raising=False)
    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    with mode:
        args, kwargs = _debug_call(q=torch.zeros(4, 3, 4, dtype=BF16), k_cache=torch.zeros(6, 2, 2, 4, dtype=BF16),
                                   v_cache=torch.zeros(6, 2, 2, 4, dtype=BF16))
        with pytest.raises(lowbit.UnsupportedError, match="q has 3 heads, not a multiple of k_cache's 2 KV heads"):
            lowbit.unified_attention(*args, **kwargs)
        args, kwargs = _debug_call(max_seqlen_k=7)
        with pytest.raises(lowbit.UnsupportedError, match="fewer than max_seqlen_k=7"):
            lowbit.unified_attention(*args, **kwargs)
