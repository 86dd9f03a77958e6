"""unified_attention (docs/SPEC.md "Attention") as one portable Triton kernel, its split-KV
reduction, and the launcher that picks between them without reading a device value.

Each program owns a tile of BLOCK_M rows: BLOCK_Q query tokens of one sequence times HEADS query
heads that share one KV head (GQA packing: the K/V tile it loads serves every head of the group).
It streams that sequence's keys and values through the block table in tiles of BLOCK_N, with an
online softmax in base 2. Key tiles fall into three runs: those that some row cannot fully see
(left of the window), those every row sees whole (no mask, no bounds: the fast loop), and those
past the diagonal or the sequence's end; only the outer runs compute a mask.

Two launches share the kernel:
- 2-D (query blocks x KV heads): each program sweeps all its keys and writes normalised rows.
- split-KV (sequences x KV heads x splits), for decode batches with too few (sequence, KV head)
  pairs to fill the GPU: each program sweeps one slice of the keys and writes float32 partials
  (running max, sum, unnormalised output); `reduce_splits_kernel` merges them, adds the sink and
  the value descale.
The grid comes from host ints only (num_tokens, num_seqs, max_seqlen_q, max_seqlen_k): a 2-D
program finds its sequence by binary search over cu_seqlens_q, so nothing waits for the device and
the launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .float_bits import exponent_field, pow2, to_f32
from .launch import Launch

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def find_sequence(cu_seqlens_q, num_seqs, block_id, BLOCK_Q: tl.constexpr):
    """The sequence whose query blocks hold `block_id`: sequence s owns blocks from
    cu_seqlens_q[s] // BLOCK_Q + s on (an upper bound on the blocks before it, so no two overlap).
    -1 for a block before the first sequence's. Reads only cu_seqlens_q[0 .. num_seqs - 1], whatever
    their values."""
    lo = 0
    hi = num_seqs
    while lo < hi:  # the first s whose first block lies past block_id, minus one
        mid = (lo + hi) // 2
        first = tl.load(cu_seqlens_q + mid) // BLOCK_Q + mid
        if first <= block_id:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def sequence_of(cu_seqlens_q, seqused_k, seq, num_tokens, max_seqlen_q, max_seqlen_k):
    """(first query row, q_len, seqused_k, well-formed) of sequence `seq`, by [ATTN-METADATA] short of
    its block ids (pages_in_cache checks those): its rows lie in order inside 0 .. num_tokens (the
    first sequence's from row 0), at most max_seqlen_q of them, and 0 <= seqused_k <= max_seqlen_k."""
    q_start = tl.load(cu_seqlens_q + seq)
    q_end = tl.load(cu_seqlens_q + seq + 1)
    used = tl.load(seqused_k + seq)
    ok = (q_start >= 0) & (q_start <= q_end) & (q_end <= num_tokens) & (q_end - q_start <= max_seqlen_q)
    ok = ok & ((seq > 0) | (q_start == 0)) & (used >= 0) & (used <= max_seqlen_k)
    return q_start, q_end - q_start, used, ok


@triton.jit
def pages_in_cache(table_row, key_lo, key_hi, num_blocks, PAGE: tl.constexpr):
    """Whether the block ids of the pages that hold keys key_lo .. key_hi - 1 all lie in 0 .. num_blocks - 1
    ([ATTN-METADATA]). The launcher keeps those pages inside the table's width (max_seqlen_k)."""
    CHUNK: tl.constexpr = 128
    pages = tl.cdiv(key_hi, PAGE)
    outside = tl.full((), 0, tl.int32)
    for first in range(key_lo // PAGE, pages, CHUNK):
        i = first + tl.arange(0, CHUNK)
        ids = tl.load(table_row + i, mask=i < pages, other=0)
        outside += tl.sum(((ids < 0) | (ids >= num_blocks)).to(tl.int32), 0)
    return outside == 0


@triton.jit
def tanh(x):
    """tanh from one exp2 and a fast division: no vendor math library, so every target computes it
    (an IEEE division here made ptxas 12.9 crash on some kernels)."""
    t = tl.exp2(tl.abs(x) * -2.0 * LOG2E)
    y = tl.fdiv(1.0 - t, 1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def to_float16(q):
    """(q16, scale) with q = q16 * scale per row, exactly down to 2^-38 of the row's largest
    magnitude: a bfloat16 row is scaled by a power of two that puts its largest magnitude in
    [2^14, 2^15), inside float16's range with all of bfloat16's significand bits (rows below
    2^-112 get the largest factor, 2^126). FP8 and float16 rows convert as they are."""
    if q.dtype == tl.bfloat16:
        x = to_f32(q)  # by bits: the interpreter's own widening gets bfloat16 subnormals wrong
        e = exponent_field(tl.max(tl.abs(x), 1)) - 127
        shift = tl.minimum(tl.maximum(e - 14, -126), 113)  # both 2^shift and 2^-shift stay normal
        return (x * pow2(-shift)[:, None]).to(tl.float16), pow2(shift)
    return q.to(tl.float16), tl.full([q.shape[0]], 1.0, tl.float32)


@triton.jit
def load_rows(ptrs, in_seq, d_ok, MASKED: tl.constexpr, HEAD_MASKED: tl.constexpr):
    """A (keys x head) tile; masked only where a key may lie past kv_len or the head is padded."""
    if MASKED and HEAD_MASKED:
        return tl.load(ptrs, mask=in_seq[:, None] & d_ok[None, :], other=0.0)
    elif MASKED:
        return tl.load(ptrs, mask=in_seq[:, None], other=0.0)
    elif HEAD_MASKED:
        return tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def sweep(acc, m_i, l_i, q, tile_lo, tile_hi, k_base, v_base, table_row,
          stride_k_block, stride_k_slot, stride_v_block, stride_v_slot,
          offs_d, d_ok, kv_len, pos, score_factor, cap_factor, cap_log2, alibi_log2, left, right,
          PAGE: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HEAD_MASKED: tl.constexpr,
          SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Key tiles tile_lo .. tile_hi - 1 into the running (acc, m_i, l_i), scores in base 2.
    MASKED: some key of a tile may be invisible to some row (or lie past kv_len). The factors are
    per row: they carry the query's power-of-two scaling (see to_float16)."""
    compute = q.dtype
    offs_n = tl.arange(0, BLOCK_N)
    for tile in range(tile_lo, tile_hi):
        j = tile * BLOCK_N + offs_n
        if MASKED:
            in_seq = j < kv_len
            page = tl.load(table_row + j // PAGE, mask=in_seq, other=0).to(tl.int64)  # [ATTN-PAGES]
        else:
            in_seq = None
            page = tl.load(table_row + j // PAGE).to(tl.int64)
        slot = (j % PAGE).to(tl.int64)
        k = load_rows(k_base + (page * stride_k_block + slot * stride_k_slot)[:, None] + offs_d[None, :],
                      in_seq, d_ok, MASKED, HEAD_MASKED).to(compute)
        s = tl.dot(q, tl.trans(k))
        if not (MASKED or SOFTCAP or ALIBI):  # the bulk of the work: one FMA per score
            # a positive factor ([ATTN-FP8]) commutes with the max: max(s * f) = max(s) * f
            m_new = tl.maximum(m_i, tl.max(s, 1) * score_factor)
            p = tl.exp2(s * score_factor[:, None] - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
        else:
            m_new, p, alpha = masked_softmax_step(s, m_i, j, in_seq, pos, score_factor, cap_factor, cap_log2,
                                                 alibi_log2, left, right, MASKED, SOFTCAP, ALIBI, HAS_LEFT,
                                                 HAS_RIGHT)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = load_rows(v_base + (page * stride_v_block + slot * stride_v_slot)[:, None] + offs_d[None, :],
                      in_seq, d_ok, MASKED, HEAD_MASKED).to(compute)
        acc = acc * alpha[:, None] + tl.dot(p.to(compute), v)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def masked_softmax_step(s, m_i, j, in_seq, pos, score_factor, cap_factor, cap_log2, alibi_log2, left, right,
                        MASKED: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, HAS_LEFT: tl.constexpr,
                        HAS_RIGHT: tl.constexpr):
    """(new running max, base-2 weights, rescale of the old ones) for one tile of raw scores `s`,
    with softcap, ALiBi and the mask."""
    if SOFTCAP:  # [ATTN-SOFTCAP]: cap_factor = c / softcap, cap_log2 = softcap * log2(e)
        s = tanh(s * cap_factor[:, None]) * cap_log2
    else:  # [ATTN-SCORE]: score_factor = c * log2(e)
        s = s * score_factor[:, None]
    if ALIBI:  # [ATTN-ALIBI]
        s = s - alibi_log2[:, None] * tl.abs(pos[:, None] - j[None, :]).to(tl.float32)
    if MASKED:  # [ATTN-MASK]
        visible = in_seq[None, :]
        if HAS_RIGHT:
            visible = visible & (j[None, :] <= pos[:, None] + right)
        if HAS_LEFT:
            visible = visible & (j[None, :] >= pos[:, None] - left)
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen nothing yet
    return m_new, tl.exp2(s - m_safe[:, None]), tl.exp2(m_i - m_safe)


@triton.jit
def unified_attention_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_q, seqused_k, block_table,
        alibi_ptr, sinks_ptr, q_descale, k_descale, v_descale, partials, parts,
        num_seqs, num_tokens, num_blocks, max_seqlen_q, max_seqlen_k, softmax_scale, softcap, left, right,
        tiles_per_split,
        stride_q_token, stride_q_head, stride_k_block, stride_k_slot, stride_k_head,
        stride_v_block, stride_v_slot, stride_v_head, stride_o_token, stride_o_head, stride_table,
        stride_qd_seq, stride_qd_head, stride_kd_seq, stride_kd_head, stride_vd_seq, stride_vd_head,
        NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, HEADS: tl.constexpr, CHUNKS: tl.constexpr,
        HEAD: tl.constexpr, HEAD_PAD: tl.constexpr, PAGE: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
        SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, SINKS: tl.constexpr, HAS_LEFT: tl.constexpr,
        HAS_RIGHT: tl.constexpr, Q_DESCALE: tl.constexpr, K_DESCALE: tl.constexpr, V_DESCALE: tl.constexpr,
        FP8_KV: tl.constexpr, DOT_F32: tl.constexpr):
    kv_head = tl.program_id(1) // CHUNKS
    chunk = tl.program_id(1) % CHUNKS
    if SPLITS > 1:  # each sequence's queries fit one block (the plan's rule): program i takes sequence i
        seq = tl.program_id(0)
    else:  # the last query blocks of a causal sequence see the most keys: start them first
        block_id = tl.num_programs(0) - 1 - tl.program_id(0)
        seq = find_sequence(cu_seqlens_q, num_seqs, block_id, BLOCK_Q)
        if seq < 0:  # before cu_seqlens_q[0] > 0: no sequence's rows
            return
    q_start, q_len, used, ok = sequence_of(cu_seqlens_q, seqused_k, seq, num_tokens, max_seqlen_q, max_seqlen_k)
    q_block = 0
    if SPLITS == 1:
        q_block = block_id - (q_start // BLOCK_Q + seq)
    if q_block * BLOCK_Q >= q_len:
        return
    table_row = block_table + seq.to(tl.int64) * stride_table
    # [ATTN-METADATA]: a malformed sequence writes NaN rows; only rows of q and out are touched, and
    # only pages checked here are read (a split checks its own keys'), whatever the metadata
    checked_lo = 0
    checked_hi = tl.where(ok, used, 0)
    if SPLITS > 1:
        checked_lo = tl.program_id(2) * tiles_per_split * BLOCK_N
        checked_hi = tl.minimum(checked_hi, checked_lo + tiles_per_split * BLOCK_N)
    ok = ok & pages_in_cache(table_row, checked_lo, checked_hi, num_blocks, PAGE)
    kv_len = tl.where(ok, used, 0)


    rows = tl.arange(0, BLOCK_M)
    token = q_block * BLOCK_Q + rows // HEADS  # within the sequence
    g = chunk * HEADS + rows % HEADS  # query head within the KV head's group
    row = q_start + token
    row_ok = (token >= 0) & (token < q_len) & (row >= 0) & (row < num_tokens) & (g < GROUP)
    head = kv_head * GROUP + g
    pos = token + kv_len - q_len  # [ATTN-POSITION]
    offs_d = tl.arange(0, HEAD_PAD)
    d_ok = offs_d < HEAD
    q_rows = row.to(tl.int64) * stride_q_token + head * stride_q_head
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    # The dot operands' dtype (the sweep converts K, V and P to q's): the query's own, or float16
    # with an FP8 cache (E4M3 -> float16 is one instruction per pair; -> bfloat16 takes several)
    if DOT_F32:  # the interpreter: its tl.dot mistakes bfloat16 operands for integers
        q, q_scale = q.to(tl.float32), 1.0
    elif FP8_KV:
        q, q_scale = to_float16(q)
    else:
        q, q_scale = q.to(out_ptr.dtype.element_ty), 1.0

    c = softmax_scale  # [ATTN-SCORE, ATTN-FP8]: the query and key descales fold into the factor
    if Q_DESCALE:
        c = c * tl.load(q_descale + seq * stride_qd_seq + kv_head * stride_qd_head)
    if K_DESCALE:
        c = c * tl.load(k_descale + seq * stride_kd_seq + kv_head * stride_kd_head)
    alibi_log2 = tl.zeros([BLOCK_M], tl.float32)
    if ALIBI:
        alibi_log2 = tl.load(alibi_ptr + head, mask=row_ok, other=0.0).to(tl.float32) * LOG2E

    # Key tiles: [first, full_lo) and [full_hi, last) need a mask; [full_lo, full_hi) is seen whole
    # by every row. A window bound holds for all rows of the block when it holds for its extreme row.
    p_lo = q_block * BLOCK_Q + kv_len - q_len
    p_hi = tl.minimum(q_block * BLOCK_Q + BLOCK_Q, q_len) - 1 + kv_len - q_len
    key_lo = 0
    full_lo = 0
    key_hi = kv_len
    full_hi = kv_len
    if HAS_LEFT:
        key_lo = tl.maximum(p_lo - left, 0)
        full_lo = tl.maximum(p_hi - left, 0)
    if HAS_RIGHT:
        key_hi = tl.minimum(tl.maximum(p_hi + right + 1, 0), kv_len)
        full_hi = tl.minimum(tl.maximum(p_lo + right + 1, 0), kv_len)
    first = key_lo // BLOCK_N
    last = tl.cdiv(key_hi, BLOCK_N)
    if SPLITS > 1:
        first = tl.maximum(first, tl.program_id(2) * tiles_per_split)
        last = tl.minimum(last, (tl.program_id(2) + 1) * tiles_per_split)
    last = tl.maximum(last, first)
    full_lo = tl.minimum(tl.maximum(tl.cdiv(full_lo, BLOCK_N), first), last)
    full_hi = tl.minimum(tl.maximum(full_hi // BLOCK_N, full_lo), last)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    if SINKS and SPLITS == 1:  # [ATTN-SINK]: a logit with no value; the split path adds it when merging
        m_i = tl.load(sinks_ptr + head, mask=row_ok, other=float("-inf")).to(tl.float32) * LOG2E
        l_i = tl.where(m_i > float("-inf"), 1.0, 0.0)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], tl.float32)

    k_base = k_ptr + kv_head.to(tl.int64) * stride_k_head
    v_base = v_ptr + kv_head.to(tl.int64) * stride_v_head
    score_factor = tl.full([BLOCK_M], 1.0, tl.float32) * (c * LOG2E) * q_scale
    cap_factor = tl.full([BLOCK_M], 1.0, tl.float32) * (c / softcap) * q_scale
    cap_log2 = softcap * LOG2E
    HEAD_MASKED: tl.constexpr = HEAD != HEAD_PAD
    acc, m_i, l_i = sweep(acc, m_i, l_i, q, first, full_lo, k_base, v_base, table_row,
                          stride_k_block, stride_k_slot, stride_v_block, stride_v_slot, offs_d, d_ok, kv_len, pos,
                          score_factor, cap_factor, cap_log2, alibi_log2, left, right,
                          PAGE, BLOCK_N, True, HEAD_MASKED, SOFTCAP, ALIBI, HAS_LEFT, HAS_RIGHT)
    acc, m_i, l_i = sweep(acc, m_i, l_i, q, full_lo, full_hi, k_base, v_base, table_row,
                          stride_k_block, stride_k_slot, stride_v_block, stride_v_slot, offs_d, d_ok, kv_len, pos,
                          score_factor, cap_factor, cap_log2, alibi_log2, left, right,
                          PAGE, BLOCK_N, False, HEAD_MASKED, SOFTCAP, ALIBI, HAS_LEFT, HAS_RIGHT)
    acc, m_i, l_i = sweep(acc, m_i, l_i, q, full_hi, last, k_base, v_base, table_row,
                          stride_k_block, stride_k_slot, stride_v_block, stride_v_slot, offs_d, d_ok, kv_len, pos,
                          score_factor, cap_factor, cap_log2, alibi_log2, left, right,
                          PAGE, BLOCK_N, True, HEAD_MASKED, SOFTCAP, ALIBI, HAS_LEFT, HAS_RIGHT)

    if SPLITS == 1:  # [ATTN-OUTPUT]: a row that saw no key (l = 0) writes zeros
        scale = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)
        if V_DESCALE:
            scale = scale * tl.load(v_descale + seq * stride_vd_seq + kv_head * stride_vd_head)
        o = tl.where(ok, acc * scale[:, None], float("nan"))
        o_rows = row.to(tl.int64) * stride_o_token + head * stride_o_head
        tl.store(out_ptr + o_rows[:, None] + offs_d[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
    else:  # partials, indexed (((seq * BLOCK_Q + token) * NUM_HEADS + head) * SPLITS + split): a sequence's
        # own, whatever cu_seqlens_q holds; NaN ones merge to NaN rows
        acc = tl.where(ok, acc, float("nan"))
        part = ((seq.to(tl.int64) * BLOCK_Q + token) * NUM_HEADS + head) * SPLITS + tl.program_id(2)
        part_max = partials + parts.to(tl.int64) * HEAD_PAD  # the workspace: rows of acc, then max, then sum
        tl.store(part_max + part, m_i, mask=row_ok)
        tl.store(part_max + parts + part, l_i, mask=row_ok)
        tl.store(partials + part[:, None] * HEAD_PAD + offs_d[None, :], acc, mask=row_ok[:, None])


@triton.jit
def reduce_splits_kernel(out_ptr, partials, parts, cu_seqlens_q, seqused_k, sinks_ptr, v_descale,
                         num_tokens, max_seqlen_q, max_seqlen_k,
                         stride_o_token, stride_o_head, stride_vd_seq, stride_vd_head,
                         NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD: tl.constexpr,
                         HEAD_PAD: tl.constexpr, SPLITS: tl.constexpr, BLOCK_Q: tl.constexpr,
                         SINKS: tl.constexpr, V_DESCALE: tl.constexpr):
    """One (sequence, query head): merge the splits of each of its query tokens."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    q_start, q_len, used, ok = sequence_of(cu_seqlens_q, seqused_k, seq, num_tokens, max_seqlen_q, max_seqlen_k)
    splits = tl.arange(0, SPLITS)
    offs_d = tl.arange(0, HEAD_PAD)
    sink = float("-inf")
    if SINKS:
        sink = tl.load(sinks_ptr + head).to(tl.float32) * LOG2E
    scale = 1.0
    if V_DESCALE:
        scale = tl.load(v_descale + seq * stride_vd_seq + (head // GROUP) * stride_vd_head)
    part_max = partials + parts.to(tl.int64) * HEAD_PAD
    part_sum = part_max + parts
    row_lo = tl.maximum(q_start, 0)  # rows of out only, whatever the metadata
    for i in range(0, tl.minimum(q_start + q_len, num_tokens) - row_lo):
        token = row_lo.to(tl.int64) + i
        # a well-formed sequence has at most BLOCK_Q tokens; a longer one writes NaN rows, so any of
        # its own partials will do for the rest
        in_block = tl.minimum(token - q_start, BLOCK_Q - 1)
        part = ((seq * BLOCK_Q + in_block) * NUM_HEADS + head) * SPLITS + splits
        m = tl.load(part_max + part)
        m_all = tl.maximum(tl.max(m, 0), sink)
        m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
        w = tl.exp2(m - m_safe)
        total = tl.sum(tl.load(part_sum + part) * w, 0) + tl.exp2(sink - m_safe)
        acc = tl.sum(tl.load(partials + part[:, None] * HEAD_PAD + offs_d[None, :]) * w[:, None], 0)
        o = tl.where(ok, acc * tl.where(total > 0, scale / tl.where(total > 0, total, 1.0), 0.0), float("nan"))
        tl.store(out_ptr + token * stride_o_token + head * stride_o_head + offs_d,
                 o.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD)


# --- the launcher ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionConfig:
    """Rows per program (query tokens x heads of one group), keys per tile, warps, pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# By padded head size. The 128 entries are tuned on an H100 (docs/benchmarks.md); 64 and 256 are
# sized for the register budget, untuned. Prefill: query blocks of 128 rows; decode (every
# sequence's new tokens fit one block): 16 rows, the smallest tile tl.dot takes.
PREFILL = {64: AttentionConfig(128, 64, 4, 3), 128: AttentionConfig(128, 128, 8, 3),
           256: AttentionConfig(64, 32, 4, 2)}
DECODE = {64: AttentionConfig(16, 128, 4, 3), 128: AttentionConfig(16, 128, 4, 3),
          256: AttentionConfig(16, 64, 4, 2)}
MAX_SPLITS = 64


class Plan(NamedTuple):
    config: AttentionConfig
    heads: int  # query heads per program (a power of two)
    block_q: int  # query tokens per program
    splits: int  # 1: the 2-D launch; more: split-KV with a reduction
    query_blocks: int  # grid dim 0: an upper bound on the query blocks of all sequences (split-KV: one each)
    tiles_per_split: int  # key tiles each split sweeps


def plan(*, num_tokens: int, num_seqs: int, max_seqlen_q: int, max_seqlen_k: int, group: int, kv_heads: int,
         head_size: int, sm_count: int, splits: int | None = None, config: AttentionConfig | None = None) -> Plan:
    """The launch for a call, from host ints only. Split-KV when every sequence's queries fit one
    block and the 2-D grid would leave most of the GPU idle. `splits` and `config` force a choice."""
    # decode-sized or not depends on max_seqlen_q only up to 16 tokens
    config, heads, block_q = tile(head_size, group, min(max_seqlen_q, 17), config)
    tiles = -(-max(max_seqlen_k, 1) // config.block_n)
    if splits is None:
        programs = num_seqs * kv_heads * -(-group // heads)
        splits = 1
        if max_seqlen_q <= block_q and programs < 2 * sm_count:  # aim at about two programs per SM
            splits = min(_floor_power_of_2(2 * sm_count // max(programs, 1)), MAX_SPLITS)
    splits = max(1, min(_floor_power_of_2(splits), _floor_power_of_2(tiles)))  # every split sweeps a tile
    if max_seqlen_q > block_q:
        splits = 1  # the reduction takes one query block per sequence
    query_blocks = num_seqs if splits > 1 else num_tokens // block_q + num_seqs
    return Plan(config, heads, block_q, splits, query_blocks, -(-tiles // splits))


@functools.lru_cache(maxsize=256)
def tile(head_size: int, group: int, max_seqlen_q: int, config: AttentionConfig | None) -> tuple:
    """(config, query heads per program, query tokens per program): the table's config for the
    padded head size, decode-sized when every sequence's queries fit 16 rows, unless `config` is given."""
    if config is None:
        head_pad = padded_head(head_size)
        decode = max_seqlen_q * min(triton.next_power_of_2(group), 16) <= 16
        table = DECODE if decode else PREFILL
        config = table[min(size for size in table if size >= head_pad)]
    heads = min(triton.next_power_of_2(group), config.block_m)
    return config, heads, config.block_m // heads


def padded_head(head_size: int) -> int:
    """HEAD_PAD: the head size rounded up to a power of two, at least 16 (tl.dot's smallest K)."""
    return max(triton.next_power_of_2(head_size), 16)


def _floor_power_of_2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


@functools.cache
def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if device.type == "xpu":  # Xe cores play the part of SMs
        return getattr(torch.xpu.get_device_properties(device), "gpu_subslice_count", 0) or 8
    return 8  # the interpreter: any count gives the same values


def attend(q, k_cache, v_cache, out, *, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
           softmax_scale, causal, window, softcap, alibi_slopes, sinks, q_descale, k_descale, v_descale,
           splits: int | None = None, config: AttentionConfig | None = None) -> None:
    """Write attention into `out` (docs/SPEC.md "Attention"). Arguments are checked by
    lowbit/unified_attention.py; `splits` and `config` override the plan (tests, tuning)."""
    num_tokens, num_heads, head_size = q.shape
    _, page, kv_heads, _ = k_cache.shape
    num_seqs = cu_seqlens_q.shape[0] - 1
    if num_tokens == 0 or num_seqs == 0:
        return
    group = num_heads // kv_heads
    p = plan(num_tokens=num_tokens, num_seqs=num_seqs, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
             group=group, kv_heads=kv_heads, head_size=head_size, sm_count=sm_count(q.device), splits=splits,
             config=config)
    left, right = window
    right = 0 if causal else right  # causal keeps j <= p: a right bound of 0
    attention, reduction = launches(num_heads, group, head_size, page, p.config, p.heads, p.block_q, p.splits,
                                    softcap > 0, alibi_slopes is not None, sinks is not None, left >= 0, right >= 0,
                                    q_descale is not None, k_descale is not None, v_descale is not None,
                                    k_cache.dtype == torch.float8_e4m3fn, q.device.type == "cpu")
    # An absent optional tensor is passed as cu_seqlens_q (never read: its flag is off)
    absent = cu_seqlens_q
    if p.splits > 1:  # one workspace: the partial rows, then their maxima, then their sums
        parts = num_seqs * p.block_q * num_heads * p.splits
        partials = torch.empty(parts * (padded_head(head_size) + 2), dtype=torch.float32, device=q.device)
    else:
        parts, partials = 0, absent
    qd, kd, vd = _descale_strides(q_descale), _descale_strides(k_descale), _descale_strides(v_descale)
    attention(
        (p.query_blocks, kv_heads * triton.cdiv(group, p.heads), p.splits),
        q, k_cache, v_cache, out, cu_seqlens_q, seqused_k, block_table,
        absent if alibi_slopes is None else alibi_slopes, absent if sinks is None else sinks,
        absent if q_descale is None else q_descale, absent if k_descale is None else k_descale,
        absent if v_descale is None else v_descale, partials, parts,
        num_seqs, num_tokens, k_cache.shape[0], max_seqlen_q, max_seqlen_k, softmax_scale,
        softcap if softcap > 0 else 1.0, left, right, p.tiles_per_split,
        *q.stride()[:2], *k_cache.stride()[:3], *v_cache.stride()[:3], *out.stride()[:2], block_table.stride(0),
        *qd, *kd, *vd)
    if reduction is not None:
        reduction((num_seqs, num_heads, 1), out, partials, parts, cu_seqlens_q, seqused_k,
                  absent if sinks is None else sinks, absent if v_descale is None else v_descale,
                  num_tokens, max_seqlen_q, max_seqlen_k, *out.stride()[:2], *vd)


@functools.lru_cache(maxsize=1024)
def launches(num_heads: int, group: int, head_size: int, page: int, config: AttentionConfig, heads: int,
             block_q: int, splits: int, softcap: bool, alibi: bool, sinks: bool, has_left: bool, has_right: bool,
             q_descale: bool, k_descale: bool, v_descale: bool, fp8_kv: bool,
             dot_f32: bool) -> tuple[Launch, Launch | None]:
    """The attention kernel's launch and, for split-KV, the reduction's, for one kind of call."""
    # Fused multiply-adds are welcome here: attention is compared within a tolerance, not bit for bit
    head_pad = padded_head(head_size)
    attention = Launch(unified_attention_kernel, dict(
        NUM_HEADS=num_heads, GROUP=group, HEADS=heads, CHUNKS=triton.cdiv(group, heads), HEAD=head_size,
        HEAD_PAD=head_pad, PAGE=page, BLOCK_Q=block_q, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        SPLITS=splits, SOFTCAP=softcap, ALIBI=alibi, SINKS=sinks, HAS_LEFT=has_left, HAS_RIGHT=has_right,
        Q_DESCALE=q_descale, K_DESCALE=k_descale, V_DESCALE=v_descale, FP8_KV=fp8_kv, DOT_F32=dot_f32),
        num_warps=config.num_warps, num_stages=config.num_stages, enable_fp_fusion=True)
    if splits == 1:
        return attention, None
    reduction = Launch(reduce_splits_kernel, dict(
        NUM_HEADS=num_heads, GROUP=group, HEAD=head_size, HEAD_PAD=head_pad, SPLITS=splits, BLOCK_Q=block_q,
        SINKS=sinks, V_DESCALE=v_descale), num_warps=4, enable_fp_fusion=True)
    return attention, reduction


def _descale_strides(descale) -> tuple[int, int]:
    """(per sequence, per KV head) strides of a descale: 0, 0 for one value per tensor."""
    if descale is None or descale.numel() == 1:
        return 0, 0
    return descale.stride(0), descale.stride(1)
