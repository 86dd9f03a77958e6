"""`python -m lowbit bench attention`: unified_attention against torch's scaled_dot_product_attention
(its default backend) on the same data laid out contiguously, and against the copy bandwidth.

Counted per call:
- prefill: FLOPs = 4 · head_size · num_heads · (visible (query, key) pairs): two matmuls of two
  FLOPs per multiply-add. Causal over n tokens: n(n+1)/2 pairs per sequence and head.
- decode: the KV bytes a kernel must read: every used key and value of every KV head once,
  seqs · context · kv_heads · head_size · itemsize · 2.
SDPA runs twice per shape, with the KV heads repeated to the query heads (the layout its fused
backends take) and with enable_gqa=True; the faster one is the baseline. Decode compares against
SDPA with is_causal=False: torch anchors its causal mask top-left, so a one-token causal query
would see only the first key.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import lowbit

from .timing import copy_gbps, graph_replay_us


@dataclass(frozen=True)
class Shape:
    name: str
    seqs: int
    q_len: int
    kv_len: int
    heads: int = 32
    kv_heads: int = 8
    head_size: int = 128
    page: int = 16
    kv_dtype: torch.dtype = torch.bfloat16

    @property
    def decode(self) -> bool:
        return self.q_len == 1


SHAPES = (
    Shape("prefill 4x4096 causal", seqs=4, q_len=4096, kv_len=4096),
    Shape("decode 64x1, context 4096", seqs=64, q_len=1, kv_len=4096),
    Shape("decode 64x1, context 4096, FP8 KV", seqs=64, q_len=1, kv_len=4096, kv_dtype=torch.float8_e4m3fn),
    Shape("decode 8x1, context 4096", seqs=8, q_len=1, kv_len=4096),
    Shape("decode 8x1, context 4096, FP8 KV", seqs=8, q_len=1, kv_len=4096, kv_dtype=torch.float8_e4m3fn),
)


def make_inputs(shape: Shape, seed: int = 0) -> dict:
    """Paged inputs in a random block table, and the same keys and values laid out contiguously."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    s = shape
    pages_per_seq = -(-s.kv_len // s.page)
    num_blocks = s.seqs * pages_per_seq
    q = torch.randn(s.seqs * s.q_len, s.heads, s.head_size, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(num_blocks, s.page, s.kv_heads, s.head_size, device="cuda", generator=g).to(s.kv_dtype)
    v = torch.randn(num_blocks, s.page, s.kv_heads, s.head_size, device="cuda", generator=g).to(s.kv_dtype)
    table = torch.randperm(num_blocks, device="cuda", generator=g).to(torch.int32).reshape(s.seqs, pages_per_seq)
    args = dict(cu_seqlens_q=torch.arange(0, s.seqs + 1, device="cuda", dtype=torch.int32) * s.q_len,
                seqused_k=torch.full((s.seqs,), s.kv_len, device="cuda", dtype=torch.int32), block_table=table,
                max_seqlen_q=s.q_len, max_seqlen_k=s.kv_len, causal=True)
    if s.kv_dtype == torch.float8_e4m3fn:
        args.update(k_descale=torch.full((1,), 0.5, device="cuda"), v_descale=torch.full((1,), 0.25, device="cuda"))
    return dict(q=q, k_cache=k, v_cache=v, out=torch.empty_like(q), **args)


def contiguous_kv(inputs: dict, shape: Shape, dtype=torch.bfloat16):
    """(seqs, kv_heads, kv_len, head_size) keys and values gathered through the block table."""
    def gather(cache):
        pages = cache[inputs["block_table"].long()]  # (seqs, pages, page, kv_heads, head)
        return pages.flatten(1, 2)[:, :shape.kv_len].transpose(1, 2).to(dtype).contiguous()
    return gather(inputs["k_cache"]), gather(inputs["v_cache"])


def sdpa_us(inputs: dict, shape: Shape) -> tuple[float, str]:
    """The faster of SDPA on repeated KV heads and SDPA with enable_gqa=True, and which it was."""
    s = shape
    q = inputs["q"].reshape(s.seqs, s.q_len, s.heads, s.head_size).transpose(1, 2).contiguous()
    k, v = contiguous_kv(inputs, s)
    causal = not s.decode
    group = s.heads // s.kv_heads
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    times = {
        "repeated KV heads": graph_replay_us(lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=causal),
                                             calls=3),
        "enable_gqa": graph_replay_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                             enable_gqa=True), calls=3),
    }
    best = min(times, key=times.get)
    return times[best], best


def flops(shape: Shape) -> float:
    pairs = shape.q_len * (shape.q_len + 1) / 2 if not shape.decode else shape.kv_len
    return 4.0 * shape.head_size * shape.heads * shape.seqs * pairs


def kv_bytes(shape: Shape) -> int:
    itemsize = torch.empty((), dtype=shape.kv_dtype).element_size()
    return shape.seqs * shape.kv_len * shape.kv_heads * shape.head_size * itemsize * 2


def run(shapes=SHAPES, compare=True, out=sys.stdout, config=None, splits=None) -> list[dict]:
    import triton

    copy = copy_gbps()
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
          f"device-to-device copy {copy:.0f} GB/s (read + write)", file=out)
    print("\n| shape | µs | TFLOP/s | KV GB/s | % of copy | SDPA µs (layout) | vs SDPA |", file=out)
    print("|---|---:|---:|---:|---:|---:|---:|", file=out)
    results = []
    for shape in shapes:
        inputs = make_inputs(shape)
        if config is None and splits is None:
            call = lambda inputs=inputs: lowbit.unified_attention(**inputs)  # noqa: E731
        else:
            call = _forced_call(inputs, config, splits)
        us = graph_replay_us(call, calls=3)
        tflops = flops(shape) / us / 1e6
        gbps = kv_bytes(shape) / us / 1e3
        ref_us, layout = sdpa_us(inputs, shape) if compare else (float("nan"), "-")
        row = dict(shape=shape.name, us=us, tflops=tflops, gbps=gbps, pct_copy=100 * gbps / copy, sdpa_us=ref_us,
                   sdpa_layout=layout, vs_sdpa=ref_us / us)
        results.append(row)
        print(f"| {shape.name} | {us:.1f} | {tflops:.0f} | {gbps:.0f} | {row['pct_copy']:.1f}% | {ref_us:.1f} "
              f"({layout}) | {row['vs_sdpa']:.2f}x |", file=out)
        out.flush()
        del inputs
    return results


def _forced_call(inputs, config, splits):
    """The Triton launcher itself with a forced config or split count (tuning)."""
    from lowbit.backends.triton import unified_attention as kernel

    arguments = {k: v for k, v in inputs.items() if k not in ("q", "k_cache", "v_cache", "out")}
    arguments.update(softmax_scale=inputs["q"].shape[-1] ** -0.5, window=(-1, -1), softcap=0.0, alibi_slopes=None,
                     sinks=None, q_descale=None)
    arguments.setdefault("k_descale", None)
    arguments.setdefault("v_descale", None)
    return lambda: kernel.attend(inputs["q"], inputs["k_cache"], inputs["v_cache"], inputs["out"], splits=splits,
                                 config=config, **arguments)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lowbit bench attention")
    parser.add_argument("--no-compare", action="store_true", help="skip SDPA")
    parser.add_argument("--tune", action="store_true", help="sweep launch configs per shape (no SDPA)")
    parser.add_argument("--splits", action="store_true",
                        help="sweep only the split count of the decode shapes, at the table's config (no SDPA)")
    parser.add_argument("--shapes", nargs="*", default=(), help="only the shapes whose name contains one of these")
    args = parser.parse_args(argv)
    shapes = tuple(s for s in SHAPES if not args.shapes or any(part in s.name for part in args.shapes))
    if args.splits:
        tune(tuple(s for s in shapes if s.decode), only_splits=True)
    elif args.tune:
        tune(shapes)
    else:
        run(shapes, compare=not args.no_compare)


def tune(shapes=SHAPES, only_splits=False, out=sys.stdout) -> None:
    """Every candidate config (and split count for decode) per shape: µs, to choose the tables in
    backends/triton/unified_attention.py. `only_splits`: the table's decode config at every split count."""
    from lowbit.backends.triton.unified_attention import DECODE, MAX_SPLITS, AttentionConfig

    for shape in shapes:
        inputs = make_inputs(shape)
        if only_splits:
            candidates = [(DECODE[128], 1 << i) for i in range(MAX_SPLITS.bit_length())]
        elif shape.decode:
            candidates = [(AttentionConfig(16, n, w, st), sp) for n in (32, 64, 128) for w in (2, 4) for st in (2, 3, 4)
                          for sp in (1, 4, 16)]
        else:
            candidates = [(AttentionConfig(m, n, w, st), 1) for m in (64, 128) for n in (32, 64, 128) for w in (4, 8)
                          for st in (2, 3, 4)]
        timed = []
        for config, splits in candidates:
            try:
                timed.append((graph_replay_us(_forced_call(inputs, config, splits), calls=3, replays=10),
                              config, splits))
            except Exception as exc:  # out of shared memory or registers: not a candidate
                print(f"  {shape.name} {config} splits {splits}: {type(exc).__name__}", file=out)
        timed.sort(key=lambda t: t[0])
        print(f"\n{shape.name}: best of {len(timed)}", file=out)
        for us, config, splits in timed[:len(timed) if only_splits else 6]:
            print(f"  {us:9.1f} µs  {config}  splits {splits}", file=out)
        out.flush()
        del inputs
