"""Which backends exist: the built-in ones and those installed through the `lowbit.backends`
entry-point group. Nothing is imported until the first dispatch or query asks."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging

from .backend import Backend, Kernel

log = logging.getLogger("lowbit")

# Modules that define `BACKEND`.
BUILTIN = ("lowbit.backends.cpu", "lowbit.backends.cuda", "lowbit.backends.xpu")
ENTRY_POINT_GROUP = "lowbit.backends"

_registered: dict[str, Backend] = {}  # added at run time with register()


@functools.cache
def _discovered() -> tuple[tuple[Backend, ...], tuple[str, ...]]:
    """Load the built-in backends and the entry points; return (backends, load problems)."""
    found, problems = [], []
    for module in BUILTIN:
        found.append(importlib.import_module(module).BACKEND)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            backend = obj() if callable(obj) and not isinstance(obj, Backend) else obj
            if not isinstance(backend, Backend):
                raise TypeError(f"it gave {type(backend).__name__}, not lowbit.backend.Backend")
        except Exception as exc:  # a broken plug-in must not break lowbit
            problems.append(f"entry point {ep.name!r} ({ep.value}) did not load: {exc}")
            log.warning("lowbit: %s", problems[-1])
            continue
        found.append(backend)
    return tuple(found), tuple(problems)


def backends() -> tuple[Backend, ...]:
    """Every backend, highest priority first (names are unique; a later one replaces an earlier one)."""
    by_name = {b.name: b for b in _discovered()[0]}
    by_name.update(_registered)
    return tuple(sorted(by_name.values(), key=lambda b: (-b.priority, b.name)))


def load_problems() -> tuple[str, ...]:
    return _discovered()[1]


def get(name: str) -> Backend | None:
    for b in backends():
        if b.name == name:
            return b
    return None


@functools.cache
def unavailable(name: str) -> str | None:
    """Why backend `name` cannot run in this process, or None. Asked once per process."""
    return get(name).unavailable()


@functools.cache
def kernel_unavailable(kernel: Kernel) -> str | None:
    """Why `kernel` cannot run in this process: its backend's reason, or its own. Asked once per process."""
    return unavailable(kernel.capability.backend) or (kernel.unavailable() if kernel.unavailable else None)


@functools.cache
def settings() -> dict[str, tuple[str, ...]]:
    """Every backend's variant settings: environment variable -> allowed values."""
    found: dict[str, tuple[str, ...]] = {}
    for b in backends():
        for name, values in b.settings.items():
            found[name] = tuple(dict.fromkeys((*found.get(name, ()), *values)))
    return found


def register(backend: Backend) -> None:
    """Add (or replace) a backend at run time, e.g. from an application or a test."""
    _registered[backend.name] = backend
    forget()


def unregister(name: str) -> None:
    _registered.pop(name, None)
    forget()


def forget() -> None:
    """Drop what was cached about backends (availability, settings) and every dispatch decision."""
    from . import dispatch

    unavailable.cache_clear()
    kernel_unavailable.cache_clear()
    settings.cache_clear()
    dispatch.clear_cache()
