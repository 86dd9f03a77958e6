"""quantize_fp8_group, quantize_fp8_block and their dequantizes on CUDA: the portable Triton kernels
(backends/triton/fp8_group.py) with the hardware E4M3 cast (cvt.rn.satfinite.e4m3x2, sm_89+), bit-exact
to docs/SPEC.md. Group sizes 64 and 128, blocks of 128 x 128; capability records below."""

import torch

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import ArchRange, Capability

GROUP_SIZES = (64, 128)  # 128 everywhere; 64 where vLLM quantizes with it
WEIGHT_BLOCKS = ((128, 128),)


def quantize_group(x, q, scales, *, group_size, eps, ue8m0):
    from lowbit.backends.triton import fp8_group

    fp8_group.quantize_group(x, q, scales, group_size=group_size, eps=eps, ue8m0=ue8m0, hardware_e4m3=True)


def quantize_block(w, q, scales, *, block, eps, ue8m0):
    from lowbit.backends.triton import fp8_group

    fp8_group.quantize_block(w, q, scales, block=block, eps=eps, ue8m0=ue8m0, hardware_e4m3=True)


def dequantize_group(q, scales, out, *, group_size):
    from lowbit.backends.triton import fp8_group

    fp8_group.dequantize_group(q, scales, out, group_size=group_size)


def dequantize_block(q, scales, out, *, block):
    from lowbit.backends.triton import fp8_group

    fp8_group.dequantize_block(q, scales, out, block=block)


_COMMON = dict(
    backend="cuda",
    variant="triton",
    devices=("cuda",),
    archs={"cuda": ArchRange(89)},  # the float8e4nv cast
    fidelity="bit-exact to SPEC",
    graph_safe=True,
    compile_safe=True,
    min_ndim=2,
)
_DEQUANTIZE = dict(dtypes=(spec.FP8_Q_DTYPE, torch.uint8), out_dtypes=spec.DEQUANT_DTYPES, out_buffers=False)

KERNELS = (
    Kernel(Capability(op="quantize_fp8_group", dtypes=spec.INPUT_DTYPES, group_sizes=GROUP_SIZES, **_COMMON),
           quantize_group),
    Kernel(Capability(op="dequantize_fp8_group", group_sizes=GROUP_SIZES, **_DEQUANTIZE, **_COMMON),
           dequantize_group),
    Kernel(Capability(op="quantize_fp8_block", dtypes=spec.INPUT_DTYPES, max_ndim=2, weight_blocks=WEIGHT_BLOCKS,
                      out_buffers=False, **_COMMON), quantize_block),
    Kernel(Capability(op="dequantize_fp8_block", max_ndim=2, weight_blocks=WEIGHT_BLOCKS, **_DEQUANTIZE, **_COMMON),
           dequantize_block),
)
