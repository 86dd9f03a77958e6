"""lowbit: low-bit quantization and attention kernels with the same bits on every GPU vendor, behind one import.

    import lowbit
    q, scales = lowbit.quantize_mxfp4(x)                      # MXFP4, blocks of 32, E8M0 scales
    q8, s8 = lowbit.quantize_mxfp8(x, scale_layout="swizzled")  # MXFP8: E4M3, blocks of 32, E8M0 scales
    q8, packed = lowbit.quantize_fp8_group_packed(x)          # E4M3 + DeepGEMM-packed UE8M0 scales
    q8, s = lowbit.quantize_fp8_group(x, scale_layout="column_major")  # float32 scales for F.scaled_mm
    qw, sw = lowbit.quantize_fp8_block(w)                     # one float32 scale per 128x128 weight block
    lowbit.per_token_group_quant_mxfp4(x, x_q, x_s)           # vLLM's convention, into buffers
    q4, sf, gs = lowbit.quantize_nvfp4(x)                     # NVFP4, global scale computed on the GPU
    out = lowbit.unified_attention(q, k_cache, v_cache, cu_seqlens_q=cu, seqused_k=used,
                                   block_table=table, max_seqlen_q=mq, max_seqlen_k=mk)
    lowbit.supports("quantize_mxfp4", x, device="cuda", arch="sm_90").ok
    print(lowbit.explain("quantize_fp8_group_packed", x, group_size=64))

Bits follow docs/SPEC.md on every backend. Importing lowbit loads no backend and probes no
hardware: both happen on the first call or query.
"""

from .capability import ArchRange, Call, Capability, Unmet
from .errors import UnsupportedError
from .fp8_group import dequantize_fp8_block, dequantize_fp8_group, quantize_fp8_block, quantize_fp8_group
from .fp8_group_packed import dequantize_fp8_group_packed, quantize_fp8_group_packed
from .mxfp4 import dequantize_mxfp4, per_token_group_quant_mxfp4, quantize_mxfp4
from .mxfp8 import dequantize_mxfp8, quantize_mxfp8
from .nvfp4 import dequantize_nvfp4, nvfp4_global_scale, quantize_nvfp4, scaled_fp4_quant
from .ops import OPS
from .query import capabilities, explain, supports
from .unified_attention import unified_attention

__version__ = "0.1.0"

__all__ = [
    "ArchRange",
    "Call",
    "Capability",
    "OPS",
    "UnsupportedError",
    "Unmet",
    "capabilities",
    "dequantize_fp8_block",
    "dequantize_fp8_group",
    "dequantize_fp8_group_packed",
    "dequantize_mxfp4",
    "dequantize_mxfp8",
    "dequantize_nvfp4",
    "explain",
    "nvfp4_global_scale",
    "per_token_group_quant_mxfp4",
    "quantize_fp8_block",
    "quantize_fp8_group",
    "quantize_fp8_group_packed",
    "quantize_mxfp4",
    "quantize_mxfp8",
    "quantize_nvfp4",
    "scaled_fp4_quant",
    "supports",
    "unified_attention",
]
