"""Reference MXFP4 quantize/dequantize (docs/SPEC.md, "MXFP4"), vectorized pure PyTorch."""

import math

import torch

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import Capability

from .float_bits import (
    EXPONENT_BIAS,
    ceil_exponent_field,
    exponent_field,
    f32,
    pow2,
    write_canonical_nans,
)


def quantize(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, *, scale_rule: str,
             swizzled: bool = False) -> None:
    """Write MXFP4 of `x` into `q` (..., K/2) and `scales` ((..., K/32), or the swizzled tiles)."""
    packed, scale_byte = _quantize(x, scale_rule, eps=0.0)
    q.view(torch.uint8).copy_(packed)
    write_scale_bytes(scales, scale_byte, swizzled)


def write_scale_bytes(scales: torch.Tensor, scale_byte: torch.Tensor, swizzled: bool) -> None:
    """Scale bytes (rows, C) into `scales`: as they are, or at their [SCALE-SWIZZLE] offsets with
    every padding byte 0 (MXFP4, MXFP8 and NVFP4 alike)."""
    if swizzled:
        scales.view(torch.uint8).zero_()
        offsets = spec.swizzled_offsets(scale_byte.shape[0], scale_byte.shape[1], scale_byte.device)
        scales.view(torch.uint8).view(-1)[offsets] = scale_byte.reshape(-1)
    else:
        scales.view(torch.uint8).copy_(scale_byte.reshape(scales.shape))


def read_scale_bytes(scales: torch.Tensor, rows: int, cols: int, swizzled: bool) -> torch.Tensor:
    """The (rows, cols) scale bytes of `scales`, linear or swizzled [SCALE-SWIZZLE]."""
    flat = scales.view(torch.uint8).reshape(-1)
    return (flat[spec.swizzled_offsets(rows, cols, scales.device)] if swizzled else flat).reshape(rows, cols)


def quantize_into(x: torch.Tensor, x_q: torch.Tensor, x_s: torch.Tensor, *, eps: float, swizzled: bool = False) -> None:
    """per_token_group_quant_mxfp4: rule rceil with the eps floor [MX-EPS]; a float32 `x_s` gets
    the scales as float32 powers of two [MX-SCALE-F32]."""
    packed, scale_byte = _quantize(x, "rceil", eps=eps)
    x_q.view(torch.uint8).copy_(packed)
    if swizzled:  # E8M0 bytes only (the op refuses a float32 x_s for it)
        write_scale_bytes(x_s, scale_byte, swizzled)
        return
    scale_byte = scale_byte.reshape(x_s.shape)
    if x_s.dtype == torch.float32:
        x_s.copy_(torch.where(scale_byte == spec.E8M0_NAN, torch.nan, pow2(scale_byte.to(torch.int32) - EXPONENT_BIAS)))
        write_canonical_nans(x_s)
    else:
        x_s.view(torch.uint8).copy_(scale_byte)


def _quantize(x: torch.Tensor, scale_rule: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed bytes (..., K/2), scale bytes (rows, K/32)) as uint8."""
    rows, k = math.prod(x.shape[:-1]), x.shape[-1]
    blocks = x.to(torch.float32).reshape(rows, k // spec.MX_BLOCK, spec.MX_BLOCK)
    nan = blocks.isnan()
    block_nan = nan.any(-1)
    amax = blocks.abs().masked_fill(nan, 0).amax(-1)  # [MX-AMAX]
    if scale_rule == "rceil":  # [MX-RCEIL]
        d = torch.clamp_min(amax, spec.RCEIL_AMAX_FLOOR) * f32(1 / 6, x.device)
        d = torch.maximum(d, f32(eps, x.device))  # [MX-EPS]; eps = 0 leaves d as it is
        e = ceil_exponent_field(d) - EXPONENT_BIAS
    else:  # "floor" [MX-FLOOR]: exponent field - 127 - 2; zero and subnormals land below -127
        e = exponent_field(amax) - EXPONENT_BIAS - 2
    e = e.clamp(spec.SCALE_EXP_MIN, spec.SCALE_EXP_MAX)  # [MX-SCALE]
    e = torch.where(amax.isinf(), spec.SCALE_EXP_MAX, e)  # [MX-INF]
    scale_byte = torch.where(block_nan, spec.E8M0_NAN, e + spec.E8M0_BIAS)  # [MX-NAN]

    y = (blocks * pow2(-e).unsqueeze(-1)).abs()  # [MX-SCALING]: an exact power-of-two product
    code = e2m1_code(y)
    code = code | (blocks.signbit().to(torch.uint8) << 3)  # [MX-SIGN]
    code = code.masked_fill(block_nan.unsqueeze(-1), spec.E2M1_NAN_BLOCK_NIBBLE)
    nibbles = code.reshape(*x.shape)
    packed = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)  # [MX-PACK]
    return packed, scale_byte.to(torch.uint8)


# Upper bounds of each E2M1 code's interval on |y| [MX-ROUND]: (threshold, inclusive). Ties go to
# the even code: 0.25 -> 0, 0.75 -> 2, 1.25 -> 2, 1.75 -> 4, 2.5 -> 4, 3.5 -> 6, 5 -> 6.
_E2M1_STEPS = ((0.25, True), (0.75, False), (1.25, True), (1.75, False), (2.5, True), (3.5, False), (5.0, True))


def e2m1_code(a: torch.Tensor) -> torch.Tensor:
    """Codes 0..7 of |y| rounded to nearest-even on {0, .5, 1, 1.5, 2, 3, 4, 6}; > 5 saturates to 7."""
    code = torch.zeros(a.shape, dtype=torch.uint8, device=a.device)
    for threshold, inclusive in _E2M1_STEPS:
        code += (a > threshold) if inclusive else (a >= threshold)
    return code


def e2m1_values(q: torch.Tensor, shape) -> torch.Tensor:
    """The float32 values of packed E2M1 pairs `q` (..., K/2), the even element in the low nibble,
    as `shape` (..., K)."""
    packed = q.view(torch.uint8)
    nibbles = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(shape).long()
    # codes 0..7 as 0, .5, 1, 1.5, 2, 3, 4, 6: (2 + m) * 2^(e - 2) for exponent e >= 1, m * 0.5 below
    # (arithmetic, not a table: a torch.tensor would copy from the host, which a CUDA graph forbids)
    e, m = (nibbles & 7) >> 1, (nibbles & 1).to(torch.float32)
    magnitude = torch.where(e == 0, m * 0.5, (m + 2) * pow2((e - 2).to(torch.int32)))
    return torch.where(nibbles >= spec.E2M1_SIGN, -magnitude, magnitude)


def dequantize(q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *, swizzled: bool = False) -> None:
    """[MX-DEQUANT] value(code) * 2^(byte - 127) in float32, rounded to out's dtype."""
    values = e2m1_values(q, out.shape)
    rows, cols = math.prod(out.shape[:-1]), out.shape[-1] // spec.MX_BLOCK
    byte = read_scale_bytes(scales, rows, cols, swizzled).to(torch.int32)
    factor = torch.where(byte == spec.E8M0_NAN, torch.nan, pow2(byte - spec.E8M0_BIAS))
    blocks = values.reshape(rows, cols, spec.MX_BLOCK) * factor.unsqueeze(-1)
    out.copy_(blocks.reshape(out.shape))
    write_canonical_nans(out)


_COMMON = dict(
    backend="cpu",
    devices=("cpu",),
    any_device=True,
    fidelity="bit-exact (the SPEC's reference)",
    graph_safe=False,  # allocates temporaries even with out=
    compile_safe=True,
    min_ndim=1,
    block_size=spec.MX_BLOCK,
    scale_layouts=spec.SCALE_LAYOUTS,
)

KERNELS = (
    Kernel(Capability(op="quantize_mxfp4", dtypes=spec.INPUT_DTYPES, scale_rules=spec.MX_SCALE_RULES,
                      **_COMMON), quantize),
    Kernel(Capability(op="per_token_group_quant_mxfp4", dtypes=spec.INPUT_DTYPES, **_COMMON), quantize_into),
    Kernel(Capability(op="dequantize_mxfp4", dtypes=(spec.MX_Q_DTYPE, torch.uint8),
                      out_dtypes=spec.DEQUANT_DTYPES, **_COMMON), dequantize),
)
