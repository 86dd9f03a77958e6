"""Paged unified_attention calls for the on-device suites (tests/backends/cuda/test_unified_attention.py
and tests/backends/xpu/test_on_device.py) and their comparison with the reference.

Every input carries traps the reference never reads: K/V slots past a sequence's end and a whole
page hold NaN, block-table entries past a sequence's last page (and a spare row) point at that NaN
page, q has rows after the last sequence; a suite starts `out` as NaN, so rows outside every
sequence must stay NaN. The tolerance is [ATTN-TOLERANCE], whose constants
tests/test_spec_attention.py checks against the spec.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from test_spec_attention import ATTN_TOLERANCE_16BIT, ATTN_TOLERANCE_FP8

import lowbit

FP8 = torch.float8_e4m3fn
BF16 = torch.bfloat16

DESCALES = (0.75, 0.5, 0.25)  # q, k, v

# (query len, kv len) per sequence: decode, short prefill and long prefill in one batch, or decodes
MIXES = {
    "mixed": ((1, 1328), (5, 18), (129, 463)),
    "decode": ((1, 523), (1, 37), (1, 2011)),
}


@dataclass
class Case:
    """One call's inputs on the CPU: q, the caches, and unified_attention's keyword arguments."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    kwargs: dict
    out_dtype: torch.dtype
    fp8: bool  # the FP8 tolerance applies
    rows: list[tuple[int, int]] = field(default_factory=list)  # each sequence's query rows [start, end)

    def on(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """q, k_cache, v_cache and kwargs on `device` (strides kept: non-contiguous descales stay so)."""
        def move(t):
            if not isinstance(t, torch.Tensor):
                return t
            moved = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
            return moved.copy_(t)
        return move(self.q), move(self.k_cache), move(self.v_cache), {k: move(v) for k, v in self.kwargs.items()}

    def written(self) -> torch.Tensor:
        """Which rows of out belong to a sequence."""
        mask = torch.zeros(self.q.shape[0], dtype=torch.bool)
        for start, end in self.rows:
            mask[start:end] = True
        return mask

    def reference(self, **changes) -> torch.Tensor:
        """The reference on the CPU copy (kwargs replaced by `changes`); rows outside sequences are 0."""
        out = torch.zeros(self.q.shape, dtype=self.out_dtype)
        lowbit.unified_attention(self.q, self.k_cache, self.v_cache, out=out, backend="cpu",
                                 **{**self.kwargs, **changes})
        return out

    def attend_arguments(self, device) -> tuple:
        """(q, k_cache, v_cache, arguments) for triton_attention.attend, which takes the op's resolved form."""
        q, k, v, kw = self.on(device)
        window = kw.pop("window_size")
        kw["window"] = window
        kw["softmax_scale"] = self.q.shape[-1] ** -0.5
        for name in ("alibi_slopes", "sinks", "q_descale", "k_descale", "v_descale"):
            kw.setdefault(name, None)
        return q, k, v, kw


def build(seqs, heads, head_size, page, *, mode="bf16", dtype=BF16, out_dtype=None, causal=True, window=None,
          softcap=0.0, sinks=False, alibi=False, seed=0, descales=DESCALES, q_scale=2.0, extra_rows=3,
          max_seqlen_q=None, max_seqlen_k=None, scalar_descale=False, transposed_descale=False,
          per_head_dtype=torch.float32) -> Case:
    """A paged batch: sequences of (q_len, kv_len) with their pages scattered at random through a
    cache that holds, for every sequence, as many pages as max_seqlen_k needs (so lengths can grow
    up to max_seqlen_k later, as the cuda suite's graph test does), plus one NaN page.
    mode: "bf16" (the cache in q's dtype), "fp8kv/<layout>" (an FP8 cache) or "fp8all/<layout>"
    (FP8 q and cache); layout: "tensor" (one descale a tensor) or "seqhead" (one per sequence and
    KV head)."""
    g = torch.Generator().manual_seed(seed)
    num_heads, kv_heads = heads
    q_lens, kv_lens = [a for a, _ in seqs], [b for _, b in seqs]
    num_seqs = len(seqs)
    max_seqlen_q = max(q_lens) if max_seqlen_q is None else max_seqlen_q
    max_seqlen_k = max(kv_lens) if max_seqlen_k is None else max_seqlen_k
    width = -(-max_seqlen_k // page) + 1  # one column more than needed: never read
    num_pages = num_seqs * (width - 1) + 1
    nan_page = num_pages - 1
    kind, _, layout = mode.partition("/")
    q_dtype = FP8 if kind == "fp8all" else dtype
    kv_dtype = FP8 if kind in ("fp8kv", "fp8all") else dtype

    starts = [0, *itertools.accumulate(q_lens)]
    num_tokens = starts[-1] + extra_rows
    q = (torch.randn(num_tokens, num_heads, head_size, generator=g) * q_scale).to(q_dtype)
    k = torch.randn(num_pages, page, kv_heads, head_size, generator=g)
    v = torch.randn(num_pages, page, kv_heads, head_size, generator=g)
    table = torch.full((num_seqs + 1, width), nan_page, dtype=torch.int32)  # a spare row: >= num_seqs rows
    order = torch.randperm(num_pages - 1, generator=g)
    taken = 0
    for s, kv_len in enumerate(kv_lens):
        n = -(-kv_len // page)
        table[s, :n] = order[taken:taken + n].to(torch.int32)
        taken += n
        if kv_len % page:  # slots past the sequence's end, in its last page
            last = int(table[s, n - 1])
            k[last, kv_len % page:] = float("nan")
            v[last, kv_len % page:] = float("nan")
    k[nan_page], v[nan_page] = float("nan"), float("nan")
    kwargs = dict(cu_seqlens_q=torch.tensor(starts[:num_seqs + 1], dtype=torch.int32),
                  seqused_k=torch.tensor(kv_lens, dtype=torch.int32), block_table=table,
                  max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, causal=causal,
                  window_size=(-1, -1) if window is None else (window, window // 2), softcap=softcap)
    if alibi:  # the usual geometric slopes, 2^(-8 (h + 1) / H)
        kwargs["alibi_slopes"] = torch.exp2(-8.0 * torch.arange(1, num_heads + 1) / num_heads).to(per_head_dtype)
    if sinks:
        kwargs["sinks"] = (torch.randn(num_heads, generator=g) * 2 + 2).to(per_head_dtype)
    names = (("q_descale",) if kind == "fp8all" else ()) + (("k_descale", "v_descale") if kind != "bf16" else ())
    for name in names:
        value = descales["qkv".index(name[0])]
        if layout == "tensor":
            kwargs[name] = torch.tensor(value) if scalar_descale else torch.tensor([value])
        else:  # a different value for each (sequence, KV head): value * {1/2, 1, 2}
            pattern = torch.exp2((torch.arange(num_seqs * kv_heads) % 3 - 1).float())
            if transposed_descale:  # a (num_seqs, kv_heads) view of a (kv_heads, num_seqs) tensor
                kwargs[name] = (value * pattern).reshape(kv_heads, num_seqs).t()
            else:
                kwargs[name] = (value * pattern).reshape(num_seqs, kv_heads)
    out_dtype = out_dtype or (dtype if q_dtype != FP8 else BF16)
    return Case(q, k.to(kv_dtype), v.to(kv_dtype), kwargs, out_dtype, fp8=kind != "bf16",
                rows=[(starts[s], starts[s + 1]) for s in range(num_seqs)])


def tolerance(fp8: bool) -> tuple[float, float]:
    """[ATTN-TOLERANCE]: (atol, rtol), the FP8 one when q or the cache is FP8."""
    return ATTN_TOLERANCE_FP8 if fp8 else ATTN_TOLERANCE_16BIT


def excess(got: torch.Tensor, want: torch.Tensor, fp8: bool) -> torch.Tensor:
    """|got - want| - (atol + rtol |want|) in float32 (> 0 or NaN: out of tolerance)."""
    atol, rtol = tolerance(fp8)
    g, w = got.float().cpu(), want.float().cpu()
    return (g - w).abs() - (atol + rtol * w.abs())


def assert_close(got: torch.Tensor, want: torch.Tensor, fp8: bool, what: str = "") -> None:
    """Within [ATTN-TOLERANCE] elementwise; on failure, how many and the worst element."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    over = excess(got, want, fp8)
    bad = ~(over <= 0)  # NaN counts as bad
    if bad.any():
        score = torch.where(torch.isnan(over), torch.full_like(over, math.inf), over)
        at = tuple(int(i) for i in torch.unravel_index(score.argmax(), score.shape))
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements out of tolerance "
                             f"{tolerance(fp8)}; worst at (token, head, dim) {at}: got {got[at].item()}, "
                             f"want {want[at].item()}")
