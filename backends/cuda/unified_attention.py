"""unified_attention on CUDA: the portable Triton kernel (backends/triton/unified_attention.py).
Two records for the one kernel, because Triton's float8_e4m3fn type needs sm_89: the first takes
every dtype pairing on sm_89+ (an FP8 cache converts to float16, exactly, before each tl.dot), the
second the 16-bit pairings from sm_80 (A100)."""

import torch

from lowbit.backend import Kernel
from lowbit.capability import ArchRange, Capability
from lowbit.unified_attention import FP8_DTYPE, OUT_DTYPES


def attend(q, k_cache, v_cache, out, **arguments):
    from lowbit.backends.triton import unified_attention

    unified_attention.attend(q, k_cache, v_cache, out, **arguments)


_COMMON = dict(
    op="unified_attention",
    backend="cuda",
    devices=("cuda",),
    out_dtypes=OUT_DTYPES,
    head_sizes=(32, 256),
    page_size_multiple=16,
    fidelity="within the SPEC's attention tolerance of the reference",
    graph_safe=True,  # the grid comes from host ints; the split-KV path's scratch is allocated in the graph
    compile_safe=True,
    min_ndim=3,
    max_ndim=3,
    last_dim_contiguous=True,
)

KERNELS = (
    Kernel(Capability(variant="triton", archs={"cuda": ArchRange(89)},
                      dtypes=(torch.bfloat16, torch.float16, FP8_DTYPE),
                      kv_dtypes={torch.bfloat16: (torch.bfloat16, FP8_DTYPE),
                                 torch.float16: (torch.float16, FP8_DTYPE), FP8_DTYPE: (FP8_DTYPE,)}, **_COMMON),
           attend),
    Kernel(Capability(variant="triton-16bit", archs={"cuda": ArchRange(80)},
                      dtypes=(torch.bfloat16, torch.float16),
                      kv_dtypes={torch.bfloat16: (torch.bfloat16,), torch.float16: (torch.float16,)}, **_COMMON),
           attend),
)
