"""Reference FP8 quantization with float32 scales (docs/SPEC.md, "FP8 with float32 scales"): 1 x G
token groups and 2-D weight blocks, and their dequantization, vectorized pure PyTorch."""

import math

import torch
import torch.nn.functional as F

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import ANY_GROUP_SIZE, Capability

from .float_bits import EXPONENT_BIAS, f32, pow2, write_canonical_nans
from .fp8_group_packed import scale_byte


def quantize_group(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, *, group_size: int, eps: float,
                   ue8m0: bool) -> None:
    """E4M3 of `x` (..., mn, K) into `q` (..., R, K) and the float32 scales into `scales` (..., S, G),
    whatever their strides; rows >= mn of both are written as zeros."""
    *lead, mn, k = x.shape
    groups = k // group_size
    xf = x.to(torch.float32).reshape(math.prod(lead), mn, groups, group_size)
    s = group_scales(_amax(xf, dims=(-1,)), eps, ue8m0)
    q8 = e4m3_bytes(xf, s.unsqueeze(-1))
    q_bytes = q.view(torch.uint8)
    q_bytes[..., :mn, :].copy_(q8.reshape(*lead, mn, k))
    q_bytes[..., mn:, :].zero_()
    scales[..., :mn, :].copy_(s.reshape(*lead, mn, groups))
    scales[..., mn:, :].zero_()


def quantize_block(w: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, *, block: tuple[int, int], eps: float,
                   ue8m0: bool) -> None:
    """[F8-BLOCK] E4M3 of `w` (N, K) into `q` and one float32 scale per tile (i, j) into `scales[j, i]`."""
    (n, k), (br, bc) = w.shape, block
    tiles_n, tiles_k = -(-n // br), -(-k // bc)
    # Zero padding to whole tiles leaves every amax as it is (amax >= 0), and is cropped off below
    wf = F.pad(w.to(torch.float32), (0, tiles_k * bc - k, 0, tiles_n * br - n)).reshape(tiles_n, br, tiles_k, bc)
    s = group_scales(_amax(wf, dims=(1, 3)), eps, ue8m0)
    q8 = e4m3_bytes(wf, s[:, None, :, None]).reshape(tiles_n * br, tiles_k * bc)
    q.view(torch.uint8).copy_(q8[:n, :k])
    scales[:tiles_k].copy_(s.t())  # scales[j, i] is tile (i, j)'s; the padding rows stay as allocated


def _amax(xf: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """[F8-NAN] max |x| over `dims`, NaNs left out."""
    return xf.abs().masked_fill(xf.isnan(), 0).amax(dims)


def group_scales(amax: torch.Tensor, eps: float, ue8m0: bool) -> torch.Tensor:
    """[F8-SCALE] s = fl32(max(fl32(eps), amax) / 448) held to [2^-126, 2^127] ([F8-INF]: Inf gives
    2^127), or [F8-UE8M0] 2^(byte - 127) with [FP8-SCALE]'s byte."""
    if ue8m0:
        return pow2(scale_byte(amax, eps) - EXPONENT_BIAS)
    a = torch.maximum(amax, f32(eps, amax.device))
    return (a / f32(spec.FP8_MAX, amax.device)).clamp(spec.F8_SCALE_MIN, spec.F8_SCALE_MAX)


def e4m3_bytes(xf: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """[F8-ELEMENT, F8-NAN] E4M3FN bytes of clamp(fl32(x / s), -448, 448); NaN gives 0x7F."""
    v = (xf / s).clamp(-spec.FP8_MAX, spec.FP8_MAX)  # an IEEE float32 division
    return v.to(spec.FP8_Q_DTYPE).view(torch.uint8).masked_fill(xf.isnan(), spec.FP8_NAN_BYTE)


def dequantize_group(q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *, group_size: int) -> None:
    """[F8-DEQUANT] fl32(float(q) * s), s read through the scales' strides, rounded to out's dtype."""
    values = q.view(spec.FP8_Q_DTYPE).to(torch.float32).unflatten(-1, (-1, group_size))
    out.copy_((values * scales.unsqueeze(-1)).flatten(-2))
    write_canonical_nans(out)


def dequantize_block(q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *, block: tuple[int, int]) -> None:
    """[F8-DEQUANT] for [F8-BLOCK]: each element times its tile's scale."""
    (n, k), (br, bc) = q.shape, block
    factor = scales.t().repeat_interleave(br, 0)[:n].repeat_interleave(bc, 1)[:, :k]  # scales[j, i]: tile (i, j)
    out.copy_(q.view(spec.FP8_Q_DTYPE).to(torch.float32) * factor)
    write_canonical_nans(out)


_COMMON = dict(
    backend="cpu",
    devices=("cpu",),
    any_device=True,
    fidelity="bit-exact (the SPEC's reference)",
    graph_safe=False,  # allocates temporaries even with out=
    compile_safe=True,
)
_DEQUANTIZE = dict(dtypes=(spec.FP8_Q_DTYPE, torch.uint8), out_dtypes=spec.DEQUANT_DTYPES, out_buffers=False)

KERNELS = (
    Kernel(Capability(op="quantize_fp8_group", dtypes=spec.INPUT_DTYPES, min_ndim=2, group_sizes=ANY_GROUP_SIZE,
                      **_COMMON), quantize_group),
    Kernel(Capability(op="dequantize_fp8_group", min_ndim=2, group_sizes=ANY_GROUP_SIZE, **_DEQUANTIZE, **_COMMON),
           dequantize_group),
    Kernel(Capability(op="quantize_fp8_block", dtypes=spec.INPUT_DTYPES, min_ndim=2, max_ndim=2, out_buffers=False,
                      **_COMMON), quantize_block),
    Kernel(Capability(op="dequantize_fp8_block", min_ndim=2, max_ndim=2, **_DEQUANTIZE, **_COMMON), dequantize_block),
)
