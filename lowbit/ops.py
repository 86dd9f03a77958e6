"""The op table: every op lowbit declares, where its spec lives, and how a call is described.

`describe` takes the public function's arguments (tensors may be meta or fake) and returns the
`Call` that dispatch checks, so `lowbit.supports` asks exactly what the real call would ask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import fp8_group, fp8_group_packed, mxfp4, mxfp8, nvfp4, unified_attention
from .capability import Call


@dataclass(frozen=True)
class OpDef:
    name: str
    spec: str  # the docs/SPEC.md section
    summary: str
    describe: Callable[..., Call]


OPS = {
    op.name: op
    for op in (
        OpDef("quantize_mxfp4", "MXFP4", "E2M1 elements, blocks of 32, E8M0 scales",
              mxfp4.describe_quantize),
        OpDef("per_token_group_quant_mxfp4", "MXFP4",
              "vLLM's convention: MXFP4 into x_q and x_s (float32 or E8M0 scales), eps floor",
              mxfp4.describe_group_quant),
        OpDef("dequantize_mxfp4", "MXFP4", "MXFP4 back to bfloat16/float16/float32",
              mxfp4.describe_dequantize),
        OpDef("quantize_mxfp8", "MXFP8", "E4M3 elements, blocks of 32, E8M0 scales (linear or swizzled)",
              mxfp8.describe_quantize),
        OpDef("dequantize_mxfp8", "MXFP8", "MXFP8 back to bfloat16/float16/float32",
              mxfp8.describe_dequantize),
        OpDef("quantize_nvfp4", "NVFP4", "E2M1 elements, blocks of 16, E4M3 scales, float32 global scale",
              nvfp4.describe_quantize),
        OpDef("nvfp4_global_scale", "NVFP4", "the encode global scale 2688/amax, on the device",
              nvfp4.describe_global_scale),
        OpDef("dequantize_nvfp4", "NVFP4", "NVFP4 back to bfloat16/float16/float32",
              nvfp4.describe_dequantize),
        OpDef("quantize_fp8_group_packed", "FP8", "E4M3 per token group, UE8M0 scales packed for DeepGEMM",
              fp8_group_packed.describe_public_call),
        OpDef("dequantize_fp8_group_packed", "FP8", "FP8 group-packed back to bfloat16/float16/float32",
              fp8_group_packed.describe_dequantize),
        OpDef("quantize_fp8_group", "FP8 with float32 scales",
              "E4M3 per token group, float32 scales (row-, column-major or TMA-aligned)",
              fp8_group.describe_quantize),
        OpDef("dequantize_fp8_group", "FP8 with float32 scales", "FP8 groups back to bfloat16/float16/float32",
              fp8_group.describe_dequantize),
        OpDef("quantize_fp8_block", "FP8 with float32 scales", "E4M3 weight, one float32 scale per 128x128 block",
              fp8_group.describe_quantize_block),
        OpDef("dequantize_fp8_block", "FP8 with float32 scales", "FP8 blocks back to bfloat16/float16/float32",
              fp8_group.describe_dequantize_block),
        OpDef("unified_attention", "Attention", "paged variable-length attention with FP8 descales",
              unified_attention.describe_public_call),
    )
}
