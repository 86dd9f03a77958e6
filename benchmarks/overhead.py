"""`python -m lowbit bench overhead`: the host cost of an eager call, per op at decode sizes, next to
what bounds it, all measured in one run:

- `x.abs()` on the op's input: one native torch launch;
- a bare launch of the same Triton kernels through Triton's JIT entry point, `kernel[grid](...)`,
  with the arguments the op computed (what a hand-written Triton wrapper costs at least);
- the op's GPU time per call, from CUDA-graph replays (host cost out).

Eager µs is the wall-clock per call of back-to-back calls followed by one synchronisation (the
median of five runs): a caller outside a graph sees the larger of the host and the GPU time.

`--layers` adds, for quantize_mxfp4, the cost of each layer of a call and of the torch.library
registrations lowbit could use (custom_op, Library.define + impl, triton_op), each around the same
launch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import triton
from lowbit.backends.triton import launch as triton_launch

import lowbit

from .attention import Shape, make_inputs
from .timing import graph_replay_us

M, K = 16, 7168  # decode-sized quantize calls: 16 tokens of a 7168-wide hidden state


def host_us(fn, *, calls: int = 1000, repeats: int = 5) -> float:
    """Median over `repeats` runs of the wall-clock µs per call of `calls` back-to-back fn() calls and
    one synchronisation."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        runs.append(1e6 * (time.perf_counter() - start) / calls)
    return statistics.median(runs)


def recorded_launches(fn) -> list[tuple]:
    """(launch, grid, args) of every Triton launch one fn() makes (backends/triton/launch.py)."""
    seen = []
    original = triton_launch.Launch.__call__

    def spy(self, grid, *args):
        seen.append((self, grid, args))
        original(self, grid, *args)

    triton_launch.Launch.__call__ = spy
    try:
        fn()
    finally:
        triton_launch.Launch.__call__ = original
    return seen


def bare_jit(launches):
    """The same launches through Triton's JIT entry point, arguments precomputed."""
    def run():
        for launch, grid, args in launches:
            launch.kernel[grid](*triton_launch.jit_arguments(args), **launch.constexprs, **launch.options)
    return run


def cases() -> dict:
    """op name -> (eager call, the tensor x.abs() runs on)."""
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    x_q = torch.empty(M, K // 2, dtype=torch.uint8, device="cuda")
    x_s = torch.empty(M, K // 32, dtype=torch.float32, device="cuda")
    q4, s4 = lowbit.quantize_mxfp4(x)
    q_mx8, s_mx8 = lowbit.quantize_mxfp8(x, scale_layout="swizzled")
    q8, s8 = lowbit.quantize_fp8_group_packed(x)
    q_buf, s_buf = torch.empty_like(q8), torch.empty_strided(s8.shape, s8.stride(), dtype=s8.dtype, device="cuda")
    qg, sg = lowbit.quantize_fp8_group(x, scale_layout="column_major")
    gs = 2688.0 / x.abs().max().float()
    q_nv, s_nv, _ = lowbit.quantize_nvfp4(x, gs, scale_layout="swizzled")
    found = {
        f"quantize_mxfp4 ({M}, {K})": (lambda: lowbit.quantize_mxfp4(x), x),
        f"per_token_group_quant_mxfp4 ({M}, {K}), float32 scales": (
            lambda: lowbit.per_token_group_quant_mxfp4(x, x_q, x_s), x),
        f"quantize_mxfp8 ({M}, {K})": (lambda: lowbit.quantize_mxfp8(x), x),
        f"quantize_mxfp8 ({M}, {K}), swizzled": (lambda: lowbit.quantize_mxfp8(x, scale_layout="swizzled"), x),
        f"dequantize_mxfp8 ({M}, {K}), swizzled": (
            lambda: lowbit.dequantize_mxfp8(q_mx8, s_mx8, scale_layout="swizzled"), x),
        f"quantize_fp8_group_packed ({M}, {K})": (lambda: lowbit.quantize_fp8_group_packed(x), x),
        f"quantize_fp8_group_packed ({M}, {K}), out=": (
            lambda: lowbit.quantize_fp8_group_packed(x, out=(q_buf, s_buf)), x),
        f"quantize_fp8_group ({M}, {K}), column-major": (
            lambda: lowbit.quantize_fp8_group(x, scale_layout="column_major"), x),
        f"quantize_fp8_group ({M}, {K}), out=": (
            lambda: lowbit.quantize_fp8_group(x, scale_layout="column_major", out=(qg, sg)), x),
        f"dequantize_fp8_group ({M}, {K})": (lambda: lowbit.dequantize_fp8_group(qg, sg), x),
        f"quantize_nvfp4 ({M}, {K}), scale given": (lambda: lowbit.quantize_nvfp4(x, gs), x),
        f"quantize_nvfp4 ({M}, {K}), scale computed, swizzled": (
            lambda: lowbit.quantize_nvfp4(x, scale_layout="swizzled"), x),
        f"dequantize_nvfp4 ({M}, {K})": (lambda: lowbit.dequantize_nvfp4(q_nv, s_nv, gs, scale_layout="swizzled"), x),
        f"dequantize_mxfp4 ({M}, {K})": (lambda: lowbit.dequantize_mxfp4(q4, s4), x),
        f"dequantize_fp8_group_packed ({M}, {K})": (lambda: lowbit.dequantize_fp8_group_packed(q8, s8), x),
    }
    for seqs in (8, 1):
        inputs = make_inputs(Shape(f"decode {seqs}x4096", seqs=seqs, q_len=1, kv_len=4096))
        found[f"unified_attention decode {seqs} x 4096"] = (
            lambda inputs=inputs: lowbit.unified_attention(**inputs), inputs["q"])
    return found


def run(out=sys.stdout, layers: bool = False, only: tuple[str, ...] = ()) -> list[dict]:
    """Every case, or those whose name contains one of `only`."""
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}", file=out)
    print("\n| op | eager µs/call | x.abs() µs | ratio | bare Triton JIT launch µs | GPU µs (graph) | "
          "eager / GPU |", file=out)
    print("|---|---:|---:|---:|---:|---:|---:|", file=out)
    rows = []
    for name, (call, x) in cases().items():
        if only and not any(part in name for part in only):
            continue
        call()  # compile, resolve, remember
        launches = recorded_launches(call)
        eager = host_us(call)
        native = host_us(lambda x=x: x.abs())
        bare = host_us(bare_jit(launches)) if launches else float("nan")
        # dequantize runs the reference on CUDA tensors (no GPU kernel yet), which a graph cannot capture
        gpu = graph_replay_us(call, calls=20) if launches else float("nan")
        row = dict(op=name, eager=eager, abs=native, bare=bare, gpu=gpu)
        rows.append(row)
        print(f"| {name} | {eager:.1f} | {native:.1f} | {eager / native:.2f}x | {bare:.1f} | {gpu:.1f} | "
              f"{eager / gpu:.2f}x |", file=out)
        out.flush()
    if layers:
        run_layers(out)
    return rows


def run_layers(out=sys.stdout) -> None:
    """Each layer of an eager quantize_mxfp4 call, and the torch.library registrations, in µs per call."""
    from lowbit.backends.triton import mxfp4 as triton_mxfp4

    from lowbit import dispatch
    from lowbit.mxfp4 import describe_quantize

    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    q, s = lowbit.quantize_mxfp4(x)
    ((launch, grid, args),) = recorded_launches(lambda: lowbit.quantize_mxfp4(x))
    q_raw, s_raw = args[1], args[2]

    try:
        define_probe_ops(launch, grid, args)
    except Exception as exc:  # timed as failed below
        print(f"lowbit bench overhead: a probe registration failed: {type(exc).__name__}: {exc}", file=out)
    measured = {
        "x.abs()": lambda: x.abs(),
        "torch.empty x2 (the outputs)": lambda: (torch.empty(q.shape, dtype=q.dtype, device="cuda"),
                                                 torch.empty(s.shape, dtype=s.dtype, device="cuda")),
        "Triton JIT launch, arguments precomputed": bare_jit([(launch, grid, args)]),
        "Launch (compiled launcher), arguments precomputed": lambda: launch(grid, *args),
        "the Triton launcher, backends/triton/mxfp4.quantize": lambda: triton_mxfp4.quantize(x, q, s,
                                                                                             scale_rule="rceil"),
        "describe + resolve (the first call of a kind)": lambda: dispatch.resolve(describe_quantize(x, "rceil")),
        "kind + remembered (a later call)": lambda: dispatch.remembered(dispatch.kind("quantize_mxfp4", x, "rceil",
                                                                                      "auto")),
        "lowbit.quantize_mxfp4": lambda: lowbit.quantize_mxfp4(x),
        "torch.ops.lowbit.quantize_mxfp4 (custom_op)": lambda: torch.ops.lowbit.quantize_mxfp4(x, "rceil", "auto"),
        "custom_op around the launch": lambda: torch.ops.lowbit_probe.custom(x, q_raw, s_raw),
        "Library.define + impl(CUDA) around the launch": lambda: torch.ops.lowbit_probe.library(x, q_raw, s_raw),
        "triton_op + wrap_triton around the JIT launch": lambda: torch.ops.lowbit_probe.triton(x, q_raw, s_raw),
        "plain Python function around the launch": lambda: launch(grid, x, q_raw, s_raw, *args[3:]),
    }
    print("\n| layer (quantize_mxfp4, (16, 7168) bfloat16) | µs per call |", file=out)
    print("|---|---:|", file=out)
    for name, fn in measured.items():
        try:
            print(f"| {name} | {host_us(fn):.1f} |", file=out)
        except Exception as exc:  # a registration this torch lacks: say so, time the rest
            print(f"| {name} | failed: {type(exc).__name__}: {exc} |", file=out)
        out.flush()


_PROBE_LIBRARY = None


def define_probe_ops(launch, grid, args) -> None:
    """Three registrations of one mutating op around the same launch, in namespace lowbit_probe."""
    global _PROBE_LIBRARY
    if _PROBE_LIBRARY is not None:
        return

    def launch_into(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> None:
        launch(grid, x, q, s, *args[3:])

    @torch.library.custom_op("lowbit_probe::custom", mutates_args=("q", "s"))
    def custom(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> None:
        launch_into(x, q, s)

    custom.register_fake(lambda x, q, s: None)
    _PROBE_LIBRARY = torch.library.Library("lowbit_probe", "FRAGMENT")
    _PROBE_LIBRARY.define("library(Tensor x, Tensor(a!) q, Tensor(b!) s) -> ()")
    _PROBE_LIBRARY.impl("library", launch_into, "CUDA")
    torch.library.register_fake("lowbit_probe::library", lambda x, q, s: None, lib=_PROBE_LIBRARY)

    @torch.library.triton_op("lowbit_probe::triton", mutates_args=("q", "s"))
    def triton_wrapped(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> None:
        torch.library.wrap_triton(launch.kernel)[grid](x, q, s, *args[3:], **launch.constexprs, **launch.options)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lowbit bench overhead")
    parser.add_argument("--layers", action="store_true", help="also time each layer of a quantize_mxfp4 call")
    parser.add_argument("--ops", nargs="*", default=(), help="only the cases whose name contains one of these")
    args = parser.parse_args(argv)
    run(layers=args.layers, only=tuple(args.ops))
