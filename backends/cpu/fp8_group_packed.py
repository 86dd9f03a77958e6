"""Reference FP8 per-token-group quantization with DeepGEMM-packed UE8M0 scales (docs/SPEC.md,
"FP8"), vectorized pure PyTorch."""

import math

import torch
import torch.nn.functional as F

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import ANY_GROUP_SIZE, Capability

from .float_bits import (
    EXPONENT_BIAS,
    ceil_exponent_field,
    f32,
    pow2,
    write_canonical_nans,
)


def quantize(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, *, group_size: int, eps: float) -> None:
    """Write E4M3 of `x` (..., mn, K) into `q` (..., R, K) and the packed scale words into `scales`
    (..., S, ceil(G/4)); rows >= mn of both are written as zeros."""
    *lead, mn, k = x.shape
    groups = k // group_size
    batches = math.prod(lead)
    xf = x.to(torch.float32).reshape(batches, mn, groups, group_size)
    nan = xf.isnan()  # [FP8-NAN]: ignored by amax
    byte = scale_byte(xf.abs().masked_fill(nan, 0).amax(-1), eps)

    scaled = xf * pow2(EXPONENT_BIAS - byte).unsqueeze(-1)  # exact: x / 2^(byte - 127)
    q8 = scaled.clamp(-spec.FP8_MAX, spec.FP8_MAX).to(spec.FP8_Q_DTYPE).view(torch.uint8)  # [FP8-ELEMENT]
    q8 = q8.masked_fill(nan, spec.FP8_NAN_BYTE)
    q_bytes = q.view(torch.uint8)
    q_bytes[..., :mn, :].copy_(q8.reshape(*lead, mn, k))
    q_bytes[..., mn:, :].zero_()

    words = spec.scale_words(groups)  # [FP8-PACK]: byte j of word c holds group 4c + j, little-endian
    padded = F.pad(byte, (0, words * spec.FP8_GROUPS_PER_WORD - groups)).reshape(batches, mn, words, 4)
    word = sum(padded[..., j].to(torch.int64) << (8 * j) for j in range(4))
    word = torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)  # the same 32 bits, signed
    scales[..., :mn, :].copy_(word.reshape(*lead, mn, words))
    scales[..., mn:, :].zero_()


def scale_byte(amax: torch.Tensor, eps: float) -> torch.Tensor:
    """[FP8-SCALE] the UE8M0 byte (int32) of groups with float32 `amax` (NaNs left out)."""
    a = torch.maximum(amax, f32(eps, amax.device))
    y = torch.maximum(a / f32(spec.FP8_MAX, amax.device), f32(spec.FP8_MIN_SCALE, amax.device))
    return ceil_exponent_field(y).clamp(max=spec.FP8_MAX_SCALE_BYTE)  # [FP8-INF]: Inf gives 255 -> 254


def dequantize(q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *, group_size: int) -> None:
    """[FP8-DEQUANT] float32(q) * 2^(byte - 127), the byte read through the packed scales' strides;
    byte 0xFF gives NaN."""
    *lead, mn, k = q.shape
    groups = k // group_size
    word = scales.to(torch.int64) & 0xFFFFFFFF
    byte = torch.stack([(word >> (8 * j)) & 0xFF for j in range(4)], dim=-1).reshape(*lead, mn, 4 * scales.shape[-1])
    byte = byte[..., :groups].to(torch.int32)
    # byte 0xFF is E8M0's NaN: NaN for the whole group (2^128 would give Inf, and NaN only for q = 0)
    factor = pow2(byte.clamp(max=spec.FP8_MAX_SCALE_BYTE) - EXPONENT_BIAS)
    factor = torch.where(byte == spec.E8M0_NAN, torch.nan, factor)
    values = q.view(spec.FP8_Q_DTYPE).to(torch.float32).reshape(*lead, mn, groups, group_size)
    out.copy_((values * factor.unsqueeze(-1)).reshape(out.shape))
    write_canonical_nans(out)


_COMMON = dict(
    backend="cpu",
    devices=("cpu",),
    any_device=True,
    fidelity="bit-exact (the SPEC's reference)",
    graph_safe=False,  # allocates temporaries even with out=
    compile_safe=True,
    min_ndim=2,
    group_sizes=ANY_GROUP_SIZE,
)

KERNELS = (
    Kernel(Capability(op="quantize_fp8_group_packed", dtypes=spec.INPUT_DTYPES, **_COMMON), quantize),
    Kernel(Capability(op="dequantize_fp8_group_packed", dtypes=(spec.FP8_Q_DTYPE, torch.uint8),
                      out_dtypes=spec.DEQUANT_DTYPES, out_buffers=False, **_COMMON), dequantize),
)
