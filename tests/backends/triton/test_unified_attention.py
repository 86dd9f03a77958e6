"""The portable Triton attention kernel (backends/triton/unified_attention.py), run by the Triton
interpreter on CPU tensors, against the CPU reference within [ATTN-TOLERANCE].

The kernel is called through its launcher `attend` (as the XPU backend calls it: CPU tensors cannot
dispatch to the cuda backend), the reference through lowbit.unified_attention(backend="cpu"), which
also checks that every call built here is a valid one. Under the interpreter the kernel computes
its dots in float32 (DOT_F32), so it lands far inside the tolerance; the checks that a descale
matters use that tolerance too, so they fail for a kernel that ignores or mis-indexes a descale.

Caches are paged through a random block table: slots past a sequence's keys, a spare block and the
table entries past a sequence's last page hold NaN, so a key the kernel must not read shows up.
Outputs start filled with a sentinel, and rows past cu_seqlens_q[-1] must keep it. A seeded,
balanced sample of the full product of the axes covers every level of every axis several times.
`plan` (the launch heuristic, host ints only) is tested on its own, with an independent
formulation of how a program finds its sequence.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest
import torch
from preambles import interpreted

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from lowbit.backends.triton import unified_attention as kernels  # noqa: E402
from lowbit.backends.triton.unified_attention import AttentionConfig, find_sequence, plan, to_float16  # noqa: E402
from test_spec_attention import (  # noqa: E402  [ATTN-TOLERANCE] and [ATTN-METADATA], checked against the spec
    METADATA_BREAKS,
    METADATA_LENS,
    assert_metadata_outcomes,
    attention_tolerance,
    broken_call,
    metadata_outcomes,
)

import lowbit  # noqa: E402

pytestmark = interpreted()

BF16, F16, F32, E4M3, I32 = torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.int32
NAN = float("nan")
SENTINEL = -7.25  # exact in bfloat16 and float16: what rows no sequence owns must keep
EXTRA_ROWS = 2  # q rows past cu_seqlens_q[-1]
# 16 rows x 16 keys per program: several key tiles per sequence, so the masked-left, unmasked and
# masked-right tile runs all happen, and split-KV has tiles to split
SMALL = AttentionConfig(16, 16, 4, 1)
DESCALES = {"q": 0.75, "k": 0.5, "v": 0.25}  # the per-tensor values

SEQS = {  # (q_len, kv_len) per sequence
    "mixed": [(1, 50), (5, 18), (0, 7), (17, 33)],  # decode, chunked prefill, no query rows, prefill
    "decode": [(1, 37), (1, 20), (1, 75)],
    "spec": [(3, 40), (2, 70), (4, 9)],  # several new tokens per sequence, all in one query block
}
HEADS = [(4, 4), (8, 2), (5, 1)]
HEAD_SIZES = [64, 80]
PAGES = [16, 32]
MASKS = [(causal, window) for window in [(-1, -1), (8, -1), (6, 3)] for causal in (True, False)]
# (q dtype, cache dtype, out dtype)
MODES = {"bf16": (BF16, BF16, BF16), "fp16": (F16, F16, F16), "fp8kv": (BF16, E4M3, BF16),
         "fp8kv-fp16": (F16, E4M3, F16), "fp8": (E4M3, E4M3, BF16), "fp8-outfp16": (E4M3, E4M3, F16)}
LAYOUTS = ["tensor", "seq_head"]  # per-tensor descales, or one per (sequence, KV head)
SPLITS = [None, 1, 4]  # the plan's choice, the 2-D launch, split-KV (where the plan allows it)
CONFIGS = {"table": None, "small": SMALL}


# --------------------------------------------------------------------------------------------
# Building calls
# --------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """One call's tensors: paged caches, a q with EXTRA_ROWS rows past the last sequence."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    cu_seqlens_q: torch.Tensor
    seqused_k: torch.Tensor
    block_table: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    lens: list

    def index(self) -> dict:
        return dict(cu_seqlens_q=self.cu_seqlens_q, seqused_k=self.seqused_k, block_table=self.block_table,
                    max_seqlen_q=self.max_seqlen_q, max_seqlen_k=self.max_seqlen_k)


def values(shape, dtype, g, spread=1.0):
    return (torch.randn(shape, generator=g, dtype=torch.float64) * spread).to(dtype)


def make_batch(lens, heads, head_size, page, q_dtype, kv_dtype, seed, q_spread=1.0, v_spread=2.0,
               loose=False) -> Batch:
    """Sequence s has lens[s] = (q_len, kv_len). Blocks in random order; every slot holding no key,
    one spare block, and the table entries past a sequence's last page are NaN."""
    g = torch.Generator().manual_seed(seed)
    num_heads, kv_heads = heads
    q_lens, kv_lens = [a for a, _ in lens], [b for _, b in lens]
    tokens = sum(q_lens) + EXTRA_ROWS
    q = values((tokens, num_heads, head_size), F32, g, q_spread)
    q[sum(q_lens):] = NAN  # rows of no sequence: never read
    pages = [-(-n // page) for n in kv_lens]
    blocks = sum(pages) + 1
    order = torch.randperm(blocks, generator=g).tolist()
    k_cache = torch.full((blocks, page, kv_heads, head_size), NAN)
    v_cache = k_cache.clone()
    max_k = max(kv_lens, default=0) + (20 if loose else 0)
    width = max(-(-max_k // page), 1) + 1  # a column more than needed
    table = torch.full((len(lens) + 1, width), order[-1], dtype=I32)  # a row more: block_table has >= num_seqs
    nxt = 0
    for s, n in enumerate(kv_lens):
        for c in range(pages[s]):
            block = order[nxt]
            nxt += 1
            table[s, c] = block
            used = min(page, n - c * page)
            k_cache[block, :used] = values((used, kv_heads, head_size), F32, g)
            v_cache[block, :used] = values((used, kv_heads, head_size), F32, g, v_spread)
    cu = torch.tensor([0, *itertools.accumulate(q_lens)], dtype=I32)
    return Batch(q.to(q_dtype), k_cache.to(kv_dtype), v_cache.to(kv_dtype), cu, torch.tensor(kv_lens, dtype=I32),
                 table, max(q_lens, default=0) + (1 if loose else 0), max_k, list(lens))


def descale(which, layout, batch: Batch, g=None) -> torch.Tensor:
    """A float32 descale: the per-tensor value, or distinct values per (sequence, KV head)."""
    if layout == "tensor":
        return torch.tensor([DESCALES[which]])
    seqs, kv_heads = len(batch.lens), batch.k_cache.shape[2]
    if g is None:  # powers of two over a wide range, each (sequence, KV head) its own
        exps = torch.randperm(seqs * kv_heads, generator=torch.Generator().manual_seed(7)).float()
        return (DESCALES[which] * torch.exp2((exps - exps.mean()) / 2)).reshape(seqs, kv_heads)
    return DESCALES[which] * torch.exp2(torch.rand(seqs, kv_heads, generator=g) * 2 - 1)


def fp8_descales(batch: Batch, layout, g=None) -> dict:
    found = {}
    if batch.q.dtype == E4M3:
        found["q_descale"] = descale("q", layout, batch, g)
    if batch.k_cache.dtype == E4M3:
        found["k_descale"] = descale("k", layout, batch, g)
        found["v_descale"] = descale("v", layout, batch, g)
    return found


def options(batch: Batch, *, causal=True, window=(-1, -1), softcap=0.0, alibi=False, sinks=False, g=None, **extra):
    """The attention options both sides take (the launcher's names)."""
    num_heads = batch.q.shape[1]
    g = g or torch.Generator().manual_seed(99)
    found = dict(softmax_scale=batch.q.shape[2] ** -0.5, causal=causal, window=window, softcap=softcap,
                 alibi_slopes=None, sinks=None, q_descale=None, k_descale=None, v_descale=None)
    if alibi:
        found["alibi_slopes"] = torch.tensor([2.0 ** (-4.0 * (h + 1) / num_heads) for h in range(num_heads)])
    if sinks:
        found["sinks"] = torch.randn(num_heads, generator=g) * 2
    found.update(extra)
    return found


def run_kernel(batch: Batch, out, opts, splits=None, config=None):
    kernels.attend(batch.q, batch.k_cache, batch.v_cache, out, **batch.index(), **opts, splits=splits, config=config)
    return out


def run_reference(batch: Batch, out, opts):
    opts = dict(opts)
    opts["window_size"] = opts.pop("window")
    lowbit.unified_attention(batch.q, batch.k_cache, batch.v_cache, out=out, backend="cpu", **batch.index(), **opts)
    return out


def filled(batch: Batch, dtype):
    return torch.full(batch.q.shape, SENTINEL, dtype=dtype)


def blind_rows(batch: Batch, causal, window) -> list[int]:
    """Token rows (of q) that see no key under [ATTN-MASK], straight from the clause."""
    left, right = window
    found = []
    first = 0
    for q_len, kv_len in batch.lens:
        for i in range(q_len):
            p = i + kv_len - q_len
            if not any((not causal or j <= p) and (left < 0 or j >= p - left) and (right < 0 or j <= p + right)
                       for j in range(kv_len)):
                found.append(first + i)
        first += q_len
    return found


def excess(got, want, tolerance) -> float:
    """max |got - want| / (atol + rtol |want|) over the rows of a sequence: <= 1 is within [ATTN-TOLERANCE]."""
    atol, rtol = tolerance
    g, w = got.double(), want.double()
    ratio = (g - w).abs() / (atol + rtol * w.abs())
    return float(torch.where(torch.isnan(ratio), torch.inf, ratio).max()) if ratio.numel() else 0.0


def assert_within_tolerance(got, want, tolerance, rows, what=""):
    atol, rtol = tolerance
    g, w = got[:rows].double(), want[:rows].double()
    bad = ~((g - w).abs() <= atol + rtol * w.abs())
    if bad.any():
        first = bad.nonzero()[:5].tolist()
        detail = [(i, float(g[tuple(i)]), float(w[tuple(i)])) for i in first]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements outside atol {atol}, rtol {rtol} "
                             f"(max excess {excess(g, w, tolerance):.3g}); first (index, kernel, reference): {detail}")


def check(batch: Batch, opts, out_dtype, splits=None, config=None, out=None):
    """The kernel's output against the reference's; the sentinel rows kept; blind rows exactly 0.
    Returns (kernel output, reference output)."""
    got = run_kernel(batch, filled(batch, out_dtype) if out is None else out, opts, splits, config)
    want = run_reference(batch, filled(batch, out_dtype), opts)
    rows = int(batch.cu_seqlens_q[-1])
    assert torch.all(got[rows:] == SENTINEL), "the kernel wrote rows past cu_seqlens_q[-1]"
    assert not torch.isnan(got[:rows]).any(), "NaN in the output: the kernel read a slot that holds no key"
    assert_within_tolerance(got, want, attention_tolerance(batch.q.dtype, batch.k_cache.dtype), rows)
    blind = blind_rows(batch, opts["causal"], opts["window"])
    if blind:
        assert torch.all(got[blind] == 0), "a row that sees no key is not zero"
    return got, want


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    seqs: str
    heads: tuple
    head_size: int
    page: int
    mask: tuple
    softcap: float
    alibi: bool
    sinks: bool
    mode: str
    layout: str
    splits: int | None
    config: str
    loose: bool
    seed: int

    @property
    def id(self) -> str:
        causal, (left, right) = self.mask
        fp8 = E4M3 in MODES[self.mode][:2]
        return (f"{self.seed}-{self.seqs}-h{self.heads[0]}x{self.heads[1]}-d{self.head_size}-p{self.page}"
                f"-{'causal' if causal else 'full'}-w{left}_{right}{f'-cap{self.softcap:g}' if self.softcap else ''}"
                f"{'-alibi' if self.alibi else ''}{'-sinks' if self.sinks else ''}-{self.mode}"
                f"{'-' + self.layout if fp8 else ''}-s{self.splits or 'plan'}-{self.config}"
                f"{'-loose' if self.loose else ''}")


AXES = [list(SEQS), HEADS, HEAD_SIZES, PAGES, MASKS, [0.0, 5.0], [False, True], [False, True], list(MODES), LAYOUTS,
        SPLITS, list(CONFIGS), [False, False, True]]


def balanced_sample(n, seed=20240611) -> list[Case]:
    """n cases: each axis's levels repeated to length n and shuffled on their own, so every level of
    every axis appears about n / levels times, in random combinations."""
    rng = random.Random(seed)
    columns = []
    for levels in AXES:
        column = (levels * (n // len(levels) + 1))[:n]
        rng.shuffle(column)
        columns.append(column)
    return [Case(*row, seed=i) for i, row in enumerate(zip(*columns))]


CASES = balanced_sample(96)


def test_the_sample_covers_every_level_of_every_axis_and_the_pairs_that_matter():
    for axis, levels in enumerate(AXES):
        seen = {astuple_field(c, axis) for c in CASES}
        assert all(level in seen for level in levels), (axis, levels, seen)
    pairs = {(c.splits, c.config, c.seqs) for c in CASES}
    assert (4, "small", "decode") in pairs and (4, "small", "spec") in pairs  # split-KV with several tiles
    assert {c.mode for c in CASES if c.layout == "seq_head"} >= {"fp8kv", "fp8", "fp8kv-fp16", "fp8-outfp16"}


def astuple_field(case: Case, axis: int):
    return getattr(case, list(Case.__dataclass_fields__)[axis])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kernel_matches_reference(case: Case):
    q_dtype, kv_dtype, out_dtype = MODES[case.mode]
    batch = make_batch(SEQS[case.seqs], case.heads, case.head_size, case.page, q_dtype, kv_dtype, seed=case.seed,
                       loose=case.loose)
    g = torch.Generator().manual_seed(1000 + case.seed)
    causal, window = case.mask
    opts = options(batch, causal=causal, window=window, softcap=case.softcap, alibi=case.alibi, sinks=case.sinks,
                   g=g, **fp8_descales(batch, case.layout, g))
    check(batch, opts, out_dtype, case.splits, CONFIGS[case.config])


# --------------------------------------------------------------------------------------------
# Every descale is applied, and per (sequence, KV head) to the right rows
# --------------------------------------------------------------------------------------------

DESCALE_LENS = [(1, 45), (2, 30), (1, 60)]  # decode-like (split-KV allowed), several key tiles


@pytest.mark.parametrize("splits", [1, 4], ids=["2d", "split4"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_each_descale_is_applied_to_its_sequence_and_kv_head(which, layout, splits):
    q_dtype = E4M3 if which == "q" else BF16
    # scores of a few units, so scaling them moves the weights; values of tens, so the output moves
    # past the FP8 tolerance (mostly relative) where the weights' change shows
    batch = make_batch(DESCALE_LENS, (4, 2), 64, 16, q_dtype, E4M3, seed=31, q_spread=4.0, v_spread=20.0)
    descales = fp8_descales(batch, "tensor")
    descales[f"{which}_descale"] = descale(which, layout, batch)
    opts = options(batch, causal=True, **descales)
    tolerance = attention_tolerance(q_dtype, E4M3)
    if splits == 4:
        assert plan(num_tokens=batch.q.shape[0], num_seqs=3, max_seqlen_q=batch.max_seqlen_q,
                    max_seqlen_k=batch.max_seqlen_k, group=2, kv_heads=2, head_size=64, sm_count=8, splits=4,
                    config=SMALL).splits == 4
    got, _ = check(batch, opts, BF16, splits=splits, config=SMALL)
    rows = int(batch.cu_seqlens_q[-1])

    d = opts[f"{which}_descale"]
    wrong = {"ignored (1)": torch.ones_like(d)}
    if layout == "seq_head":
        wrong["rolled over sequences"] = d.roll(1, 0)
        wrong["rolled over KV heads"] = d.roll(1, 1)
        wrong["first sequence's and head's for all"] = d[:1, :1].clone()
    for what, alternative in wrong.items():
        other = run_reference(batch, filled(batch, BF16), {**opts, f"{which}_descale": alternative})
        assert excess(got[:rows], other[:rows], tolerance) > 1, (
            f"{which}_descale {what}: the reference is within tolerance of the kernel even so; this test "
            "cannot tell whether the descale is applied")


# --------------------------------------------------------------------------------------------
# Tile runs, rows that see nothing, strides, empty calls
# --------------------------------------------------------------------------------------------

def tile_kinds(lens, causal, window, block_q, block_n):
    """Per (sequence, query block): each key tile's visibility from [ATTN-MASK] directly: 'full'
    (every row of the block sees every key of the tile), 'none', or 'part'."""
    left, right = window
    found = []
    for q_len, kv_len in lens:
        for b in range(-(-q_len // block_q)):
            positions = [i + kv_len - q_len for i in range(b * block_q, min((b + 1) * block_q, q_len))]
            kinds = []
            for t in range(-(-kv_len // block_n)):
                seen = [(j < kv_len) and (not causal or j <= p) and (left < 0 or j >= p - left)
                        and (right < 0 or j <= p + right) for p in positions for j in range(t * block_n, (t + 1) * block_n)]
                kinds.append("full" if all(seen) else "part" if any(seen) else "none")
            found.append(kinds)
    return found


def has_three_runs(kinds) -> bool:
    """A partly seen tile, then a fully seen one, then a partly seen one: all three runs of the sweep."""
    text = "".join(k[0] for k in kinds if k != "none")
    return any(text[i] == "p" and "f" in text[i + 1:] and "p" in text[text.index("f", i + 1):]
               for i in range(len(text)))


@pytest.mark.parametrize("splits", [1, 4], ids=["2d", "split4"])
@pytest.mark.parametrize(("causal", "window"), [(True, (40, -1)), (False, (40, 20)), (False, (35, 0))])
@pytest.mark.parametrize("lens", [[(20, 100), (33, 130), (1, 64)], [(1, 90), (1, 130), (16, 120)]],
                         ids=["prefill", "decode"])
def test_masked_unmasked_and_masked_tile_runs(lens, causal, window, splits):
    batch = make_batch(lens, (4, 4), 80, 16, BF16, BF16, seed=5)
    p = plan(num_tokens=batch.q.shape[0], num_seqs=len(lens), max_seqlen_q=batch.max_seqlen_q,
             max_seqlen_k=batch.max_seqlen_k, group=1, kv_heads=4, head_size=80, sm_count=8, splits=splits,
             config=SMALL)
    assert p.block_q == 16
    assert p.splits == (splits if max(a for a, _ in lens) <= 16 else 1)
    assert any(has_three_runs(k) for k in tile_kinds(lens, causal, window, p.block_q, SMALL.block_n))
    opts = options(batch, causal=causal, window=window, alibi=True, sinks=True)
    check(batch, opts, BF16, splits=splits, config=SMALL)


BLIND_LENS = [(3, 0), (4, 2), (1, 40), (2, 2), (4, 25)]  # kv_len 0; rows at negative positions


@pytest.mark.parametrize("splits", [1, 4], ids=["2d", "split4"])
@pytest.mark.parametrize("sinks", [False, True], ids=["", "sinks"])
@pytest.mark.parametrize(("causal", "window"), [(True, (-1, -1)), (True, (8, -1)), (False, (6, 3)),
                                                (False, (-1, -1))])
def test_rows_that_see_no_key_are_zero(causal, window, sinks, splits):
    batch = make_batch(BLIND_LENS, (8, 2), 64, 16, BF16, BF16, seed=11)
    blind = blind_rows(batch, causal, window)
    assert set(range(3)) <= set(blind)  # the kv_len = 0 sequence at least
    opts = options(batch, causal=causal, window=window, sinks=sinks)
    got, want = check(batch, opts, BF16, splits=splits, config=SMALL)
    assert torch.all(want[blind] == 0)
    seen = sorted(set(range(int(batch.cu_seqlens_q[-1]))) - set(blind))
    assert torch.all(got[seen].abs().amax(dim=(1, 2)) > 0)


@pytest.mark.parametrize("splits", [None, 4], ids=["plan", "split4"])
@pytest.mark.parametrize("lens", ["mixed", "spec"])
def test_strided_q_out_and_caches(lens, splits):
    """q a slice of a fused qkv projection, out a slice of a wider buffer, K and V the two halves of
    one (blocks, 2, page, kv_heads, head) cache: every stride but the last differs from contiguous."""
    base = make_batch(SEQS[lens], (8, 2), 80, 16, BF16, BF16, seed=23)
    tokens, num_heads, d = base.q.shape
    qkv = torch.full((tokens, num_heads + 4, d), NAN, dtype=BF16)
    qkv[:, :num_heads] = base.q
    kv = torch.stack([base.k_cache, base.v_cache], dim=1)
    wide = torch.full((tokens, num_heads + 1, d + 16), SENTINEL, dtype=BF16)
    batch = Batch(qkv[:, :num_heads], kv[:, 0], kv[:, 1], base.cu_seqlens_q, base.seqused_k, base.block_table,
                  base.max_seqlen_q, base.max_seqlen_k, base.lens)
    assert not batch.q.is_contiguous() and not batch.k_cache.is_contiguous()
    out = wide[:, 1:, 8:d + 8]
    assert not out.is_contiguous() and out.stride(-1) == 1
    opts = options(batch, causal=True, window=(20, -1), alibi=True, sinks=True)
    check(batch, opts, BF16, splits=splits, config=SMALL, out=out)
    outside = torch.ones_like(wide, dtype=torch.bool)
    outside[:, 1:, 8:d + 8] = False
    assert torch.all(wide[outside] == SENTINEL), "the kernel wrote outside its out slice"
    contiguous = run_kernel(base, filled(base, BF16), opts, splits, SMALL)
    assert torch.equal(out, contiguous), "strides changed the result"


@pytest.mark.parametrize("lens", [[], [(0, 5), (0, 0)]], ids=["no-sequences", "no-query-rows"])
def test_calls_without_query_rows_write_nothing(lens):
    batch = make_batch(lens, (4, 2), 64, 16, BF16, BF16, seed=3)
    out = filled(batch, BF16)
    run_kernel(batch, out, options(batch, sinks=True))
    assert torch.all(out == SENTINEL)


# --------------------------------------------------------------------------------------------
# [ATTN-METADATA]: any index values, only the call's own memory; NaN rows for malformed sequences
# --------------------------------------------------------------------------------------------
# The launcher is called directly: the public call on CPU tensors refuses these before any kernel.

GUARD = 3  # rows of `out`'s buffer before and after it, which no call may write


@pytest.mark.parametrize("splits", [None, 1, 4], ids=["plan", "2d", "split4"])
@pytest.mark.parametrize("lens", METADATA_LENS)
@pytest.mark.parametrize("name", METADATA_BREAKS)
def test_malformed_metadata_gives_nan_rows_and_touches_nothing_else(name, lens, splits):
    args, kwargs = broken_call(METADATA_LENS[lens], [name])
    q, k_cache, v_cache = args
    buffer = torch.full((q.shape[0] + 2 * GUARD, *q.shape[1:]), SENTINEL, dtype=BF16)
    out = buffer[GUARD:-GUARD]
    opts = dict(softmax_scale=q.shape[2] ** -0.5, causal=True, window=(-1, -1), softcap=0.0, alibi_slopes=None,
                sinks=None, q_descale=None, k_descale=None, v_descale=None)
    kernels.attend(q, k_cache, v_cache, out, **kwargs, **opts, splits=splits, config=SMALL)
    assert torch.all(buffer[:GUARD] == SENTINEL) and torch.all(buffer[-GUARD:] == SENTINEL)
    outcomes = metadata_outcomes(q, k_cache, v_cache, **kwargs)
    assert_metadata_outcomes(out, outcomes, attention_tolerance(BF16, BF16), SENTINEL, f"{name} {lens}")


# --------------------------------------------------------------------------------------------
# The GPU's float16 dots, interpreted
# --------------------------------------------------------------------------------------------
# On CPU tensors attend() sets DOT_F32 (the interpreter's tl.dot takes bfloat16 operands for
# integers), so the grid above never runs the conversions a GPU runs before each tl.dot. With an
# FP8 cache or a float16 query those dots take float16 operands, which the interpreter multiplies
# correctly (numpy, float32 accumulation): these tests launch with DOT_F32 off, as on a GPU.

class GpuDots:
    """unified_attention_kernel launched with DOT_F32=False."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            return self.kernel[grid](*args, **{**kwargs, "DOT_F32": False})
        return launch


GPU_DOT_CASES = [  # (mode, q spread, lens, splits)
    ("fp8kv", 1.0, "mixed", None), ("fp8kv", 1.0, "decode", 4), ("fp8kv", 3e4, "spec", None),
    ("fp8kv", 2e-5, "mixed", 1), ("fp8kv-fp16", 1.0, "mixed", None), ("fp8kv-fp16", 1.0, "spec", 4),
    ("fp8", 1.0, "mixed", 1), ("fp8-outfp16", 4.0, "decode", 4), ("fp16", 1.0, "mixed", None), ("fp16", 1.0, "decode", 4),
]


@pytest.mark.parametrize(("mode", "spread", "lens", "splits"), GPU_DOT_CASES,
                         ids=[f"{m}-q{s:g}-{lens}-s{sp or 'plan'}" for m, s, lens, sp in GPU_DOT_CASES])
def test_float16_dots_as_on_a_gpu_match_reference(monkeypatch, mode, spread, lens, splits):
    """A bfloat16 query with an FP8 cache goes through to_float16 (scaled by a power of two per
    row); q spreads of 3e4 and 2e-5 put its rows outside float16's comfortable range."""
    q_dtype, kv_dtype, out_dtype = MODES[mode]
    monkeypatch.setattr(kernels, "unified_attention_kernel", GpuDots(kernels.unified_attention_kernel))
    batch = make_batch(SEQS[lens], (8, 2), 80, 16, q_dtype, kv_dtype, seed=41, q_spread=spread)
    g = torch.Generator().manual_seed(41)
    opts = options(batch, causal=True, window=(20, -1), softcap=5.0 if spread == 1.0 else 0.0, alibi=True, sinks=True,
                   g=g, **fp8_descales(batch, "seq_head", g))
    opts["softmax_scale"] /= spread ** 0.5  # scores of a few units whatever the spread
    check(batch, opts, out_dtype, splits=splits, config=SMALL)


@triton.jit
def _to_float16_probe(x_ptr, q_ptr, scale_ptr, COLS: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.arange(0, ROWS)
    offs = rows[:, None] * COLS + tl.arange(0, COLS)[None, :]
    q16, scale = to_float16(tl.load(x_ptr + offs))
    tl.store(q_ptr + offs, q16)
    tl.store(scale_ptr + rows, tl.full([ROWS], 1.0, tl.float32) * scale)


def to_float16_of(x):
    q16 = torch.empty(x.shape, dtype=F16)
    scale = torch.empty(x.shape[0], dtype=F32)
    _to_float16_probe[(1,)](x, q16, scale, COLS=x.shape[1], ROWS=x.shape[0])
    return q16, scale


def assert_float16_rows_keep_every_bit(x, q16, scale):
    """Each row's largest magnitude lands in [2^14, 2^15) of float16, by a power-of-two scale;
    q16 * scale is x exactly wherever the scaled value is a float16 normal, and within 2^-38 of
    the row's largest magnitude anywhere (the docstring's promise)."""
    xf, back = x.double(), q16.double() * scale.double()[:, None]
    row_max = xf.abs().amax(1)
    assert torch.all(torch.isfinite(q16.double())), "a row overflowed float16"
    assert torch.all(torch.log2(scale.double()) == torch.log2(scale.double()).round()), "scales are not powers of two"
    top = q16.double().abs().amax(1)
    assert torch.all((top >= 2.0**14) & (top < 2.0**15)), top
    normal = q16.double().abs() >= 2.0**-14
    assert torch.equal(back[normal], xf[normal])
    assert torch.all((back - xf).abs() <= row_max[:, None] * 2.0**-38)


def bfloat16_rows(exponents, seed):
    """One row of 64 per exponent: random values, each element down to 2^-45 of its row's largest."""
    g = torch.Generator().manual_seed(seed)
    exponents = torch.tensor(exponents, dtype=torch.float64)
    spread = torch.randint(-45, 1, (len(exponents), 64), generator=g).double()
    x = torch.randn(len(exponents), 64, generator=g, dtype=torch.float64) * torch.exp2(exponents[:, None] + spread)
    return x.to(BF16)


def test_to_float16_scales_bfloat16_rows_into_float16_keeping_every_bit():
    x = bfloat16_rows([-84, -60, -40, -20, -10, -3, 0, 1, 5, 14, 15, 16, 30, 60, 90, 110], seed=3)
    assert_float16_rows_keep_every_bit(x, *to_float16_of(x))


@pytest.mark.parametrize("exponent", [-110, 120], ids=["tiny", "huge"])
def test_to_float16_rows_at_the_ends_of_the_bfloat16_range(exponent):
    x = bfloat16_rows([exponent] * 16, seed=5)
    assert_float16_rows_keep_every_bit(x, *to_float16_of(x))


@pytest.mark.parametrize("dtype", [F16, E4M3])
def test_to_float16_converts_float16_and_fp8_rows_as_they_are(dtype):
    x = (torch.randn(16, 32, generator=torch.Generator().manual_seed(4)) * 20).to(dtype)
    q16, scale = to_float16_of(x)
    assert torch.equal(q16, x.to(F16)) and torch.all(scale == 1)


# --------------------------------------------------------------------------------------------
# plan(): the launch from host ints
# --------------------------------------------------------------------------------------------

def is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def owner(cu: list[int], block_q: int, block_id: int) -> int:
    """The kernel's find_sequence, formulated independently: sequence s's query blocks start at
    cu[s] // block_q + s; a program belongs to the last sequence starting at or before it."""
    return max(s for s in range(len(cu) - 1) if cu[s] // block_q + s <= block_id)


def assignment(cu: list[int], block_q: int, query_blocks: int, splits: int = 1) -> dict:
    """(sequence, query block) -> the program ids that compute it, as the kernel assigns them: a
    program whose query block starts past its sequence's rows returns without work. Split-KV
    programs take one sequence each, in order."""
    found = {}
    for pid in range(query_blocks):
        s = owner(cu, block_q, pid) if splits == 1 else pid
        q_block = pid - (cu[s] // block_q + s) if splits == 1 else 0
        if q_block * block_q < cu[s + 1] - cu[s]:
            found.setdefault((s, q_block), []).append(pid)
    return found


def random_lens(rng: random.Random, num_seqs: int, max_q: int) -> list[int]:
    return [rng.choice([0, 1, 1, max_q, rng.randint(0, max_q)]) for _ in range(num_seqs)]


def random_plan_args(rng: random.Random) -> dict:
    max_q = rng.choice([1, 1, 2, 3, 4, 7, 16, 17, 100, 513])
    num_seqs = rng.choice([1, 2, 3, 5, 8, 33, 200])
    lens = random_lens(rng, num_seqs, max_q)
    kv_heads = rng.choice([1, 2, 4, 8])
    return dict(lens=lens, num_tokens=sum(lens) + rng.choice([0, 0, 1, 5]), num_seqs=num_seqs,
                max_seqlen_q=max(max(lens), 1) if rng.random() < 0.8 else max(lens) + rng.randint(0, 5),
                max_seqlen_k=rng.choice([0, 1, 15, 64, 65, 150, 1000, 4096, 131072]), kv_heads=kv_heads,
                group=rng.choice([1, 2, 3, 4, 5, 7, 8, 16, 32]), head_size=rng.choice([32, 64, 80, 96, 128, 192, 256]),
                sm_count=rng.choice([8, 78, 132, 170]))


PLAN_ARGS = [random_plan_args(random.Random(i)) for i in range(400)]


def call_plan(args, **overrides):
    args = {k: v for k, v in args.items() if k != "lens"} | overrides
    return plan(**args)


def key_tiles(args, p) -> int:
    return -(-max(args["max_seqlen_k"], 1) // p.config.block_n)


@pytest.mark.parametrize("head_size", [64, 80, 128, 256])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("num_seqs", [1, 4])
def test_plan_splits_keys_of_a_small_decode_batch(head_size, group, num_seqs):
    p = plan(num_tokens=num_seqs, num_seqs=num_seqs, max_seqlen_q=1, max_seqlen_k=4096, group=group, kv_heads=2,
             head_size=head_size, sm_count=132)
    assert p.splits > 1 and is_pow2(p.splits)
    assert p.config == kernels.DECODE[min(s for s in kernels.DECODE if s >= max(head_size, 16))]


@pytest.mark.parametrize("splits", [None, 4, 64])
@pytest.mark.parametrize("max_seqlen_q", [17, 100, 512])
def test_plan_prefill_takes_the_2d_launch(max_seqlen_q, splits):
    p = plan(num_tokens=3 * max_seqlen_q, num_seqs=3, max_seqlen_q=max_seqlen_q, max_seqlen_k=8192, group=8, kv_heads=1,
             head_size=128, sm_count=132, splits=splits)
    assert max_seqlen_q > p.block_q
    assert p.splits == 1


def test_plan_a_large_decode_batch_fills_the_gpu_without_splitting():
    p = plan(num_tokens=512, num_seqs=512, max_seqlen_q=1, max_seqlen_k=8192, group=4, kv_heads=8, head_size=128,
             sm_count=132)
    assert p.splits == 1


def test_plan_invariants_over_random_calls():
    splitting = 0
    for args in PLAN_ARGS:
        for forced in (None, 1, 3, 4, 1000):
            p = call_plan(args, splits=forced)
            tiles = key_tiles(args, p)
            what = f"{args} splits={forced}: {p}"
            assert is_pow2(p.splits), what
            assert p.splits <= (kernels.MAX_SPLITS if forced is None else forced), what
            assert p.splits <= tiles, what  # every split sweeps at least one key tile
            assert -(-tiles // p.splits) * p.splits >= tiles, what  # the splits cover every key tile
            assert is_pow2(p.heads) and p.heads * p.block_q == p.config.block_m, what
            assert p.heads >= min(triton.next_power_of_2(args["group"]), p.config.block_m), what
            if args["max_seqlen_q"] > p.block_q:
                assert p.splits == 1, what  # the reduction takes one query block per sequence
            if forced == 1:
                assert p.splits == 1, what
            splitting += p.splits > 1
    assert splitting > 100  # the sweep reaches the split path


def test_plan_splits_never_exceed_the_key_tiles():
    over = []
    for args in PLAN_ARGS:
        p = call_plan(args)
        if p.splits > key_tiles(args, p):
            over.append((args["max_seqlen_k"], p.config.block_n, p.splits))
    assert not over, f"{len(over)} plans with more splits than key tiles, e.g. (max_seqlen_k, block_n, splits) {over[:3]}"


def test_plan_grid_gives_every_query_block_exactly_one_program():
    checked = 0
    for args in PLAN_ARGS:
        for config in (None, SMALL, AttentionConfig(64, 32, 4, 2)):
            p = call_plan(args, config=config)
            lens = args["lens"]
            cu = [0, *itertools.accumulate(lens)]
            got = assignment(cu, p.block_q, p.query_blocks, p.splits)
            want = {(s, b) for s, n in enumerate(lens) for b in range(-(-n // p.block_q))}
            assert set(got) == want, f"{args}: blocks without a program: {sorted(want - set(got))[:5]}"
            assert all(len(pids) == 1 for pids in got.values()), f"{args}: a block computed twice"
            checked += len(want)
    assert checked > 10_000


@triton.jit
def _find_sequence_probe(cu_seqlens_q, num_seqs, out, BLOCK_Q: tl.constexpr):
    block_id = tl.program_id(0)
    tl.store(out + block_id, find_sequence(cu_seqlens_q, num_seqs, block_id, BLOCK_Q))


@pytest.mark.parametrize("seed", range(4))
def test_find_sequence_kernel_helper_agrees_with_the_independent_formulation(seed):
    rng = random.Random(seed)
    num_seqs = rng.choice([1, 3, 9, 24])
    block_q = rng.choice([1, 2, 4, 8, 16])
    lens = random_lens(rng, num_seqs, rng.choice([1, 5, 16, 40]))
    cu = [0, *itertools.accumulate(lens)]
    query_blocks = (cu[-1] + 3) // block_q + num_seqs
    out = torch.full((query_blocks,), -5, dtype=I32)
    _find_sequence_probe[(query_blocks,)](torch.tensor(cu, dtype=I32), num_seqs, out, BLOCK_Q=block_q)
    assert out.tolist() == [owner(cu, block_q, pid) for pid in range(query_blocks)]

