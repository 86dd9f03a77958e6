"""The XPU backend: Intel GPUs through torch's native `xpu` device.

Every op runs the portable Triton kernels (backends/triton) through Triton's Intel backend, with
the bits of docs/SPEC.md. For the MXFP4 ops there is a second provider, the vendor SYCL op
`torch.ops._C.per_token_group_quant_mxfp4` from vllm-xpu-kernels: it rounds E2M1 ties toward
zero, so auto-dispatch uses it only when the caller opts in with LOWBIT_XPU_PROVIDER=vendor (or
names it: backend="xpu/vendor"). Capability records sit next to each op's launcher.

Nothing here imports Triton, intel_extension_for_pytorch or vllm-xpu-kernels at `import lowbit`:
the backend's availability is asked on the first dispatch or query (legacy_stack.py says when
intel_extension_for_pytorch is imported), the vendor op's only when its variant is chosen.
"""

import importlib.util

from lowbit.backend import Backend
from lowbit.mxfp4 import per_token_group_quant_mxfp4  # the XPU entry's name, for `from lowbit.backends.xpu import`

from . import fp8_group, fp8_group_packed, legacy_stack, mxfp4, mxfp8, nvfp4, unified_attention

__all__ = ["BACKEND", "per_token_group_quant_mxfp4"]


def _unavailable() -> str | None:
    legacy_stack.enable()
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (torch's XPU build brings Triton's Intel backend, pytorch-triton-xpu)"
    return None


BACKEND = Backend(
    name="xpu",
    priority=10,
    summary="Triton kernels on Intel GPUs (torch.xpu); MXFP4 also by the vendor op with LOWBIT_XPU_PROVIDER=vendor",
    kernels=(*mxfp4.KERNELS, *mxfp8.KERNELS, *nvfp4.KERNELS, *fp8_group.KERNELS, *fp8_group_packed.KERNELS,
             *unified_attention.KERNELS),
    unavailable=_unavailable,
    settings={mxfp4.PROVIDER_SETTING: mxfp4.PROVIDERS},
)
