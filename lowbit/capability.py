"""The capability model: what a backend declares it can run (data), and the one check that reads it.

A backend declares one `Capability` per op next to its kernel. A call is summarised as a `Call`:
only the properties a check reads (device, arch, dtype, ndim, last dim, op parameters), never the
row count, so one cached dispatch decision serves every batch size. `Capability.unmet(call)` is
the single check function per (backend, op): the real entry point and the fake implementation both
reach it through `lowbit.dispatch.resolve`, so they accept and refuse exactly the same calls.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

# An accelerator generation. CUDA: the compute capability as an int (90 is sm_90, 100 is sm_100).
# Other vendors: the lower-case architecture name ("gfx942", an Intel device name).
Arch = int | str

_SM = re.compile(r"^(?:sm_?|compute_?)?(\d+)(?:\.(\d+))?[af]?$")


def normalize_arch(arch, who: str = "lowbit") -> Arch | None:
    """Accept 90, (9, 0), "sm_90", "sm_90a", "9.0", "gfx942" and return one canonical form; `who` names the
    function whose arch= argument this is, for the refusal."""
    if arch is None or isinstance(arch, bool):
        return None
    if isinstance(arch, int):
        return arch
    if isinstance(arch, tuple) and len(arch) == 2:
        try:
            return operator.index(arch[0]) * 10 + operator.index(arch[1])  # ints, numpy's too; not "9" or 9.0
        except TypeError:
            pass
    if isinstance(arch, str):
        m = _SM.match(arch.strip().lower())
        if m:
            major, minor = m.groups()
            return int(major) * 10 + int(minor) if minor is not None else int(major)
        return arch.strip().lower()
    raise ValueError(f"{who}: arch={arch!r} is not an arch; pass e.g. arch=90, (9, 0), 'sm_90' or 'gfx942'")


def arch_name(arch: Arch | None) -> str:
    if arch is None:
        return "unknown arch"
    return f"sm_{arch}" if isinstance(arch, int) else arch


@dataclass(frozen=True)
class ArchRange:
    """CUDA compute capabilities from `min` to `max` inclusive (`max=None`: no upper bound)."""

    min: int
    max: int | None = None

    def __contains__(self, arch) -> bool:
        return isinstance(arch, int) and arch >= self.min and (self.max is None or arch <= self.max)

    def __str__(self) -> str:
        return f"sm_{self.min}+" if self.max is None else f"sm_{self.min}..sm_{self.max}"


@dataclass(frozen=True)
class Call:
    """What dispatch and the capability checks know of one call. Hashable: the dispatch cache key."""

    op: str
    device_type: str
    arch: Arch | None
    dtype: torch.dtype
    ndim: int
    k: int  # the last dim: elements per row
    last_dim_contiguous: bool = True
    contiguous: bool = True  # the whole input is contiguous (row-major, no gaps)
    out_dtype: torch.dtype | None = None  # dequantize: the requested output dtype
    group_size: int | None = None  # FP8 group size
    scale_rule: str | None = None  # MXFP4 scale rule
    scale_layout: str | None = None  # MX block scales: "linear" or "swizzled" [SCALE-SWIZZLE]
    out_given: bool = False  # the caller passed out= buffers
    kv_dtype: torch.dtype | None = None  # attention: the KV cache dtype
    heads: tuple[int, int] | None = None  # attention: (query heads, KV heads)
    page_size: int | None = None  # attention: tokens per KV cache block
    weight_block: tuple[int, int] | None = None  # FP8 weight blocks: (rows, columns) per scale

    def describe(self) -> str:
        parts = [f"{dtype_name(self.dtype)} input", f"ndim {self.ndim}", f"last dim {self.k}"]
        if self.group_size is not None:
            parts.append(f"group_size {self.group_size}")
        if self.scale_rule is not None:
            parts.append(f"scale_rule {self.scale_rule!r}")
        if self.scale_layout not in (None, "linear"):  # the default goes unsaid
            parts.append(f"scale_layout {self.scale_layout!r}")
        if self.weight_block is not None:
            parts.append("block " + _block_name(self.weight_block))
        if self.kv_dtype is not None:
            parts.append(f"{dtype_name(self.kv_dtype)} KV cache")
        if self.heads is not None:
            parts.append(f"{self.heads[0]} query / {self.heads[1]} KV heads")
        if self.page_size is not None:
            parts.append(f"page size {self.page_size}")
        if self.out_dtype is not None:
            parts.append(f"output {dtype_name(self.out_dtype)}")
        if self.out_given:
            parts.append("out= given")
        if not self.last_dim_contiguous:
            parts.append("last dim strided")
        elif not self.contiguous:
            parts.append("input not contiguous")
        where = self.device_type if self.arch is None else f"{self.device_type} {arch_name(self.arch)}"
        return ", ".join(parts) + f", on {where}"


@dataclass(frozen=True)
class Unmet:
    """One constraint a call breaks, and what the caller could do instead."""

    constraint: str
    fix: str

    def __str__(self) -> str:
        return self.constraint


ANY_GROUP_SIZE = "any divisor of the last dim"


@dataclass(frozen=True, eq=False)  # records are singletons: compared and hashed by identity
class Capability:
    """One backend's declaration for one op: the data users query and dispatch checks."""

    op: str
    backend: str
    devices: tuple[str, ...]  # device types the backend is built for
    dtypes: tuple[torch.dtype, ...]  # accepted dtypes of the primary input
    fidelity: str  # "bit-exact to SPEC", or the named deviation
    graph_safe: bool  # no host sync: CUDA-graph capturable (with out=, quantize ops allocate nothing)
    compile_safe: bool  # torch.compile(fullgraph=True) traces it through its fake
    any_device: bool = False  # pure PyTorch: takes any device's tensors when forced, or as last fallback
    archs: Mapping[str, ArchRange | frozenset] = field(default_factory=dict)  # absent device: any arch
    min_ndim: int = 1
    max_ndim: int | None = None
    block_size: int | None = None  # the last dim must be a multiple of it
    group_sizes: tuple[int, ...] | str | None = None  # None: the op has no groups; or ANY_GROUP_SIZE
    scale_rules: tuple[str, ...] | None = None
    scale_layouts: tuple[str, ...] | None = None  # block-scale layouts written or read; None: no choice
    weight_blocks: tuple[tuple[int, int], ...] | None = None  # None: the op has no 2-D blocks, or takes any
    out_dtypes: tuple[torch.dtype, ...] | None = None
    last_dim_contiguous: bool = False  # True: needs stride 1 along the last dim
    contiguous: bool = False  # True: needs a contiguous input (a vendor op that asserts it)
    kv_dtypes: Mapping[torch.dtype, tuple[torch.dtype, ...]] | None = None  # attention: per input dtype,
    # the KV cache dtypes it pairs with
    head_sizes: tuple[int, int] | None = None  # attention: (min, max) head size, the last dim
    page_size_multiple: int | None = None  # attention: the KV cache page size must be a multiple of it
    out_buffers: bool = True  # takes preallocated out= buffers
    variant: str = ""  # one of several kernels a backend has for the op, tried in its order ("ptx")
    # "NAME=value": auto-dispatch (and a backend forced by name) tries this variant only while the
    # environment variable NAME equals value, because its bits deviate from the SPEC; naming the
    # variant (backend="xpu/vendor") always may. "": always tried.
    opt_in: str = ""

    @property
    def label(self) -> str:
        """The backend's name, with the variant when it has one: "cuda/ptx"."""
        return f"{self.backend}/{self.variant}" if self.variant else self.backend

    def off_without_opt_in(self, opt_ins: frozenset[str]) -> bool:
        """Whether auto-dispatch must skip this variant under the opt-ins set now (dispatch.opted_in())."""
        return bool(self.opt_in) and self.opt_in not in opt_ins

    def unmet(self, call: Call) -> list[Unmet]:
        """Every constraint of this record that `call` breaks (empty: this backend can run it)."""
        found = []

        def need(ok: bool, constraint: str, fix: str) -> None:
            if not ok:
                found.append(Unmet(constraint, fix))

        native = call.device_type in self.devices
        need(
            native or self.any_device,
            f"runs on {_names(self.devices)} tensors, not {call.device_type}",
            f"move the input to {self.devices[0]}",
        )
        archs = self.archs.get(call.device_type)
        if native and archs is not None:
            if call.arch is None:
                need(False, f"needs {_arch_set(archs)} and cannot tell this {call.device_type} device's arch",
                     "pass arch= to lowbit.supports, or run where the device is visible")
            else:
                need(call.arch in archs, f"needs {_arch_set(archs)}, not {arch_name(call.arch)}",
                     "use a device in that range, or another backend")
        need(
            call.dtype in self.dtypes,
            f"input dtype {dtype_name(call.dtype)} is not one of {_names(map(dtype_name, self.dtypes))}",
            f"cast the input to {dtype_name(self.dtypes[0])}",
        )
        need(
            call.ndim >= self.min_ndim,
            f"input has {call.ndim} dims; needs at least {self.min_ndim}",
            f"reshape the input to {self.min_ndim} or more dims",
        )
        if self.max_ndim is not None:
            need(call.ndim <= self.max_ndim, f"input has {call.ndim} dims; takes at most {self.max_ndim}",
                 f"flatten the leading dims to get {self.max_ndim} dims")
        if self.block_size is not None:
            need(
                call.k % self.block_size == 0,
                f"last dim {call.k} is not a multiple of the block size {self.block_size}",
                f"pad the last dim with zeros to a multiple of {self.block_size}",
            )
        if call.group_size is not None:
            if call.group_size < 1 or call.k % call.group_size != 0:
                need(False, f"group_size {call.group_size} does not divide the last dim {call.k}",
                     "pass a group_size that divides the last dim, or pad the last dim")
            elif self.group_sizes not in (None, ANY_GROUP_SIZE):
                need(call.group_size in self.group_sizes,
                     f"group_size {call.group_size} is not one of {_names(map(str, self.group_sizes))}",
                     "use backend='cpu' (the reference takes any group size that divides the last dim)")
        if call.scale_rule is not None and self.scale_rules is not None:
            need(call.scale_rule in self.scale_rules,
                 f"scale_rule {call.scale_rule!r} is not one of {_names(map(repr, self.scale_rules))}",
                 f"pass scale_rule={self.scale_rules[0]!r}")
        if call.scale_layout is not None and self.scale_layouts is not None:
            need(call.scale_layout in self.scale_layouts,
                 f"scale_layout {call.scale_layout!r} is not one of {_names(map(repr, self.scale_layouts))}",
                 f"pass scale_layout={self.scale_layouts[0]!r}")
        if call.weight_block is not None and self.weight_blocks is not None:
            need(call.weight_block in self.weight_blocks,
                 "block {}x{} is not one of ".format(*call.weight_block) + _names(map(_block_name, self.weight_blocks)),
                 "use backend='cpu' (the reference takes any block)")
        if call.out_dtype is not None and self.out_dtypes is not None:
            need(call.out_dtype in self.out_dtypes,
                 f"output dtype {dtype_name(call.out_dtype)} is not one of "
                 f"{_names(map(dtype_name, self.out_dtypes))}",
                 f"pass dtype=torch.{dtype_name(self.out_dtypes[0])}")
        if call.kv_dtype is not None and self.kv_dtypes is not None and call.dtype in self.kv_dtypes:
            pairs = self.kv_dtypes[call.dtype]
            need(call.kv_dtype in pairs,
                 f"a {dtype_name(call.dtype)} query takes a KV cache of {_names(map(dtype_name, pairs))}, "
                 f"not {dtype_name(call.kv_dtype)}",
                 f"store the KV cache as {dtype_name(pairs[0])}")
        if self.head_sizes is not None:
            low, high = self.head_sizes
            need(low <= call.k <= high, f"head size {call.k} is outside {low}..{high}",
                 f"pad the heads to a size in {low}..{high}, or use backend='cpu'")
        if call.page_size is not None and self.page_size_multiple is not None:
            need(call.page_size % self.page_size_multiple == 0,
                 f"page size {call.page_size} is not a multiple of {self.page_size_multiple}",
                 f"allocate the KV cache in pages of a multiple of {self.page_size_multiple} tokens")
        if self.last_dim_contiguous:
            need(call.last_dim_contiguous, "needs stride 1 along the last dim",
                 "pass x.contiguous()")
        if self.contiguous:
            need(call.last_dim_contiguous and call.contiguous, "needs a contiguous input", "pass x.contiguous()")
        if call.out_given:
            need(self.out_buffers, "takes no out= buffers", "drop out= and use the returned tensors")
        return found

    def as_row(self) -> dict[str, str]:
        """The record as short strings, for tables (`python -m lowbit info`)."""
        archs = ", ".join(f"{d} {_arch_set(a)}" for d, a in self.archs.items()) or "any"
        sizes = []
        if self.block_size is not None:
            sizes.append(f"block {self.block_size}")
        if self.group_sizes == ANY_GROUP_SIZE:
            sizes.append("group: " + ANY_GROUP_SIZE)
        elif self.group_sizes is not None:
            sizes.append("group " + "/".join(map(str, self.group_sizes)))
        if self.weight_blocks is not None:
            sizes.append("block " + "/".join(map(_block_name, self.weight_blocks)))
        if self.head_sizes is not None:
            sizes.append("head {}..{}".format(*self.head_sizes))
        if self.page_size_multiple is not None:
            sizes.append(f"page size x{self.page_size_multiple}")
        dtypes = "/".join(dtype_name(d) for d in self.dtypes)
        strides = "contiguous" if self.contiguous else "last dim contiguous" if self.last_dim_contiguous else "any"
        if self.kv_dtypes is not None:
            dtypes += " (KV cache: " + "; ".join(
                f"{dtype_name(q)} with {'/'.join(map(dtype_name, kv))}" for q, kv in self.kv_dtypes.items()) + ")"
        return {
            "devices": _names(self.devices) + (" (+any, pure torch)" if self.any_device else ""),
            "arch": archs,
            "dtypes": dtypes,
            "ndim": f"{self.min_ndim}+" if self.max_ndim is None else f"{self.min_ndim}..{self.max_ndim}",
            "sizes": ", ".join(sizes) or "-",
            "rules": "/".join(self.scale_rules) if self.scale_rules else "-",
            "layouts": "/".join(self.scale_layouts) if self.scale_layouts else "-",
            "strides": strides,
            "fidelity": self.fidelity,
            "graph-safe": "yes" if self.graph_safe else "no",
            "compile-safe": "yes" if self.compile_safe else "no",
            "auto": f"only with {self.opt_in}" if self.opt_in else "yes",
        }

    def __str__(self) -> str:
        row = self.as_row()
        return (f"{self.op} on {self.label}: devices {row['devices']}; arch {row['arch']}; dtypes {row['dtypes']}; "
                f"ndim {row['ndim']}; sizes {row['sizes']}; rules {row['rules']}; strides {row['strides']}; "
                f"{row['fidelity']}; graph-safe {row['graph-safe']}; compile-safe {row['compile-safe']}; "
                f"auto-dispatch {row['auto']}")


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16: how messages name a dtype."""
    return str(dtype).removeprefix("torch.")


def _names(items) -> str:
    return ", ".join(items)


def _block_name(block: tuple[int, int]) -> str:
    return "{}x{}".format(*block)


def _arch_set(archs) -> str:
    if isinstance(archs, ArchRange):
        return str(archs)
    return "{" + ", ".join(sorted(arch_name(a) for a in archs)) + "}"
