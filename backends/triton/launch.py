"""What every launcher here needs: launch configurations kept as data, and `Launch`, which starts a
Triton kernel for about the host cost of a native torch op (8.4 µs against `x.abs()`'s 6.9 on the
device machine's H100 host, docs/benchmarks.md).

Triton's JIT entry point, `kernel[grid](*args)`, binds the arguments, specialises each one, hashes
a cache key and finds the current stream on every call: about 20 µs of host time on the device
machine's CPU, three times a native torch op. `Launch` pays that once per specialisation: the first
call of each goes through the entry point and keeps the compiled kernel; later calls hand the
arguments straight to the launcher Triton compiled for it (`CompiledKernel.run`, the call that
`JITFunction.run` itself ends with in Triton 3.6–3.9, and that torch inductor makes too).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import triton


@dataclass(frozen=True)
class LaunchConfig:
    """A tile of BLOCK_M rows x BLOCK_K elements per program, and the warps that run it."""

    block_m: int
    block_k: int
    num_warps: int


def fitting(table, k: int, config: LaunchConfig | None = None) -> tuple[tuple[int | None, LaunchConfig], ...]:
    """The (max_rows, config) entries of a launch table of (max_rows, max_k, config) that take rows of
    `k` elements, in order, up to the first that takes any row count: a launcher resolves this once
    per kind of call and then chooses by the row count alone. Tables end with a catch-all entry
    (None, None, config). A `config` given (tuning, tests) is the only entry."""
    if config is not None:
        return ((None, config),)
    found = []
    for max_rows, max_k, entry in table:
        if max_k is None or k <= max_k:
            found.append((max_rows, entry))
            if max_rows is None:
                return tuple(found)
    raise LookupError("launch table has no catch-all entry")


def size_class(tiers, rows: int) -> tuple:
    """The first of `tiers` (from `fitting`: (max_rows, ...), the last one the catch-all) that takes
    `rows` rows."""
    for tier in tiers[:-1]:
        if rows <= tier[0]:
            return tier
    return tiers[-1]


def byte_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t (..., cols), of a 1-byte dtype, as (rows, cols) with a unit last stride: t itself when it is 2-D
    with one (Launch passes E2M1 pairs and E8M0 as their bytes: no view to pay for on the common path),
    else a reshape of its bytes, copied where the strides do not merge. Copies go as uint8, as they always
    have: no copy kernel for the narrow float dtypes is relied on."""
    if t.dim() == 2 and t.stride(1) == 1:
        return t
    b = t.view(torch.uint8).reshape(rows, t.shape[-1])
    return b if b.stride(1) == 1 else b.contiguous()


def flat_bytes(t: torch.Tensor) -> torch.Tensor:
    """t contiguous, for a kernel that reads it as flat bytes (swizzled scale tiles): itself when it is,
    else a copy of its bytes (as uint8, like byte_rows)."""
    return t if t.is_contiguous() else t.view(torch.uint8).contiguous()


def on_device(t: torch.Tensor):
    """Launch on `t`'s device (Triton launches on the current one). CPU tensors (the interpreter)
    need no guard, nor does a tensor already on the current device."""
    if t.device.type == "cpu":
        return contextlib.nullcontext()
    module = torch.get_device_module(t.device.type)
    if t.device.index is None or t.device.index == module.current_device():
        return contextlib.nullcontext()
    return module.device(t.device)


_I32, _I64 = range(-(2**31), 2**31), range(-(2**63), 2**63)


def bind(args) -> tuple[tuple, list]:
    """(key, values) for these runtime arguments. `key` holds what Triton specialises a kernel on, or
    finer: per tensor its dtype and whether its address is 16-byte aligned; per int whether it is 1,
    whether it is a multiple of 16, and its type (i32, i64, u64); per other value its type. Two
    argument lists with one key run the same compiled kernel. `values` are what its launcher takes:
    tensors as their addresses, which spares the launcher a data_ptr() call and a driver query per
    pointer (the ops have checked the tensors' devices). Written for speed: it runs on every launch."""
    key, values = [], []
    for a in args:
        if a.__class__ is int:  # -1, 0 and 1 as themselves, others as a code from 3 up
            key.append(a if -1 <= a <= 1 else 3 + (a & 15 == 0) + 2 * (a in _I32) + 4 * (a in _I64))
        elif isinstance(a, torch.Tensor):
            key.append(a.dtype)
            a = a.data_ptr()
            key.append(a & 15 == 0)
        else:
            key.append(a.__class__)
        values.append(a)
    return tuple(key), values


def jit_arguments(args) -> tuple:
    """The arguments as Triton's JIT entry point takes them: a tensor of a dtype Triton has no pointer
    type for (E2M1 pairs, E8M0) as a uint8 view (kernels read and write their bytes)."""
    return tuple(a.view(torch.uint8) if isinstance(a, torch.Tensor) and a.dtype in _BYTE_DTYPES else a for a in args)


_BYTE_DTYPES = (torch.float4_e2m1fn_x2, torch.float8_e8m0fnu)


class Launch:
    """One Triton kernel with its constexprs and compile options fixed, called as
    `launch(grid, *runtime_args)`. The kernel's constexpr parameters must follow all the others.

    Compiled kernels are kept per device and `bind(args)` key. Calls on CPU tensors (the
    interpreter), and calls while a Triton launch hook is set (a profiler), take the JIT entry point.
    Tensors of a dtype Triton has no pointer type for (E2M1 pairs, E8M0) go to a kernel as uint8.
    """

    def __init__(self, kernel, constexprs: dict, **options):
        self.kernel = kernel
        self.constexprs = constexprs
        self.options = options
        self.compiled: dict[tuple, tuple] = {}  # (device index, bind(args) key) -> launcher, function, metadata
        self.trailing: tuple = ()  # the constexpr values in parameter order: the launcher takes every argument

    def __call__(self, grid: tuple[int, int, int], *args) -> None:
        index = args[0].get_device()
        if index < 0:  # CPU tensors: the interpreter
            self.kernel[grid](*jit_arguments(args), **self.constexprs, **self.options)
            return
        key, values = bind(args)
        found = self.compiled.get((index, key))
        if found is None or _hooks_set():
            self._first_launch((index, key), grid, args)
            return
        run, function, metadata = found
        current_device, current_stream = _driver()
        if index == current_device():
            run(*grid, current_stream(index), function, metadata, None, None, None, *values, *self.trailing)
            return
        with torch.get_device_module(args[0].device.type).device(index):
            run(*grid, current_stream(index), function, metadata, None, None, None, *values, *self.trailing)

    def _first_launch(self, key: tuple, grid: tuple[int, int, int], args: tuple) -> None:
        with on_device(args[0]):
            compiled = self.kernel[grid](*jit_arguments(args), **self.constexprs, **self.options)
        if not self.trailing:
            params = self.kernel.params
            if any(p.is_constexpr for p in params[:len(args)]) or len(params) != len(args) + len(self.constexprs):
                raise TypeError(f"{self.kernel.fn.__name__}: Launch needs the runtime arguments first, then the "
                                f"constexprs {sorted(self.constexprs)}")
            self.trailing = tuple(self.constexprs[p.name] for p in params[len(args):])
        self.compiled[key] = (compiled.run, compiled.function, compiled.packed_metadata)


@functools.cache
def _driver():
    """The active Triton driver's current-device and current-stream functions (torch's own)."""
    active = triton.runtime.driver.active
    return active.get_current_device, active.get_current_stream


def _hooks_set() -> bool:
    """Whether a Triton launch hook is set (Triton 3.6 keeps a callable or None, 3.9 a chain of calls)."""
    runtime = triton.knobs.runtime
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
    return bool(getattr(enter, "calls", enter) or getattr(leave, "calls", leave))
