"""unified_attention (docs/SPEC.md, "Attention"): paged, variable-length attention over a KV cache,
with FP8 descales. The public function, its torch.library op and fake, the argument checks, and
the device-value checks that run only under LOWBIT_DEBUG=1.

Kernels live in backends/<name>/unified_attention.py with their capability records. A kernel
receives the arguments checked here, with softmax_scale resolved and the window as two ints, and
writes the rows of `out` that belong to a sequence.
"""

from __future__ import annotations

import math
import os

import torch

from . import dispatch
from .capability import Call, dtype_name
from .errors import UnsupportedError, require_tensor, require_type

OP = "unified_attention"
FP8_DTYPE = torch.float8_e4m3fn
OUT_DTYPES = (torch.bfloat16, torch.float16)
INDEX_DTYPE = torch.int32
DESCALE_DTYPE = torch.float32
PER_HEAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # ALiBi slopes and sinks
ENV_DEBUG = "LOWBIT_DEBUG"
_CACHE = "a (num_blocks, block_size, num_kv_heads, head_size) tensor in q's dtype"
_DESCALE = "a float32 tensor of one value or (num_seqs, num_kv_heads), or None"
_REQUIRED = ("q", "k_cache", "v_cache", "cu_seqlens_q", "seqused_k", "block_table")


def unified_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
                      cu_seqlens_q: torch.Tensor, seqused_k: torch.Tensor, block_table: torch.Tensor,
                      max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float | None = None,
                      causal: bool = True, window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                      alibi_slopes: torch.Tensor | None = None, sinks: torch.Tensor | None = None,
                      q_descale: torch.Tensor | None = None, k_descale: torch.Tensor | None = None,
                      v_descale: torch.Tensor | None = None, out: torch.Tensor | None = None,
                      backend: str = dispatch.AUTO) -> torch.Tensor:
    """Attention of the new tokens of every sequence over its paged KV cache (docs/SPEC.md
    "Attention"); vLLM's and FlashAttention's varlen convention.

    q (num_tokens, num_heads, head_size): the new tokens of all sequences, concatenated; bfloat16,
    float16, or float8_e4m3fn with `q_descale`. k_cache, v_cache (num_blocks, block_size,
    num_kv_heads, head_size): q's dtype, or float8_e4m3fn with `k_descale`/`v_descale`. Sequence s
    owns query rows cu_seqlens_q[s]:cu_seqlens_q[s+1] and its first seqused_k[s] cache entries,
    found through block_table[s]. max_seqlen_q/max_seqlen_k bound those lengths (host ints, so the
    launch needs no device value). Descales are float32, one value (per tensor) or one per
    (sequence, KV head). Returns `out` (num_tokens, num_heads, head_size) in q's dtype (bfloat16
    for an FP8 query unless `out` says otherwise); rows outside every sequence are not written.
    """
    _check_types(q, k_cache, v_cache, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k, softmax_scale,
                 causal, softcap, alibi_slopes, sinks, q_descale, k_descale, v_descale, out)
    require_type(OP, "backend", backend, str, '"auto"')
    left, right = _window(window_size)
    scale = resolve_softmax_scale(q, softmax_scale)
    if out is None:
        out = torch.empty(q.shape, dtype=default_out_dtype(q), device=q.device)
    arguments = (q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k, scale,
                 causal, left, right, float(softcap), alibi_slopes, sinks, q_descale, k_descale, v_descale, backend)
    if dispatch.eager(q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table,
                      *(t for t in (alibi_slopes, sinks, q_descale, k_descale, v_descale) if t is not None)):
        _attend(*arguments)
    else:
        torch.ops.lowbit.unified_attention(*arguments)
    return out


_TENSOR_EXAMPLES = {  # what each tensor argument holds, for a TypeError's "pass e.g."
    "q": "a (num_tokens, num_heads, head_size) bfloat16 tensor", "k_cache": _CACHE, "v_cache": _CACHE,
    "cu_seqlens_q": "an int32 tensor of num_seqs + 1 first query rows", "seqused_k": "an int32 tensor (num_seqs,)",
    "block_table": "an int32 tensor (num_seqs, pages)", "alibi_slopes": "a (num_heads,) float32 tensor, or None",
    "sinks": "a (num_heads,) float32 tensor, or None", "q_descale": _DESCALE, "k_descale": _DESCALE,
    "v_descale": _DESCALE, "out": "a tensor of q's shape, or None",
}


def _check_types(q, k_cache, v_cache, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
                 softmax_scale, causal, softcap, alibi_slopes, sinks, q_descale, k_descale, v_descale, out) -> None:
    """TypeError for a non-tensor where a tensor goes, ValueError for a host argument of the wrong
    type: the call and supports() run this first, so both refuse alike."""
    for name, value in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("cu_seqlens_q", cu_seqlens_q),
                        ("seqused_k", seqused_k), ("block_table", block_table), ("alibi_slopes", alibi_slopes),
                        ("sinks", sinks), ("q_descale", q_descale), ("k_descale", k_descale),
                        ("v_descale", v_descale), ("out", out)):
        if value is not None or name in _REQUIRED:
            require_tensor(OP, name, value, _TENSOR_EXAMPLES[name])
    for name, value, types, example in (
        ("max_seqlen_q", max_seqlen_q, int, "128"), ("max_seqlen_k", max_seqlen_k, int, "4096"),
        ("causal", causal, bool, "True"), ("softcap", softcap, (float, int), "0.0"),
    ):
        require_type(OP, name, value, types, example)
    if softmax_scale is not None:
        require_type(OP, "softmax_scale", softmax_scale, (float, int), "None")


def default_out_dtype(q: torch.Tensor) -> torch.dtype:
    """The query's compute dtype: its own, or bfloat16 for an FP8 query."""
    return q.dtype if q.dtype in OUT_DTYPES else torch.bfloat16


def resolve_softmax_scale(q: torch.Tensor, softmax_scale: float | None) -> float:
    """[ATTN-SCORE]: head_size ** -0.5 unless given."""
    if softmax_scale is None:
        return float(q.shape[-1]) ** -0.5 if q.dim() and q.shape[-1] > 0 else 1.0
    return float(softmax_scale)


def _window(window_size) -> tuple[int, int]:
    if not (isinstance(window_size, (tuple, list)) and len(window_size) == 2
            and all(isinstance(w, int) and not isinstance(w, bool) for w in window_size)):
        raise ValueError(f"lowbit.{OP}: window_size={window_size!r} must be a pair of ints (left, right), "
                         "-1 for unbounded; pass e.g. window_size=(-1, -1)")
    return int(window_size[0]), int(window_size[1])


# --- what dispatch sees of a call ---------------------------------------------------------------

def describe(q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
             softmax_scale, window_left, window_right, softcap, alibi_slopes=None, sinks=None,
             q_descale=None, k_descale=None, v_descale=None) -> Call:
    """The Call of one unified_attention (`out` None: the one lowbit allocates). ValueError for
    arguments that do not fit together, UnsupportedError for the two limits no backend lifts (the
    head-count ratio, and a block table too short for max_seqlen_k). Reads shapes, dtypes and host
    ints only: never a device value."""
    check(q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k, softmax_scale,
          window_left, window_right, softcap, alibi_slopes, sinks, q_descale, k_descale, v_descale)
    return dispatch.call_for(
        OP, q,
        last_dim_contiguous=all(t.stride(-1) == 1 or t.shape[-1] <= 1
                                for t in (q, k_cache, v_cache, out) if t is not None),
        out_dtype=default_out_dtype(q) if out is None else out.dtype, kv_dtype=k_cache.dtype,
        heads=(int(q.shape[1]), int(k_cache.shape[2])), page_size=int(k_cache.shape[1]))


def check(q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
          softmax_scale, window_left, window_right, softcap, alibi_slopes=None, sinks=None, q_descale=None,
          k_descale=None, v_descale=None) -> None:
    """describe()'s checks: ValueError for arguments that do not fit together, UnsupportedError for
    the two limits no backend lifts. Every call runs them (they read shapes and host ints only)."""
    bad = _problems(q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
                    softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks,
                    q_descale, k_descale, v_descale)
    if bad:
        raise ValueError(f"lowbit.{OP}: " + "; ".join(bad))
    heads, kv_heads = int(q.shape[1]), int(k_cache.shape[2])
    page_size, pages = int(k_cache.shape[1]), int(block_table.shape[1])
    if heads % kv_heads:
        raise UnsupportedError(
            f"lowbit.{OP}: q has {heads} heads, not a multiple of k_cache's {kv_heads} KV heads (every backend "
            "needs num_heads % num_kv_heads == 0: each KV head serves an equal group of query heads).\n"
            "Alternative: repeat KV heads in the cache until the ratio is whole")
    if pages * page_size < max_seqlen_k:
        raise UnsupportedError(
            f"lowbit.{OP}: block_table has {pages} pages per sequence of {page_size} tokens = {pages * page_size} "
            f"tokens, fewer than max_seqlen_k={max_seqlen_k} (every backend reads keys only through the table).\n"
            f"Alternative: give block_table at least ceil(max_seqlen_k / {page_size}) columns, or pass the "
            "true max_seqlen_k")


def describe_public_call(q, k_cache, v_cache, *, cu_seqlens_q, seqused_k, block_table, max_seqlen_q,
                         max_seqlen_k, softmax_scale=None, causal=True, window_size=(-1, -1), softcap=0.0,
                         alibi_slopes=None, sinks=None, q_descale=None, k_descale=None, v_descale=None,
                         out=None) -> Call:
    """describe() for unified_attention's own arguments (what `lowbit.supports` asks)."""
    _check_types(q, k_cache, v_cache, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k, softmax_scale,
                 causal, softcap, alibi_slopes, sinks, q_descale, k_descale, v_descale, out)
    left, right = _window(window_size)
    return describe(q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
                    resolve_softmax_scale(q, softmax_scale), left, right, softcap, alibi_slopes, sinks,
                    q_descale, k_descale, v_descale)


def _problems(q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
              softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks,
              q_descale, k_descale, v_descale) -> list[str]:
    """Every way the arguments do not fit together (empty: they do)."""
    found = []
    if q.dim() != 3:
        return [f"q has shape {tuple(q.shape)}; needs (num_tokens, num_heads, head_size); pass q.view(num_tokens, "
                "num_heads, head_size)"]
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        return [f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} need one shape "
                "(num_blocks, block_size, num_kv_heads, head_size); pass both in that layout (vLLM's)"]
    tokens, heads, head_size = q.shape
    _, page_size, kv_heads, kv_head_size = k_cache.shape
    if kv_head_size != head_size:
        found.append(f"q head size {head_size} differs from the cache's {kv_head_size}; pass one head size")
    if heads == 0 or kv_heads == 0 or page_size == 0:
        found.append("q and k_cache need num_heads, num_kv_heads and block_size >= 1; pass at least one head and "
                     "one slot per block")
    if v_cache.dtype != k_cache.dtype:
        found.append(f"k_cache is {dtype_name(k_cache.dtype)} and v_cache {dtype_name(v_cache.dtype)}; "
                     "pass both in one dtype")
    if out is not None:
        if tuple(out.shape) != tuple(q.shape):
            found.append(f"out has shape {tuple(out.shape)}, needs q's {tuple(q.shape)}; pass such an out, or "
                         "out=None")
        if out.dtype not in OUT_DTYPES:
            found.append(f"out dtype {dtype_name(out.dtype)} is not bfloat16 or float16; pass one of those, or "
                         "out=None")
        elif q.dtype in OUT_DTYPES and out.dtype != q.dtype:
            found.append(f"out dtype {dtype_name(out.dtype)} differs from q's {dtype_name(q.dtype)}; pass out in "
                         "q's dtype, or out=None")
    for name, t, dim in (("cu_seqlens_q", cu_seqlens_q, 1), ("seqused_k", seqused_k, 1),
                         ("block_table", block_table, 2)):
        if t.dtype != INDEX_DTYPE or t.dim() != dim:
            found.append(f"{name} must be a {dim}-D int32 tensor, not {t.dim()}-D {dtype_name(t.dtype)}; pass "
                         f"{name}.to(torch.int32) with {dim} dims")
    if found:
        return found
    seqs = int(cu_seqlens_q.shape[0]) - 1
    if seqs < 0:
        found.append("cu_seqlens_q needs num_seqs + 1 >= 1 entries; pass torch.zeros(1, dtype=torch.int32) for "
                     "no sequence")
    if int(seqused_k.shape[0]) != seqs:
        found.append(f"seqused_k has {seqused_k.shape[0]} entries, cu_seqlens_q says {seqs} sequences; pass one "
                     "per sequence")
    if int(block_table.shape[0]) < seqs:
        found.append(f"block_table has {block_table.shape[0]} rows for {seqs} sequences; pass one row per "
                     "sequence")
    if max_seqlen_q < 0 or max_seqlen_k < 0:
        found.append(f"max_seqlen_q={max_seqlen_q} and max_seqlen_k={max_seqlen_k} must be >= 0; pass the "
                     "longest query and key lengths")
    if not (math.isfinite(softmax_scale) and softmax_scale > 0):
        found.append(f"softmax_scale={softmax_scale} must be finite and > 0; pass None for head_size ** -0.5")
    if not (math.isfinite(softcap) and softcap >= 0):
        found.append(f"softcap={softcap} must be finite and >= 0; pass softcap=0.0 to turn it off")
    if window_left < -1 or window_right < -1:
        found.append(f"window_size=({window_left}, {window_right}) needs values >= -1; pass -1 for an "
                     "unbounded side")
    for name, t in (("alibi_slopes", alibi_slopes), ("sinks", sinks)):
        if t is not None and (tuple(t.shape) != (heads,) or t.dtype not in PER_HEAD_DTYPES):
            found.append(f"{name} must be a float tensor of shape ({heads},) (one per query head), "
                         f"not {tuple(t.shape)} {dtype_name(t.dtype)}; pass such a tensor, or None")
    for name, t, owner in (("q_descale", q_descale, q), ("k_descale", k_descale, k_cache),
                           ("v_descale", v_descale, v_cache)):
        what = name[0] if name != "q_descale" else "q"
        if owner.dtype == FP8_DTYPE and t is None:
            found.append(f"{name} is required with a float8_e4m3fn {what if what == 'q' else what + '_cache'}"
                         f"; pass torch.ones(1, device=...) for a unit scale")
        elif owner.dtype != FP8_DTYPE and t is not None:
            found.append(f"{name} applies to float8_e4m3fn tensors only; this one is {dtype_name(owner.dtype)}; "
                         "pass None, or store the tensor as float8_e4m3fn")
        elif t is not None and (t.dtype != DESCALE_DTYPE or (t.numel() != 1 and tuple(t.shape) != (seqs, kv_heads))):
            found.append(f"{name} must be float32 with one value (per tensor) or shape ({seqs}, {kv_heads}) "
                         f"(per sequence and KV head), not {tuple(t.shape)} {dtype_name(t.dtype)}; pass e.g. "
                         "torch.ones(1, device=...)")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("out", out), ("cu_seqlens_q", cu_seqlens_q),
                    ("seqused_k", seqused_k), ("block_table", block_table), ("alibi_slopes", alibi_slopes),
                    ("sinks", sinks), ("q_descale", q_descale), ("k_descale", k_descale), ("v_descale", v_descale)):
        if t is not None and t.device != q.device:
            found.append(f"{name} is on {t.device}, q on {q.device}; pass every tensor on q's device")
    return found


# --- [ATTN-METADATA]: checks that read the index tensors' values --------------------------------

def debug_enabled() -> bool:
    return os.environ.get(ENV_DEBUG, "0") not in ("", "0")


def check_values(q, k_cache, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
                 descales=()) -> None:
    """ValueError naming each way the index tensors break [ATTN-METADATA] (and descales <= 0, which
    [ATTN-FP8] forbids). Reads them on the host: free on CPU tensors, a sync on a GPU (so there only
    under LOWBIT_DEBUG=1)."""
    cu, used = cu_seqlens_q.tolist(), seqused_k.tolist()
    tokens, blocks, page_size = q.shape[0], k_cache.shape[0], k_cache.shape[1]
    found = []
    if cu[0] != 0:
        found.append(f"cu_seqlens_q[0]={cu[0]} is not 0 (the first sequence starts at row 0)")
    down = next((s for s in range(len(used)) if cu[s + 1] < cu[s]), None)
    if down is not None:
        found.append(f"cu_seqlens_q decreases from {cu[down]} to {cu[down + 1]} at entry {down + 1} "
                     "(it holds each sequence's first row, in order)")
    if cu[-1] > tokens:
        found.append(f"cu_seqlens_q[{len(cu) - 1}]={cu[-1]} is past q's {tokens} rows")
    longest = max(range(len(used)), key=lambda s: cu[s + 1] - cu[s], default=None)
    if longest is not None and cu[longest + 1] - cu[longest] > max_seqlen_q:
        n = cu[longest + 1] - cu[longest]
        found.append(f"cu_seqlens_q gives sequence {longest} {n} query rows, more than "
                     f"max_seqlen_q={max_seqlen_q} (pass max_seqlen_q={n})")
    outside = next((s for s, n in enumerate(used) if not 0 <= n <= max_seqlen_k), None)
    if outside is not None:
        found.append(f"seqused_k[{outside}]={used[outside]} is outside 0..max_seqlen_k={max_seqlen_k}")
    pages = (seqused_k.clamp(0, max_seqlen_k) + page_size - 1) // page_size
    table = block_table[: len(used)]
    in_use = torch.arange(table.shape[1], device=table.device)[None, :] < pages[:, None]
    wrong = (((table < 0) | (table >= blocks)) & in_use).nonzero().tolist()
    if wrong:
        s, i = wrong[0]
        found.append(f"block_table[{s}, {i}]={int(table[s, i])} is not a block of the cache (0..{blocks - 1})")
    for name, descale in zip(("q_descale", "k_descale", "v_descale"), descales):
        if descale is not None and not bool((descale > 0).all()):
            found.append(f"{name} holds a value <= 0 (or NaN); descales are positive")
    if found:
        where = f" ({ENV_DEBUG}=1)" if q.device.type != "cpu" else ""
        raise ValueError(f"lowbit.{OP}{where}: " + "; ".join(found) + "; pass index tensors that docs/SPEC.md "
                         "[ATTN-METADATA] calls well-formed (on a GPU without LOWBIT_DEBUG=1, a malformed "
                         "sequence's rows are NaN)")


# --- running a call: eager calls and the torch.library op share the checks and the kernel lookup ---

def _attend(q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
            softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks, q_descale, k_descale,
            v_descale, backend) -> None:
    """Check the call, find its kernel (remembered per kind: lowbit/dispatch.py, `kind`) and run it."""
    arguments = (q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
                 softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks, q_descale, k_descale,
                 v_descale)
    check(*arguments)
    last_dim_contiguous = q.stride(-1) == k_cache.stride(-1) == v_cache.stride(-1) == out.stride(-1) == 1
    key = dispatch.kind(OP, q, last_dim_contiguous, out.dtype, k_cache.dtype, q.shape[1], k_cache.shape[1:3], backend)
    kernel = dispatch.kernel_for(key, lambda: describe(*arguments), backend)
    if q.device.type == "cpu" or debug_enabled():  # [ATTN-METADATA]: CPU values cost no sync to read
        check_values(q, k_cache, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
                     (q_descale, k_descale, v_descale))
    kernel.run(q, k_cache, v_cache, out, cu_seqlens_q=cu_seqlens_q, seqused_k=seqused_k, block_table=block_table,
               max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, softmax_scale=softmax_scale, causal=causal,
               window=(window_left, window_right), softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks,
               q_descale=q_descale, k_descale=k_descale, v_descale=v_descale)


@torch.library.custom_op("lowbit::unified_attention", mutates_args=("out",))
def _attention_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                  cu_seqlens_q: torch.Tensor, seqused_k: torch.Tensor, block_table: torch.Tensor,
                  max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, causal: bool, window_left: int,
                  window_right: int, softcap: float, alibi_slopes: torch.Tensor | None, sinks: torch.Tensor | None,
                  q_descale: torch.Tensor | None, k_descale: torch.Tensor | None, v_descale: torch.Tensor | None,
                  backend: str) -> None:
    _attend(q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
            softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks, q_descale, k_descale,
            v_descale, backend)


@_attention_op.register_fake
def _attention_fake(q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
                    softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks, q_descale,
                    k_descale, v_descale, backend):
    dispatch.resolve(describe(q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table, max_seqlen_q,
                              max_seqlen_k, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks,
                              q_descale, k_descale, v_descale), backend)
