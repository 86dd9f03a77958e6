"""unified_attention on NVIDIA GPUs (lowbit.backends.cuda, the portable Triton kernel) against the
reference (docs/SPEC.md "Attention") within [ATTN-TOLERANCE]: a pairwise-covering grid over query/KV
length mixes, head counts (GQA, MQA, a group of 5), head sizes, page sizes, windows, softcap,
causal, FP8 modes and descale layouts, sinks and ALiBi; float16; the 2-D and split-KV launches
(auto and forced); every descale applied; CUDA-graph capture and replay on new values;
torch.compile(fullgraph=True); a KV cache of more than 2**31 elements; LOWBIT_DEBUG=1 and the
absence of host syncs without it.

The GPU side goes through the public API with auto-dispatch, which must pick cuda/triton (asserted
per call; LOWBIT_STRICT=1 makes a silent fallback to the reference an error), except where a test
forces a launch through `lowbit.backends.triton.unified_attention.attend`. The expectation is
`backend="cpu"` on the CPU copy of the same inputs.

Every input carries traps the reference never reads: K/V slots past a sequence's end and a whole
page hold NaN, block-table entries past a sequence's last page (and a spare row) point at that NaN
page, q has rows after the last sequence, and `out` starts as NaN so rows outside every sequence
must stay NaN.
"""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
from attention_cases import BF16, DESCALES, MIXES, Case, assert_close, build, excess
from preambles import on_cuda
from test_spec_attention import (  # [ATTN-METADATA] as the clause reads
    METADATA_BREAKS,
    METADATA_LENS,
    assert_metadata_outcomes,
    attention_tolerance,
    broken_call,
    metadata_call,
    metadata_outcomes,
)

import lowbit

# the module: `lowbit.unified_attention` (and `import lowbit.unified_attention as m`) is the function
attention_op = importlib.import_module("lowbit.unified_attention")
triton = pytest.importorskip("triton")
triton_attention = pytest.importorskip("lowbit.backends.triton.unified_attention")

pytestmark = [*on_cuda(80, "the cuda backend's attention kernel needs sm_80+"),
              pytest.mark.usefixtures("strict_dispatch")]

OP = "unified_attention"
FP16 = torch.float16

# mode (tests/attention_cases.py build): "bf16" | "fp8kv/<layout>" (bfloat16 q, FP8 cache) | "fp8all/<layout>" (FP8 q and cache);
# layout: "tensor" (one value) or "seqhead" (one per sequence and KV head)
MODES = ("bf16", "fp8kv/tensor", "fp8kv/seqhead", "fp8all/tensor", "fp8all/seqhead")
AXES = {
    "mix": tuple(MIXES),
    "heads": ((4, 4), (8, 2), (5, 1), (32, 8)),
    "head_size": (64, 80, 128, 256),
    "page": (16, 32),
    "window": (None, 64, 256),  # w: window_size (w, w // 2); the right bound only matters when not causal
    "softcap": (0.0, 50.0),
    "causal": (True, False),
    "mode": MODES,
    "sinks": (False, True),
    "alibi": (False, True),
}


def all_pairs(axes: dict[str, tuple]) -> list[dict]:
    """A deterministic covering array of strength 2: rows (one value per axis) such that every pair
    of values of every two axes appears in some row. Greedy: each row starts from an uncovered pair
    of the two largest axes left and takes, axis by axis (largest first), the value that covers
    the most uncovered pairs with the values chosen so far, ties to the value used least."""
    names = list(axes)
    sizes = [len(axes[n]) for n in names]

    def key(c, v, d, w):
        return (c, v, d, w) if c < d else (d, w, c, v)

    need = {(a, i, b, j) for a, b in itertools.combinations(range(len(names)), 2)
            for i in range(sizes[a]) for j in range(sizes[b])}
    used = [[0] * s for s in sizes]
    rows = []
    while need:
        a, i, b, j = max(need, key=lambda p: (sizes[p[0]] * sizes[p[2]], -p[0], -p[2], -p[1], -p[3]))
        row = {a: i, b: j}
        for c in sorted(range(len(names)), key=lambda c: -sizes[c]):
            if c not in row:
                row[c] = max(range(sizes[c]), key=lambda v: (sum(key(c, v, d, w) in need for d, w in row.items()),
                                                             -used[c][v], -v))
        for c, v in row.items():
            used[c][v] += 1
        need -= {key(c, row[c], d, row[d]) for c, d in itertools.combinations(range(len(names)), 2)}
        rows.append({n: axes[n][row[c]] for c, n in enumerate(names)})
    return rows


def uncovered_pairs(rows: list[dict], axes: dict[str, tuple]) -> list[tuple]:
    """Pairs of axis values no row holds (empty for a covering array)."""
    seen = {(a, repr(r[a]), b, repr(r[b])) for r in rows for a, b in itertools.combinations(axes, 2)}
    return [(a, u, b, v) for a, b in itertools.combinations(axes, 2) for u in axes[a] for v in axes[b]
            if (a, repr(u), b, repr(v)) not in seen]


GRID = all_pairs(AXES)


def case_id(c: dict) -> str:
    window = "nowin" if c["window"] is None else f"win{c['window']}"
    return "-".join([c["mix"], "h{}x{}".format(*c["heads"]), f"d{c['head_size']}", f"p{c['page']}", window,
                     f"cap{c['softcap']:g}", "causal" if c["causal"] else "full", c["mode"].replace("/", "_"),
                     "sinks" if c["sinks"] else "nosinks", "alibi" if c["alibi"] else "noalibi"])


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    """No LOWBIT_DEBUG unless a test sets it."""
    monkeypatch.delenv(attention_op.ENV_DEBUG, raising=False)


# --- inputs ------------------------------------------------------------------------------------------

# (Case and build, shared with the xpu suite: tests/attention_cases.py)

def grid_case(c: dict, seed: int) -> Case:
    return build(MIXES[c["mix"]], c["heads"], c["head_size"], c["page"], mode=c["mode"], causal=c["causal"],
                 window=c["window"], softcap=c["softcap"], sinks=c["sinks"], alibi=c["alibi"], seed=seed,
                 scalar_descale=seed % 2 == 1, transposed_descale=seed % 2 == 1)


# --- comparison ----------------------------------------------------------------------------------

def assert_matches_reference(case: Case, got: torch.Tensor, what: str = "", poisoned: bool = True) -> None:
    """Rows inside sequences within tolerance of the reference; with `poisoned` (out started as
    NaN), rows outside every sequence left alone."""
    got = got.cpu()
    assert got.dtype == case.out_dtype, f"{what}: out dtype {got.dtype}, want {case.out_dtype}"
    mask = case.written()
    assert_close(got[mask], case.reference()[mask], case.fp8, what)
    if poisoned:
        assert torch.isnan(got[~mask].float()).all(), f"{what}: rows outside every sequence were written"


def poisoned_out(case: Case, device="cuda") -> torch.Tensor:
    return torch.full(case.q.shape, float("nan"), dtype=case.out_dtype, device=device)


def assert_auto_picks_cuda_triton(q, k, v, kwargs) -> None:
    verdict = lowbit.supports(OP, q, k, v, **kwargs)
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton", False), verdict.explain()


def sm_count() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count


def plan_for(case: Case, **overrides) -> triton_attention.Plan:
    """The launch the kernel's launcher makes for this case (host ints only)."""
    heads, kv_heads = case.q.shape[1], case.k_cache.shape[2]
    return triton_attention.plan(num_tokens=case.q.shape[0], num_seqs=len(case.rows),
                                 max_seqlen_q=case.kwargs["max_seqlen_q"], max_seqlen_k=case.kwargs["max_seqlen_k"],
                                 group=heads // kv_heads, kv_heads=kv_heads, head_size=case.q.shape[-1],
                                 sm_count=sm_count(), **overrides)


def run_public(case: Case, give_out: bool = True) -> torch.Tensor:
    """lowbit.unified_attention on the CUDA copy of the case, auto-dispatched (asserted cuda/triton)."""
    q, k, v, kw = case.on("cuda")
    out = poisoned_out(case) if give_out else None
    assert_auto_picks_cuda_triton(q, k, v, {**kw, "out": out})
    got = lowbit.unified_attention(q, k, v, out=out, **kw)
    assert got.device.type == "cuda" and got.shape == q.shape
    if give_out:
        assert got is out
    return got


# --- the grid --------------------------------------------------------------------------------------

def test_the_grid_covers_every_pair_of_axis_values():
    assert not uncovered_pairs(GRID, AXES)
    assert len({case_id(c) for c in GRID}) == len(GRID)


@pytest.mark.parametrize("index", range(len(GRID)), ids=[case_id(c) for c in GRID])
def test_grid_matches_the_reference(index):
    c = GRID[index]
    case = grid_case(c, seed=index)
    give_out = index % 3 != 2  # now and then lowbit allocates out
    got = run_public(case, give_out=give_out)
    p = plan_for(case)
    assert_matches_reference(case, got, f"{case_id(c)} (splits {p.splits})", poisoned=give_out)


def test_the_grid_takes_both_launches():
    """On this GPU the decode mix runs split-KV and the mixed one the 2-D launch, for every head config."""
    for c in GRID:
        seqs, (heads, kv_heads) = MIXES[c["mix"]], c["heads"]
        splits = triton_attention.plan(num_tokens=sum(a for a, _ in seqs) + 3, num_seqs=len(seqs),
                                       max_seqlen_q=max(a for a, _ in seqs), max_seqlen_k=max(b for _, b in seqs),
                                       group=heads // kv_heads, kv_heads=kv_heads, head_size=c["head_size"],
                                       sm_count=sm_count()).splits
        assert (splits > 1) == (c["mix"] == "decode"), (case_id(c), splits)


# --- float16 ---------------------------------------------------------------------------------------

FP16_CASES = {
    "fp16": dict(dtype=FP16, mode="bf16"),  # "bf16" mode: the cache in q's dtype, here float16
    "fp16_q_fp8_kv": dict(dtype=FP16, mode="fp8kv/seqhead"),
    "fp8_q_fp16_out": dict(dtype=FP16, mode="fp8all/tensor", out_dtype=FP16),
}


@pytest.mark.parametrize(("name", "mix"), [("fp16", "mixed"), ("fp16", "decode"), ("fp16_q_fp8_kv", "mixed"),
                                           ("fp16_q_fp8_kv", "decode"), ("fp8_q_fp16_out", "decode")])
def test_float16(name, mix):
    options = FP16_CASES[name]
    case = build(MIXES[mix], (8, 2), 128, 16, causal=True, window=256, softcap=50.0, sinks=True, alibi=True,
                 per_head_dtype=FP16, seed=len(name), **options)
    assert case.out_dtype == FP16
    assert_matches_reference(case, run_public(case), f"{name} {mix}")


# --- the two launches ------------------------------------------------------------------------------

EDGE_MIXES = {
    # q_len 0, q_len > kv_len (rows that see no key when causal), kv_len 0, single keys, a page boundary
    "edges_2d": ((0, 40), (5, 3), (3, 0), (1, 1), (17, 33), (40, 200), (2, 32)),
    # every query fits one block: the split path, with q_len 0 and kv_len 0 among them
    "edges_decode": ((1, 0), (0, 50), (1, 1), (2, 600), (1, 17), (1, 32)),
}


def test_decode_with_few_sequences_auto_picks_split_kv():
    case = build(MIXES["decode"], (8, 2), 128, 16, mode="fp8all/seqhead", window=256, softcap=50.0, sinks=True,
                 alibi=True, seed=11)
    assert plan_for(case).splits > 1, plan_for(case)
    assert_matches_reference(case, run_public(case), "decode, split-KV")


def test_prefill_auto_picks_the_2d_launch():
    case = build(MIXES["mixed"], (8, 2), 128, 16, mode="fp8all/seqhead", window=256, softcap=50.0, sinks=True,
                 alibi=True, seed=12)
    assert plan_for(case).splits == 1
    assert_matches_reference(case, run_public(case), "mixed, 2-D")


@pytest.mark.parametrize(("mix", "splits"), [(mix, splits) for mix in ("decode", "edges_decode") for splits in (1, 2, 8, 64)]
                         + [(mix, splits) for mix in ("mixed", "edges_2d") for splits in (1, 8)])
def test_forced_splits(splits, mix):
    """Through the launcher directly: any split count gives the reference's values; the plan keeps
    one split when a sequence's queries span more than one block. Causal with window (64, -) or not
    with window (256, 128), alternating over the split counts."""
    causal = splits in (1, 8) if "decode" in mix else splits == 1
    seqs = MIXES.get(mix) or EDGE_MIXES[mix]
    case = build(seqs, (8, 2), 80, 16, mode="fp8all/seqhead", causal=causal, window=64 if causal else 256,
                 softcap=50.0, sinks=True, alibi=True, seed=splits + len(mix))
    forced = plan_for(case, splits=splits)
    tiles = -(-case.kwargs["max_seqlen_k"] // forced.config.block_n)
    if "decode" in mix:
        assert forced.splits == min(splits, 1 << (tiles.bit_length() - 1)), forced  # no split without a tile
    else:
        assert forced.splits == 1, forced
    q, k, v, kw = case.attend_arguments("cuda")
    out = poisoned_out(case)
    triton_attention.attend(q, k, v, out, splits=splits, **kw)
    assert_matches_reference(case, out, f"{mix} splits={splits} (planned {forced.splits})")


@pytest.mark.parametrize("mix", list(EDGE_MIXES))
@pytest.mark.parametrize("sinks", [False, True], ids=["nosinks", "sinks"])
def test_edge_lengths_through_the_public_api(mix, sinks):
    """Rows that see no key (kv_len 0, or before the first key when causal) write zeros, with or without a sink."""
    case = build(EDGE_MIXES[mix], (4, 4), 64, 16, mode="fp8kv/tensor", sinks=sinks, seed=5)
    got = run_public(case)
    assert_matches_reference(case, got, mix)
    want = case.reference()
    mask = case.written()
    assert (want[mask].float().abs().amax(-1) == 0).any(), "the case has no row that sees nothing"


@pytest.mark.parametrize("heads", [(32, 1), (64, 2)], ids=lambda h: "h{}x{}".format(*h))
@pytest.mark.parametrize("mix", list(MIXES))
def test_large_query_groups_split_over_programs(heads, mix):
    """A group of 32 query heads per KV head: more than one program's rows on decode (chunks)."""
    case = build(MIXES[mix], heads, 64, 32, mode="bf16", sinks=True, alibi=True, window=256, seed=21)
    assert_matches_reference(case, run_public(case), f"{mix} {heads}")


@pytest.mark.parametrize(("mix", "config"), [("mixed", triton_attention.AttentionConfig(16, 32, 4, 2)),
                                             ("mixed", triton_attention.AttentionConfig(64, 64, 4, 2)),
                                             ("decode", triton_attention.AttentionConfig(128, 32, 8, 3))],
                         ids=["mixed-16x32", "mixed-64x64", "decode-128x32"])
def test_forced_configs(config, mix):
    """Tiles the tuned tables do not pick: decode-sized rows on prefill, prefill-sized on decode."""
    case = build(MIXES[mix], (5, 1), 128, 16, mode="fp8kv/seqhead", causal=False, window=256, sinks=True, seed=31)
    q, k, v, kw = case.attend_arguments("cuda")
    out = poisoned_out(case)
    triton_attention.attend(q, k, v, out, config=config, **kw)
    assert_matches_reference(case, out, f"{mix} {config}")


# --- each descale is applied -------------------------------------------------------------------------

@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("layout", ["tensor", "seqhead"])
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_each_descale_is_applied(which, layout, mix):
    """With only `which`'s descale off 1, the result matches the reference with that descale and
    clearly misses the reference with 1 in its place."""
    values = tuple(d if name == which else 1.0 for name, d in zip("qkv", DESCALES))
    case = build(MIXES[mix], (8, 2), 128, 16, mode=f"fp8all/{layout}", sinks=True, seed=41, descales=values,
                 q_scale=4.0)
    name = f"{which}_descale"
    got = run_public(case).cpu()
    mask = case.written()
    assert_close(got[mask], case.reference()[mask], True, f"{name}={values['qkv'.index(which)]}")
    unit = torch.ones_like(case.kwargs[name])
    ignored = case.reference(**{name: unit})[mask]
    over = excess(got[mask], ignored, True)
    assert (over > 0).float().mean() > 0.02, f"{name} barely changes the result: this case cannot tell"
    off_by = (got[mask].float() - ignored.float()).abs().mean()
    error = (got[mask].float() - case.reference()[mask].float()).abs().mean()
    assert off_by > 10 * error, (off_by, error)


# --- CUDA graphs ---------------------------------------------------------------------------------

GRAPH_SETUPS = {
    "2d": dict(mix="mixed", new_q_lens=(6, 0, 129), new_kv_lens=(463, 1, 1328)),
    "split": dict(mix="decode", new_q_lens=(1, 0, 1), new_kv_lens=(2011, 700, 3)),
}


@pytest.mark.parametrize("path", list(GRAPH_SETUPS))
def test_cuda_graph_capture_and_replay_on_new_values(path):
    """Capture one call with out=; then change q, the caches, seqused_k (within max_seqlen_k), the
    block table and cu_seqlens_q in place, replay, and compare with the reference of the new values."""
    setup = GRAPH_SETUPS[path]
    seqs = MIXES[setup["mix"]]
    options = dict(mode="fp8kv/seqhead", window=256, softcap=50.0, sinks=True, alibi=True)
    case = build(seqs, (8, 2), 128, 16, seed=51, **options)
    mq, mk = case.kwargs["max_seqlen_q"], case.kwargs["max_seqlen_k"]
    assert (plan_for(case).splits > 1) == (path == "split")
    q, k, v, kw = case.on("cuda")
    out = poisoned_out(case)
    assert_auto_picks_cuda_triton(q, k, v, {**kw, "out": out})

    def run():
        lowbit.unified_attention(q, k, v, out=out, **kw)

    side = torch.cuda.Stream()  # warm-up (compiles, fills the dispatch caches) off the capture stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert_matches_reference(case, out, f"{path}: warm-up")

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()

    new_lengths = list(zip(setup["new_q_lens"], setup["new_kv_lens"]))
    for step, lengths in enumerate([seqs, new_lengths]):
        extra = case.q.shape[0] - sum(a for a, _ in lengths)  # q keeps its rows: more of them outside sequences
        new = build(lengths, (8, 2), 128, 16, seed=60 + step, max_seqlen_q=mq, max_seqlen_k=mk, extra_rows=extra,
                    **options)
        assert new.q.shape == case.q.shape and new.k_cache.shape == case.k_cache.shape
        q.copy_(new.q)
        k.copy_(new.k_cache)
        v.copy_(new.v_cache)
        for name, t in new.kwargs.items():
            if isinstance(t, torch.Tensor):
                assert t.shape == kw[name].shape, name
                kw[name].copy_(t)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches_reference(new, out, f"{path}: replay {step}")


# --- torch.compile ----------------------------------------------------------------------------------

def _attention(q, k_cache, v_cache, cu_seqlens_q, seqused_k, block_table, sinks, k_descale, v_descale,
               max_seqlen_q: int, max_seqlen_k: int, out):
    a = lowbit.unified_attention(q, k_cache, v_cache, cu_seqlens_q=cu_seqlens_q, seqused_k=seqused_k,
                                 block_table=block_table, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                                 window_size=(256, 128), softcap=50.0, sinks=sinks, k_descale=k_descale,
                                 v_descale=v_descale)
    lowbit.unified_attention(q, k_cache, v_cache, cu_seqlens_q=cu_seqlens_q, seqused_k=seqused_k,
                             block_table=block_table, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                             causal=False, sinks=sinks, k_descale=k_descale, v_descale=v_descale, out=out)
    return a * 2, out


def _compile_args(case: Case):
    q, k, v, kw = case.on("cuda")
    return (q, k, v, kw["cu_seqlens_q"], kw["seqused_k"], kw["block_table"], kw["sinks"], kw["k_descale"],
            kw["v_descale"], kw["max_seqlen_q"], kw["max_seqlen_k"])


@pytest.mark.parametrize(("mix", "dynamic"), [("mixed", False), ("decode", False), ("decode", True)],
                         ids=["mixed-static", "decode-static", "decode-dynamic"])
def test_compile_fullgraph_matches_eager(mix, dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(_attention, fullgraph=True, dynamic=dynamic)
    batches = [MIXES[mix]] + ([((1, 97), (1, 1500)), ((1, 2), (1, 40), (1, 800), (1, 31))] if dynamic else [])
    for i, seqs in enumerate(batches):
        case = build(seqs, (8, 2), 128, 16, mode="fp8kv/tensor", sinks=True, seed=70 + i)
        args = _compile_args(case)
        assert_auto_picks_cuda_triton(*args[:3], {**case.on("cuda")[3], "window_size": (256, 128),
                                                  "softcap": 50.0})
        got_out, want_out = poisoned_out(case), poisoned_out(case)
        got = compiled(*args, got_out)
        want = _attention(*args, want_out)
        mask = case.written().cuda()
        for g, w, what in ((got[0], want[0], "returned"), (got[1], want[1], "out=")):
            assert g.dtype == w.dtype and g.shape == w.shape and g.device == w.device, what
            assert_close(g[mask], w[mask], True, f"compiled vs eager ({what}), batch {i}")
        assert torch.isnan(got_out[~mask].float()).all()  # the compiled call wrote into got_out, only its rows
        assert_close(got_out[mask].cpu(), case.reference(causal=False, window_size=(-1, -1), softcap=0.0)[
            case.written()], True, "compiled vs the reference")


# --- int64 offsets: a KV cache of more than 2**31 elements -------------------------------------------

BIG_HEADS, BIG_HEAD_SIZE, BIG_PAGE = (32, 8), 128, 16


@pytest.mark.parametrize("mode", ["bf16", "fp8all/seqhead"])
@pytest.mark.parametrize("mix", list(MIXES))
def test_kv_cache_past_2_31_elements(mode, mix):
    """The case's pages copied to the end of a cache of more than 2**31 elements per tensor (4+ GiB
    in bfloat16), the rest NaN; the block table points there. The reference runs on the small
    cache of just those pages: any offset computed in 32 bits reads elsewhere (NaN) or faults."""
    case = build(MIXES[mix], BIG_HEADS, BIG_HEAD_SIZE, BIG_PAGE, mode=mode, window=256, sinks=True, alibi=True,
                 softcap=50.0, seed=81)
    small = case.k_cache.shape[0]
    per_page = BIG_PAGE * BIG_HEADS[1] * BIG_HEAD_SIZE
    num_blocks = 2**31 // per_page + small + 16  # every page the case uses starts past element 2**31
    base = num_blocks - small
    assert base * per_page >= 2**31
    need = 2 * num_blocks * per_page * case.k_cache.element_size()
    free, _ = torch.cuda.mem_get_info()
    if free < need + (2 << 30):
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory for the caches, {free / 2**30:.1f} free")
    q, k, v, kw = case.on("cuda")
    nan_bits = {1: (torch.uint8, 0x7F), 2: (torch.int16, 0x7FC0)}[case.k_cache.element_size()]
    big_k = torch.empty((num_blocks, *k.shape[1:]), dtype=k.dtype, device="cuda")
    big_k.view(nan_bits[0]).fill_(nan_bits[1])
    big_k[base:] = k
    del k
    big_v = torch.empty_like(big_k)
    big_v.view(nan_bits[0]).fill_(nan_bits[1])
    big_v[base:] = v
    del v
    assert big_k.numel() > 2**31
    kw["block_table"] = kw["block_table"] + base
    out = poisoned_out(case)
    assert_auto_picks_cuda_triton(q, big_k, big_v, {**kw, "out": out})
    lowbit.unified_attention(q, big_k, big_v, out=out, **kw)
    torch.cuda.synchronize()
    del big_k, big_v
    torch.cuda.empty_cache()
    assert_matches_reference(case, out, f"{mix} {mode}, pages from block {base} of {num_blocks}")


# --- LOWBIT_DEBUG=1, and no host sync without it -----------------------------------------------------

def _set(name, index, value):
    def change(kw):
        kw[name] = kw[name].clone()
        kw[name][index] = value
    return change


BAD_VALUES = {
    "cu_seqlens_q_not_from_0": (_set("cu_seqlens_q", 0, 1), r"cu_seqlens_q\[0\]=1 is not 0"),
    "cu_seqlens_q_decreasing": (_set("cu_seqlens_q", 2, 0), r"cu_seqlens_q decreases from \d+ to 0 at entry 2"),
    "cu_seqlens_q_past_q": (_set("cu_seqlens_q", 3, 10_000), r"cu_seqlens_q\[3\]=10000 is past q's"),
    "q_len_over_max_seqlen_q": (lambda kw: kw.update(max_seqlen_q=100), r"more than max_seqlen_q=100"),
    "seqused_k_over_max": (_set("seqused_k", 1, 1329), r"seqused_k\[1\]=1329 is outside 0..max_seqlen_k=1328"),
    "seqused_k_negative": (_set("seqused_k", 0, -1), r"seqused_k\[0\]=-1 is outside 0..max_seqlen_k"),
    "page_past_the_cache": (_set("block_table", (2, 0), 100_000), r"block_table\[2, 0\]=100000 is not a block"),
    "negative_page": (_set("block_table", (0, 0), -1), r"block_table\[0, 0\]=-1 is not a block of the cache"),
}


@pytest.mark.parametrize("bad", list(BAD_VALUES))
def test_debug_mode_catches_bad_device_values(bad, monkeypatch):
    monkeypatch.setenv(attention_op.ENV_DEBUG, "1")
    case = build(MIXES["mixed"], (8, 2), 64, 16, seed=91)
    q, k, v, kw = case.on("cuda")
    change, message = BAD_VALUES[bad]
    change(kw)
    out = poisoned_out(case)
    with pytest.raises(ValueError, match="LOWBIT_DEBUG=1.*" + message):
        lowbit.unified_attention(q, k, v, out=out, **kw)
    assert torch.isnan(out.float()).all(), "the kernel ran after the check failed"


def test_debug_mode_passes_good_values(monkeypatch):
    monkeypatch.setenv(attention_op.ENV_DEBUG, "1")
    case = build(EDGE_MIXES["edges_2d"], (8, 2), 64, 16, mode="fp8kv/tensor", sinks=True, seed=92)
    assert_matches_reference(case, run_public(case), "LOWBIT_DEBUG=1, good values")


# --- [ATTN-METADATA]: malformed index values without LOWBIT_DEBUG ---------------------------------

GUARD = 3  # rows of out's buffer before and after it, which no call may write
SENTINEL = -7.25


def _guarded_out(q):
    buffer = torch.full((q.shape[0] + 2 * GUARD, *q.shape[1:]), SENTINEL, dtype=BF16, device=q.device)
    return buffer, buffer[GUARD:-GUARD]


def _assert_guard_kept(buffer):
    assert torch.all(buffer[:GUARD] == SENTINEL) and torch.all(buffer[-GUARD:] == SENTINEL), "wrote outside out"


@pytest.mark.parametrize("lens", METADATA_LENS)
@pytest.mark.parametrize("name", METADATA_BREAKS)
def test_malformed_metadata_gives_nan_rows_and_touches_nothing_else(name, lens):
    """Each break of [ATTN-METADATA] through the public call (no LOWBIT_DEBUG): the kernel stays in
    its tensors (a fault would surface at the synchronize; run under compute-sanitizer to see every
    access) and leaves each row as the clause allows."""
    args, kwargs = broken_call(METADATA_LENS[lens], [name])
    q, k, v = (t.cuda() for t in args)
    on_gpu = {key: t.cuda() if isinstance(t, torch.Tensor) else t for key, t in kwargs.items()}
    buffer, out = _guarded_out(q)
    lowbit.unified_attention(q, k, v, out=out, **on_gpu)
    torch.cuda.synchronize()
    _assert_guard_kept(buffer)
    assert_metadata_outcomes(out.cpu(), metadata_outcomes(*args, **kwargs), attention_tolerance(BF16, BF16),
                             SENTINEL, f"{name} {lens}")


def test_malformed_metadata_replayed_in_a_cuda_graph():
    """A graph captured on well-formed metadata, replayed after each break is copied into the same
    index tensors (a server's decode loop): the same rows as an eager call."""
    args, kwargs = metadata_call(METADATA_LENS["decode"])
    q, k, v = (t.cuda() for t in args)
    index = {key: t.cuda() for key, t in kwargs.items() if isinstance(t, torch.Tensor)}
    limits = {key: kwargs[key] for key in ("max_seqlen_q", "max_seqlen_k")}
    buffer, out = _guarded_out(q)
    lowbit.unified_attention(q, k, v, out=out, **index, **limits)  # warm-up: compiles
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lowbit.unified_attention(q, k, v, out=out, **index, **limits)
    for name in ["valid", *METADATA_BREAKS]:
        bargs, bkwargs = broken_call(METADATA_LENS["decode"], [] if name == "valid" else [name])
        if any(bkwargs[key] != limits[key] for key in limits):
            continue  # the host ints are part of the graph
        for key in index:
            index[key].copy_(bkwargs[key])
        buffer.fill_(SENTINEL)
        graph.replay()
        torch.cuda.synchronize()
        _assert_guard_kept(buffer)
        assert_metadata_outcomes(out.cpu(), metadata_outcomes(*bargs, **bkwargs), attention_tolerance(BF16, BF16),
                                 SENTINEL, f"{name}, replayed")


@pytest.mark.parametrize("mix", list(MIXES))
def test_without_debug_a_call_with_out_never_syncs(mix, monkeypatch):
    """torch's sync debug mode raises on any host read of a device value; LOWBIT_DEBUG=1 is the
    positive control (its checks read the index tensors on the host)."""
    case = build(MIXES[mix], (8, 2), 128, 16, mode="fp8all/seqhead", sinks=True, alibi=True, seed=93)
    q, k, v, kw = case.on("cuda")
    out = poisoned_out(case)
    lowbit.unified_attention(q, k, v, out=out, **kw)  # warm-up: compiles, caches the decision
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out.fill_(float("nan"))
        lowbit.unified_attention(q, k, v, out=out, **kw)
        monkeypatch.setenv(attention_op.ENV_DEBUG, "1")
        with pytest.raises(RuntimeError, match="synchroniz"):
            lowbit.unified_attention(q, k, v, out=torch.empty_like(out), **kw)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    assert_matches_reference(case, out, f"{mix}, under sync debug mode")

    monkeypatch.delenv(attention_op.ENV_DEBUG)
    graph = torch.cuda.CUDAGraph()  # capture forbids syncs too
    with torch.cuda.graph(graph):
        lowbit.unified_attention(q, k, v, out=out, **kw)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert_matches_reference(case, out, f"{mix}, captured")

