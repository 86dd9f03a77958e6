"""The CUDA backend's capability records and its dispatch decisions, on any machine: meta tensors
with device=/arch=, and fake cuda tensors under FakeTensorMode with the arch probe replaced.

On real hardware the GPU suite (test_mxfp4.py, test_fp8_group_packed.py, test_dispatch_on_gpu.py,
marker `cuda`) checks the same decisions end to end."""

from __future__ import annotations

import io
import logging

import pytest
import torch
from lowbit.backends import cuda
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import dispatch, registry
from lowbit.cli import info

MX, FP8 = "quantize_mxfp4", "quantize_fp8_group_packed"


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(shape, dtype=dtype, device="meta")


def ask(op, x=None, arch="sm_90", **kwargs):
    return lowbit.supports(op, meta(64, 7168) if x is None else x, device="cuda", arch=arch, **kwargs)


# --- the records say what the issue asks, as data -------------------------------------------------

def test_mxfp4_has_a_ptx_variant_before_the_portable_one():
    variants = [k.capability.variant for k in cuda.BACKEND.kernels_for(MX)]
    assert variants == ["ptx", "triton"]


def test_ptx_archs_are_the_sm100_families_and_exclude_hopper():
    ptx = cuda.BACKEND.kernels_for(MX)[0].capability
    assert set(ptx.archs["cuda"]) == {100, 103, 110, 120, 121}
    assert 90 not in ptx.archs["cuda"] and 89 not in ptx.archs["cuda"]


def test_portable_mxfp4_needs_sm80_and_fp8_needs_sm89():
    portable = cuda.BACKEND.kernels_for(MX)[1].capability
    fp8 = cuda.BACKEND.kernel(FP8).capability
    assert 80 in portable.archs["cuda"] and 75 not in portable.archs["cuda"]
    assert 89 in fp8.archs["cuda"] and 86 not in fp8.archs["cuda"]


def test_fp8_declares_group_size_128_only():
    assert cuda.BACKEND.kernel(FP8).capability.group_sizes == (128,)


@pytest.mark.parametrize("op", [MX, FP8])
def test_cuda_records_are_bit_exact_graph_safe_and_nd(op):
    for kernel in cuda.BACKEND.kernels_for(op):
        cap = kernel.capability
        assert cap.fidelity == "bit-exact to SPEC"
        assert cap.graph_safe and cap.compile_safe
        assert cap.max_ndim is None and not cap.last_dim_contiguous  # N-D, any strides
        assert cap.dtypes == (torch.float32, torch.float16, torch.bfloat16)


def test_mxfp4_takes_both_scale_rules():
    for kernel in cuda.BACKEND.kernels_for(MX):
        assert kernel.capability.scale_rules == ("rceil", "floor")


def test_cuda_has_no_dequantize_kernels_yet():
    assert cuda.BACKEND.kernel("dequantize_mxfp4") is None
    assert cuda.BACKEND.kernel("dequantize_fp8_group_packed") is None


# --- dispatch: PTX -> portable Triton -> reference ----------------------------------------------

def test_sm90_runs_the_portable_variant_without_a_fallback_warning():
    verdict = ask(MX)
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton", False)
    assert verdict.reasons == {"cuda/ptx": ["needs {sm_100, sm_103, sm_110, sm_120, sm_121}, not sm_90"]}
    assert "runs on backend 'cuda' (triton)" in verdict.explain()


@pytest.mark.parametrize("arch", ["sm_100", "sm_103", "sm_110", "sm_120", "sm_121"])
def test_sm100_families_run_the_ptx_variant(arch):
    verdict = ask(MX, arch=arch)
    assert (verdict.backend, verdict.variant, verdict.fallback, verdict.rejected) == ("cuda", "ptx", False, ())


def test_fp8_on_sm90_runs_cuda():
    verdict = ask(FP8)
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton", False)


def test_fp8_on_sm80_falls_back_to_the_reference():
    verdict = ask(FP8, arch="sm_80")
    assert (verdict.backend, verdict.fallback) == ("cpu", True)
    assert verdict.reasons["cuda/triton"] == ["needs sm_89+, not sm_80"]


def test_mxfp4_below_sm80_falls_back_to_the_reference():
    verdict = ask(MX, arch="sm_75")
    assert (verdict.backend, verdict.fallback) == ("cpu", True)
    assert verdict.reasons["cuda/triton"] == ["needs sm_80+, not sm_75"]


def test_fp8_group_64_falls_back_and_names_the_reference():
    verdict = ask(FP8, group_size=64)
    assert (verdict.backend, verdict.fallback) == ("cpu", True)
    assert verdict.reasons["cuda/triton"] == ["group_size 64 is not one of 128"]
    assert "backend='cpu'" in verdict.explain()


def test_strict_mode_turns_the_group_64_fallback_into_an_error(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")
    call = dispatch.call_for(FP8, meta(64, 7168), group_size=64)
    call = call.__class__(**{**call.__dict__, "device_type": "cuda", "arch": 90})
    with pytest.raises(lowbit.UnsupportedError, match=r"group_size 64 is not one of 128[\s\S]*backend='cpu'"):
        dispatch.resolve(call)


def test_rocm_arch_names_fall_back_to_the_reference():
    verdict = ask(MX, arch="gfx942")
    assert (verdict.backend, verdict.fallback) == ("cpu", True)


def test_forcing_the_ptx_variant_on_sm90_names_the_archs_it_needs():
    verdict = ask(MX, backend="cuda/ptx")
    assert not verdict.ok
    assert verdict.reasons == {"cuda/ptx": ["needs {sm_100, sm_103, sm_110, sm_120, sm_121}, not sm_90"]}
    assert "backend='cuda' can run this call" in verdict.explain()


def test_forcing_the_backend_tries_its_variants_in_order():
    assert ask(MX, backend="cuda").variant == "triton"
    assert ask(MX, arch="sm_100", backend="cuda").variant == "ptx"
    assert ask(MX, arch="sm_100", backend="cuda/triton").variant == "triton"


def test_forcing_an_unknown_variant_says_so():
    verdict = ask(MX, backend="cuda/sass")
    assert verdict.reasons == {"cuda/sass": ["has no variant 'sass' for quantize_mxfp4"]}


def test_without_triton_the_backend_says_so():
    import importlib.util
    from unittest import mock

    with mock.patch.object(importlib.util, "find_spec", return_value=None):
        assert cuda._unavailable() == "triton is not installed (pip install triton)"


def test_an_unavailable_cuda_backend_falls_back_with_the_reason(monkeypatch):
    monkeypatch.setattr(registry, "unavailable", lambda name: "triton is not installed" if name == "cuda" else None)
    dispatch.clear_cache()
    verdict = ask(MX)
    assert (verdict.backend, verdict.fallback) == ("cpu", True)
    assert verdict.reasons["cuda/ptx"][0] == "cannot load here: triton is not installed"


# --- python -m lowbit info ----------------------------------------------------------------------

def test_info_lists_both_cuda_variants_and_their_archs():
    out = io.StringIO()
    info(out=out)
    text = out.getvalue()
    assert "cuda/ptx" in text and "cuda/triton" in text
    assert "cuda {sm_100, sm_103, sm_110, sm_120, sm_121}" in text and "cuda sm_89+" in text


# --- fakes on fake cuda tensors with a known arch -------------------------------------------------

def _fake_cuda_unavailable() -> str:
    try:
        with FakeTensorMode():
            torch.empty(1, device="cuda")
    except (AssertionError, RuntimeError) as error:
        return f"this torch cannot make fake cuda tensors here: {error}"
    return ""


needs_fake_cuda = pytest.mark.skipif(bool(_fake_cuda_unavailable()), reason=_fake_cuda_unavailable() or "-")


@pytest.fixture
def sm90(monkeypatch):
    """Fake cuda tensors report sm_90, as a real H100 would."""
    monkeypatch.setattr(dispatch, "device_arch", lambda device: 90 if device.type == "cuda" else None)
    dispatch.clear_cache()


@needs_fake_cuda
def test_fake_cuda_mxfp4_resolves_to_cuda_and_matches_the_shape_function(sm90, caplog):
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        x = torch.empty(3, 5, 96, dtype=torch.bfloat16, device="cuda")
        q, s = lowbit.quantize_mxfp4(x)
    assert (q.shape, q.dtype, s.shape, s.dtype) == ((3, 5, 48), torch.float4_e2m1fn_x2, (3, 5, 3), torch.float8_e8m0fnu)
    assert q.device.type == "cuda" and not caplog.records  # no fallback warning: cuda took it


@needs_fake_cuda
def test_fake_cuda_fp8_resolves_to_cuda_with_packed_strides(sm90, caplog):
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        x = torch.empty(2, 6, 640, dtype=torch.bfloat16, device="cuda")
        q, s = lowbit.quantize_fp8_group_packed(x)
    assert q.shape == (2, 6, 640) and s.shape == (2, 6, 2) and s.stride() == (16, 1, 8)
    assert not caplog.records


@needs_fake_cuda
def test_fake_cuda_strict_refuses_what_the_real_call_refuses(sm90, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")
    with FakeTensorMode():
        x = torch.empty(4, 256, dtype=torch.bfloat16, device="cuda")
        with pytest.raises(lowbit.UnsupportedError) as raised:
            lowbit.quantize_fp8_group_packed(x, group_size=64)
    text = str(raised.value)
    assert "LOWBIT_STRICT=1 refuses fallbacks" in text
    assert "  - cuda/triton: group_size 64 is not one of 128" in text


@needs_fake_cuda
def test_fake_cuda_bad_block_size_raises_the_same_text_as_explain(sm90):
    expected = lowbit.explain(MX, meta(4, 48), device="cuda", arch="sm_90")
    with FakeTensorMode():
        x = torch.empty(4, 48, dtype=torch.bfloat16, device="cuda")
        with pytest.raises(lowbit.UnsupportedError) as raised:
            lowbit.quantize_mxfp4(x)
    assert str(raised.value) == expected
