"""Reference MXFP8 quantize/dequantize (docs/SPEC.md, "MXFP8"), vectorized pure PyTorch."""

import math

import torch

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import Capability

from .float_bits import EXPONENT_BIAS, MANTISSA_BITS, MANTISSA_MASK, exponent_field, f32, pow2, write_canonical_nans
from .mxfp4 import read_scale_bytes, write_scale_bytes


def quantize(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, *, scale_rule: str, swizzled: bool) -> None:
    """Write MXFP8 of `x` (..., K) into `q` (..., K) and `scales`: linear (..., K/32), or the swizzled
    tiles (round_up(R, 128), round_up(K/32, 4)) for the R rows of x."""
    rows, k = math.prod(x.shape[:-1]), x.shape[-1]
    blocks = x.to(torch.float32).reshape(rows, k // spec.MX_BLOCK, spec.MX_BLOCK)
    nan = blocks.isnan()
    block_nan = nan.any(-1)
    amax = blocks.abs().masked_fill(nan, 0).amax(-1)  # [MX8-AMAX]
    if scale_rule == "rceil":  # [MX8-RCEIL]: a float32 product with fl32(1/448), never a division
        e = rceil_exponent(amax * f32(1 / spec.FP8_MAX, x.device))
    else:  # "floor" [MX8-FLOOR]: exponent field - 127 - 8; zero and subnormals land below -127
        e = exponent_field(amax) - EXPONENT_BIAS - spec.MX8_E4M3_EMAX
    e = e.clamp(spec.SCALE_EXP_MIN, spec.SCALE_EXP_MAX)  # [MX8-SCALE]
    e = torch.where(amax.isinf(), spec.SCALE_EXP_MAX, e)  # [MX8-INF]
    scale_byte = torch.where(block_nan, spec.E8M0_NAN, e + spec.E8M0_BIAS).to(torch.uint8)  # [MX8-NAN]

    y = blocks * pow2(-e).unsqueeze(-1)  # [MX8-ELEMENT]: an exact power-of-two product (2^-127 kept)
    q8 = y.clamp(-spec.FP8_MAX, spec.FP8_MAX).to(spec.MX8_Q_DTYPE).view(torch.uint8)  # clamp: torch <= 2.11
    q8 = q8.masked_fill(block_nan.unsqueeze(-1), spec.MX8_NAN_BYTE)
    q.view(torch.uint8).copy_(q8.reshape(q.shape))
    write_scale_bytes(scales, scale_byte, swizzled)  # [MX8-LINEAR, MX8-SWIZZLE]


def rceil_exponent(d: torch.Tensor) -> torch.Tensor:
    """ceil(log2 d) of float32 d >= 0, as int32, where it is -126 or more; -127 for d <= 2^-127 (zero
    included), which is what the clamp of [MX8-SCALE] makes of anything lower. A normal d: exponent
    field - 127, plus 1 when the mantissa is non-zero (+Inf gives 128). A subnormal d = m * 2^-149:
    above 2^-127 (m > 2^22) its ceiling is 2^-126."""
    bits = d.view(torch.int32)
    field, mantissa = (bits >> MANTISSA_BITS) & 0xFF, bits & MANTISSA_MASK
    normal = field - EXPONENT_BIAS + (mantissa != 0).to(torch.int32)
    subnormal = spec.SCALE_EXP_MIN + (mantissa > 1 << (MANTISSA_BITS - 1)).to(torch.int32)
    return torch.where(field == 0, subnormal, normal)


def dequantize(q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *, swizzled: bool) -> None:
    """[MX8-DEQUANT] E4M3 value * 2^(byte - 127) in float32, rounded to out's dtype; scale byte 0xFF
    and E4M3 NaN give NaN (canonical bits)."""
    rows, k = math.prod(out.shape[:-1]), out.shape[-1]
    byte = read_scale_bytes(scales, rows, k // spec.MX_BLOCK, swizzled).to(torch.int32)
    factor = torch.where(byte == spec.E8M0_NAN, torch.nan, pow2(byte.clamp(max=254) - spec.E8M0_BIAS))
    values = q.view(spec.MX8_Q_DTYPE).to(torch.float32).reshape(rows, k // spec.MX_BLOCK, spec.MX_BLOCK)
    out.copy_((values * factor.unsqueeze(-1)).reshape(out.shape))
    write_canonical_nans(out)


_COMMON = dict(
    backend="cpu",
    devices=("cpu",),
    any_device=True,
    fidelity="bit-exact (the SPEC's reference)",
    graph_safe=False,  # allocates temporaries
    compile_safe=True,
    min_ndim=1,
    block_size=spec.MX_BLOCK,
    scale_layouts=spec.SCALE_LAYOUTS,
)

KERNELS = (
    Kernel(Capability(op="quantize_mxfp8", dtypes=spec.INPUT_DTYPES, scale_rules=spec.MX_SCALE_RULES, **_COMMON),
           quantize),
    Kernel(Capability(op="dequantize_mxfp8", dtypes=(spec.MX8_Q_DTYPE, torch.uint8), out_dtypes=spec.DEQUANT_DTYPES,
                      **_COMMON), dequantize),
)
