"""The reference backend: pure PyTorch, every op and option of docs/SPEC.md, bit for bit.

It is the oracle every other backend is compared with. Auto-dispatch picks it for CPU tensors;
on other devices it is the last-resort fallback (logged once, refused under LOWBIT_STRICT=1),
and `backend="cpu"` runs it on any device's tensors.
"""

from lowbit.backend import Backend

from . import fp8_group, fp8_group_packed, mxfp4, mxfp8, nvfp4, unified_attention

BACKEND = Backend(
    name="cpu",
    priority=0,
    summary="pure-PyTorch reference of docs/SPEC.md (the oracle); any device when forced",
    kernels=(*mxfp4.KERNELS, *mxfp8.KERNELS, *nvfp4.KERNELS, *fp8_group.KERNELS, *fp8_group_packed.KERNELS,
             *unified_attention.KERNELS),
)
