"""The one exception lowbit raises for calls it cannot take, and the argument checks every op shares.

Every refusal says the op, the argument, the constraint and what would work, in one phrasing:
"lowbit.<op>: <argument> <constraint>; pass <fix>" (or "; use <another op or option>"). A dispatch
refusal (UnsupportedError) is `Verdict.explain()`: the call, each backend's unmet constraints, and
"Alternative: ...". tests/test_refusals.py holds every refused input and checks both.
"""

import math

import torch

from .spec import SCALE_LAYOUTS, float32_value


class UnsupportedError(ValueError):
    """No backend (or the forced one) can run this call.

    The message names every unmet constraint, per backend, and an alternative that would work.
    It subclasses ValueError so that callers who only catch bad-argument errors still catch it.
    """


def require_type(op: str, name: str, value, expected: type | tuple[type, ...], example: str) -> None:
    """ValueError naming the argument when `value` is not of the `expected` type (a bool is no
    int here), before torch.library's schema check would raise a less readable RuntimeError."""
    types = expected if isinstance(expected, tuple) else (expected,)
    if type(value) in types:  # the common case, first: it runs on every call
        return
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ValueError(f"lowbit.{op}: {name}={value!r} is of type {type(value).__name__}, not "
                         f"{' or '.join(t.__name__ for t in types)}; pass e.g. {name}={example}")


def require_eps(op: str, eps: float, example: str) -> None:
    """ValueError unless eps is >= 0 and finite as a float32 (the kernels take fl32(eps)): 1e39 would
    overflow to inf inside the kernel instead of being refused here."""
    if not (math.isfinite(eps) and eps >= 0 and math.isfinite(float32_value(eps))):
        raise ValueError(f"lowbit.{op}: eps={eps} must be finite and >= 0, and finite as a float32 (at most "
                         f"3.4028235e38); pass e.g. eps={example}")


def require_scale_layout(op: str, scale_layout: str) -> None:
    """ValueError unless `scale_layout` names a block-scale layout [SCALE-SWIZZLE]."""
    if scale_layout not in SCALE_LAYOUTS:
        raise ValueError(f"lowbit.{op}: scale_layout={scale_layout!r} is not one of "
                         f"{', '.join(map(repr, SCALE_LAYOUTS))}; pass scale_layout=\"swizzled\" for the "
                         "128x4 tiles cuBLASLt, CUTLASS and torch._scaled_mm read")


def written_in_place(arg: str, buf) -> str | None:
    """Why `buf` may not be written in place (torch refuses it for a leaf that requires grad, and lowbit
    writes no gradient for any buffer), or None."""
    if buf.requires_grad:
        return (f"{arg} requires grad, and lowbit writes it in place without a gradient; pass {arg}.detach(), "
                "or allocate it under torch.no_grad()")
    return None


def require_tensor(op: str, name: str, value, example: str) -> None:
    """TypeError naming the argument when `value` is not a tensor, before torch.library's schema check
    (or an attribute deep inside) would raise a less readable error."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"lowbit.{op}: {name} must be a tensor, not {type(value).__name__}; pass e.g. {example}")


def require_same_device(op: str, name: str, value, other: str, reference) -> None:
    """ValueError unless tensor `value` is on the device of `reference` (the argument it goes with)."""
    if value.device != reference.device:
        raise ValueError(f"lowbit.{op}: {name} is on {value.device}, {other} on {reference.device}; pass {name} on "
                         f"{reference.device}")


def overlapping(named: dict) -> str | None:
    """The first pair of `named` tensors whose views share storage bytes, as a refusal, or None. A
    buffer written in place must not alias another output or the input: the kernels read and write
    them concurrently. Byte ranges, not elements: interleaved views of one storage count as
    overlapping."""
    storages = [t.untyped_storage()._cdata for t in named.values()]
    if len(set(storages)) == len(storages):  # the common case, first: it runs on every call with buffers
        return None
    spans = [(name, storage, *_byte_span(t)) for (name, t), storage in zip(named.items(), storages) if t.numel()]
    for i, (a, storage_a, lo_a, hi_a) in enumerate(spans):
        for b, storage_b, lo_b, hi_b in spans[i + 1:]:
            if storage_a == storage_b and lo_a < hi_b and lo_b < hi_a:
                return (f"{a} and {b} share storage (bytes {max(lo_a, lo_b)}..{min(hi_a, hi_b) - 1}); pass "
                        "separate tensors")
    return None


def _byte_span(t) -> tuple[int, int]:
    """[first, last + 1) bytes of its storage that a non-empty view spans."""
    size = t.element_size()
    start = t.storage_offset() * size
    return start, start + size * (1 + sum((n - 1) * stride for n, stride in zip(t.shape, t.stride())))
