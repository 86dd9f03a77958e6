"""Dispatch with a real NVIDIA GPU: the kernel auto-dispatch picks for CUDA tensors (and what
`explain()` and `python -m lowbit info` say about it), the logged fallback to the reference for the
ops the cuda backend lacks or the options it refuses, LOWBIT_STRICT=1, forced variants.

The expectations are written for the H100 the suite is run on before a CUDA issue is resolved
(sm_90: the portable Triton variant for both quantize ops, the PTX variant refused for its arch);
they follow the arch where another GPU answers differently."""

import io
import logging

import pytest
import torch
from oracles import raw
from preambles import ARCH, on_cuda

import lowbit
from lowbit import cli, dispatch

pytestmark = on_cuda()

MX, FP8 = "quantize_mxfp4", "quantize_fp8_group_packed"
# the dequantizes the cuda backend lacks on this GPU (FP8's kernel needs sm_89+: tests/backends/cuda/
# test_fp8_group_packed.py runs it)
DEQUANTIZE = ("dequantize_mxfp4", *(("dequantize_fp8_group_packed",) if ARCH is not None and ARCH < 89 else ()))
PTX_ARCHS = {100, 103, 110, 120, 121}  # written out here, not read from the backend's record
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
not_ptx_arch = pytest.mark.skipif(ARCH in PTX_ARCHS, reason="this GPU takes the PTX variant")
fp8_arch = pytest.mark.skipif(ARCH is not None and ARCH < 89, reason="the cuda FP8 kernel needs sm_89+")


def expected_label(op: str) -> str:
    """The kernel auto-dispatch should pick for a CUDA tensor on this GPU (sm_90: cuda/triton for both)."""
    if op == MX:
        return "cuda/ptx" if ARCH in PTX_ARCHS else "cuda/triton" if ARCH >= 80 else "cpu"
    return "cuda/triton" if ARCH >= 89 else "cpu"


def lowbit_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lowbit" and r.levelno >= logging.WARNING]


def sample(shape=(5, 2048), dtype=torch.bfloat16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2.0 ** torch.randint(-10, 10, shape, generator=g)).to(dtype)


# --- what auto picks --------------------------------------------------------------------------------

@pytest.mark.parametrize("op", [MX, FP8])
def test_auto_picks_the_cuda_backend_for_the_quantize_ops(op):
    label = expected_label(op)
    backend, _, variant = label.partition("/")
    base = torch.empty(64, 2048, dtype=torch.bfloat16, device="cuda")
    transposed = torch.empty(2048, 64, dtype=torch.float16, device="cuda").t()
    inputs = [torch.empty(5, 2048, dtype=d, device="cuda") for d in DTYPES]
    inputs += [base[:, :1024], transposed, base[:, ::2], base.view(2, 32, 2048), base.expand(3, 64, 2048)]
    for x in inputs:
        verdict = lowbit.supports(op, x)
        assert verdict.call.arch == ARCH
        want = (backend, variant, backend == "cpu")  # the reference only as a fallback (sm_80 for FP8)
        assert (verdict.backend, verdict.variant, verdict.fallback) == want, verdict.explain()
        assert verdict.kernel.capability.label == label


@not_ptx_arch
def test_explain_names_the_ptx_variants_arch_refusal():
    x = torch.empty(5, 2048, dtype=torch.bfloat16, device="cuda")
    for rule in ("rceil", "floor"):
        verdict = lowbit.supports(MX, x, scale_rule=rule)
        assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton", False)
        assert [name for name, _ in verdict.rejected] == ["cuda/ptx"]
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
        assert f"  on cuda: {expected_label(op)}" in sections[op], "\n".join(sections[op])
        assert "  on cpu: cpu" in sections[op]
    for op in DEQUANTIZE:
        assert "  on cuda: cpu (pure-PyTorch fallback)" in sections[op], "\n".join(sections[op])
    if ARCH not in PTX_ARCHS:
        [ptx_row] = [line for line in sections[MX] if line.startswith("  cuda/ptx ")]
        [triton_row] = [line for line in sections[MX] if line.startswith("  cuda/triton ")]
        assert "no: needs another arch" in ptx_row and " yes " in triton_row


@pytest.mark.skipif(ARCH != 90, reason="the H100's expectations, word for word (sm_90)")
def test_on_the_h100_both_quantize_ops_say_cuda_triton():
    _, sections = info_sections()
    for op in (MX, FP8):
        assert "  on cuda: cuda/triton" in sections[op]
        verdict = lowbit.supports(op, torch.empty(4, 256, dtype=torch.bfloat16, device="cuda"))
        assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton", False)


# --- fallbacks and strict mode --------------------------------------------------------------------

def _quantized(op: str, x: torch.Tensor):
    quantize = lowbit.quantize_mxfp4 if op == "dequantize_mxfp4" else lowbit.quantize_fp8_group_packed
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


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="needs two GPUs (an input on cuda:1 while cuda:0 is the current device)")
def test_an_input_on_a_device_other_than_the_current_one():
    x = sample((37, 2048), seed=10)
    assert torch.cuda.current_device() == 0
    xd = x.to("cuda:1")
    ops = [lowbit.quantize_mxfp4] + ([lowbit.quantize_fp8_group_packed] if ARCH >= 89 else [])
    for quantize in ops:
        got, want = quantize(xd), quantize(x, backend="cpu")
        for g, w in zip(got, want, strict=True):
            assert g.device == xd.device and torch.equal(raw(g), raw(w))
    assert torch.cuda.current_device() == 0
