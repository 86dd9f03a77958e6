"""The arch of a device, asked once per device and cached; never at import time."""

from __future__ import annotations

import functools

import torch

from .capability import Arch


def device_arch(device: torch.device) -> Arch | None:
    """CUDA: compute capability as an int (90); ROCm: the gfx name; XPU: the device name.
    None where the device is not visible to this process (a fake or meta tensor on a machine
    without that hardware). A device without an index ("cuda") is the current one of its type
    when asked: the answer is cached per indexed device, so it never stands for whichever was
    current first."""
    return probed_arch(_indexed(device))


def _indexed(device: torch.device) -> torch.device:
    if device.index is not None or device.type not in ("cuda", "xpu"):
        return device
    module = torch.get_device_module(device.type)
    try:
        if module.is_available():
            return torch.device(device.type, module.current_device())
    except (RuntimeError, AssertionError):  # no driver: probed_arch answers None anyway
        pass
    return device


@functools.cache
def probed_arch(device: torch.device) -> Arch | None:
    """device_arch of an indexed device, asked of the driver once."""
    try:
        if device.type == "cuda" and torch.cuda.is_available():
            if torch.version.hip:
                return torch.cuda.get_device_properties(device).gcnArchName.split(":")[0].lower()
            major, minor = torch.cuda.get_device_capability(device)
            return major * 10 + minor
        if device.type == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
            return torch.xpu.get_device_name(device).lower()
    except (RuntimeError, AssertionError, ValueError):  # no driver, or a bad index: unknown arch
        return None
    return None


def present_device_types() -> tuple[str, ...]:
    """Device types this process can run on now (for `python -m lowbit info` and the demo)."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        found.append("xpu")
    return tuple(found)
