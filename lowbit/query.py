"""Asking before dispatch: `capabilities`, `supports`, `explain`. They run the same checks as a
real call, on real, meta or fake tensors, for any device and arch, hardware or not."""

from __future__ import annotations

import dataclasses

import torch

from . import dispatch, registry
from .capability import Capability, normalize_arch
from .devices import device_arch
from .dispatch import Verdict
from .errors import require_type
from .ops import OPS


def capabilities(device=None) -> list[Capability]:
    """Every backend's capability records, highest priority first; with `device`, only those that
    can take that device's tensors (natively or as the pure-PyTorch fallback)."""
    device_type = None if device is None else _device("capabilities", device).type
    return [
        k.capability
        for b in registry.backends()
        for k in b.kernels
        if device_type is None or device_type in k.capability.devices or k.capability.any_device
    ]


def supports(op: str, *args, backend: str = dispatch.AUTO, device=None, arch=None, **kwargs) -> Verdict:
    """Would `lowbit.<op>(*args, **kwargs)` run, and where? Returns a Verdict with `.ok`,
    `.backend` and `.reasons` (per backend, the unmet constraints).

    `device` and `arch` replace what the tensors say, so meta tensors can ask about hardware this
    machine lacks: `supports("quantize_mxfp4", torch.empty(8, 64, device="meta"), device="cuda",
    arch="sm_90")`. Arguments the call would refuse (mismatched buffers) raise what the call raises.
    """
    return _verdict("supports", op, args, kwargs, backend, device, arch)


def explain(op: str, *args, backend: str = dispatch.AUTO, device=None, arch=None, **kwargs) -> str:
    """`supports(...)` as readable text: the choice, each refusal and its reason, the alternative."""
    return _verdict("explain", op, args, kwargs, backend, device, arch).explain()


def _verdict(query: str, op: str, args, kwargs, backend, device, arch) -> Verdict:
    """What `query` (supports or explain) answers; its own arguments' refusals name it."""
    opdef = OPS.get(op) if isinstance(op, str) else None
    if opdef is None:
        raise ValueError(f"lowbit.{query}: op={op!r} is not a lowbit op; pass one of {', '.join(OPS)}")
    # before describe, as every op's type checks do first (describe takes no backend)
    require_type(op, "backend", backend, str, '"auto"')
    call = opdef.describe(*args, **kwargs)
    if device is not None:
        device = _device(query, device)
        call = dataclasses.replace(call, device_type=device.type, arch=device_arch(device))
    elif call.device_type == "meta":
        raise ValueError(f"lowbit.{query}: meta tensors carry no device; pass device= (and arch=)")
    if arch is not None:
        call = dataclasses.replace(call, arch=normalize_arch(arch, f"lowbit.{query}"))
    if backend == dispatch.AUTO:
        backend = dispatch.requested_backend()
    return dispatch.select(call, backend, dispatch.opted_in(f"lowbit.{op}"))


def _device(query: str, device) -> torch.device:
    """torch.device(device), or a ValueError naming the query (torch's RuntimeError names neither)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        pass
    raise ValueError(f"lowbit.{query}: device={device!r} is not a torch device; pass e.g. device=\"cuda\"")
