"""quantize_fp8_group_packed on CUDA: the portable Triton kernel with the hardware E4M3 cast
(cvt.rn.satfinite.e4m3x2, sm_89+, saturating at +-448), group size 128. Capability record below."""

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import ArchRange, Capability


def quantize(x, q, scales, *, group_size, eps):
    from lowbit.backends.triton import fp8_group_packed

    fp8_group_packed.quantize(x, q, scales, group_size=group_size, eps=eps, hardware_e4m3=True)


KERNELS = (
    Kernel(Capability(op="quantize_fp8_group_packed", backend="cuda", variant="triton", devices=("cuda",),
                      archs={"cuda": ArchRange(89)}, dtypes=spec.INPUT_DTYPES, fidelity="bit-exact to SPEC",
                      graph_safe=True, compile_safe=True, min_ndim=2, group_sizes=(spec.FP8_DEFAULT_GROUP,)),
           quantize),
)
