"""Dispatch with a real NVIDIA GPU: the kernel auto-dispatch picks for CUDA tensors (and what
`explain()` and `python -m lowbit info` say about it), the logged fallback to the reference for the
ops the cuda backend lacks or the options it refuses, LOWBIT_STRICT=1, forced variants. With two
GPUs, every public op on an input on cuda:1 while cuda:0 is current: it runs on cuda:1 alone.

The expectations are written for the H100 the suite is run on before a CUDA issue is resolved
(sm_90: the portable Triton variant for both quantize ops, the PTX variant refused for its arch);
they follow the arch where another GPU answers differently."""

import io
import logging
from functools import partial

import pytest
import torch
from attention_cases import MIXES, assert_close, build
from oracles import raw
from preambles import ARCH, on_cuda

import lowbit
from lowbit import cli, dispatch, spec

pytestmark = on_cuda()

MX, FP8 = "quantize_mxfp4", "quantize_fp8_group_packed"
# the dequantizes the cuda backend lacks on this GPU: the FP8 kernels need sm_89+ (their own test files
# run them); dequantize_mxfp4's takes sm_80+. On the H100 none falls back.
DEQUANTIZE = ("dequantize_fp8_group_packed", "dequantize_mxfp8") if ARCH is not None and ARCH < 89 else ()
GPU_DEQUANTIZE = tuple(op for op in ("dequantize_mxfp4", "dequantize_fp8_group_packed", "dequantize_mxfp8")
                       if op not in DEQUANTIZE)
PTX_ARCHS = {100, 103, 110, 120, 121}  # written out here, not read from the backend's record
BF16X2_ARCHS = {90}  # likewise: MXFP4 on bfloat16 pairs
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
not_ptx_arch = pytest.mark.skipif(ARCH in PTX_ARCHS, reason="this GPU takes the PTX variant")
fp8_arch = pytest.mark.skipif(ARCH is not None and ARCH < 89, reason="the cuda FP8 kernel needs sm_89+")


def expected_label(op: str, dtype: torch.dtype = torch.bfloat16) -> str:
    """The kernel auto-dispatch should pick for a CUDA tensor on this GPU (sm_90: cuda/bf16x2 for MXFP4 of
    bfloat16, else cuda/triton)."""
    if op == MX:
        if ARCH in PTX_ARCHS:
            return "cuda/ptx"
        if ARCH in BF16X2_ARCHS and dtype == torch.bfloat16:
            return "cuda/bf16x2"
        return "cuda/triton" if ARCH >= 80 else "cpu"
    return "cuda/triton" if ARCH >= 89 else "cpu"


def expected_info_choice(op: str) -> str:
    """`lowbit info`'s "on cuda:" answer: a kernel for some dtypes only is named with them."""
    if op == MX and ARCH in BF16X2_ARCHS:
        return "cuda/bf16x2 for bfloat16, else cuda/triton"
    return expected_label(op)


def lowbit_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lowbit" and r.levelno >= logging.WARNING]


def sample(shape=(5, 2048), dtype=torch.bfloat16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2.0 ** torch.randint(-10, 10, shape, generator=g)).to(dtype)


# --- what auto picks --------------------------------------------------------------------------------

@pytest.mark.parametrize("op", [MX, FP8])
def test_auto_picks_the_cuda_backend_for_the_quantize_ops(op):
    base = torch.empty(64, 2048, dtype=torch.bfloat16, device="cuda")
    transposed = torch.empty(2048, 64, dtype=torch.float16, device="cuda").t()
    inputs = [torch.empty(5, 2048, dtype=d, device="cuda") for d in DTYPES]
    inputs += [base[:, :1024], transposed, base[:, ::2], base.view(2, 32, 2048), base.expand(3, 64, 2048)]
    for x in inputs:
        label = expected_label(op, x.dtype)
        backend, _, variant = label.partition("/")
        verdict = lowbit.supports(op, x)
        assert verdict.call.arch == ARCH
        want = (backend, variant, backend == "cpu")  # the reference only as a fallback (sm_80 for FP8)
        assert (verdict.backend, verdict.variant, verdict.fallback) == want, verdict.explain()
        assert verdict.kernel.capability.label == label


@not_ptx_arch
def test_explain_names_the_ptx_variants_arch_refusal():
    x = torch.empty(5, 2048, dtype=torch.float16, device="cuda")  # float16: not the bf16x2 variant's
    for rule in ("rceil", "floor"):
        verdict = lowbit.supports(MX, x, scale_rule=rule)
        assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton", False)
        assert [name for name, _ in verdict.rejected] == ["cuda/ptx", "cuda/bf16x2"]
        text = verdict.explain()
        assert "runs on backend 'cuda' (triton)" in text, text
        assert "cuda/ptx: needs {sm_100" in text and f"not sm_{ARCH}" in text, text
        assert "falls back" not in text and "Alternative" not in text, text


@fp8_arch
def test_explain_for_the_fp8_quantize_op():
    x = torch.empty(5, 2048, dtype=torch.bfloat16, device="cuda")
    verdict = lowbit.supports(FP8, x)
    text = verdict.explain()
    assert "runs on backend 'cuda' (triton)" in text and "group_size 128" in text, text
    assert "falls back" not in text, text


def info_sections() -> tuple[str, dict[str, list[str]]]:
    """`python -m lowbit info` text, and its lines under each unindented `name: ...` heading."""
    out = io.StringIO()
    cli.info(out=out)
    text = out.getvalue()
    sections, current = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and ": " in line:
            current = line.split(":", 1)[0]
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return text, sections


def test_info_reports_the_cuda_choice_for_every_op():
    text, sections = info_sections()
    assert f"cuda (sm_{ARCH})" in text.splitlines()[0]
    assert "cannot load" not in text, text  # the cuda backend loads: triton is installed
    for op in (MX, FP8):
        assert f"  on cuda: {expected_info_choice(op)}" in sections[op], "\n".join(sections[op])
        assert "  on cpu: cpu" in sections[op]
    for op in DEQUANTIZE:
        assert "  on cuda: cpu (pure-PyTorch fallback)" in sections[op], "\n".join(sections[op])
    for op in GPU_DEQUANTIZE:
        assert "  on cuda: cuda/triton" in sections[op], "\n".join(sections[op])
    if ARCH not in PTX_ARCHS:
        [ptx_row] = [line for line in sections[MX] if line.startswith("  cuda/ptx ")]
        [triton_row] = [line for line in sections[MX] if line.startswith("  cuda/triton ")]
        assert "no: needs another arch" in ptx_row and " yes " in triton_row


@pytest.mark.skipif(ARCH != 90, reason="the H100's expectations, word for word (sm_90)")
def test_on_the_h100_mxfp4_of_bfloat16_says_cuda_bf16x2_and_the_rest_cuda_triton():
    _, sections = info_sections()
    assert "  on cuda: cuda/bf16x2 for bfloat16, else cuda/triton" in sections[MX]
    assert "  on cuda: cuda/triton" in sections[FP8]
    for op, dtype, variant in ((MX, torch.bfloat16, "bf16x2"), (MX, torch.float16, "triton"),
                               (FP8, torch.bfloat16, "triton")):
        verdict = lowbit.supports(op, torch.empty(4, 256, dtype=dtype, device="cuda"))
        assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", variant, False)


# --- fallbacks and strict mode --------------------------------------------------------------------

def _quantized(op: str, x: torch.Tensor):
    quantize = {"dequantize_mxfp4": lowbit.quantize_mxfp4, "dequantize_mxfp8": lowbit.quantize_mxfp8,
                "dequantize_fp8_group_packed": lowbit.quantize_fp8_group_packed}[op]
    return quantize(x, backend="cpu")  # the reference, on the CUDA tensor: no dispatch decision involved


def _dequantize(op: str, q, s, **kwargs):
    return getattr(lowbit, op)(q, s, dtype=torch.float32, **kwargs)


@pytest.mark.parametrize("op", DEQUANTIZE)
def test_dequantize_on_cuda_falls_back_to_the_reference_with_one_warning(op, caplog):
    x, y = sample(seed=1).cuda(), sample((9, 2048), seed=2).cuda()
    q, s = _quantized(op, x)
    verdict = lowbit.supports(op, q, s)
    assert (verdict.backend, verdict.fallback) == ("cpu", True), verdict.explain()
    assert "falls back to backend 'cpu'" in verdict.explain()
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        got = _dequantize(op, q, s)
        _dequantize(op, *_quantized(op, y))  # other rows, the same decision: no second warning
    [warning] = lowbit_warnings(caplog)
    assert "falls back to backend 'cpu'" in warning and "no installed backend for cuda takes it" in warning
    assert got.device.type == "cuda"
    assert torch.equal(raw(got), raw(_dequantize(op, q.cpu(), s.cpu())))


@pytest.mark.parametrize("op", DEQUANTIZE)
def test_strict_mode_refuses_the_dequantize_fallback_on_cuda(op, monkeypatch):
    q, s = _quantized(op, sample(seed=3).cuda())
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")
    with pytest.raises(lowbit.UnsupportedError, match="LOWBIT_STRICT=1 refuses fallbacks") as err:
        _dequantize(op, q, s)
    assert "backend='cpu'" in str(err.value)
    _dequantize(op, q, s, backend="cpu")  # forcing the reference is no fallback: strict lets it run


@fp8_arch
def test_group_size_64_on_cuda_falls_back_to_the_reference(caplog, monkeypatch):
    x = sample((5, 512), seed=4)
    xd = x.cuda()
    verdict = lowbit.supports(FP8, xd, group_size=64)
    assert (verdict.backend, verdict.fallback) == ("cpu", True), verdict.explain()
    assert any("group_size 64 is not one of 128" in r for r in verdict.reasons["cuda/triton"])
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        q, s = lowbit.quantize_fp8_group_packed(xd, group_size=64)
    [warning] = lowbit_warnings(caplog)
    assert "group_size 64" in warning
    want_q, want_s = lowbit.quantize_fp8_group_packed(x, group_size=64, backend="cpu")
    assert q.device.type == "cuda" and torch.equal(raw(q), raw(want_q)) and torch.equal(raw(s), raw(want_s))
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")
    with pytest.raises(lowbit.UnsupportedError) as err:
        lowbit.quantize_fp8_group_packed(xd, group_size=64)
    message = str(err.value)
    assert "group_size" in message and "'cpu'" in message and "LOWBIT_STRICT=1" in message, message


def test_lowbit_backend_cpu_sends_cuda_tensors_to_the_reference_without_a_fallback(monkeypatch, caplog):
    monkeypatch.setenv(dispatch.ENV_BACKEND, "cpu")
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")
    x = sample(seed=5)
    verdict = lowbit.supports(MX, x.cuda())
    assert (verdict.backend, verdict.fallback) == ("cpu", False)
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        q, s = lowbit.quantize_mxfp4(x.cuda())
    assert lowbit_warnings(caplog) == []
    want_q, want_s = lowbit.quantize_mxfp4(x)
    assert torch.equal(raw(q), raw(want_q)) and torch.equal(raw(s), raw(want_s))


# --- forced backends and variants -----------------------------------------------------------------

@not_ptx_arch
def test_forcing_the_ptx_variant_below_sm_100_raises_naming_sm_100():
    x = sample(seed=6).cuda()
    verdict = lowbit.supports(MX, x, backend="cuda/ptx")
    assert not verdict.ok and "sm_100" in verdict.explain()
    with pytest.raises(lowbit.UnsupportedError, match="sm_100") as err:
        lowbit.quantize_mxfp4(x, backend="cuda/ptx")
    assert f"not sm_{ARCH}" in str(err.value) and "backend='cuda' can run this call" in str(err.value)
    with pytest.raises(lowbit.UnsupportedError, match="variant 'ptx'"):  # the FP8 op has no PTX variant at all
        lowbit.quantize_fp8_group_packed(x, backend="cuda/ptx")


@pytest.mark.parametrize("backend", ["cuda", "cuda/triton"])
def test_forcing_the_cuda_backend_or_its_triton_variant(backend):
    x = sample((37, 2048), seed=7)
    ops = [(MX, lowbit.quantize_mxfp4)] + ([(FP8, lowbit.quantize_fp8_group_packed)] if ARCH >= 89 else [])
    for op, quantize in ops:
        verdict = lowbit.supports(op, x.cuda(), backend=backend)
        want_variant = "triton" if backend == "cuda/triton" else expected_label(op).partition("/")[2]
        assert (verdict.backend, verdict.variant) == ("cuda", want_variant), verdict.explain()
        got, want = quantize(x.cuda(), backend=backend), quantize(x, backend="cpu")
        for g, w in zip(got, want, strict=True):
            assert g.device.type == "cuda" and torch.equal(raw(g), raw(w)), op


def test_the_decision_is_made_once_per_call_kind_not_per_row_count():
    dispatch.clear_cache()
    lowbit.quantize_mxfp4(sample((3, 256), seed=8).cuda())
    asked = dispatch.select.cache_info()
    lowbit.quantize_mxfp4(sample((77, 256), seed=9).cuda())
    assert dispatch.select.cache_info() == asked  # the kernel is remembered: nothing is asked again


# --- an input on another GPU than the current one ----------------------------------------------------

TWO_GPUS = torch.cuda.device_count() >= 2
two_gpus = pytest.mark.skipif(not TWO_GPUS,
                              reason="needs two GPUs (an input on cuda:1 while cuda:0 is the current device)")
ARCH_1 = (lambda c: c[0] * 10 + c[1])(torch.cuda.get_device_capability(1)) if TWO_GPUS else None
CUDA_0, CUDA_1 = torch.device("cuda:0"), torch.device("cuda:1")


def x_sample() -> torch.Tensor:
    """The input of every quantize case: 40 rows (a multiple of 4: TMA-aligned scales need no padding
    rows) of 512 (whole groups and blocks of every format)."""
    return sample((40, 512), seed=10)


def of_x(**kwargs):
    """The inputs of a quantize case: x, and the keyword arguments computed from it (`name=f(x)`)."""
    def make():
        x = x_sample()
        return (x,), {name: f(x) for name, f in kwargs.items()}
    return make


def quantized(quantize, **options):
    """The inputs of a dequantize case: what the reference's quantize returns for x_sample()."""
    return lambda: (quantize(x_sample(), backend="cpu", **options), {})


def with_out(quantize, **options):
    """The inputs of an out= case: x, and zeroed buffers strided as quantize's own outputs."""
    def make():
        x = x_sample()
        return (x,), {"out": tuple(torch.zeros_like(t) for t in quantize(x, backend="cpu", **options))}
    return make


def group_quant(x, x_q, x_s, **options):
    """per_token_group_quant_mxfp4, which fills caller buffers and returns None: the buffers."""
    lowbit.per_token_group_quant_mxfp4(x, x_q, x_s, **options)
    return x_q, x_s


def group_quant_buffers(scale_dtype, scale_layout):
    def make():
        x = x_sample()
        scales = spec.scale_shape(x.shape[:-1], x.shape[-1] // spec.MX_BLOCK, scale_layout)
        return (x, torch.zeros(*x.shape[:-1], x.shape[-1] // 2, dtype=torch.uint8),
                torch.zeros(scales, dtype=scale_dtype)), {}
    return make


F32 = torch.float32
# name: (least arch both GPUs need for the cuda backend to take it, the call, its inputs on the CPU: (args, kwargs))
ON_CUDA_1 = {
    "quantize_mxfp4": (80, lowbit.quantize_mxfp4, of_x()),
    "quantize_mxfp4-floor-swizzled": (80, partial(lowbit.quantize_mxfp4, scale_rule="floor", scale_layout="swizzled"),
                                      of_x()),
    "per_token_group_quant_mxfp4": (80, group_quant, group_quant_buffers(F32, "linear")),
    "per_token_group_quant_mxfp4-swizzled": (80, partial(group_quant, scale_layout="swizzled"),
                                             group_quant_buffers(torch.uint8, "swizzled")),
    "dequantize_mxfp4": (80, partial(lowbit.dequantize_mxfp4, dtype=F32), quantized(lowbit.quantize_mxfp4)),
    "dequantize_mxfp4-swizzled": (80, partial(lowbit.dequantize_mxfp4, scale_layout="swizzled"),
                                  quantized(lowbit.quantize_mxfp4, scale_layout="swizzled")),
    "quantize_nvfp4-computed": (80, lowbit.quantize_nvfp4, of_x()),
    "quantize_nvfp4-computed-per_row-swizzled": (
        80, partial(lowbit.quantize_nvfp4, per_row=True, scale_layout="swizzled"), of_x()),
    "quantize_nvfp4-given": (80, lowbit.quantize_nvfp4,
                             of_x(global_scale=partial(lowbit.nvfp4_global_scale, backend="cpu"))),
    "quantize_nvfp4-given-per_row": (
        80, partial(lowbit.quantize_nvfp4, per_row=True),
        of_x(global_scale=partial(lowbit.nvfp4_global_scale, per_row=True, backend="cpu"))),
    "nvfp4_global_scale": (80, lowbit.nvfp4_global_scale, of_x()),
    "nvfp4_global_scale-per_row": (80, partial(lowbit.nvfp4_global_scale, per_row=True), of_x()),
    "scaled_fp4_quant": (80, lowbit.scaled_fp4_quant,
                         of_x(input_global_scale=partial(lowbit.nvfp4_global_scale, backend="cpu"))),
    "dequantize_nvfp4": (80, partial(lowbit.dequantize_nvfp4, dtype=torch.float16), quantized(lowbit.quantize_nvfp4)),
    "dequantize_nvfp4-per_row-swizzled": (80, partial(lowbit.dequantize_nvfp4, scale_layout="swizzled"),
                                          quantized(lowbit.quantize_nvfp4, per_row=True, scale_layout="swizzled")),
    "quantize_mxfp8": (89, lowbit.quantize_mxfp8, of_x()),
    "quantize_mxfp8-floor-swizzled": (89, partial(lowbit.quantize_mxfp8, scale_rule="floor", scale_layout="swizzled"),
                                      of_x()),
    "dequantize_mxfp8": (89, partial(lowbit.dequantize_mxfp8, dtype=F32), quantized(lowbit.quantize_mxfp8)),
    "dequantize_mxfp8-swizzled": (89, partial(lowbit.dequantize_mxfp8, scale_layout="swizzled"),
                                  quantized(lowbit.quantize_mxfp8, scale_layout="swizzled")),
    "quantize_fp8_group_packed": (89, lowbit.quantize_fp8_group_packed, of_x()),
    "quantize_fp8_group_packed-out": (89, lowbit.quantize_fp8_group_packed, with_out(lowbit.quantize_fp8_group_packed)),
    "dequantize_fp8_group_packed": (89, partial(lowbit.dequantize_fp8_group_packed, dtype=F32),
                                    quantized(lowbit.quantize_fp8_group_packed)),
    "quantize_fp8_group": (89, lowbit.quantize_fp8_group, of_x()),
    "quantize_fp8_group-64-ue8m0-column_major": (
        89, partial(lowbit.quantize_fp8_group, group_size=64, ue8m0=True, scale_layout="column_major"), of_x()),
    "quantize_fp8_group-column_major_tma-out": (
        89, partial(lowbit.quantize_fp8_group, scale_layout="column_major_tma"),
        with_out(lowbit.quantize_fp8_group, scale_layout="column_major_tma")),
    "dequantize_fp8_group": (89, partial(lowbit.dequantize_fp8_group, dtype=F32), quantized(lowbit.quantize_fp8_group)),
    "dequantize_fp8_group-column_major": (89, lowbit.dequantize_fp8_group,
                                          quantized(lowbit.quantize_fp8_group, scale_layout="column_major")),
    "quantize_fp8_block": (89, lowbit.quantize_fp8_block, of_x()),
    "dequantize_fp8_block": (89, partial(lowbit.dequantize_fp8_block, dtype=F32), quantized(lowbit.quantize_fp8_block)),
}


def to(device, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """args and kwargs with every tensor (also in a tuple) copied to `device`, strides kept. Copied from
    the CPU, never from another GPU: a copy between GPUs enables peer access, under which a kernel
    launched on the wrong GPU would read the other's memory instead of faulting."""
    def move(a):
        if isinstance(a, tuple):
            return tuple(move(t) for t in a)
        if not isinstance(a, torch.Tensor):
            return a
        # the one-byte float types (float4 pairs, E8M0) as bytes: torch need not copy them between devices
        return a.view(torch.uint8).to(device).view(a.dtype) if a.element_size() == 1 else a.to(device)
    return move(args), {name: move(a) for name, a in kwargs.items()}


def leaves_cuda0_alone(call, *args, **kwargs):
    """call(*args, **kwargs) on cuda:1 tensors while cuda:0 is current, after checking that it left
    cuda:0 alone: nothing allocated there, every kernel (the profiler's view) launched on cuda:1, and
    cuda:0 still current."""
    assert torch.cuda.current_device() == 0
    for index in (0, 1):
        torch.cuda.synchronize(index)
    allocated = torch.cuda.memory_allocated(0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        result = call(*args, **kwargs)
        for index in (0, 1):  # a kernel on the wrong GPU faults here (no peer access: see `to`)
            torch.cuda.synchronize(index)
    assert torch.cuda.memory_allocated(0) == allocated, "the call allocated memory on cuda:0"
    assert torch.cuda.current_device() == 0, "the call left another device current"
    launched = {e.device_index for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA}
    assert launched == {1}, f"the profiler saw work on the GPUs {sorted(launched)}, not on cuda:1 alone"
    return result


def skip_below(least_arch: int) -> None:
    if min(ARCH, ARCH_1) < least_arch:
        pytest.skip(f"the cuda backend takes it from sm_{least_arch}; these GPUs are sm_{ARCH} and sm_{ARCH_1}")


@two_gpus
@pytest.mark.usefixtures("strict_dispatch")  # the cuda backend's kernels run, not the reference as a fallback
@pytest.mark.parametrize("name", list(ON_CUDA_1))
def test_an_input_on_a_device_other_than_the_current_one(name):
    """The call on cuda:1 with cuda:0 current gives the reference's bits, on cuda:1, and leaves cuda:0
    alone; after the same call on cuda:0 (every cache of that kind of call filled for cuda:0 first), both
    on the first call on cuda:1 (Triton's JIT entry point) and on the second (the compiled launcher)."""
    least_arch, call, inputs = ON_CUDA_1[name]
    skip_below(least_arch)
    args, kwargs = inputs()
    want = as_tuple(call(*args, **kwargs))
    on_0, kw_0 = to(CUDA_0, args, kwargs)
    runs = [("cuda:0", CUDA_0, call(*on_0, **kw_0))]
    for which in ("first", "second"):
        on_1, kw_1 = to(CUDA_1, args, kwargs)
        got = leaves_cuda0_alone(call, *on_1, **kw_1)
        if "out" in kw_1:
            assert all(g is b for g, b in zip(got, kw_1["out"], strict=True)), "the out= buffers are not returned"
        runs.append((f"cuda:1, {which} call", CUDA_1, got))
    for run, device, got in runs:
        for i, (g, w) in enumerate(zip(as_tuple(got), want, strict=True)):
            assert g.device == device, (run, i, g.device)
            assert g.shape == w.shape and g.dtype == w.dtype and torch.equal(raw(g), raw(w)), f"{run}: output {i}"


def as_tuple(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


@two_gpus
@pytest.mark.usefixtures("strict_dispatch")
@pytest.mark.parametrize("mode", ["bf16", "fp8all/seqhead"])  # FP8 q and KV cache with per-sequence descales
@pytest.mark.parametrize("mix", ["decode", "mixed"])  # split-KV decode, prefill's 2-D launch
def test_attention_on_a_device_other_than_the_current_one(mix, mode):
    """unified_attention on cuda:1 with cuda:0 current, as test_an_input_on_a_device_other_than_the_current_one:
    within [ATTN-TOLERANCE] of the reference, rows outside every sequence untouched in a given out."""
    from lowbit.backends.triton import unified_attention as triton_attention

    skip_below(80 if mode == "bf16" else 89)
    case = build(MIXES[mix], (8, 2), 128, 16, mode=mode, window=256, softcap=50.0, sinks=True, alibi=True, seed=13)
    plan = triton_attention.plan(num_tokens=case.q.shape[0], num_seqs=len(case.rows),
                                 max_seqlen_q=case.kwargs["max_seqlen_q"], max_seqlen_k=case.kwargs["max_seqlen_k"],
                                 group=4, kv_heads=2, head_size=128, sm_count=triton_attention.sm_count(CUDA_1))
    assert (plan.splits > 1) == (mix == "decode"), plan
    mask = case.written()
    want = case.reference()[mask]
    q, k, v, kwargs = case.on(CUDA_0)
    lowbit.unified_attention(q, k, v, **kwargs)  # fills every cache of this kind of call for cuda:0 first
    for give_out in (False, True):  # lowbit's out on the JIT entry point, then the caller's on the compiled launcher
        q, k, v, kwargs = case.on(CUDA_1)
        out = torch.full(q.shape, float("nan"), dtype=case.out_dtype, device=CUDA_1) if give_out else None
        got = leaves_cuda0_alone(lowbit.unified_attention, q, k, v, out=out, **kwargs)
        assert got.device == CUDA_1 and (out is None or got is out)
        got = got.cpu()
        assert_close(got[mask], want, case.fp8, f"{mix} {mode} on cuda:1, out given: {give_out}")
        if give_out:
            assert torch.isnan(got[~mask].float()).all(), "rows outside every sequence were written"
