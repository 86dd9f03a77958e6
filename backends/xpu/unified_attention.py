"""unified_attention on Intel GPUs: the portable Triton kernel (backends/triton/unified_attention.py),
every dtype pairing the CUDA sm_89+ record takes (an FP8 cache converts to float16 before each
tl.dot). Launch configs are the H100's: nothing has been tuned on an Intel GPU yet."""

import torch

from lowbit.backend import Kernel
from lowbit.capability import Capability
from lowbit.unified_attention import FP8_DTYPE, OUT_DTYPES


def attend(q, k_cache, v_cache, out, **arguments):
    from lowbit.backends.triton import unified_attention

    unified_attention.attend(q, k_cache, v_cache, out, **arguments)


KERNELS = (
    Kernel(Capability(op="unified_attention", backend="xpu", variant="triton", devices=("xpu",),
                      dtypes=(torch.bfloat16, torch.float16, FP8_DTYPE),
                      kv_dtypes={torch.bfloat16: (torch.bfloat16, FP8_DTYPE),
                                 torch.float16: (torch.float16, FP8_DTYPE), FP8_DTYPE: (FP8_DTYPE,)},
                      out_dtypes=OUT_DTYPES, head_sizes=(32, 256), page_size_multiple=16,
                      fidelity="within the SPEC's attention tolerance of the reference",
                      graph_safe=True,  # the grid comes from host ints, as on CUDA
                      compile_safe=True, min_ndim=3, max_ndim=3, last_dim_contiguous=True), attend),
)
