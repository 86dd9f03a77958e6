"""quantize_fp8_group_packed on Intel GPUs: the portable Triton kernel with E4M3 by integer
round-to-nearest-even on float32 bits, the code the interpreter runs (no hardware cast is assumed),
group size 128. Capability record below."""

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import Capability


def quantize(x, q, scales, *, group_size, eps):
    from lowbit.backends.triton import fp8_group_packed

    fp8_group_packed.quantize(x, q, scales, group_size=group_size, eps=eps, hardware_e4m3=False)


KERNELS = (
    Kernel(Capability(op="quantize_fp8_group_packed", backend="xpu", variant="triton", devices=("xpu",),
                      dtypes=spec.INPUT_DTYPES, fidelity="bit-exact to SPEC", graph_safe=True, compile_safe=True,
                      min_ndim=2, group_sizes=(spec.FP8_DEFAULT_GROUP,)), quantize),
)
