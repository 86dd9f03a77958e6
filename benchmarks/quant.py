"""`python -m lowbit bench quant`: the quantize and dequantize ops against the copy bandwidth and
against torch.compile of the reference (the plain-PyTorch code a user would otherwise compile).

Bytes counted per call (the fewest a kernel must move): the input read once, q and the scales
written once. MXFP4: M*K*s + M*K/2 + M*K/32. per_token_group_quant_mxfp4 (float32 scales, vLLM's
convention): M*K*s + M*K/2 + 4*M*K/32. Swizzled scales: round_up(M, 128) * round_up(K/32, 4) bytes.
dequantize_mxfp4 to bfloat16: M*K/2 + M*K/32 read, 2*M*K written. MXFP8: M*K*s + M*K + M*K/32.
dequantize_mxfp8 to bfloat16: M*K + M*K/32 read, 2*M*K written. FP8 packed: M*K*s + M*K +
4*ceil(G/4)*A; its dequantize (bfloat16 out): M*K + 2*M*K + 4*ceil(G/4)*A. FP8 with float32 scales:
M*K*s + M*K + 4*M*G.
"""

from __future__ import annotations

import argparse
import sys

import torch
from lowbit.backends.cpu import fp8_group as reference_fp8_group
from lowbit.backends.cpu import fp8_group_packed as reference_fp8
from lowbit.backends.cpu import mxfp4 as reference_mxfp4
from lowbit.backends.cpu import mxfp8 as reference_mxfp8

import lowbit
from lowbit import fp8_group, mxfp4, mxfp8, spec

from .timing import copy_gbps, eager_us, graph_replay_us

ROWS = (1, 16, 128, 1024, 8192, 32768)
KS = (2048, 4096, 7168)


def mxfp4_bytes(m: int, k: int, itemsize: int) -> int:
    return m * k * itemsize + m * k // 2 + m * k // spec.MX_BLOCK


def group_quant_bytes(m: int, k: int, itemsize: int) -> int:
    return m * k * itemsize + m * k // 2 + 4 * m * k // spec.MX_BLOCK


def _group_quant_buffers(x):
    x_q = torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=torch.uint8, device=x.device)
    x_s = torch.empty((*x.shape[:-1], x.shape[-1] // spec.MX_BLOCK), dtype=torch.float32, device=x.device)
    return x_q, x_s


def _group_quant(x):
    x_q, x_s = _group_quant_buffers(x)
    lowbit.per_token_group_quant_mxfp4(x, x_q, x_s)
    return x_q, x_s


def _reference_group_quant(x):
    x_q, x_s = _group_quant_buffers(x)
    reference_mxfp4.quantize_into(x, x_q, x_s, eps=spec.MX_DEFAULT_EPS)
    return x_q, x_s


def swizzled_mxfp4_bytes(m: int, k: int, itemsize: int) -> int:
    return m * k * itemsize + m * k // 2 + spec.round_up(m, 128) * spec.round_up(k // spec.MX_BLOCK, 4)


def mxfp4_dequant_bytes(m: int, k: int, itemsize: int) -> int:
    return m * k // 2 + m * k // spec.MX_BLOCK + m * k * 2  # bfloat16 out


def _reference_mxfp4_swizzled(x):
    q, s = mxfp4.quantize_outputs(x, "swizzled")
    reference_mxfp4.quantize(x, q, s, scale_rule="rceil", swizzled=True)
    return q, s


def _reference_mxfp4_dequant(q, s):
    out = torch.empty((*q.shape[:-1], 2 * q.shape[-1]), dtype=torch.bfloat16, device=q.device)
    reference_mxfp4.dequantize(q, s, out)
    return out


def mxfp8_bytes(m: int, k: int, itemsize: int, scale_layout: str = "linear") -> int:
    scales = m * k // spec.MX_BLOCK
    if scale_layout == "swizzled":
        rows, cols = spec.swizzled_scale_shape(m, k // spec.MX_BLOCK)
        scales = rows * cols
    return m * k * itemsize + m * k + scales


def mxfp8_dequantize_bytes(m: int, k: int, itemsize: int) -> int:
    """q and linear scales read, bfloat16 written (`itemsize` is the input's, which q no longer has)."""
    return m * k + m * k // spec.MX_BLOCK + 2 * m * k


def _reference_mxfp8(x, scale_layout="linear"):
    """Into uint8 buffers (the reference writes bytes): inductor's CPU code has no float8_e8m0fnu."""
    q, s = (torch.empty(t.shape, dtype=torch.uint8, device=x.device) for t in mxfp8.quantize_outputs(x, scale_layout))
    reference_mxfp8.quantize(x, q, s, scale_rule="rceil", swizzled=scale_layout == "swizzled")
    return q, s


def _mxfp8_quantized(x):
    return tuple(t.view(torch.uint8) for t in lowbit.quantize_mxfp8(x))


def _reference_dequantize_mxfp8(q, s):
    out = torch.empty(q.shape, dtype=torch.bfloat16, device=q.device)
    reference_mxfp8.dequantize(q, s, out, swizzled=False)
    return out


def fp8_bytes(m: int, k: int, itemsize: int) -> int:
    return m * k * itemsize + m * k + 4 * spec.scale_words(k // spec.FP8_DEFAULT_GROUP) * spec.tma_rows(m)


def fp8_float_scale_bytes(m: int, k: int, itemsize: int) -> int:
    return m * k * itemsize + m * k + 4 * m * (k // spec.FP8_DEFAULT_GROUP)


def _reference_fp8_group(x, ue8m0=False):
    q, _, scales = fp8_group.quantize_outputs(x, spec.FP8_DEFAULT_GROUP, "column_major")
    reference_fp8_group.quantize_group(x, q, scales, group_size=spec.FP8_DEFAULT_GROUP, eps=spec.FP8_DEFAULT_EPS,
                                       ue8m0=ue8m0)
    return q, scales


def _reference_mxfp4(x):
    q = torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=torch.uint8, device=x.device)
    s = torch.empty((*x.shape[:-1], x.shape[-1] // spec.MX_BLOCK), dtype=torch.uint8, device=x.device)
    reference_mxfp4.quantize(x, q, s, scale_rule="rceil")
    return q, s


def _reference_fp8(x):
    q = torch.empty(x.shape, dtype=spec.FP8_Q_DTYPE, device=x.device)
    mn, k = x.shape
    storage = torch.empty((spec.scale_words(k // spec.FP8_DEFAULT_GROUP), spec.tma_rows(mn)),
                          dtype=torch.int32, device=x.device)
    reference_fp8.quantize(x, q, storage.t(), group_size=spec.FP8_DEFAULT_GROUP, eps=spec.FP8_DEFAULT_EPS)
    return q, storage


def fp8_dequantize_bytes(m: int, k: int, itemsize: int) -> int:
    return m * k + m * k * itemsize + 4 * spec.scale_words(k // spec.FP8_DEFAULT_GROUP) * spec.tma_rows(m)


def _reference_fp8_dequantize(q, s):
    out = torch.empty(q.shape, dtype=torch.bfloat16, device=q.device)
    reference_fp8.dequantize(q, s, out, group_size=spec.FP8_DEFAULT_GROUP)
    return out


# name: (lowbit's call, the plain-torch reference torch.compile gets, bytes moved, the arguments from x (or None: x))
OPS = {
    "quantize_mxfp4": (lambda x: lowbit.quantize_mxfp4(x), _reference_mxfp4, mxfp4_bytes, None),
    "quantize_mxfp4 (swizzled)": (lambda x: lowbit.quantize_mxfp4(x, scale_layout="swizzled"),
                                  _reference_mxfp4_swizzled, swizzled_mxfp4_bytes, None),
    "dequantize_mxfp4": (lambda q, s: lowbit.dequantize_mxfp4(q, s), _reference_mxfp4_dequant, mxfp4_dequant_bytes,
                         lambda x: tuple(t.view(torch.uint8) for t in lowbit.quantize_mxfp4(x))),
    "per_token_group_quant_mxfp4": (_group_quant, _reference_group_quant, group_quant_bytes, None),
    "quantize_mxfp8": (lambda x: lowbit.quantize_mxfp8(x), _reference_mxfp8, mxfp8_bytes, None),
    "quantize_mxfp8 (swizzled)": (lambda x: lowbit.quantize_mxfp8(x, scale_layout="swizzled"),
                                  lambda x: _reference_mxfp8(x, "swizzled"),
                                  lambda m, k, itemsize: mxfp8_bytes(m, k, itemsize, "swizzled"), None),
    "dequantize_mxfp8": (lambda q, s: lowbit.dequantize_mxfp8(q, s), _reference_dequantize_mxfp8,
                         mxfp8_dequantize_bytes, _mxfp8_quantized),
    "quantize_fp8_group_packed": (lambda x: lowbit.quantize_fp8_group_packed(x), _reference_fp8, fp8_bytes, None),
    "quantize_fp8_group": (lambda x: lowbit.quantize_fp8_group(x, scale_layout="column_major"), _reference_fp8_group,
                           fp8_float_scale_bytes, None),
    "quantize_fp8_group (ue8m0)": (lambda x: lowbit.quantize_fp8_group(x, ue8m0=True, scale_layout="column_major"),
                                   lambda x: _reference_fp8_group(x, ue8m0=True), fp8_float_scale_bytes, None),
    "dequantize_fp8_group_packed": (lambda q, s: lowbit.dequantize_fp8_group_packed(q, s), _reference_fp8_dequantize,
                                    fp8_dequantize_bytes, lambda x: lowbit.quantize_fp8_group_packed(x)),
}



def run(rows=ROWS, ks=KS, dtype=torch.bfloat16, compare=True, ops=tuple(OPS), out=sys.stdout) -> list[dict]:
    """Per shape: GPU µs per call (median over CUDA-graph replays of back-to-back calls, so host
    overhead is out), GB/s and % of the copy, the same for torch.compile of the reference, and the
    eager µs per call with host overhead in."""
    copy = copy_gbps()
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {_triton_version()} | "
          f"{dtype} | device-to-device copy {copy:.0f} GB/s (read + write)", file=out)
    results = []
    for op in ops:
        ours, reference, count, prepare = OPS[op]
        compiled = torch.compile(reference) if compare else None
        print(f"\n{op}\n| M | K | µs | GB/s | % of copy | torch.compile µs | speed-up | eager µs/call |", file=out)
        print("|---:|---:|---:|---:|---:|---:|---:|---:|", file=out)
        for k in ks:
            for m in rows:
                x = torch.randn(m, k, device="cuda", dtype=dtype)
                nbytes = count(m, k, x.element_size())
                args = (x,) if prepare is None else prepare(x)
                calls = 20 if m * k <= 1 << 24 else 5
                call = lambda args=args, fn=ours: fn(*args)  # noqa: E731
                us = graph_replay_us(call, calls=calls)
                ref_us = float("nan")
                if compare:
                    ref_us = graph_replay_us(lambda args=args, fn=compiled: fn(*args), calls=calls)
                host_us = eager_us(call)
                gbps = nbytes / us / 1e3
                row = dict(op=op, m=m, k=k, us=us, gbps=gbps, pct_copy=100 * gbps / copy, compiled_us=ref_us,
                           speedup=ref_us / us, eager_us=host_us)
                results.append(row)
                print(f"| {m} | {k} | {us:.1f} | {gbps:.0f} | {row['pct_copy']:.0f}% | {ref_us:.1f} | "
                      f"{row['speedup']:.2f}x | {host_us:.0f} |", file=out)
                out.flush()
    return results


def _triton_version() -> str:
    import triton

    return triton.__version__


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lowbit bench quant")
    parser.add_argument("--rows", type=int, nargs="*", default=ROWS)
    parser.add_argument("--ks", type=int, nargs="*", default=KS)
    parser.add_argument("--no-compare", action="store_true", help="skip torch.compile of the reference")
    parser.add_argument("--ops", nargs="*", choices=tuple(OPS), default=tuple(OPS))
    args = parser.parse_args(argv)
    run(rows=args.rows, ks=args.ks, compare=not args.no_compare, ops=args.ops)
