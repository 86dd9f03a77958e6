"""quantize_nvfp4, nvfp4_global_scale and dequantize_nvfp4 on Intel GPUs: the portable Triton kernels
(backends/triton/nvfp4.py), bit-exact to docs/SPEC.md. Capability records below."""

import torch

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import Capability


def quantize_triton(x, q, scales, gs, *, per_row, compute_scale, swizzled):
    from lowbit.backends.triton import nvfp4

    nvfp4.quantize(x, q, scales, gs, per_row=per_row, compute_scale=compute_scale, swizzled=swizzled)


def global_scale_triton(x, gs, *, per_row):
    from lowbit.backends.triton import nvfp4

    nvfp4.global_scale(x, gs, per_row=per_row)


def dequantize_triton(q, scales, gs, out, *, swizzled):
    from lowbit.backends.triton import nvfp4

    nvfp4.dequantize(q, scales, gs, out, swizzled=swizzled)


_COMMON = dict(
    backend="xpu",
    variant="triton",
    devices=("xpu",),
    fidelity="bit-exact to SPEC",
    graph_safe=True,
    compile_safe=True,
    min_ndim=1,
    block_size=spec.NV_BLOCK,
)

KERNELS = (
    Kernel(Capability(op="quantize_nvfp4", scale_layouts=spec.SCALE_LAYOUTS,
                      dtypes=spec.INPUT_DTYPES, **_COMMON), quantize_triton),
    Kernel(Capability(op="nvfp4_global_scale", dtypes=spec.INPUT_DTYPES, **_COMMON), global_scale_triton),
    Kernel(Capability(op="dequantize_nvfp4", scale_layouts=spec.SCALE_LAYOUTS,
                      dtypes=(spec.NV_Q_DTYPE, torch.uint8), out_dtypes=spec.DEQUANT_DTYPES,
                      **_COMMON), dequantize_triton),
)
