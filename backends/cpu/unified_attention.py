"""Reference unified_attention (docs/SPEC.md, "Attention"): one sequence at a time, in float32,
each step of the spec written out as it reads. Slow and obviously right: the oracle."""

import torch

from lowbit.backend import Kernel
from lowbit.capability import Capability
from lowbit.unified_attention import FP8_DTYPE, OUT_DTYPES


def attend(q, k_cache, v_cache, out, *, cu_seqlens_q, seqused_k, block_table, max_seqlen_q, max_seqlen_k,
           softmax_scale, causal, window, softcap, alibi_slopes, sinks, q_descale, k_descale, v_descale) -> None:
    heads, kv_heads = q.shape[1], k_cache.shape[2]
    group = heads // kv_heads
    page_size = k_cache.shape[1]
    starts = cu_seqlens_q.tolist()  # host reads: the reference is not graph-safe
    kv_lens = seqused_k.tolist()
    left, right = window
    for s, kv_len in enumerate(kv_lens):
        first, q_len = starts[s], starts[s + 1] - starts[s]
        if q_len <= 0:
            continue
        pages = block_table[s, : -(-kv_len // page_size)].long()  # [ATTN-PAGES]
        k = k_cache[pages].flatten(0, 1)[:kv_len].float()  # (kv_len, kv_heads, head_size)
        v = v_cache[pages].flatten(0, 1)[:kv_len].float()
        # query head h reads KV head h // group
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        x = q[first:first + q_len].float()

        # [ATTN-SCORE] with [ATTN-FP8]: the query and key descales fold into the score factor
        factor = softmax_scale * _per_query_head(q_descale, s, group, q) * _per_query_head(k_descale, s, group, q)
        score = torch.einsum("ihd,jhd->hij", x, k) * factor[:, None, None]
        if softcap > 0:  # [ATTN-SOFTCAP]
            score = softcap * torch.tanh(score / softcap)
        p = torch.arange(q_len, device=q.device) + kv_len - q_len  # [ATTN-POSITION]
        j = torch.arange(kv_len, device=q.device)
        distance = (p[:, None] - j[None, :]).float()
        if alibi_slopes is not None:  # [ATTN-ALIBI]
            score = score - alibi_slopes.float()[:, None, None] * distance.abs()
        visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device)  # [ATTN-MASK]
        if causal:
            visible &= distance >= 0
        if left >= 0:
            visible &= distance <= left
        if right >= 0:
            visible &= -distance <= right
        score = score.masked_fill(~visible, float("-inf"))

        # [ATTN-SINK]: the sink logit joins the max and the denominator, with no value vector
        m = score.amax(-1) if kv_len else torch.full((heads, q_len), float("-inf"), device=q.device)
        sink = None if sinks is None else sinks.float()[:, None].expand(heads, q_len)
        if sink is not None:
            m = torch.maximum(m, sink)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # no key and no sink: all weights 0
        e = torch.exp(score - m[..., None])
        denominator = e.sum(-1) + (0 if sink is None else torch.exp(sink - m))
        weight = e / torch.where(denominator > 0, denominator, torch.ones_like(denominator))[..., None]

        o = torch.einsum("hij,jhd->ihd", weight, v)  # [ATTN-OUTPUT]
        o = o * _per_query_head(v_descale, s, group, q)[None, :, None]
        out[first:first + q_len] = o.to(out.dtype)


def _per_query_head(descale, s, group, q) -> torch.Tensor:
    """A descale as one float32 per query head of sequence s (1 when absent)."""
    heads = q.shape[1]
    if descale is None:
        return torch.ones(heads, device=q.device)
    if descale.numel() == 1:
        return descale.float().reshape(1).expand(heads)
    return descale[s].float().repeat_interleave(group)


KERNELS = (
    Kernel(Capability(op="unified_attention", backend="cpu", devices=("cpu",), any_device=True,
                      dtypes=(torch.bfloat16, torch.float16, FP8_DTYPE),
                      kv_dtypes={torch.bfloat16: (torch.bfloat16, FP8_DTYPE), torch.float16: (torch.float16, FP8_DTYPE),
                                 FP8_DTYPE: (FP8_DTYPE,)},
                      out_dtypes=OUT_DTYPES, fidelity="the SPEC's reference (float32, one sequence at a time)",
                      graph_safe=False,  # reads cu_seqlens_q and seqused_k on the host
                      compile_safe=True, min_ndim=3, max_ndim=3), attend),
)
