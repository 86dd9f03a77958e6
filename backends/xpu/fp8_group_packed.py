"""quantize_fp8_group_packed and dequantize_fp8_group_packed on Intel GPUs: the portable Triton kernels
(backends/triton/fp8_group_packed.py). Quantize rounds to E4M3 by integer round-to-nearest-even on
float32 bits, the code the interpreter runs (no hardware cast is assumed), group size 128; dequantize
decodes by integer arithmetic, group sizes 64 and 128. Capability records below."""

import torch

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import Capability

from ..cuda.fp8_group import GROUP_SIZES


def quantize(x, q, scales, *, group_size, eps):
    from lowbit.backends.triton import fp8_group_packed

    fp8_group_packed.quantize(x, q, scales, group_size=group_size, eps=eps, hardware_e4m3=False)


def dequantize(q, scales, out, *, group_size):
    from lowbit.backends.triton import fp8_group_packed

    fp8_group_packed.dequantize(q, scales, out, group_size=group_size)


_COMMON = dict(backend="xpu", variant="triton", devices=("xpu",), fidelity="bit-exact to SPEC", graph_safe=True,
               compile_safe=True, min_ndim=2)

KERNELS = (
    Kernel(Capability(op="quantize_fp8_group_packed", dtypes=spec.INPUT_DTYPES, group_sizes=(spec.FP8_DEFAULT_GROUP,),
                      **_COMMON), quantize),
    Kernel(Capability(op="dequantize_fp8_group_packed", dtypes=(spec.FP8_Q_DTYPE, torch.uint8),
                      out_dtypes=spec.DEQUANT_DTYPES, out_buffers=False, group_sizes=GROUP_SIZES, **_COMMON),
           dequantize),
)
