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
    device_type = None if device is None else torch.device(device).type
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
    arch="sm_90")`. Arguments that do not fit together (mismatched buffers) raise ValueError.
    """
    opdef = OPS.get(op)
    if opdef is None:
        raise ValueError(f"lowbit: unknown op {op!r}; ops: {', '.join(OPS)}")
    # before describe, as every op's type checks do first (describe takes no backend)
    require_type(op, "backend", backend, str, '"auto"')
    call = opdef.describe(*args, **kwargs)
    if device is not None:
        device = torch.device(device)
        call = dataclasses.replace(call, device_type=device.type, arch=device_arch(device))
    elif call.device_type == "meta":
        raise ValueError("lowbit.supports: meta tensors carry no device; pass device= (and arch=)")
    if arch is not None:
        call = dataclasses.replace(call, arch=normalize_arch(arch))
    if backend == dispatch.AUTO:
        backend = dispatch.requested_backend()
    return dispatch.select(call, backend, dispatch.opted_in())


def explain(op: str, *args, **kwargs) -> str:
    """`supports(...)` as readable text: the choice, each refusal and its reason, the alternative."""
    return supports(op, *args, **kwargs).explain()
