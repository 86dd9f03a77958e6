"""quantize_mxfp4 and per_token_group_quant_mxfp4 on Intel GPUs, from two providers:

- `triton` (the default): the portable Triton kernel (backends/triton/mxfp4.py), bit-exact to
  docs/SPEC.md.
- `vendor`: `torch.ops._C.per_token_group_quant_mxfp4` from vllm-xpu-kernels (SYCL). It rounds
  E2M1 ties toward zero (0.75 -> 0.5, 1.75 -> 1.5, 3.5 -> 3) although its comment says
  round-to-nearest-even, so auto-dispatch uses it only with LOWBIT_XPU_PROVIDER=vendor.

The vendor op takes a contiguous 2-D input and writes uint8 nibbles and 2-D float32 scales. The
wrapper below flattens the leading dims (a view: the record asks for a contiguous input) and,
when the caller wants E8M0 bytes, converts the float32 scales by their exponent field.
"""

from __future__ import annotations

import importlib

import torch

from lowbit import spec
from lowbit.backend import Kernel
from lowbit.capability import Capability

PROVIDER_SETTING = "LOWBIT_XPU_PROVIDER"
PROVIDERS = ("triton", "vendor")
VENDOR_MODULE = "vllm_xpu_kernels._C"  # importing it registers the torch.ops._C ops
VENDOR_OP = "per_token_group_quant_mxfp4"
# The vendor's scale is 2^ceil(log2(max(amax / 6, eps))); eps = 2^-126 is [MX-RCEIL]'s floor on d
RCEIL_EPS = 2.0**-126


# --- the portable Triton kernel ------------------------------------------------------------------

def quantize_triton(x, q, scales, *, scale_rule, swizzled):
    from lowbit.backends.triton import mxfp4

    mxfp4.quantize(x, q, scales, scale_rule=scale_rule, swizzled=swizzled)


def quantize_into_triton(x, x_q, x_s, *, eps, swizzled):
    from lowbit.backends.triton import mxfp4

    mxfp4.quantize(x, x_q, x_s, scale_rule="rceil", swizzled=swizzled, eps=eps)


def dequantize_triton(q, scales, out, *, swizzled):
    from lowbit.backends.triton import mxfp4

    mxfp4.dequantize(q, scales, out, swizzled=swizzled)


# --- the vendor op -------------------------------------------------------------------------------

def vendor_op():
    """torch.ops._C.per_token_group_quant_mxfp4, after importing the module that registers it."""
    importlib.import_module(VENDOR_MODULE)
    return getattr(torch.ops._C, VENDOR_OP)


def vendor_unavailable() -> str | None:
    try:
        vendor_op()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "vllm_xpu_kernels":
            return "vllm-xpu-kernels is not installed (pip install vllm-xpu-kernels)"
        return f"{VENDOR_MODULE} did not import: {exc}"
    except AttributeError:
        return f"this vllm-xpu-kernels has no torch.ops._C.{VENDOR_OP} (it needs a release with MXFP4 quantization)"
    except Exception as exc:  # a build for another torch fails in many ways; none may break dispatch
        return f"{VENDOR_MODULE} did not import: {type(exc).__name__}: {exc}"
    return None


def quantize_vendor(x, q, scales, *, scale_rule, swizzled):
    """quantize_mxfp4 (rule rceil and linear scales: the record's only ones) by the vendor op."""
    _run_vendor(x, q, scales, eps=RCEIL_EPS)


def quantize_into_vendor(x, x_q, x_s, *, eps, swizzled):
    _run_vendor(x, x_q, x_s, eps=eps)


def _run_vendor(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, *, eps: float) -> None:
    """The vendor op on x (..., K), contiguous, as 2-D rows; `q` and `scales` are contiguous
    (lowbit allocated them, or the buffer checks of [MX-BUFFERS] passed)."""
    if x.numel() == 0:
        return
    k = x.shape[-1]
    rows = x.view(-1, k)
    q_rows = q.view(torch.uint8).view(-1, k // 2)
    op = vendor_op()
    if scales.dtype == torch.float32:  # the vendor's own convention: written in place
        op(rows, q_rows, scales.view(-1, k // spec.MX_BLOCK), spec.MX_BLOCK, eps)
        return
    scales_f32 = torch.empty((rows.shape[0], k // spec.MX_BLOCK), dtype=torch.float32, device=x.device)
    op(rows, q_rows, scales_f32, spec.MX_BLOCK, eps)
    scales.view(torch.uint8).view(-1, k // spec.MX_BLOCK).copy_(e8m0_bytes(scales_f32))


def e8m0_bytes(scales_f32: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes of float32 powers of two: the exponent field. 2^e is byte e + 127; 2^-127 (a
    float32 subnormal), anything smaller and zero give 0, the smallest E8M0 value; Inf and NaN
    give 0xFF, E8M0's NaN. A float cast would round instead (torch's to(float8_e8m0fnu) does)."""
    return ((scales_f32.view(torch.int32) >> 23) & 0xFF).to(torch.uint8)


# --- capability records: the vendor first, so that opting in makes it the choice -------------------

_COMMON = dict(
    backend="xpu",
    devices=("xpu",),
    compile_safe=True,
    min_ndim=1,
    block_size=spec.MX_BLOCK,
)
# The vendor op, per its source: E2M1 ties round toward zero, -0.0 loses its sign, NaN/Inf blocks
# follow its float arithmetic, and the scale is 2^ceil(log2(max(amax/6, eps))) by float log2.
_VENDOR = dict(
    variant="vendor",
    fidelity="ties toward zero, not bit-exact to SPEC",
    graph_safe=False,  # allocates a float32 scale buffer for E8M0 output; the SYCL op's capture is not ours to claim
    contiguous=True,  # the vendor op asserts a contiguous input
    opt_in=f"{PROVIDER_SETTING}=vendor",
    scale_layouts=("linear",),  # the vendor op writes linear scales only
)
_TRITON = dict(
    variant="triton",
    fidelity="bit-exact to SPEC",
    graph_safe=True,  # no host sync, no allocation: the launcher CUDA uses
    scale_layouts=spec.SCALE_LAYOUTS,
)

_INPUT = dict(dtypes=spec.INPUT_DTYPES)

KERNELS = (
    Kernel(Capability(op="quantize_mxfp4", scale_rules=("rceil",), **_INPUT, **_VENDOR, **_COMMON), quantize_vendor,
           unavailable=vendor_unavailable),
    Kernel(Capability(op="quantize_mxfp4", scale_rules=spec.MX_SCALE_RULES, **_INPUT, **_TRITON, **_COMMON),
           quantize_triton),
    Kernel(Capability(op="per_token_group_quant_mxfp4", **_INPUT, **_VENDOR, **_COMMON), quantize_into_vendor,
           unavailable=vendor_unavailable),
    Kernel(Capability(op="per_token_group_quant_mxfp4", **_INPUT, **_TRITON, **_COMMON), quantize_into_triton),
    Kernel(Capability(op="dequantize_mxfp4", dtypes=(spec.MX_Q_DTYPE, torch.uint8), out_dtypes=spec.DEQUANT_DTYPES,
                      **_TRITON, **_COMMON), dequantize_triton),
)
