"""quantize_nvfp4, nvfp4_global_scale and dequantize_nvfp4 on CUDA: the portable Triton kernels
(sm_80+), and for quantize the same kernel with PTX for the E2M1 pair encoding on the sm_100
families. All give the bits of docs/SPEC.md; capability records below."""

import torch

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import ArchRange, Capability

from .mxfp4 import PTX_ARCHS


def quantize_triton(x, q, scales, gs, *, per_row, compute_scale, swizzled):
    """The portable kernel: E2M1 by integer arithmetic on float32 bits."""
    from lowbit.backends.triton import nvfp4

    nvfp4.quantize(x, q, scales, gs, per_row=per_row, compute_scale=compute_scale, swizzled=swizzled)


def quantize_ptx(x, q, scales, gs, *, per_row, compute_scale, swizzled):
    from lowbit.backends.triton import nvfp4

    from .ptx import e2m1_pairs_ptx

    nvfp4.quantize(x, q, scales, gs, per_row=per_row, compute_scale=compute_scale, swizzled=swizzled,
                   encode=e2m1_pairs_ptx)


def global_scale_triton(x, gs, *, per_row):
    from lowbit.backends.triton import nvfp4

    nvfp4.global_scale(x, gs, per_row=per_row)


def dequantize_triton(q, scales, gs, out, *, swizzled):
    from lowbit.backends.triton import nvfp4

    nvfp4.dequantize(q, scales, gs, out, swizzled=swizzled)


_COMMON = dict(
    backend="cuda",
    devices=("cuda",),
    fidelity="bit-exact to SPEC",
    graph_safe=True,  # no host sync: the global scale is computed and read on the device
    compile_safe=True,
    min_ndim=1,
    block_size=spec.NV_BLOCK,
)
_PTX = dict(variant="ptx", archs={"cuda": PTX_ARCHS})
_TRITON = dict(variant="triton", archs={"cuda": ArchRange(80)})

KERNELS = (
    Kernel(Capability(op="quantize_nvfp4", scale_layouts=spec.SCALE_LAYOUTS,
                      dtypes=spec.INPUT_DTYPES, **_PTX, **_COMMON), quantize_ptx),
    Kernel(Capability(op="quantize_nvfp4", scale_layouts=spec.SCALE_LAYOUTS,
                      dtypes=spec.INPUT_DTYPES, **_TRITON, **_COMMON), quantize_triton),
    Kernel(Capability(op="nvfp4_global_scale", dtypes=spec.INPUT_DTYPES, **_TRITON, **_COMMON), global_scale_triton),
    Kernel(Capability(op="dequantize_nvfp4", scale_layouts=spec.SCALE_LAYOUTS,
                      dtypes=(spec.NV_Q_DTYPE, torch.uint8),
                      out_dtypes=spec.DEQUANT_DTYPES, **_TRITON, **_COMMON), dequantize_triton),
)
