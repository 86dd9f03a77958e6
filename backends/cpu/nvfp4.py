"""Reference NVFP4 (docs/SPEC.md, "NVFP4"), vectorized pure PyTorch: the global scale, quantize into
linear or swizzled block scales, and dequantize."""

import math

import torch

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import Capability

from .float_bits import f32, write_canonical_nans
from .mxfp4 import e2m1_code, e2m1_values, read_scale_bytes, write_scale_bytes


def global_scale(x: torch.Tensor, gs: torch.Tensor, *, per_row: bool) -> None:
    """[NV-GLOBAL] Write min(fl32(2688 / amax), 2^118) into `gs` (() or the rows), amax over the
    finite elements of the tensor or of each row."""
    rows, k = math.prod(x.shape[:-1]), x.shape[-1]
    a = x.to(torch.float32).reshape(rows, k).abs()
    a = a.masked_fill(~a.isfinite(), 0)  # NaN and Inf are left out; none left gives 0
    if a.numel() == 0:
        amax = torch.zeros(rows if per_row else (), device=x.device)
    else:
        amax = a.amax(-1) if per_row else a.amax()
    value = (f32(spec.NV_GLOBAL_NUMERATOR, x.device) / amax).clamp_max(spec.NV_GS_MAX)  # 2688/0 = Inf -> 2^118
    gs.copy_(value.reshape(gs.shape))


def quantize(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, gs: torch.Tensor, *, per_row: bool,
             compute_scale: bool, swizzled: bool) -> None:
    """Write NVFP4 of `x` into `q` (..., K/2) and `scales` (linear (..., K/16), or the swizzled tiles).
    `gs` holds one scale or one per row; with `compute_scale` it is written first [NV-GLOBAL]."""
    if compute_scale:
        global_scale(x, gs, per_row=per_row)
    rows, k = math.prod(x.shape[:-1]), x.shape[-1]
    blocks = x.to(torch.float32).reshape(rows, k // spec.NV_BLOCK, spec.NV_BLOCK)
    g = row_scales(gs, rows)
    nan = blocks.isnan()
    block_nan = nan.any(-1) | ~usable(g)  # [NV-NAN, NV-GLOBAL-GIVEN]
    amax = blocks.abs().masked_fill(nan, 0).amax(-1)  # [NV-AMAX]
    v = g * (amax * f32(1 / 6, x.device))  # [NV-SCALE]: two float32 products
    sf = v.clamp_max(spec.FP8_MAX).to(spec.NV_SCALE_DTYPE)  # clamp first: torch <= 2.11 does not saturate
    sf_value = sf.to(torch.float32)
    product = sf_value * (f32(1, x.device) / g)  # [NV-MULTIPLIER]
    m = torch.where(sf_value == 0, 0.0, f32(1, x.device) / product)
    y = blocks * m.unsqueeze(-1)
    code = e2m1_code(y.abs()) | (y.signbit().to(torch.uint8) << 3)  # [NV-ELEMENT]
    code = code.masked_fill(block_nan.unsqueeze(-1), spec.E2M1_NAN_BLOCK_NIBBLE)
    nibbles = code.reshape(rows, k)
    q.view(torch.uint8).copy_((nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).reshape(q.shape))  # [NV-PACK]
    sf_byte = sf.view(torch.uint8).masked_fill(block_nan, spec.NV_SCALE_NAN)
    write_scale_bytes(scales, sf_byte.reshape(rows, k // spec.NV_BLOCK), swizzled)  # [NV-LINEAR, NV-SWIZZLE]


def row_scales(gs: torch.Tensor, rows: int) -> torch.Tensor:
    """The global scale of each of `rows` rows, (rows, 1): one scale broadcast, or one per row."""
    return gs.reshape(-1, 1).expand(rows, 1) if gs.numel() == 1 else gs.reshape(rows, 1)


def usable(gs: torch.Tensor) -> torch.Tensor:
    """[NV-GLOBAL-GIVEN]: 2^-118 <= gs <= 2^118 (False for NaN)."""
    return (gs >= spec.NV_GS_MIN) & (gs <= spec.NV_GS_MAX)


def dequantize(q: torch.Tensor, scales: torch.Tensor, gs: torch.Tensor, out: torch.Tensor, *, swizzled: bool) -> None:
    """[NV-DEQUANT] v * fl32(float(SF) / gs) in float32, rounded to out's dtype."""
    rows, k = math.prod(out.shape[:-1]), out.shape[-1]
    values = e2m1_values(q, (rows, k))
    sf_byte = read_scale_bytes(scales, rows, k // spec.NV_BLOCK, swizzled)
    sf_value = sf_byte.view(spec.NV_SCALE_DTYPE).to(torch.float32)
    g = row_scales(gs, rows)
    factor = torch.where(usable(g), sf_value / g, torch.nan)
    blocks = values.reshape(rows, k // spec.NV_BLOCK, spec.NV_BLOCK) * factor.unsqueeze(-1)
    out.copy_(blocks.reshape(out.shape))
    write_canonical_nans(out)


_COMMON = dict(
    backend="cpu",
    devices=("cpu",),
    any_device=True,
    fidelity="bit-exact (the SPEC's reference)",
    graph_safe=False,  # allocates temporaries
    compile_safe=True,
    min_ndim=1,
    block_size=spec.NV_BLOCK,
)

KERNELS = (
    Kernel(Capability(op="quantize_nvfp4", scale_layouts=spec.SCALE_LAYOUTS,
                      dtypes=spec.INPUT_DTYPES, **_COMMON), quantize),
    Kernel(Capability(op="nvfp4_global_scale", dtypes=spec.INPUT_DTYPES, **_COMMON), global_scale),
    Kernel(Capability(op="dequantize_nvfp4", scale_layouts=spec.SCALE_LAYOUTS,
                      dtypes=(spec.NV_Q_DTYPE, torch.uint8), out_dtypes=spec.DEQUANT_DTYPES,
                      **_COMMON), dequantize),
)
