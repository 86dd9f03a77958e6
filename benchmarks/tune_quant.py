"""`python -m lowbit bench tune-quant`: time candidate launch configs per size class, to choose the
launch tables of backends/triton/{mxfp4,mxfp8,nvfp4,fp8_group_packed,fp8_group}.py (kept as data, never tuned
at run time). Prints, per shape, every candidate's median µs and % of the copy bandwidth."""

from __future__ import annotations

import argparse
import functools
import itertools
import sys

import torch
from lowbit.backends.triton import fp8_group as triton_fp8_group
from lowbit.backends.triton import fp8_group_packed as triton_fp8
from lowbit.backends.triton import mxfp4 as triton_mxfp4
from lowbit.backends.triton import mxfp8 as triton_mxfp8
from lowbit.backends.triton import nvfp4 as triton_nvfp4
from lowbit.backends.triton.launch import LaunchConfig

import lowbit
from lowbit import fp8_group, fp8_group_packed, mxfp4, mxfp8, nvfp4, spec

from .nvfp4 import quantize_bytes as nvfp4_bytes
from .quant import (
    fp8_bytes,
    fp8_dequantize_bytes,
    fp8_float_scale_bytes,
    mxfp4_bytes,
    mxfp4_dequant_bytes,
    mxfp8_bytes,
    mxfp8_dequantize_bytes,
)
from .timing import copy_gbps, median_us


def _mxfp4_runner(x, config, swizzled=False, pairs=False):
    """pairs: the cuda/bf16x2 variant's hooks (sm_90, bfloat16), which share LAUNCH_TABLE."""
    q, s = mxfp4.quantize_outputs(x, "swizzled" if swizzled else "linear")
    hooks = {}
    if pairs:
        from lowbit.backends.cuda import ptx

        hooks = ptx.BF16X2_HOOKS
    return lambda: triton_mxfp4.quantize(x, q, s, scale_rule="rceil", swizzled=swizzled, config=config, **hooks)


def _mxfp8_runner(x, config):
    """Swizzled scales: the layout Blackwell GEMMs read (the kernel's tile is the same for both)."""
    q, s = mxfp8.quantize_outputs(x, "swizzled")
    return lambda: triton_mxfp8.quantize(x, q, s, scale_rule="rceil", swizzled=True, hardware_e4m3=True, config=config)


def _dequantize_runner(quantize, dequantize, **options):
    """Dequantize to bfloat16 what `quantize` (the public op, default scales) gives."""
    def runner(x, config):
        q, s = quantize(x)
        out = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
        return lambda: dequantize(q, s, out, config=config, **options)
    return runner


def _nvfp4_runner(x, config):
    """The global scale given, swizzled block scales (the per-tensor mode's second pass is this kernel too)."""
    q, s = nvfp4.quantize_outputs(x, "swizzled")
    gs = torch.tensor(100.0, device=x.device)
    return lambda: triton_nvfp4.quantize(x, q, s, gs, per_row=False, compute_scale=False, swizzled=True, config=config)


def _fp8_runner(x, config):
    q, s, _ = fp8_group_packed.quantize_outputs(x, spec.FP8_DEFAULT_GROUP)
    return lambda: triton_fp8.quantize(x, q, s, group_size=spec.FP8_DEFAULT_GROUP, eps=spec.FP8_DEFAULT_EPS,
                                       hardware_e4m3=True, config=config)


def _fp8_group_runner(x, config):
    """Column-major float32 scales, as F.scaled_mm reads them."""
    q, s, _ = fp8_group.quantize_outputs(x, spec.FP8_DEFAULT_GROUP, "column_major")
    return lambda: triton_fp8_group.quantize_group(x, q, s, group_size=spec.FP8_DEFAULT_GROUP, eps=spec.FP8_DEFAULT_EPS,
                                                   ue8m0=False, hardware_e4m3=True, config=config)


def _sensible(m: int, k: int, warps: int) -> bool:
    """Tiles of 1K-8K elements, 8 to 32 elements a thread: more unrolls slowly and spills."""
    per_thread = m * k // (32 * warps)
    return 1024 <= m * k <= 8192 and 8 <= per_thread <= 32


# The FP4 quantizes' tiles (MXFP4, NVFP4)
QUANTIZE_TILES = [LaunchConfig(m, k, w) for m, k, w in itertools.product(
    (1, 2, 4, 8, 16, 32), (128, 256, 512, 1024, 2048), (1, 2, 4, 8)) if _sensible(m, k, w)]


def _whole_chunks(least: int, ks=(256, 512, 1024, 2048)) -> list[LaunchConfig]:
    """Dequantize tiles: a thread holds whole 16-byte chunks of q (MXFP4: whole blocks of 32), so from
    `least` to 64 elements a thread (fewer leave threads idle)."""
    return [LaunchConfig(m, k, w) for m, k, w in itertools.product((1, 2, 4, 8), ks, (1, 2, 4, 8))
            if least <= m * k // (32 * w) <= 64]


CANDIDATES = {
    "quantize_mxfp4": (_mxfp4_runner, mxfp4_bytes, QUANTIZE_TILES),
    # Swizzled: also 128-wide tiles of up to 128 rows, whose warps store whole 32-byte sectors of scales
    # in the kernel's row order (a 4 x 1024 tile's warp stores 4 bytes in each of 8); on the H200 they lost
    # to one-row tiles (docs/benchmarks.md)
    "quantize_mxfp4 (swizzled)": (functools.partial(_mxfp4_runner, swizzled=True), mxfp4_bytes, QUANTIZE_TILES
        + [LaunchConfig(m, 128, w) for m, w in ((32, 4), (64, 8), (128, 8), (128, 16))]),
    "quantize_mxfp4 (bf16x2)": (functools.partial(_mxfp4_runner, pairs=True), mxfp4_bytes, QUANTIZE_TILES),
    "quantize_mxfp4 (swizzled, bf16x2)": (functools.partial(_mxfp4_runner, swizzled=True, pairs=True), mxfp4_bytes,
                                          QUANTIZE_TILES),
    "quantize_mxfp8": (_mxfp8_runner, lambda m, k, itemsize: mxfp8_bytes(m, k, itemsize, "swizzled"), [
        LaunchConfig(m, k, w) for m, k, w in itertools.product((1, 2, 4, 8), (128, 256, 512, 1024), (1, 2, 4, 8))
        if _sensible(m, k, w)]),
    "dequantize_mxfp8": (_dequantize_runner(lowbit.quantize_mxfp8, triton_mxfp8.dequantize, swizzled=False),
                         mxfp8_dequantize_bytes, _whole_chunks(16, (512, 1024, 2048))),
    "dequantize_mxfp4": (_dequantize_runner(lowbit.quantize_mxfp4, triton_mxfp4.dequantize, swizzled=False),
                         mxfp4_dequant_bytes, _whole_chunks(32)),
    "dequantize_fp8_group_packed": (_dequantize_runner(lowbit.quantize_fp8_group_packed, triton_fp8.dequantize,
                                                       group_size=spec.FP8_DEFAULT_GROUP),
                                    fp8_dequantize_bytes, _whole_chunks(16)),
    "quantize_nvfp4": (_nvfp4_runner, nvfp4_bytes, QUANTIZE_TILES),
    "quantize_fp8_group_packed": (_fp8_runner, fp8_bytes, [  # 8 to 128 elements a thread: up to a whole group
        LaunchConfig(m, 512, w) for m, w in itertools.product((2, 4, 8, 16, 32, 64), (1, 2, 4, 8))
        if 8 <= m * 512 // (32 * w) <= 128]),
    "quantize_fp8_group": (_fp8_group_runner, fp8_float_scale_bytes, [  # up to 64 elements a thread
        LaunchConfig(m, k, w) for m, k, w in itertools.product((1, 2, 4, 8), (256, 512, 1024, 2048), (1, 2, 4, 8))
        if 1024 <= m * k <= 8192 and 8 <= m * k // (32 * w) <= 64]),
}


def run(shapes, ops=tuple(CANDIDATES), dtype=torch.bfloat16, top: int = 5, out=sys.stdout) -> None:
    copy = copy_gbps()
    print(f"# {torch.cuda.get_device_name()} | copy {copy:.0f} GB/s", file=out)
    for op in ops:
        runner, count, configs = CANDIDATES[op]
        for m, k in shapes:
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            nbytes = count(m, k, x.element_size())
            timed = sorted(((median_us(runner(x, c), rep_ms=50), c) for c in configs), key=lambda t: t[0])
            best = ", ".join(f"({c.block_m},{c.block_k},{c.num_warps}) {us:.1f}µs {100 * nbytes / us / 1e3 / copy:.0f}%"
                             for us, c in timed[:top])
            print(f"{op} M={m} K={k}: {best}", file=out)
            out.flush()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lowbit bench tune-quant")
    parser.add_argument("--shapes", nargs="*", default=["1x7168", "16x7168", "128x7168", "1024x7168",
                                                         "8192x7168", "32768x7168", "8192x2048", "8192x4096"])
    parser.add_argument("--ops", nargs="*", help="default: every op this GPU runs (the bf16x2 hooks need sm_90)")
    args = parser.parse_args(argv)
    from lowbit.backends.cuda.mxfp4 import BF16X2_ARCHS

    major, minor = torch.cuda.get_device_capability()
    ops = args.ops or [op for op in CANDIDATES if "bf16x2" not in op or 10 * major + minor in BF16X2_ARCHS]
    run([tuple(map(int, s.split("x"))) for s in args.shapes], ops=ops)
