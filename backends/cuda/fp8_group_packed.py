"""quantize_fp8_group_packed and dequantize_fp8_group_packed on CUDA: the portable Triton kernels
(backends/triton/fp8_group_packed.py). Quantize uses the hardware E4M3 cast (cvt.rn.satfinite.e4m3x2,
sm_89+, saturating at +-448), group size 128; dequantize decodes by integer arithmetic, group sizes
64 and 128. Both bit-exact to docs/SPEC.md; capability records below."""

import torch

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import ArchRange, Capability

from .fp8_group import GROUP_SIZES


def quantize(x, q, scales, *, group_size, eps):
    from lowbit.backends.triton import fp8_group_packed

    fp8_group_packed.quantize(x, q, scales, group_size=group_size, eps=eps, hardware_e4m3=True)


def dequantize(q, scales, out, *, group_size):
    from lowbit.backends.triton import fp8_group_packed

    fp8_group_packed.dequantize(q, scales, out, group_size=group_size)


_COMMON = dict(backend="cuda", variant="triton", devices=("cuda",), fidelity="bit-exact to SPEC", graph_safe=True,
               compile_safe=True, min_ndim=2)

KERNELS = (
    Kernel(Capability(op="quantize_fp8_group_packed", archs={"cuda": ArchRange(89)}, dtypes=spec.INPUT_DTYPES,
                      group_sizes=(spec.FP8_DEFAULT_GROUP,), **_COMMON), quantize),
    # sm_89+ like quantize and the float32-scale dequantizes: the FP8 ops come as one set
    Kernel(Capability(op="dequantize_fp8_group_packed", archs={"cuda": ArchRange(89)},
                      dtypes=(spec.FP8_Q_DTYPE, torch.uint8), out_dtypes=spec.DEQUANT_DTYPES, out_buffers=False,
                      group_sizes=GROUP_SIZES, **_COMMON), dequantize),
)
