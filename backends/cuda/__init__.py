"""The CUDA backend: the portable Triton kernels (backends/triton) on NVIDIA GPUs, with PTX
specialisations where the chip has instructions for a step (ptx.py).

Auto-dispatch on a CUDA tensor tries, per op, the PTX variant (sm_100 families), then the portable
Triton variant, then the reference as a logged fallback (refused under LOWBIT_STRICT=1). The
kernels run inside lowbit's torch.library ops (lowbit/<op family>.py), so
torch.compile sees one opaque op whose fake runs the same checks.

Nothing here imports Triton until a kernel runs: without Triton the backend reports itself
unavailable and dispatch moves on.
"""

import importlib.util

from lowbit.backend import Backend

from . import fp8_group, fp8_group_packed, mxfp4, mxfp8, nvfp4, unified_attention


def _unavailable() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    return None


BACKEND = Backend(
    name="cuda",
    priority=10,
    summary="Triton kernels on NVIDIA GPUs (MXFP4, NVFP4 and attention sm_80+, FP8 and MXFP8 sm_89+), PTX on the "
            "sm_100 families, MXFP4 on bfloat16 pairs on sm_90",
    kernels=(*mxfp4.KERNELS, *mxfp8.KERNELS, *nvfp4.KERNELS, *fp8_group.KERNELS, *fp8_group_packed.KERNELS,
             *unified_attention.KERNELS),
    unavailable=_unavailable,
)
