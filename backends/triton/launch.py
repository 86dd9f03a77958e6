"""What every launcher here needs: launch configurations kept as data, and the device guard."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LaunchConfig:
    """A tile of BLOCK_M rows x BLOCK_K elements per program, and the warps that run it."""

    block_m: int
    block_k: int
    num_warps: int


def pick(table, rows: int, k: int) -> LaunchConfig:
    """The config of the first (max_rows, max_k, config) entry of `table` that fits the call.
    Tables end with a catch-all entry (None, None, config)."""
    for max_rows, max_k, config in table:
        if (max_rows is None or rows <= max_rows) and (max_k is None or k <= max_k):
            return config
    raise LookupError("launch table has no catch-all entry")


def on_device(t: torch.Tensor):
    """Launch on `t`'s device (Triton launches on the current one). CPU tensors (the interpreter)
    need no guard, nor does a tensor already on the current device."""
    if t.device.type == "cpu":
        return contextlib.nullcontext()
    module = torch.get_device_module(t.device.type)
    if t.device.index is None or t.device.index == module.current_device():
        return contextlib.nullcontext()
    return module.device(t.device)

