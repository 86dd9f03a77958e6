"""Choosing the backend for a call.

Within the call's device type the highest-priority backend whose capability check passes wins;
pure-PyTorch backends that take any device come last, as a fallback. A backend's variants of one
kernel (cuda: PTX, then portable Triton) are tried in its order. `backend="name"` forces a backend
(its variants still in order), `backend="name/variant"` one variant;
`LOWBIT_BACKEND` replaces the default "auto". A variant whose bits deviate from the SPEC declares
an opt-in (`LOWBIT_XPU_PROVIDER=vendor`): auto-dispatch and a backend forced by name skip it unless
that environment variable is set so; naming the variant runs it. A fallback (a higher-priority
backend refused the call, or nothing native to the device exists) logs one warning per decision,
and `LOWBIT_STRICT=1` turns it into UnsupportedError. Decisions are cached by `Call`, which holds no row count.

The eager fast path: an op remembers the kernel it resolved under `kind(...)`, a tuple of the very
properties its Call is made of plus the requested backend and the environment, which costs a
fraction of describing the call. A later call of the same kind that needs no torch.library
machinery (`eager`) finds its kernel there and runs it: no description, no capability check.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import registry
from .backend import Kernel
from .capability import Call, Unmet
from .devices import device_arch
from .errors import UnsupportedError

log = logging.getLogger("lowbit")

AUTO = "auto"
ENV_BACKEND = "LOWBIT_BACKEND"
ENV_STRICT = "LOWBIT_STRICT"


@dataclass(frozen=True)
class Verdict:
    """The answer for one call: which backend would run it, and why each other one would not."""

    call: Call
    requested: str  # "auto" or the forced backend's name
    backend: str | None  # the backend that runs the call; None: none can
    rejected: tuple[tuple[str, tuple[Unmet, ...]], ...]  # (backend or backend/variant, unmet) as tried
    fallback: bool = False  # runs, but not on the first choice for its device
    opt_in_passed_over: bool = False  # an opted-in variant (LOWBIT_XPU_PROVIDER=vendor) could not take the call
    alternative: str = ""  # what would work instead, when refused
    kernel: Kernel | None = field(default=None, compare=False)

    @property
    def variant(self) -> str:
        """The chosen kernel's variant within its backend ("" when the backend has one kernel)."""
        return self.kernel.capability.variant if self.kernel is not None else ""

    @property
    def ok(self) -> bool:
        return self.backend is not None

    @property
    def reasons(self) -> dict[str, list[str]]:
        """Per backend, the constraints it does not meet."""
        return {name: [u.constraint for u in unmet] for name, unmet in self.rejected}

    def explain(self, note: str = "") -> str:
        """Readable text: the decision, each refusal with its reason, the alternative. `note` is
        a line said right after the decision."""
        c = self.call
        head = f"lowbit.{c.op} for {c.describe()}"
        if self.ok:
            verb = "falls back to" if self.fallback else "runs on"
            variant = f" ({self.variant})" if self.variant else ""
            lines = [f"{head}: {verb} backend {self.backend!r}{variant}{_forced(self.requested)}"]
        elif self.requested == AUTO:
            lines = [f"{head}: no backend can run it:"]
        else:
            lines = [f"{head}: backend {self.requested!r} (forced) cannot run it:"]
        if note:
            lines.append(note)
        lines += [f"  - {name}: {u.constraint}" for name, unmet in self.rejected for u in unmet]
        if self.ok and self.fallback and c.device_type not in self.kernel.capability.devices:
            lines.append(f"  - no installed backend for {c.device_type} takes it; {self.backend!r} is the "
                         "pure-PyTorch fallback (slow)")
        if self.ok and self.kernel is not None:
            lines.append(f"  fidelity: {self.kernel.capability.fidelity}")
        if self.alternative:
            lines.append(f"Alternative: {self.alternative}")
        return "\n".join(lines)

    def error(self, note: str = "") -> UnsupportedError:
        return UnsupportedError(self.explain(note))


def _forced(requested: str) -> str:
    return "" if requested == AUTO else " (forced)"


def call_for(op: str, x, **options) -> Call:
    """The Call of `op` whose primary tensor is `x`: its device, arch, dtype, ndim, last dim and
    last-dim stride, plus (or replaced by) `options`."""
    fields = dict(
        op=op,
        device_type=x.device.type,
        arch=device_arch(x.device),
        dtype=x.dtype,
        ndim=x.dim(),
        k=int(x.shape[-1]) if x.dim() else 0,
        # bool(): under dynamic shapes a SymBool must not reach the cache key
        last_dim_contiguous=bool(x.dim() == 0 or x.shape[-1] <= 1 or x.stride(-1) == 1),
        contiguous=bool(x.is_contiguous()),
    )
    return Call(**{**fields, **options})


def kind(op: str, x, *options) -> tuple:
    """What the Call of `op` on primary tensor `x` is made of (its device, arch, dtype, ndim, last dim,
    layout), with the op's `options`, as a cheap tuple: the key under which the eager fast path
    remembers a kernel. `options` must hold every option the op's Call holds, the requested backend,
    and whatever else the op's describe reads; `environment()` is added here."""
    ndim = x.dim()
    k = x.shape[-1] if ndim else 0
    last_dim_contiguous = ndim == 0 or k <= 1 or x.stride(-1) == 1
    return (op, x.device, x.dtype, ndim, k, x.is_contiguous(), last_dim_contiguous, environment(), *options)


_KERNELS: dict[tuple, Kernel] = {}  # kind -> the kernel resolved for it
_KERNELS_MAX = 4096


def kernel_for(key: tuple, describe: Callable[[], Call], backend: str = AUTO, fits: bool = True,
               recheck: Callable[[], None] | None = None) -> Kernel:
    """The kernel for a call of kind `key` (see `kind`): the one remembered from an earlier call of the
    kind when `fits` (the per-call checks the kind leaves open passed) and `recheck` (those that raise,
    such as the out= buffers' checks) returns, else `resolve(describe(), backend)`, remembered.
    `describe` runs every check of the call, in the order a first call meets them, and raises for
    bad input."""
    kernel = remembered(key) if fits else None
    if kernel is None:
        kernel = resolve(describe(), backend)
        if len(_KERNELS) >= _KERNELS_MAX:
            _KERNELS.clear()
        _KERNELS[key] = kernel
    elif recheck is not None:
        recheck()
    return kernel


def remembered(key: tuple) -> Kernel | None:
    """The kernel resolved earlier for a call of this kind, or None. An option that cannot be a key
    (unhashable) is left to the op's own checks."""
    try:
        return _KERNELS.get(key)
    except TypeError:
        return None


def eager(*tensors) -> bool:
    """Whether a call on these tensors may run without torch.library: plain tensors with data that need
    no autograd, with nothing tracing (torch.compile, export) or intercepting (dispatch or function modes:
    FakeTensorMode, make_fx; functorch transforms). Otherwise the op goes through torch.ops, where the
    fake, the tracer and autograd see it."""
    if torch.compiler.is_compiling() or _dispatch_modes() or _function_modes():  # first: dynamo folds it
        return False
    for t in tensors:
        if type(t) is not torch.Tensor or t.requires_grad or t.is_meta or _functorch_wrapped(t):
            return False
    return True


def without_grad(op, *args):
    """op(*args) (a lowbit torch.library op) with autograd off: quantized values, and buffers written
    in place, have no gradient, so no output requires grad whatever the inputs do. torch.compile
    traces the no_grad region like any other."""
    with torch.no_grad():
        return op(*args)


_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled


def candidates(op: str, device_type: str) -> list[tuple[Kernel, bool]]:
    """(kernel, native) for every backend's kernels for `op`, in the order auto-dispatch tries them
    on `device_type`: natives by priority (each backend's variants in its order), then the
    any-device backends as fallbacks."""
    native, fallback = [], []
    for b in registry.backends():
        for k in b.kernels_for(op):
            if device_type in k.capability.devices:
                native.append((k, True))
            elif k.capability.any_device:
                fallback.append((k, False))
    return native + fallback


def _check(kernel: Kernel, call: Call, opt_ins: frozenset[str] | None) -> tuple[Unmet, ...]:
    """What stops `kernel` from running `call`. `opt_ins`: the opt-ins set now; None when the
    caller named this very variant (that is an opt-in)."""
    cap = kernel.capability
    unmet = cap.unmet(call)
    if opt_ins is not None and cap.off_without_opt_in(opt_ins):
        # Not probed for its library either: an opt-in import may be slow or have side effects
        unmet.insert(0, Unmet(f"auto-dispatch uses it only with {cap.opt_in} (fidelity: {cap.fidelity})",
                              f"set {cap.opt_in}, or pass backend={cap.label!r}"))
        return tuple(unmet)
    missing = registry.kernel_unavailable(kernel)
    if missing:
        unmet.insert(0, Unmet(f"cannot load here: {missing}", "install what it needs"))
    return tuple(unmet)


def environment() -> tuple:
    """The environment variables a decision reads, as set now: LOWBIT_BACKEND, LOWBIT_STRICT and each
    backend's variant setting (read per call, so that setting one takes effect at the next call)."""
    return tuple(map(_RAW_ENVIRON.get, _watched()))


# os.environ.get costs about 0.6 µs for an unset variable (a KeyError inside); every call reads
# these, so they are read from the mapping os.environ keeps its encoded items in (it writes through
# on every change), which costs a tenth of that.
_RAW_ENVIRON = getattr(os.environ, "_data", os.environ)


@functools.cache
def _watched() -> tuple:
    names = (ENV_BACKEND, ENV_STRICT, *registry.settings())
    return tuple(map(os.environ.encodekey, names)) if _RAW_ENVIRON is not os.environ else names


def opted_in(who: str = "lowbit") -> frozenset[str]:
    """The variant opt-ins the environment sets now ("LOWBIT_XPU_PROVIDER=vendor"), read per call
    like LOWBIT_BACKEND. A value a backend does not declare is an error, not a silent default; `who`
    (the op a call or query dispatches) names it."""
    found = []
    for name, values in registry.settings().items():
        value = os.environ.get(name)
        if value:
            if value not in values:
                raise ValueError(f"{who}: {name}={value!r} is not one of {', '.join(map(repr, values))}; use one of "
                                 f"those, or unset {name} for the default")
            found.append(f"{name}={value}")
    return frozenset(found)


@functools.lru_cache(maxsize=4096)
def select(call: Call, requested: str = AUTO, opt_ins: frozenset[str] = frozenset()) -> Verdict:
    """The dispatch decision for `call` (cached) under the opt-ins `opt_ins` (see opted_in()).
    Never raises for an unsupported call."""
    if requested != AUTO:
        return _select_forced(call, requested, opt_ins)
    rejected, tried = [], []
    for kernel, native in candidates(call.op, call.device_type):
        unmet = _check(kernel, call, opt_ins)
        if unmet:
            rejected.append((kernel.capability.label, unmet))
            tried.append(kernel)
            continue
        # A fallback: an earlier *backend* refused (an earlier variant of this one does not count)
        chosen = kernel.capability.backend
        fallback = not native or any(label.split("/")[0] != chosen for label, _ in rejected)
        alternative = f"pass backend={kernel.capability.backend!r} to choose the slower backend explicitly"
        return Verdict(call, AUTO, kernel.capability.backend, tuple(rejected), fallback=fallback,
                       alternative=alternative if fallback else "", kernel=kernel,
                       opt_in_passed_over=_opted_in_among(tried, opt_ins))
    if not rejected:
        rejected.append(("(none)", (Unmet(f"no installed backend implements {call.op}",
                                          "see `python -m lowbit info`"),)))
    # A backend's later variant is its more general one: its fixes are the ones worth saying
    last_variant = {label.split("/")[0]: unmet for label, unmet in rejected}
    fixes = list(dict.fromkeys(u.fix for unmet in last_variant.values() for u in unmet))
    return Verdict(call, AUTO, None, tuple(rejected), alternative="; or ".join(fixes))


def _opted_in_among(refused: list[Kernel], opt_ins: frozenset[str]) -> bool:
    """Whether the environment opted into one of the `refused` kernels: the call runs, but not
    where the caller asked."""
    return any(k.capability.opt_in in opt_ins for k in refused)


def _select_forced(call: Call, requested: str, opt_ins: frozenset[str]) -> Verdict:
    name, _, variant = requested.partition("/")
    backend = registry.get(name)
    if backend is None:
        known = ", ".join(b.name for b in registry.backends())
        unmet = (Unmet(f"no backend is named {name!r} (known: {known})", "use a known name"),)
        return Verdict(call, requested, None, ((requested, unmet),), alternative=_auto_alternative(call, opt_ins))
    kernels = [k for k in backend.kernels_for(call.op) if not variant or k.capability.variant == variant]
    if not kernels:
        what = f"variant {variant!r} for {call.op}" if variant else f"kernel for {call.op}"
        unmet = (Unmet(f"has no {what}", "use another backend"),)
        return Verdict(call, requested, None, ((requested, unmet),), alternative=_auto_alternative(call, opt_ins))
    rejected = []
    for kernel in kernels:
        unmet = _check(kernel, call, None if variant else opt_ins)
        if not unmet:
            return Verdict(call, requested, name, tuple(rejected), kernel=kernel,
                           opt_in_passed_over=_opted_in_among(kernels[:kernels.index(kernel)], opt_ins))
        rejected.append((kernel.capability.label, unmet))
    return Verdict(call, requested, None, tuple(rejected), alternative=_auto_alternative(call, opt_ins))


def _auto_alternative(call: Call, opt_ins: frozenset[str]) -> str:
    auto = select(call, AUTO, opt_ins)
    if auto.ok:
        return f"backend={auto.backend!r} can run this call (backend='auto' picks it)"
    return auto.alternative


def resolve(call: Call, backend: str = AUTO) -> Kernel:
    """The kernel that runs `call`, or UnsupportedError. Both the real op and its fake call this."""
    verdict = select(call, requested_backend() if backend == AUTO else backend, opted_in(f"lowbit.{call.op}"))
    if not verdict.ok:
        raise verdict.error()
    if verdict.fallback:
        if os.environ.get(ENV_STRICT, "0") not in ("", "0"):
            raise verdict.error(f"{ENV_STRICT}=1 refuses fallbacks; this one is needed because:")
        _warn_once(verdict)
    elif verdict.opt_in_passed_over:  # not a fallback (same backend, SPEC bits), but not what was asked for
        _warn_once(verdict)
    return verdict.kernel


def requested_backend() -> str:
    """The default request: LOWBIT_BACKEND when set, else "auto"."""
    return os.environ.get(ENV_BACKEND) or AUTO


@functools.cache
def _warn_once(verdict: Verdict) -> None:
    log.warning("%s", verdict.explain())


def clear_cache() -> None:
    """Forget every decision (after backends are registered or removed)."""
    select.cache_clear()
    _warn_once.cache_clear()
    _watched.cache_clear()
    _KERNELS.clear()
