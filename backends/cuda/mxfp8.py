"""quantize_mxfp8 and dequantize_mxfp8 on CUDA: the portable Triton kernels (backends/triton/mxfp8.py),
quantize with the hardware E4M3 cast (cvt.rn.satfinite.e4m3x2.f32, sm_89+, saturating at +-448),
bit-exact to docs/SPEC.md. Capability records below."""

import torch

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import ArchRange, Capability


def quantize(x, q, scales, *, scale_rule, swizzled):
    from lowbit.backends.triton import mxfp8

    mxfp8.quantize(x, q, scales, scale_rule=scale_rule, swizzled=swizzled, hardware_e4m3=True)


def dequantize(q, scales, out, *, swizzled):
    from lowbit.backends.triton import mxfp8

    mxfp8.dequantize(q, scales, out, swizzled=swizzled)


_COMMON = dict(
    backend="cuda",
    variant="triton",
    devices=("cuda",),
    archs={"cuda": ArchRange(89)},  # the float8e4nv cast; the FP8 ops' one range (backends/cuda/fp8_group.py)
    fidelity="bit-exact to SPEC",
    graph_safe=True,  # no host sync; allocates nothing but its outputs
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
