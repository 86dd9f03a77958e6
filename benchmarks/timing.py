"""How every benchmark here times: medians of device-event timings, the copy-bandwidth yardstick
measured in the same run, and CUDA-graph replays for launches too small to time one by one."""

from __future__ import annotations

import statistics

import torch


def median_us(fn, *, warmup_ms: float = 25, rep_ms: float = 200) -> float:
    """Median µs of fn() over repeated runs, L2 flushed before each (triton.testing.do_bench)."""
    import triton.testing

    return 1e3 * triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def graph_replay_us(fn, *, calls: int = 20, replays: int = 50) -> float:
    """Median µs per call of `calls` back-to-back fn() calls captured in one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compile, allocate) outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(1e3 * start.elapsed_time(end) / calls)
    return statistics.median(times)


def eager_us(fn, *, calls: int = 200) -> float:
    """Wall-clock µs per call of `calls` back-to-back eager calls: what a caller outside a graph
    sees, host overhead (Python, dispatch, launch) included."""
    import time

    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - start) / calls


def copy_gbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src))
    return 2 * nbytes / us / 1e3
