"""What a backend is: a name, a priority, and one kernel (with its capability record) per op."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .capability import Capability


@dataclass(frozen=True)
class Kernel:
    """A backend's implementation of one op and the capability record that describes it.

    `run` writes into outputs allocated by the op's shape function (lowbit/<op>.py), so the real
    outputs and the fake ones come from the same code.
    """

    capability: Capability
    run: Callable
    # Why this kernel cannot run in this process (its vendor library does not import), or None.
    # Asked lazily, at most once per process, and never for an opt-in variant the caller has not opted into.
    unavailable: Callable[[], str | None] | None = None

    @property
    def op(self) -> str:
        return self.capability.op


@dataclass(frozen=True)
class Backend:
    """A set of kernels that dispatch may choose. Higher `priority` wins within a device type.
    A backend may hold several kernels for one op (variants); dispatch tries them in order, and
    moving on to a later variant of the same backend is not a fallback."""

    name: str
    priority: int
    summary: str
    kernels: tuple[Kernel, ...]
    # Why this backend cannot run in this process (a missing package, say), or None. Called lazily,
    # at most once per process, never at `import lowbit`.
    unavailable: Callable[[], str | None] = lambda: None
    # Environment variables that choose among the backend's variants, with their allowed values
    # ({"LOWBIT_XPU_PROVIDER": ("triton", "vendor")}); a record's `opt_in` names one of them.
    settings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in self.kernels:
            if k.capability.backend != self.name:
                raise ValueError(f"lowbit.Backend: kernels= holds a kernel for {k.op} that declares backend "
                                 f"{k.capability.backend!r}, not {self.name!r}; pass it to backend "
                                 f"{k.capability.backend!r}, or declare Capability(backend={self.name!r})")
            name, _, value = k.capability.opt_in.partition("=")
            if k.capability.opt_in and value not in self.settings.get(name, ()):
                raise ValueError(f"lowbit.Backend: {k.capability.label} opts in with {k.capability.opt_in!r}, which "
                                 f"backend {self.name!r} does not declare in settings=; pass "
                                 f"settings={{{name!r}: (..., {value!r})}}, or an opt_in it declares")

    def kernels_for(self, op: str) -> tuple[Kernel, ...]:
        """The backend's kernels for `op`, in the order it prefers them (a specialised variant
        first, the general one after it)."""
        return tuple(k for k in self.kernels if k.op == op)

    def kernel(self, op: str) -> Kernel | None:
        """The backend's first choice for `op`, or None."""
        found = self.kernels_for(op)
        return found[0] if found else None
