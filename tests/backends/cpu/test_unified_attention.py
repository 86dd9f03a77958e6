"""The CPU reference of unified_attention against an independent float64 formulation.

The oracle here never sees the paged cache: every case first draws each sequence's keys and values
as contiguous tensors (the truth), then scatters them into pages of a cache through a random block
table (spare blocks and unused slots hold NaN). The oracle attends over the contiguous truth in
float64, one (sequence, query head) at a time: an explicit visibility matrix from the rows'
bottom-right positions, torch.softmax over the columns [scores, sink], the value descale last.

The reference computes in float32 and rounds to the output dtype; the oracle does not round, so
the two agree within half an output ulp (at most 2^-9 of the value for bfloat16, 2^-11 for
float16) plus float32 noise: rtol 2^-8 / 2^-10 and a small atol.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import pytest
import torch

import lowbit

BF16, F16, E4M3, I32 = torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.int32
F64 = torch.float64
NAN = float("nan")

TOLERANCE = {BF16: (2.0**-8, 2e-5), F16: (2.0**-10, 2e-5)}  # out dtype: (rtol, atol)
SENTINEL_BITS = 0x7A5A  # a finite bf16/f16 pattern in rows no sequence owns
EXTRA_ROWS = 3  # token rows past cu_seqlens_q[-1]


# --------------------------------------------------------------------------------------------
# The independent formulation
# --------------------------------------------------------------------------------------------

def oracle(q, keys, values, q_lens, *, scale, causal, window, softcap, alibi, sinks, dq, dk, dv):
    """Float64 attention over contiguous per-sequence keys/values. q (tokens, H, d) float64;
    keys[s], values[s] (kv_len, KV, d) float64; descales dq/dk/dv: (num_seqs, KV) float64 tables.
    Returns (rows covered, H, d) float64."""
    num_heads, kv_heads = q.shape[1], keys[0].shape[1]
    group = num_heads // kv_heads
    left, right = window
    outs, first = [], 0
    for s, q_len in enumerate(q_lens):
        kv_len = keys[s].shape[0]
        rows = torch.zeros(q_len, num_heads, q.shape[2], dtype=F64)
        # visibility, row by row and key by key, from the absolute positions
        def sees(p, j):
            return (not causal or j <= p) and (left < 0 or j >= p - left) and (right < 0 or j <= p + right)

        visible = torch.tensor([[sees(kv_len - q_len + i, j) for j in range(kv_len)] for i in range(q_len)],
                               dtype=torch.bool).reshape(q_len, kv_len)
        position = torch.arange(q_len, dtype=F64)[:, None] + (kv_len - q_len)
        distance = (position - torch.arange(kv_len, dtype=F64)[None, :]).abs()
        for h in range(num_heads):
            g = h // group
            x, k, v = q[first:first + q_len, h], keys[s][:, g], values[s][:, g]
            scores = (x @ k.T) * (scale * dq[s, g] * dk[s, g])
            if softcap > 0:
                scores = softcap * torch.tanh(scores / softcap)
            if alibi is not None:
                scores = scores - alibi[h] * distance
            scores = torch.where(visible, scores, torch.tensor(-math.inf, dtype=F64))
            sink = torch.full((q_len, 1), -math.inf if sinks is None else float(sinks[h]), dtype=F64)
            weights = torch.softmax(torch.cat([scores, sink], dim=1), dim=1)[:, :kv_len]
            weights = torch.nan_to_num(weights, nan=0.0)  # a row with no key and no sink: all -inf
            rows[:, h] = (weights @ v) * dv[s, g]
        outs.append(rows)
        first += q_len
    return torch.cat(outs) if outs else torch.zeros(0, num_heads, q.shape[2], dtype=F64)


# --------------------------------------------------------------------------------------------
# Cases: contiguous truth first, then pages
# --------------------------------------------------------------------------------------------

MIXES = {
    # (q_len, kv_len) per sequence: decode, chunked prefill, no query rows, full prefill, ...
    "mixed": [(1, 50), (5, 18), (0, 7), (17, 17), (3, 40)],
    "edges": [(4, 0), (2, 33), (1, 1), (7, 7), (0, 0), (6, 2)],
}
HEADS = [(4, 4), (8, 2), (5, 1)]
HEAD_SIZES = [64, 80]
PAGE_SIZES = [16, 32]
WINDOWS = [(-1, -1), (8, 0), (4, 4)]
# (q dtype, cache dtype, out dtype given or None)
DTYPES = [(BF16, BF16, None), (F16, F16, None), (E4M3, E4M3, None), (E4M3, E4M3, F16), (BF16, E4M3, None),
          (F16, E4M3, None)]


@dataclass(frozen=True)
class Case:
    mix: str
    heads: tuple[int, int]
    head_size: int
    page_size: int
    causal: bool
    window: tuple[int, int]
    softcap: float
    alibi: bool
    sinks: bool
    dtypes: tuple
    per_seq_descale: bool
    explicit_scale: bool
    out_given: bool
    seed: int

    @property
    def id(self) -> str:
        q, kv, out = (str(d).removeprefix("torch.").replace("float8_e4m3fn", "e4m3") if d else "-" for d in self.dtypes)
        return (f"{self.mix}-h{self.heads[0]}x{self.heads[1]}-d{self.head_size}-p{self.page_size}"
                f"-{'causal' if self.causal else 'full'}-w{self.window[0]}_{self.window[1]}-cap{self.softcap:g}"
                f"{'-alibi' if self.alibi else ''}{'-sinks' if self.sinks else ''}-{q}_{kv}_{out}"
                f"{'-perseq' if self.per_seq_descale else ''}{'-scale' if self.explicit_scale else ''}"
                f"{'-out' if self.out_given else ''}")


def _grid(n=44, seed=2024):
    """A seeded sample of the full product, every level of every axis present."""
    rng = random.Random(seed)
    axes = [list(MIXES), HEADS, HEAD_SIZES, PAGE_SIZES, [True, False], WINDOWS, [0.0, 5.0], [False, True],
            [False, True], DTYPES, [False, True], [False, True], [False, True]]
    product = list(itertools.product(*axes))
    picked = rng.sample(product, n)
    for axis, levels in enumerate(axes):  # make sure each level shows up at least once
        for level in levels:
            if not any(p[axis] == level for p in picked):
                picked.append(next(p for p in product if p[axis] == level))
    return [Case(*p, seed=i) for i, p in enumerate(picked)]


CASES = _grid()


def _values(shape, dtype, g, spread=1.0):
    """Random values stored in `dtype` (the truth is what the stored dtype holds)."""
    return (torch.randn(shape, generator=g, dtype=F64) * spread).to(dtype)


def build(case: Case):
    """(kwargs for lowbit.unified_attention, truth for the oracle)."""
    g = torch.Generator().manual_seed(1000 + case.seed)
    lens = MIXES[case.mix]
    q_lens, kv_lens = [a for a, _ in lens], [b for _, b in lens]
    num_heads, kv_heads = case.heads
    d, ps = case.head_size, case.page_size
    q_dtype, kv_dtype, out_dtype = case.dtypes
    tokens = sum(q_lens) + EXTRA_ROWS
    q = _values((tokens, num_heads, d), q_dtype, g)
    keys = [_values((n, kv_heads, d), kv_dtype, g) for n in kv_lens]
    values = [_values((n, kv_heads, d), kv_dtype, g, spread=2.0) for n in kv_lens]

    # scatter the truth into pages: a random permutation of the blocks, two spare blocks, NaN around
    pages = [-(-n // ps) for n in kv_lens]
    blocks = sum(pages) + 2
    order = torch.randperm(blocks, generator=g).tolist()
    k_cache = torch.full((blocks, ps, kv_heads, d), NAN, dtype=F64).to(kv_dtype)
    v_cache = k_cache.clone()
    width = max(-(-max(kv_lens) // ps), 1) + 1  # one column more than needed
    table = torch.full((len(lens), width), order[-1], dtype=I32)  # past the last page: a NaN spare block
    nxt = 0
    for s, n in enumerate(kv_lens):
        for c in range(pages[s]):
            block = order[nxt]
            nxt += 1
            table[s, c] = block
            rows = slice(c * ps, min((c + 1) * ps, n))
            k_cache[block, : rows.stop - rows.start] = keys[s][rows]
            v_cache[block, : rows.stop - rows.start] = values[s][rows]

    kwargs = dict(cu_seqlens_q=torch.tensor([0, *itertools.accumulate(q_lens)], dtype=I32),
                  seqused_k=torch.tensor(kv_lens, dtype=I32), block_table=table, max_seqlen_q=max(q_lens),
                  max_seqlen_k=max(kv_lens), causal=case.causal, window_size=case.window, softcap=case.softcap)
    scale = 0.1 if case.explicit_scale else d**-0.5
    if case.explicit_scale:
        kwargs["softmax_scale"] = scale
    slopes = sinks = None
    if case.alibi:
        slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)])
        kwargs["alibi_slopes"] = slopes
    if case.sinks:
        sinks = torch.randn(num_heads, generator=g) * 2
        kwargs["sinks"] = sinks
    tables = {}
    for name, fp8, value in (("q", q_dtype == E4M3, 0.75), ("k", kv_dtype == E4M3, 0.5), ("v", kv_dtype == E4M3, 0.25)):
        if not fp8:
            tables[name] = torch.ones(len(lens), kv_heads, dtype=F64)
            continue
        if case.per_seq_descale:
            t = torch.tensor([0.25, 0.5, 0.75, 1.0, 1.25])[torch.randint(0, 5, (len(lens), kv_heads), generator=g)]
        else:
            t = torch.tensor([value])
        kwargs[f"{name}_descale"] = t
        tables[name] = t.double().expand(len(lens), kv_heads)
    out_dtype = out_dtype or (BF16 if q_dtype == E4M3 else q_dtype)
    if case.out_given:
        kwargs["out"] = torch.empty(tokens, num_heads, d, dtype=out_dtype)
        kwargs["out"].view(torch.int16).fill_(SENTINEL_BITS)
    elif case.dtypes[2] is not None:
        kwargs["out"] = torch.empty(tokens, num_heads, d, dtype=out_dtype)
    truth = dict(q=q.double(), keys=[k.double() for k in keys], values=[v.double() for v in values], q_lens=q_lens,
                 scale=scale, causal=case.causal, window=case.window, softcap=case.softcap,
                 alibi=None if slopes is None else slopes.double(), sinks=None if sinks is None else sinks.double(),
                 dq=tables["q"], dk=tables["k"], dv=tables["v"])
    return (q, k_cache, v_cache), kwargs, truth, out_dtype


def assert_matches_oracle(got: torch.Tensor, want: torch.Tensor):
    rtol, atol = TOLERANCE[got.dtype]
    g = got.double()
    bad = ~((g - want).abs() <= atol + rtol * want.abs())
    assert not bad.any(), (f"{int(bad.sum())} of {bad.numel()} outside rtol {rtol} atol {atol}; worst "
                           f"{(g - want).abs().max().item():.3g} at {bad.nonzero()[0].tolist()}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_reference_matches_the_float64_oracle(case: Case):
    args, kwargs, truth, out_dtype = build(case)
    given = kwargs.get("out")
    got = lowbit.unified_attention(*args, **kwargs)
    if given is not None:
        assert got is given
    assert (tuple(got.shape), got.dtype) == (tuple(args[0].shape), out_dtype)
    covered = sum(truth["q_lens"])
    want = oracle(**truth)
    assert torch.isfinite(want).all()
    assert_matches_oracle(got[:covered], want)
    if case.out_given:  # rows no sequence owns keep their bits
        assert (got[covered:].view(torch.int16) == SENTINEL_BITS).all()
    # the output is not trivially small: rows that see keys carry the values' magnitude
    assert want.abs().max() > 0.1


def test_grid_covers_every_level():
    fields = {"mix": list(MIXES), "heads": HEADS, "head_size": HEAD_SIZES, "page_size": PAGE_SIZES,
              "window": WINDOWS, "dtypes": DTYPES, "softcap": [0.0, 5.0]}
    for name, levels in fields.items():
        assert {getattr(c, name) for c in CASES} >= set(levels), name
    assert 40 <= len(CASES) <= 60


# --------------------------------------------------------------------------------------------
# Hand-checked edges of the reference
# --------------------------------------------------------------------------------------------

def _single(q_lens, kv_lens, *, heads=(2, 1), d=8, ps=4, dtype=BF16, seed=0, extra=0):
    """Random contiguous q/K/V, pages in order 0.. (no NaN involved): (args, kwargs, truth)."""
    g = torch.Generator().manual_seed(seed)
    num_heads, kv_heads = heads
    q = torch.randn(sum(q_lens) + extra, num_heads, d, generator=g).to(dtype)
    keys = [torch.randn(n, kv_heads, d, generator=g).to(dtype) for n in kv_lens]
    values = [torch.randn(n, kv_heads, d, generator=g).to(dtype) for n in kv_lens]
    pages = [-(-n // ps) for n in kv_lens]
    k_cache = torch.zeros(max(sum(pages), 1), ps, kv_heads, d, dtype=dtype)
    v_cache = k_cache.clone()
    table = torch.zeros(len(kv_lens), max(max(pages, default=0), 1), dtype=I32)
    nxt = 0
    for s, n in enumerate(kv_lens):
        for c in range(pages[s]):
            table[s, c] = nxt
            rows = slice(c * ps, min((c + 1) * ps, n))
            k_cache[nxt, : rows.stop - rows.start] = keys[s][rows]
            v_cache[nxt, : rows.stop - rows.start] = values[s][rows]
            nxt += 1
    kwargs = dict(cu_seqlens_q=torch.tensor([0, *itertools.accumulate(q_lens)], dtype=I32),
                  seqused_k=torch.tensor(kv_lens, dtype=I32), block_table=table,
                  max_seqlen_q=max(q_lens, default=0), max_seqlen_k=max(kv_lens, default=0))
    ones = torch.ones(len(kv_lens), kv_heads, dtype=F64)
    truth = dict(q=q.double(), keys=[k.double() for k in keys], values=[v.double() for v in values], q_lens=q_lens,
                 scale=d**-0.5, causal=True, window=(-1, -1), softcap=0.0, alibi=None, sinks=None, dq=ones, dk=ones,
                 dv=ones)
    return (q, k_cache, v_cache), kwargs, truth


def test_rows_past_the_last_sequence_are_not_written():
    args, kwargs, truth = _single([2, 3], [5, 4], extra=4)
    out = torch.full_like(args[0], 3.0)
    out[5:].view(torch.int16).fill_(SENTINEL_BITS)
    lowbit.unified_attention(*args, **kwargs, out=out)
    assert (out[5:].view(torch.int16) == SENTINEL_BITS).all()
    assert_matches_oracle(out[:5], oracle(**truth))


def test_zero_length_sequences_write_nothing_and_kv_len_zero_writes_zeros():
    """q_lens (0, 3, 0, 2), kv_lens (4, 0, 0, 6): sequence 1 has rows but no keys (zeros);
    sequences 0 and 2 own no rows; the batch's only values come from sequence 3."""
    args, kwargs, truth = _single([0, 3, 0, 2], [4, 0, 0, 6], extra=1)
    out = torch.full_like(args[0], 5.0)
    lowbit.unified_attention(*args, **kwargs, out=out)
    assert torch.equal(out[:3], torch.zeros_like(out[:3]))
    assert_matches_oracle(out[3:5], oracle(**truth)[3:5])
    assert (out[5] == 5.0).all()


def test_all_sequences_empty():
    args, kwargs, truth = _single([0, 0], [3, 0], extra=2)
    out = torch.full_like(args[0], 5.0)
    assert lowbit.unified_attention(*args, **kwargs, out=out) is out
    assert (out == 5.0).all()


@pytest.mark.parametrize("window", [(0, 0), (1, 2)])
def test_a_query_row_with_no_visible_key_writes_zeros(window):
    """q_len 4 over kv_len 2: rows at p = −2, −1, 0, 1. Causal, rows p = −2, −1 see nothing under
    any window; non-causal with window (0, 0) they still see nothing (their own position holds no
    key), while window (1, 2) lets p = −2 see key 0."""
    args, kwargs, truth = _single([4], [2])
    for causal in (True, False):
        out = torch.full_like(args[0], 9.0)
        lowbit.unified_attention(*args, **kwargs, causal=causal, window_size=window, out=out)
        hidden = 2 if causal or window == (0, 0) else 0
        assert torch.equal(out[:hidden], torch.zeros_like(out[:hidden])), causal
        assert (out[hidden:] != 0).any()
        assert_matches_oracle(out, oracle(**{**truth, "causal": causal, "window": window}))


def test_non_contiguous_q_cache_and_out():
    """q a slice of a bigger tensor along heads, the caches a slice along KV heads, out a slice of a
    bigger buffer (the rest of the buffer is untouched)."""
    args, kwargs, truth = _single([3, 1], [7, 9], heads=(4, 2), d=16)
    q, k_cache, v_cache = args
    big_q = torch.randn(q.shape[0], 8, 16).to(BF16)
    big_q[:, 2:6] = q
    big_k = torch.randn(*k_cache.shape[:2], 5, 16).to(BF16)
    big_v = torch.randn(*v_cache.shape[:2], 5, 16).to(BF16)
    big_k[:, :, 1:3], big_v[:, :, 3:5] = k_cache, v_cache
    buffer = torch.full((q.shape[0], 4, 2, 16), 4.0, dtype=BF16)
    out = buffer[:, :, 1]
    sq, sk, sv = big_q[:, 2:6], big_k[:, :, 1:3], big_v[:, :, 3:5]
    assert not (sq.is_contiguous() or sk.is_contiguous() or sv.is_contiguous() or out.is_contiguous())
    got = lowbit.unified_attention(sq, sk, sv, **kwargs, out=out)
    assert got is out
    assert (buffer[:, :, 0] == 4.0).all()
    want = oracle(**truth)
    assert_matches_oracle(buffer[:, :, 1], want)
    assert torch.equal(got, lowbit.unified_attention(q, k_cache, v_cache, **kwargs))


def test_transposed_head_dim_of_q():
    """The last dim of q with a stride other than 1: the reference takes any strides."""
    args, kwargs, truth = _single([2], [3], heads=(2, 2), d=8)
    q = args[0]
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert qt.stride(-1) != 1 and torch.equal(qt, q)
    assert_matches_oracle(lowbit.unified_attention(qt, *args[1:], **kwargs), oracle(**truth))


def test_out_given_is_written_in_place_and_returned():
    args, kwargs, truth = _single([3], [5], heads=(4, 2), dtype=F16)
    out = torch.full_like(args[0], 2.0)
    ptr = out.data_ptr()
    got = lowbit.unified_attention(*args, **kwargs, out=out)
    assert got is out and out.data_ptr() == ptr
    assert_matches_oracle(out, oracle(**truth))


def test_oracle_sanity_one_key_returns_its_value():
    """The oracle itself on the hand case of [ATTN-OUTPUT]: one key, output = the value row."""
    v = torch.tensor([[[1.0, -2.0, 0.5]]], dtype=F64)
    ones = torch.ones(1, 1, dtype=F64)
    got = oracle(torch.randn(1, 2, 3, dtype=F64), [torch.randn(1, 1, 3, dtype=F64)], [v], [1], scale=1.0,
                 causal=True, window=(-1, -1), softcap=0.0, alibi=None, sinks=None, dq=ones, dk=ones, dv=ones)
    assert torch.equal(got, v.expand(1, 2, 3))
    sink = oracle(torch.zeros(1, 1, 3, dtype=F64), [torch.zeros(1, 1, 3, dtype=F64)], [v], [1], scale=1.0,
                  causal=True, window=(-1, -1), softcap=0.0, alibi=None, sinks=torch.zeros(1, dtype=F64), dq=ones,
                  dk=ones, dv=ones * 0.5)
    assert torch.equal(sink, v * 0.25)  # weight 1/2 against the sink, descale 1/2
