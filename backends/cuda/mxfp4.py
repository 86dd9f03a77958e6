"""quantize_mxfp4 and per_token_group_quant_mxfp4 on CUDA: the portable Triton kernel (sm_80+); the
same kernel with PTX for the E2M1 pair encoding and the rceil scale on the sm_100 families; and on
sm_90, for bfloat16 input, the same kernel with its element path on bfloat16 pairs (ptx.py).
dequantize_mxfp4 by its portable Triton kernel. All give the bits of docs/SPEC.md; capability
records below."""

import torch

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import ArchRange, Capability

# The sm_XXXa targets whose ptxas takes ptx.py's cvt.rn.satfinite.e2m1x2.f32 and
# cvt.rp.satfinite.ue8m0x2.f32 (it rejects them below sm_100, sm_90a included)
PTX_ARCHS = frozenset({100, 103, 110, 120, 121})
# The bfloat16-pair hooks (ptx.py): mul.rn.bf16x2 and max.u16x2 need sm_90. Timed on the H100 only, so the
# sm_100 families keep the PTX variant
BF16X2_ARCHS = frozenset({90})


def quantize_triton(x, q, scales, *, scale_rule, swizzled, eps=0.0):
    """The portable kernel: E2M1 and the scale by integer arithmetic on float32 bits."""
    from lowbit.backends.triton import mxfp4

    mxfp4.quantize(x, q, scales, scale_rule=scale_rule, swizzled=swizzled, eps=eps)


def quantize_ptx(x, q, scales, *, scale_rule, swizzled, eps=0.0):
    from lowbit.backends.triton import mxfp4

    from .ptx import encode_ptx, rceil_exponent_ptx

    mxfp4.quantize(x, q, scales, scale_rule=scale_rule, swizzled=swizzled, eps=eps, encode=encode_ptx,
                   rceil_exponent=rceil_exponent_ptx)


def quantize_bf16x2(x, q, scales, *, scale_rule, swizzled, eps=0.0):
    """The bfloat16-pair hooks where pairs_in_registers(x) holds, else the portable ones (the same bits)."""
    from lowbit.backends.triton import mxfp4

    from .ptx import BF16X2_HOOKS

    if x.numel() and x.dim() != 2:
        x = x.reshape(-1, x.shape[-1])  # as mxfp4.quantize would: a view where the strides allow, else a copy
    hooks = BF16X2_HOOKS if pairs_in_registers(x) else {}
    mxfp4.quantize(x, q, scales, scale_rule=scale_rule, swizzled=swizzled, eps=eps, **hooks)


def pairs_in_registers(x2: torch.Tensor) -> bool:
    """Whether the pair hooks see each pair (2i, 2i + 1) of a row in one register. Triton gives a thread
    consecutive elements only where it knows the start and the row stride are multiples of 16 bytes (it
    specialises integers divisible by 16), and no more of them than the tile has per thread: at K = 32
    the small-M tile holds one element a thread. From K = 96 every LAUNCH_TABLE tile holds at least two
    (test_records.py checks the table; the compile row reads the layouts Triton gives). On the H100 both
    kinds of input gave wrong scales with the pair hooks; the portable hooks take them."""
    return (x2.numel() > 0 and x2.shape[1] > 64 and x2.stride(1) == 1 and x2.stride(0) % 16 == 0
            and x2.data_ptr() % 16 == 0)


def quantize_into_triton(x, x_q, x_s, *, eps, swizzled):
    quantize_triton(x, x_q, x_s, scale_rule="rceil", swizzled=swizzled, eps=eps)


def quantize_into_ptx(x, x_q, x_s, *, eps, swizzled):
    quantize_ptx(x, x_q, x_s, scale_rule="rceil", swizzled=swizzled, eps=eps)


def quantize_into_bf16x2(x, x_q, x_s, *, eps, swizzled):
    quantize_bf16x2(x, x_q, x_s, scale_rule="rceil", swizzled=swizzled, eps=eps)


def dequantize_triton(q, scales, out, *, swizzled):
    from lowbit.backends.triton import mxfp4

    mxfp4.dequantize(q, scales, out, swizzled=swizzled)


_COMMON = dict(
    backend="cuda",
    devices=("cuda",),
    fidelity="bit-exact to SPEC",
    graph_safe=True,  # no host sync, no allocation in the kernel path
    compile_safe=True,
    min_ndim=1,
    block_size=spec.MX_BLOCK,
    scale_layouts=spec.SCALE_LAYOUTS,
)
_PTX = dict(variant="ptx", archs={"cuda": PTX_ARCHS})
_TRITON = dict(variant="triton", archs={"cuda": ArchRange(80)})
_BF16X2 = dict(variant="bf16x2", archs={"cuda": BF16X2_ARCHS}, dtypes=(torch.bfloat16,))

_INPUT = dict(dtypes=spec.INPUT_DTYPES)

KERNELS = (
    Kernel(Capability(op="quantize_mxfp4", scale_rules=spec.MX_SCALE_RULES, **_INPUT, **_PTX, **_COMMON), quantize_ptx),
    Kernel(Capability(op="quantize_mxfp4", scale_rules=spec.MX_SCALE_RULES, **_BF16X2, **_COMMON), quantize_bf16x2),
    Kernel(Capability(op="quantize_mxfp4", scale_rules=spec.MX_SCALE_RULES, **_INPUT, **_TRITON, **_COMMON),
           quantize_triton),
    Kernel(Capability(op="per_token_group_quant_mxfp4", **_INPUT, **_PTX, **_COMMON), quantize_into_ptx),
    Kernel(Capability(op="per_token_group_quant_mxfp4", **_BF16X2, **_COMMON), quantize_into_bf16x2),
    Kernel(Capability(op="per_token_group_quant_mxfp4", **_INPUT, **_TRITON, **_COMMON), quantize_into_triton),
    Kernel(Capability(op="dequantize_mxfp4", dtypes=(spec.MX_Q_DTYPE, torch.uint8), out_dtypes=spec.DEQUANT_DTYPES,
                      **_TRITON, **_COMMON), dequantize_triton),
)
