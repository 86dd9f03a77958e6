"""`python -m lowbit bench nvfp4`: quantize_nvfp4 in each global-scale mode, nvfp4_global_scale and
dequantize_nvfp4 against the copy bandwidth, torch.compile of the reference (the plain-PyTorch code a
user would otherwise compile), and the eager host cost next to `x.abs()`, all in one run.

Bytes counted per call (the fewest a kernel must move): quantize reads x once and writes q and the
scales, M*K*s + M*K/2 + M*K/16, whatever the mode (the per-tensor scale's second read of x is the
cost this table shows, not a byte the op must move); dequantize reads M*K/2 + M*K/16 and writes
M*K*s'; the global scale reads M*K*s.
"""

from __future__ import annotations

import argparse
import sys

import torch
from lowbit.backends.cpu import nvfp4 as reference

import lowbit
from lowbit import spec

from .timing import copy_gbps, eager_us, graph_replay_us

SHAPES = ((1, 7168), (16, 7168), (128, 7168), (1024, 7168), (8192, 7168), (32768, 4096))
MODES = ("given", "tensor", "row")


def _reference_quantize(x, gs, per_row, layout):
    rows = x.numel() // x.shape[-1]
    q = torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=torch.uint8, device=x.device)
    shape = spec.swizzled_scale_shape(rows, x.shape[-1] // 16) if layout == "swizzled" else \
        (*x.shape[:-1], x.shape[-1] // 16)
    s = torch.empty(shape, dtype=torch.uint8, device=x.device)
    compute = gs is None
    if compute:
        gs = torch.empty(x.shape[:-1] if per_row else (), dtype=torch.float32, device=x.device)
    reference.quantize(x, q, s, gs, per_row=per_row, compute_scale=compute, swizzled=layout == "swizzled")
    return q, s, gs


def _reference_dequantize(q, s, gs, layout):
    out = torch.empty((*q.shape[:-1], q.shape[-1] * 2), dtype=torch.bfloat16, device=q.device)
    reference.dequantize(q, s, gs, out, swizzled=layout == "swizzled")
    return out


def quantize_bytes(m: int, k: int, itemsize: int) -> int:
    return m * k * itemsize + m * k // 2 + m * k // spec.NV_BLOCK


def run(shapes=SHAPES, layouts=("swizzled", "linear"), compare=True, out=sys.stdout) -> list[dict]:
    copy = copy_gbps()
    x = torch.randn(64, 256, device="cuda")
    native = eager_us(lambda: x.abs())
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {_triton_version()} | bfloat16 | "
          f"device-to-device copy {copy:.0f} GB/s (read + write) | eager x.abs() {native:.1f} µs/call", file=out)
    # one compiled reference serves every mode, layout and shape: let it keep them all compiled
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled_quantize = torch.compile(_reference_quantize) if compare else None
    compiled_dequantize = torch.compile(_reference_dequantize) if compare else None
    results = []
    for layout in layouts:
        print(f"\nquantize_nvfp4, scale_layout={layout!r}\n| M | K | global scale | µs | GB/s | % of copy | "
              "× given | torch.compile µs | speed-up | eager µs/call | × x.abs() |", file=out)
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|", file=out)
        for m, k in shapes:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            given = 2688.0 / x.abs().max().float()
            calls = 20 if m * k <= 1 << 24 else 5
            base_us = None
            for mode in MODES:
                gs, per_row = (given, False) if mode == "given" else (None, mode == "row")
                call = lambda x=x, gs=gs, per_row=per_row, layout=layout: lowbit.quantize_nvfp4(  # noqa: E731
                    x, gs, per_row=per_row, scale_layout=layout)
                us = graph_replay_us(call, calls=calls)
                base_us = us if mode == "given" else base_us
                ref_us = graph_replay_us(lambda x=x, gs=gs, per_row=per_row, layout=layout: compiled_quantize(
                    x, gs, per_row, layout), calls=calls) if compare else float("nan")
                host = eager_us(call)
                gbps = quantize_bytes(m, k, 2) / us / 1e3
                row = dict(op="quantize_nvfp4", layout=layout, m=m, k=k, mode=mode, us=us, gbps=gbps,
                           pct_copy=100 * gbps / copy, vs_given=us / base_us, compiled_us=ref_us,
                           speedup=ref_us / us, eager_us=host, vs_abs=host / native)
                results.append(row)
                print(f"| {m} | {k} | {mode} | {us:.1f} | {gbps:.0f} | {row['pct_copy']:.0f}% | "
                      f"{row['vs_given']:.2f} | {ref_us:.1f} | {row['speedup']:.1f}x | {host:.0f} | "
                      f"{row['vs_abs']:.1f} |", file=out)
                out.flush()

    print("\ndequantize_nvfp4 to bfloat16, swizzled scales\n| M | K | µs | GB/s | % of copy | torch.compile µs | "
          "speed-up | eager µs/call | × x.abs() |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|", file=out)
    for m, k in shapes:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        q, s, gs = lowbit.quantize_nvfp4(x, scale_layout="swizzled")
        calls = 20 if m * k <= 1 << 24 else 5
        call = lambda q=q, s=s, gs=gs: lowbit.dequantize_nvfp4(q, s, gs, scale_layout="swizzled")  # noqa: E731
        us = graph_replay_us(call, calls=calls)
        ref_us = graph_replay_us(lambda q=q, s=s, gs=gs: compiled_dequantize(q, s, gs, "swizzled"),
                                 calls=calls) if compare else float("nan")
        host = eager_us(call)
        gbps = (m * k // 2 + m * k // 16 + 2 * m * k) / us / 1e3
        results.append(dict(op="dequantize_nvfp4", m=m, k=k, us=us, gbps=gbps, compiled_us=ref_us, eager_us=host))
        print(f"| {m} | {k} | {us:.1f} | {gbps:.0f} | {100 * gbps / copy:.0f}% | {ref_us:.1f} | {ref_us / us:.1f}x | "
              f"{host:.0f} | {host / native:.1f} |", file=out)
        out.flush()

    print("\nnvfp4_global_scale (per tensor)\n| M | K | µs | GB/s | % of copy | eager µs/call |\n"
          "|---:|---:|---:|---:|---:|---:|", file=out)
    for m, k in shapes:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        call = lambda x=x: lowbit.nvfp4_global_scale(x)  # noqa: E731
        us = graph_replay_us(call, calls=20 if m * k <= 1 << 24 else 5)
        gbps = 2 * m * k / us / 1e3
        print(f"| {m} | {k} | {us:.1f} | {gbps:.0f} | {100 * gbps / copy:.0f}% | {eager_us(call):.0f} |", file=out)
        out.flush()
    return results


def _triton_version() -> str:
    import triton

    return triton.__version__


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lowbit bench nvfp4")
    parser.add_argument("--shapes", nargs="*", default=[f"{m}x{k}" for m, k in SHAPES], help="MxK")
    parser.add_argument("--layouts", nargs="*", choices=spec.SCALE_LAYOUTS, default=("swizzled", "linear"))
    parser.add_argument("--no-compare", action="store_true", help="skip torch.compile of the reference")
    args = parser.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    run(shapes=shapes, layouts=args.layouts, compare=not args.no_compare)
