"""`python -m lowbit info` (the ops × backends matrix for this machine) and `python -m lowbit demo`."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys

import torch

from . import __version__, dispatch, registry
from .capability import arch_name, dtype_name
from .devices import device_arch, present_device_types
from .ops import OPS

_COLUMNS = ("backend", "here", "auto", "devices", "arch", "dtypes", "ndim", "sizes", "rules", "layouts", "strides",
            "fidelity", "graph-safe", "compile-safe")


def info(out=sys.stdout) -> None:
    present = present_device_types()
    archs = {d: device_arch(torch.device(d)) for d in present}
    print(f"lowbit {__version__} | torch {torch.__version__} | Python {platform.python_version()} | "
          f"devices here: " + ", ".join(d if archs[d] is None else f"{d} ({arch_name(archs[d])})" for d in present),
          file=out)
    for b in registry.backends():
        why = registry.unavailable(b.name)
        print(f"backend {b.name} (priority {b.priority}): {b.summary}" + (f" [cannot load: {why}]" if why else ""),
              file=out)
    for problem in registry.load_problems():
        print(f"warning: {problem}", file=out)
    for op in OPS.values():
        print(f"\n{op.name}: {op.summary} [docs/SPEC.md: {op.spec}]", file=out)
        kernels = [k for b in registry.backends() for k in b.kernels_for(op.name)]
        if not kernels:  # the reference was replaced by a registered backend without it
            print("  no installed backend implements it", file=out)
            continue
        opt_ins = dispatch.opted_in("lowbit info")
        rows = [_row(k, archs, opt_ins) for k in kernels]
        _table(rows, out)
        for device_type in present:
            print(f"  on {device_type}: {_choice(op.name, device_type, archs[device_type])}", file=out)


def _row(kernel, archs, opt_ins) -> dict[str, str]:
    cap = kernel.capability
    probe = not cap.off_without_opt_in(opt_ins)  # an opt-in variant's library is imported only when chosen
    why = registry.kernel_unavailable(kernel) if probe else registry.unavailable(cap.backend)
    usable = [d for d in cap.devices if d in archs]
    if why:
        here = f"no: {why}"
    elif not probe:
        here = "not probed (opt-in)"
    elif any(_arch_ok(cap, d, archs[d]) for d in usable):
        here = "yes"
    elif usable:
        here = "no: needs another arch"
    elif cap.any_device:
        here = "fallback only"
    else:
        here = f"no: no {'/'.join(cap.devices)} device here"
    return {"backend": cap.label, "here": here, **cap.as_row()}


def _arch_ok(cap, device_type: str, arch) -> bool:
    wanted = cap.archs.get(device_type)
    return wanted is None or (arch is not None and arch in wanted)


def _choice(op: str, device_type: str, arch) -> str:
    """The kernel auto-dispatch picks for a tensor on this device, before any input check but the dtype: a
    kernel for some input dtypes only is named with them, and the search goes on for the rest."""
    opt_ins = dispatch.opted_in("lowbit info")
    candidates = dispatch.candidates(op, device_type)
    every = {d for kernel, _ in candidates for d in kernel.capability.dtypes}
    picks = []
    for kernel, native in candidates:
        cap = kernel.capability
        if cap.off_without_opt_in(opt_ins):
            continue
        if not registry.kernel_unavailable(kernel) and (not native or _arch_ok(cap, device_type, arch)):
            label = cap.label + ("" if native else " (pure-PyTorch fallback)")
            if set(cap.dtypes) < every:
                picks.append(f"{label} for {'/'.join(map(dtype_name, cap.dtypes))}")
                continue
            return ", else ".join([*picks, label])
    return ", else ".join(picks) or "none"


def _table(rows: list[dict[str, str]], out) -> None:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in _COLUMNS}
    print("  " + "  ".join(c.ljust(widths[c]) for c in _COLUMNS).rstrip(), file=out)
    for r in rows:
        print("  " + "  ".join(r[c].ljust(widths[c]) for c in _COLUMNS).rstrip(), file=out)


def demo(out=sys.stdout) -> None:
    """Quantize a sample tensor on the best backend here, dequantize it, report the error and check
    the bits against the CPU reference."""
    from . import (
        dequantize_fp8_block,
        dequantize_fp8_group,
        dequantize_fp8_group_packed,
        dequantize_mxfp4,
        dequantize_mxfp8,
        dequantize_nvfp4,
        quantize_fp8_block,
        quantize_fp8_group,
        quantize_fp8_group_packed,
        quantize_mxfp4,
        quantize_mxfp8,
        quantize_nvfp4,
        supports,
    )

    device = torch.device(present_device_types()[-1])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4096, generator=gen).to(torch.bfloat16)
    print(f"lowbit demo on {device}: x = randn{tuple(x.shape)}, {x.dtype}", file=out)
    xd = x.to(device)
    cases = (
        ("quantize_mxfp4", quantize_mxfp4, dequantize_mxfp4),
        ("quantize_mxfp8", quantize_mxfp8, dequantize_mxfp8),
        ("quantize_nvfp4", quantize_nvfp4, dequantize_nvfp4),
        ("quantize_fp8_group_packed", quantize_fp8_group_packed, dequantize_fp8_group_packed),
        ("quantize_fp8_group", quantize_fp8_group, dequantize_fp8_group),
        ("quantize_fp8_block", quantize_fp8_block, dequantize_fp8_block),
    )
    for name, quantize, dequantize in cases:
        verdict = supports(name, xd)
        got = quantize(xd)
        ref = quantize(x, backend="cpu")
        back = dequantize(*got, dtype=torch.float32).cpu()
        err = (back - x.float()).abs()
        rel = (err.square().sum() / x.float().square().sum()).sqrt().item()
        exact = all(torch.equal(_raw_bytes(g.cpu()), _raw_bytes(r)) for g, r in zip(got, ref))
        print(f"\n{name} on backend {verdict.backend!r} ({verdict.kernel.capability.fidelity})", file=out)
        print("  outputs: " + ", ".join(f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in got),
              file=out)
        print(f"  round trip: relative RMS error {rel:.4f}, max abs error {err.max().item():.4g}", file=out)
        same = " (auto chose the reference itself here)" if verdict.backend == "cpu" else ""
        print(f"  bits identical to the CPU reference: {'yes' if exact else 'NO'}{same}", file=out)
        if not exact:
            raise SystemExit(f"lowbit demo: {name} on {verdict.backend} differs from the reference")


def _raw_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lowbit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="the ops x backends matrix for this machine")
    sub.add_parser("demo", help="quantize a sample tensor here and check it against the reference")
    bench = sub.add_parser("bench", help="GPU benchmarks: `bench quant`, `bench nvfp4`, `bench tune-quant`, "
                                         "`bench attention`, `bench overhead` (needs CUDA and Triton)")
    bench.add_argument("suite", choices=sorted(BENCHMARKS))
    # REMAINDER hands everything after the suite, --help included, to the suite's own parser
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the suite's options: `bench SUITE --help`")
    args = parser.parse_args(argv)
    if args.command == "bench":
        if not torch.cuda.is_available() and not {"-h", "--help"} & set(args.options):
            raise SystemExit("lowbit bench: needs a CUDA GPU; the benchmarks time GPU kernels")
        importlib.import_module(BENCHMARKS[args.suite]).main(args.options)
    else:
        {"info": info, "demo": demo}[args.command]()


BENCHMARKS = {"quant": "lowbit.benchmarks.quant", "nvfp4": "lowbit.benchmarks.nvfp4",
              "tune-quant": "lowbit.benchmarks.tune_quant", "attention": "lowbit.benchmarks.attention",
              "overhead": "lowbit.benchmarks.overhead"}
