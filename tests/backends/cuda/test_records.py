"""The CUDA backend's capability records and its dispatch decisions, on any machine: meta tensors
with device=/arch=, and fake cuda tensors under FakeTensorMode with the arch probe replaced.

On real hardware the GPU suite (test_mxfp4.py, test_fp8_group_packed.py, test_dispatch_on_gpu.py,
marker `cuda`) checks the same decisions end to end."""

from __future__ import annotations

import dataclasses
import io
import logging
import os

import pytest
import torch
from lowbit.backends import cuda
from oracles import meta
from preambles import FAKE_DEVICE
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import dispatch, registry
from lowbit.capability import ArchRange
from lowbit.cli import info

MX, FP8 = "quantize_mxfp4", "quantize_fp8_group_packed"


def ask(op, x=None, arch="sm_90", **kwargs):
    return lowbit.supports(op, meta(64, 7168) if x is None else x, device="cuda", arch=arch, **kwargs)


# --- the records say what the issue asks, as data -------------------------------------------------

def mx_record(variant: str, op: str = MX):
    [kernel] = [k for k in cuda.BACKEND.kernels_for(op) if k.capability.variant == variant]
    return kernel.capability


@pytest.mark.parametrize("op", [MX, "per_token_group_quant_mxfp4"])
def test_mxfp4_has_the_ptx_and_bf16x2_variants_before_the_portable_one(op):
    variants = [k.capability.variant for k in cuda.BACKEND.kernels_for(op)]
    assert variants == ["ptx", "bf16x2", "triton"]


def test_ptx_archs_are_the_sm100_families_and_exclude_hopper():
    ptx = mx_record("ptx")
    assert set(ptx.archs["cuda"]) == {100, 103, 110, 120, 121}
    assert 90 not in ptx.archs["cuda"] and 89 not in ptx.archs["cuda"]


@pytest.mark.parametrize("op", [MX, "per_token_group_quant_mxfp4"])
def test_bf16x2_variant_is_sm90_and_bfloat16_only(op):
    # mul.rn.bf16x2 and max.u16x2 need sm_90; only bfloat16 comes in pairs of bfloat16
    bf16x2 = mx_record("bf16x2", op)
    assert set(bf16x2.archs["cuda"]) == {90}
    assert bf16x2.dtypes == (torch.bfloat16,)


def test_portable_mxfp4_needs_sm80_and_fp8_needs_sm89():
    portable = mx_record("triton")
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
        want = (torch.bfloat16,) if cap.variant == "bf16x2" else (torch.float32, torch.float16, torch.bfloat16)
        assert cap.dtypes == want


def test_mxfp4_takes_both_scale_rules():
    for kernel in cuda.BACKEND.kernels_for(MX):
        assert kernel.capability.scale_rules == ("rceil", "floor")


def test_cuda_dequantizes_mxfp4_with_its_triton_kernel_from_sm80():
    verdict = lowbit.supports("dequantize_mxfp4", meta(4, 64, dtype=torch.uint8), meta(4, 4, dtype=torch.uint8),
                              device="cuda", arch="sm_80")
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton", False), verdict.explain()


def test_fp8_group_packed_dequantize_on_sm90_runs_cuda_and_on_sm80_falls_back():
    q, scales = meta(4, 256, dtype=torch.float8_e4m3fn), meta(4, 1, dtype=torch.int32)
    for group_size in (64, 128):
        verdict = lowbit.supports("dequantize_fp8_group_packed", q, scales, group_size=group_size, device="cuda",
                                  arch="sm_90")
        assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton", False), verdict.explain()
    older = lowbit.supports("dequantize_fp8_group_packed", q, scales, device="cuda", arch="sm_80")
    assert (older.backend, older.fallback) == ("cpu", True)
    assert older.reasons["cuda/triton"] == ["needs sm_89+, not sm_80"]


# --- dispatch: PTX -> portable Triton -> reference ----------------------------------------------

def test_sm90_runs_bfloat16_on_the_bf16x2_variant_without_a_fallback_warning():
    verdict = ask(MX)  # bfloat16
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "bf16x2", False)
    assert verdict.reasons == {"cuda/ptx": ["needs {sm_100, sm_103, sm_110, sm_120, sm_121}, not sm_90"]}
    assert "runs on backend 'cuda' (bf16x2)" in verdict.explain()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_sm90_runs_other_dtypes_on_the_portable_variant(dtype):
    verdict = ask(MX, meta(64, 7168, dtype=dtype))
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton", False)
    assert verdict.reasons["cuda/bf16x2"] == [f"input dtype {str(dtype).removeprefix('torch.')} is not one of bfloat16"]


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
    assert ask(MX, backend="cuda").variant == "bf16x2"
    assert ask(MX, backend="cuda/triton").variant == "triton"
    assert ask(MX, meta(64, 7168, dtype=torch.float16), backend="cuda").variant == "triton"
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


def test_an_unavailable_cuda_backend_falls_back_with_the_reason():
    # the cuda backend as a process without Triton sees it: registered in its place
    registry.register(dataclasses.replace(cuda.BACKEND, unavailable=lambda: "triton is not installed"))
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

@pytest.fixture
def sm90(monkeypatch):
    """Fake cuda tensors report sm_90, as a real H100 would."""
    monkeypatch.setattr(dispatch, "device_arch", lambda device: 90 if device.type == "cuda" else None)
    dispatch.clear_cache()


@pytest.fixture
def sm80(monkeypatch):
    """Fake cuda tensors report sm_80, as a real A100 would."""
    monkeypatch.setattr(dispatch, "device_arch", lambda device: 80 if device.type == "cuda" else None)
    dispatch.clear_cache()


@FAKE_DEVICE["cuda"]
def test_fake_cuda_mxfp4_resolves_to_cuda_and_matches_the_shape_function(sm90, caplog):
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        x = torch.empty(3, 5, 96, dtype=torch.bfloat16, device="cuda")
        q, s = lowbit.quantize_mxfp4(x)
    assert (q.shape, q.dtype, s.shape, s.dtype) == ((3, 5, 48), torch.float4_e2m1fn_x2, (3, 5, 3), torch.float8_e8m0fnu)
    assert q.device.type == "cuda" and not caplog.records  # no fallback warning: cuda took it


@FAKE_DEVICE["cuda"]
def test_fake_cuda_fp8_resolves_to_cuda_with_packed_strides(sm90, caplog):
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        x = torch.empty(2, 6, 640, dtype=torch.bfloat16, device="cuda")
        q, s = lowbit.quantize_fp8_group_packed(x)
    assert q.shape == (2, 6, 640) and s.shape == (2, 6, 2) and s.stride() == (16, 1, 8)
    assert not caplog.records


@FAKE_DEVICE["cuda"]
def test_fake_cuda_strict_refuses_what_the_real_call_refuses(sm90, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")
    with FakeTensorMode():
        x = torch.empty(4, 256, dtype=torch.bfloat16, device="cuda")
        with pytest.raises(lowbit.UnsupportedError) as raised:
            lowbit.quantize_fp8_group_packed(x, group_size=64)
    text = str(raised.value)
    assert "LOWBIT_STRICT=1 refuses fallbacks" in text
    assert "  - cuda/triton: group_size 64 is not one of 128" in text


@FAKE_DEVICE["cuda"]
def test_fake_cuda_bad_block_size_raises_the_same_text_as_explain(sm90):
    expected = lowbit.explain(MX, meta(4, 48), device="cuda", arch="sm_90")
    with FakeTensorMode():
        x = torch.empty(4, 48, dtype=torch.bfloat16, device="cuda")
        with pytest.raises(lowbit.UnsupportedError) as raised:
            lowbit.quantize_mxfp4(x)
    assert str(raised.value) == expected


# --- unified_attention: the record, dispatch on meta tensors, fakes --------------------------------

ATTN = "unified_attention"
E4M3 = torch.float8_e4m3fn
ATTN_PAIRS = {  # (query dtype, KV cache dtype) -> output dtype lowbit allocates
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp16": (torch.float16, torch.float16),
    "bf16_q_fp8_kv": (torch.bfloat16, E4M3),
    "fp16_q_fp8_kv": (torch.float16, E4M3),
    "fp8": (E4M3, E4M3),
}


def attention_args(q_dtype=torch.bfloat16, kv_dtype=None, *, head_size=128, page=16, heads=(8, 2), seqs=3,
                   tokens=7, max_seqlen_k=100, make=meta, q=None, k_cache=None, out=None, **options):
    """(q, k_cache, v_cache) and the keyword arguments of one unified_attention call, as `make`
    builds tensors (meta by default); descales wherever an FP8 tensor needs them."""
    kv_dtype = q_dtype if kv_dtype is None else kv_dtype
    q = make(tokens, heads[0], head_size, dtype=q_dtype) if q is None else q
    k_cache = make(12, page, heads[1], head_size, dtype=kv_dtype) if k_cache is None else k_cache
    v_cache = make(*k_cache.shape, dtype=kv_dtype)
    kwargs = dict(cu_seqlens_q=make(seqs + 1, dtype=torch.int32), seqused_k=make(seqs, dtype=torch.int32),
                  block_table=make(seqs, -(-max_seqlen_k // page), dtype=torch.int32), max_seqlen_q=4,
                  max_seqlen_k=max_seqlen_k, out=out, **options)
    if q_dtype == E4M3:
        kwargs["q_descale"] = make(1, dtype=torch.float32)
    if kv_dtype == E4M3:
        kwargs["k_descale"] = make(seqs, heads[1], dtype=torch.float32)
        kwargs["v_descale"] = make(1, dtype=torch.float32)
    return (q, k_cache, v_cache), kwargs


def ask_attention(arch="sm_90", backend="auto", **kwargs):
    tensors, options = attention_args(**kwargs)
    return lowbit.supports(ATTN, *tensors, device="cuda", arch=arch, backend=backend, **options)


def attention_records():
    """The cuda unified_attention records, in the order auto dispatch tries them."""
    return [kernel.capability for kernel in cuda.BACKEND.kernels_for(ATTN)]


def claimed_pairings(cap):
    """The (query dtype, KV cache dtype) pairings a record accepts."""
    return [(q, kv) for q, kvs in cap.kv_dtypes.items() for kv in kvs]


def test_attention_record_says_what_the_issue_asks():
    # one Triton kernel, two records: Triton's float8_e4m3fn needs sm_89, the 16-bit pairings run from sm_80
    fp8, sixteen = attention_records()
    assert (fp8.label, sixteen.label) == ("cuda/triton", "cuda/triton-16bit")
    assert fp8.archs == {"cuda": ArchRange(89)} and sixteen.archs == {"cuda": ArchRange(80)}
    assert set(fp8.dtypes) == {torch.bfloat16, torch.float16, E4M3}
    assert {q: set(kv) for q, kv in fp8.kv_dtypes.items()} == {
        torch.bfloat16: {torch.bfloat16, E4M3}, torch.float16: {torch.float16, E4M3}, E4M3: {E4M3}}
    assert set(sixteen.dtypes) == {torch.bfloat16, torch.float16}
    assert {q: set(kv) for q, kv in sixteen.kv_dtypes.items()} == {
        torch.bfloat16: {torch.bfloat16}, torch.float16: {torch.float16}}
    for cap in (fp8, sixteen):
        assert (cap.backend, cap.op, cap.devices, set(cap.archs)) == ("cuda", ATTN, ("cuda",), {"cuda"})
        assert cap.head_sizes == (32, 256) and cap.page_size_multiple == 16
        assert set(cap.out_dtypes) == {torch.bfloat16, torch.float16}
        assert cap.graph_safe and cap.compile_safe and cap.last_dim_contiguous
        assert (cap.min_ndim, cap.max_ndim) == (3, 3)
        assert "tolerance" in cap.fidelity and "bit-exact" not in cap.fidelity
        assert set(cap.dtypes) == set(cap.kv_dtypes)  # every query dtype it takes names its caches
    # together: bf16/fp16 (16-bit caches) on sm_80+, every FP8 pairing on sm_89+, nothing below sm_80
    for arch in (75, 80, 86, 89, 90, 100, 120):
        claimed = {pair for cap in (fp8, sixteen) if arch in cap.archs["cuda"] for pair in claimed_pairings(cap)}
        sixteen_bit = {(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)}
        fp8_pairs = {(torch.bfloat16, E4M3), (torch.float16, E4M3), (E4M3, E4M3)}
        want = set() if arch < 80 else sixteen_bit if arch < 89 else sixteen_bit | fp8_pairs
        assert claimed == want, f"sm_{arch}"


@pytest.mark.parametrize("arch", ["sm_80", "sm_86"])
@pytest.mark.parametrize("pair", ["bf16", "fp16"])
def test_attention_auto_picks_cuda_triton_16bit_for_16_bit_pairs_below_sm89(pair, arch):
    q_dtype, kv_dtype = ATTN_PAIRS[pair]
    verdict = ask_attention(arch, q_dtype=q_dtype, kv_dtype=kv_dtype)
    # the later variant of the same backend: not a fallback, though "triton" was tried first
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", "triton-16bit", False)
    assert verdict.reasons == {"cuda/triton": [f"needs sm_89+, not {arch}"]}
    assert "runs on backend 'cuda' (triton-16bit)" in verdict.explain()


@pytest.mark.parametrize("arch", ["sm_89", "sm_90", "sm_100", "sm_120"])
@pytest.mark.parametrize("pair", ["bf16", "fp16"])
def test_attention_auto_picks_cuda_triton_for_16_bit_pairs_from_sm89(pair, arch):
    q_dtype, kv_dtype = ATTN_PAIRS[pair]
    verdict = ask_attention(arch, q_dtype=q_dtype, kv_dtype=kv_dtype)
    assert (verdict.backend, verdict.variant, verdict.fallback, verdict.rejected) == ("cuda", "triton", False, ())
    assert "runs on backend 'cuda' (triton)" in verdict.explain()


@pytest.mark.parametrize("arch", ["sm_89", "sm_90", "sm_100"])
@pytest.mark.parametrize("pair", ["bf16_q_fp8_kv", "fp16_q_fp8_kv", "fp8"])
def test_attention_auto_picks_cuda_triton_for_fp8_pairs(pair, arch):
    q_dtype, kv_dtype = ATTN_PAIRS[pair]
    verdict = ask_attention(arch, q_dtype=q_dtype, kv_dtype=kv_dtype)
    assert (verdict.backend, verdict.variant, verdict.fallback, verdict.rejected) == ("cuda", "triton", False, ())


# an FP8 pairing below sm_89 -> cuda/triton-16bit's unmet constraint (cuda/triton's: the arch)
ATTN_FP8_BELOW_SM89 = {
    "bf16_q_fp8_kv": "a bfloat16 query takes a KV cache of bfloat16, not float8_e4m3fn",
    "fp16_q_fp8_kv": "a float16 query takes a KV cache of float16, not float8_e4m3fn",
    "fp8": "input dtype float8_e4m3fn is not one of bfloat16, float16",
}


@pytest.mark.parametrize("arch", ["sm_80", "sm_86"])
@pytest.mark.parametrize("pair", list(ATTN_FP8_BELOW_SM89))
def test_attention_fp8_below_sm89_is_refused_by_both_cuda_variants_and_falls_back(pair, arch):
    q_dtype, kv_dtype = ATTN_PAIRS[pair]
    verdict = ask_attention(arch, q_dtype=q_dtype, kv_dtype=kv_dtype)
    assert (verdict.backend, verdict.fallback) == ("cpu", True)
    assert verdict.reasons == {"cuda/triton": [f"needs sm_89+, not {arch}"],
                               "cuda/triton-16bit": [ATTN_FP8_BELOW_SM89[pair]]}
    assert "falls back to backend 'cpu'" in verdict.explain()
    forced = ask_attention(arch, backend="cuda", q_dtype=q_dtype, kv_dtype=kv_dtype)
    assert not forced.ok and "backend 'cuda' (forced) cannot run it" in str(forced.error())


@pytest.mark.parametrize("pair", list(ATTN_FP8_BELOW_SM89))
def test_attention_strict_mode_refuses_fp8_on_sm80(pair, monkeypatch):
    q_dtype, kv_dtype = ATTN_PAIRS[pair]
    call = ask_attention("sm_80", q_dtype=q_dtype, kv_dtype=kv_dtype).call
    assert_strict_mode_refuses(call, {"cuda/triton": "needs sm_89+, not sm_80",
                                      "cuda/triton-16bit": ATTN_FP8_BELOW_SM89[pair]}, monkeypatch)


def assert_strict_mode_refuses(call, constraints, monkeypatch):
    """The call falls back to the reference, and under LOWBIT_STRICT=1 raises naming each constraint."""
    assert dispatch.resolve(call).capability.label == "cpu"  # without LOWBIT_STRICT: the reference
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")
    dispatch.clear_cache()
    with pytest.raises(lowbit.UnsupportedError) as raised:
        dispatch.resolve(call)
    text = str(raised.value)
    assert "LOWBIT_STRICT=1 refuses fallbacks" in text
    for label, constraint in constraints.items():
        assert f"  - {label}: {constraint}" in text


@pytest.mark.parametrize("head_size", [32, 64, 80, 96, 128, 192, 256])
@pytest.mark.parametrize("page", [16, 32, 64, 528])
def test_attention_takes_every_head_size_in_range_and_pages_of_16s(head_size, page):
    assert ask_attention(head_size=head_size, page=page).variant == "triton"


def test_attention_takes_an_fp8_query_with_a_float16_out():
    out = meta(7, 8, 128, dtype=torch.float16)
    verdict = ask_attention(q_dtype=E4M3, kv_dtype=E4M3, out=out)
    assert (verdict.backend, verdict.call.out_dtype) == ("cuda", torch.float16)


def _strided_last_dim(dtype, *shape):
    return meta(*shape[:-1], 2 * shape[-1], dtype=dtype)[..., ::2]


# name: (changes to the call, the unmet constraint of each cuda variant {label: constraint}, backend auto
# falls back to (None: refused)); a constraint both variants share is written once
ATTN_LABELS = ("cuda/triton", "cuda/triton-16bit")


def _both(constraint):
    return dict.fromkeys(ATTN_LABELS, constraint)


ATTN_REFUSALS = {
    "head_size_16": (dict(head_size=16), _both("head size 16 is outside 32..256"), "cpu"),
    "head_size_512": (dict(head_size=512), _both("head size 512 is outside 32..256"), "cpu"),
    "page_size_8": (dict(page=8), _both("page size 8 is not a multiple of 16"), "cpu"),
    "page_size_24": (dict(page=24), _both("page size 24 is not a multiple of 16"), "cpu"),
    "bf16_q_fp16_cache": (dict(kv_dtype=torch.float16),
                          {"cuda/triton": "a bfloat16 query takes a KV cache of bfloat16, float8_e4m3fn, not float16",
                           "cuda/triton-16bit": "a bfloat16 query takes a KV cache of bfloat16, not float16"}, None),
    "fp8_q_bf16_cache": (dict(q_dtype=E4M3, kv_dtype=torch.bfloat16),
                         {"cuda/triton": "a float8_e4m3fn query takes a KV cache of float8_e4m3fn, not bfloat16",
                          "cuda/triton-16bit": "input dtype float8_e4m3fn is not one of bfloat16, float16"}, None),
    "sm_75": (dict(arch="sm_75"), {"cuda/triton": "needs sm_89+, not sm_75",
                                   "cuda/triton-16bit": "needs sm_80+, not sm_75"}, "cpu"),
    "rocm": (dict(arch="gfx942"), {"cuda/triton": "needs sm_89+, not gfx942",
                                   "cuda/triton-16bit": "needs sm_80+, not gfx942"}, "cpu"),
    "strided_q": (dict(q=_strided_last_dim(torch.bfloat16, 7, 8, 128)), _both("needs stride 1 along the last dim"),
                  "cpu"),
    "strided_cache": (dict(k_cache=_strided_last_dim(torch.bfloat16, 12, 16, 2, 128)),
                      _both("needs stride 1 along the last dim"), "cpu"),
    "strided_out": (dict(out=_strided_last_dim(torch.bfloat16, 7, 8, 128)), _both("needs stride 1 along the last dim"),
                    "cpu"),
}


@pytest.mark.parametrize("name", list(ATTN_REFUSALS))
def test_attention_refusals_name_the_constraint(name):
    changes, constraints, fallback = ATTN_REFUSALS[name]
    auto = ask_attention(**changes)
    assert {label: auto.reasons[label] for label in ATTN_LABELS} == {
        label: [constraint] for label, constraint in constraints.items()}, auto.explain()
    if fallback is None:  # the reference refuses the pairing too
        assert not auto.ok and "cpu" in auto.reasons
    else:
        assert (auto.backend, auto.fallback) == (fallback, True)
    forced = ask_attention(backend="cuda", **changes)
    assert not forced.ok
    error = forced.error()
    assert isinstance(error, lowbit.UnsupportedError)
    for label, constraint in constraints.items():
        assert f"  - {label}: {constraint}" in str(error)
    assert "backend 'cuda' (forced) cannot run it" in str(error)


@pytest.mark.parametrize("name", ["head_size_16", "page_size_8", "sm_75", "strided_q"])
def test_attention_strict_mode_raises_instead_of_falling_back(name, monkeypatch):
    changes, constraints, _ = ATTN_REFUSALS[name]
    call = ask_attention(**changes).call  # a call on a (fake) cuda device of that arch
    assert_strict_mode_refuses(call, constraints, monkeypatch)


def test_attention_mismatched_arguments_raise_value_error_before_dispatch():
    tensors, options = attention_args()
    with pytest.raises(ValueError, match="k_descale applies to float8_e4m3fn tensors only"):
        lowbit.supports(ATTN, *tensors, device="cuda", arch="sm_90", k_descale=meta(1, dtype=torch.float32),
                        **options)
    with pytest.raises(lowbit.UnsupportedError, match="not a multiple of k_cache's 2 KV heads"):
        ask_attention(heads=(5, 2))


def test_info_lists_an_attention_row_for_each_cuda_variant():
    out = io.StringIO()
    info(out=out)
    text = out.getvalue()
    section = text[text.index("\nunified_attention: "):]
    section = section[:section.find("\n\n", 1)] if "\n\n" in section[1:] else section
    rows = {}
    for label in ATTN_LABELS:
        found = [line for line in section.splitlines() if line.startswith(f"  {label} ")]
        assert len(found) == 1, section
        rows[label] = found[0]
    for row in rows.values():
        for part in ("head 32..256", "page size x16", "last dim contiguous", "3..3"):
            assert part in row, row
    assert "cuda sm_89+" in rows["cuda/triton"] and "bfloat16/float16/float8_e4m3fn (" in rows["cuda/triton"]
    assert "cuda sm_80+" in rows["cuda/triton-16bit"] and "bfloat16/float16 (" in rows["cuda/triton-16bit"]
    assert "float8_e4m3fn" not in rows["cuda/triton-16bit"]
    labels = [line.split()[0] for line in section.splitlines()
              if line.startswith("  ") and not line.startswith(("  on ", "  backend "))]
    assert labels == [*ATTN_LABELS, "xpu/triton", "cpu"], section  # the order auto dispatch tries them


def fake_cuda_attention(q_dtype, kv_dtype, **options):
    """lowbit.unified_attention on fake cuda tensors (call inside FakeTensorMode)."""
    cuda_empty = lambda *shape, dtype: torch.empty(shape, dtype=dtype, device="cuda")
    tensors, options = attention_args(q_dtype, kv_dtype, make=cuda_empty, **options)
    return lowbit.unified_attention(*tensors, **options)


@FAKE_DEVICE["cuda"]
@pytest.mark.parametrize("pair", list(ATTN_PAIRS))
@pytest.mark.parametrize("give_out", [False, True], ids=["allocated", "out"])
def test_fake_cuda_attention_resolves_to_cuda_triton(pair, give_out, sm90, caplog, monkeypatch, resolved):
    q_dtype, kv_dtype = ATTN_PAIRS[pair]
    chosen = resolved
    want_dtype = torch.float16 if (give_out and q_dtype == E4M3) else (torch.bfloat16 if q_dtype == E4M3 else q_dtype)
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        cuda_empty = lambda *shape, dtype: torch.empty(shape, dtype=dtype, device="cuda")
        out = torch.empty(7, 8, 128, dtype=want_dtype, device="cuda") if give_out else None
        tensors, options = attention_args(q_dtype, kv_dtype, make=cuda_empty, out=out, window_size=(64, 0),
                                          softcap=30.0, alibi_slopes=cuda_empty(8, dtype=torch.float32),
                                          sinks=cuda_empty(8, dtype=torch.bfloat16))
        result = lowbit.unified_attention(*tensors, **options)
    assert chosen == ["cuda/triton"]
    assert (result.shape, result.dtype, result.device.type) == ((7, 8, 128), want_dtype, "cuda")
    if give_out:
        assert result is out
    assert not caplog.records  # no fallback warning: cuda took it


@FAKE_DEVICE["cuda"]
def test_fake_cuda_attention_strict_refuses_a_page_size_of_8(sm90, monkeypatch):
    cuda_empty = lambda *shape, dtype: torch.empty(shape, dtype=dtype, device="cuda")
    expected = lowbit.explain(ATTN, *attention_args(page=8)[0], device="cuda", arch="sm_90",
                              **attention_args(page=8)[1])
    assert "falls back to backend 'cpu'" in expected
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")
    with FakeTensorMode():
        tensors, options = attention_args(page=8, make=cuda_empty)
        with pytest.raises(lowbit.UnsupportedError) as raised:
            lowbit.unified_attention(*tensors, **options)
    text = str(raised.value)
    assert "LOWBIT_STRICT=1 refuses fallbacks" in text
    assert "  - cuda/triton: page size 8 is not a multiple of 16" in text
    assert "  - cuda/triton-16bit: page size 8 is not a multiple of 16" in text


@FAKE_DEVICE["cuda"]
@pytest.mark.parametrize("pair", ["bf16", "fp16"])
def test_fake_cuda_attention_on_sm80_resolves_to_cuda_triton_16bit(pair, sm80, caplog, monkeypatch, resolved):
    chosen = resolved
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        result = fake_cuda_attention(*ATTN_PAIRS[pair])
        assert (result.shape, result.dtype, result.device.type) == ((7, 8, 128), ATTN_PAIRS[pair][0], "cuda")
    assert chosen == ["cuda/triton-16bit"]
    assert not caplog.records  # a later variant of the same backend is no fallback: no warning


@FAKE_DEVICE["cuda"]
@pytest.mark.parametrize("pair", list(ATTN_FP8_BELOW_SM89))
def test_fake_cuda_attention_fp8_on_sm80_falls_back_or_refuses_under_strict(pair, sm80, caplog, monkeypatch, resolved):
    chosen = resolved
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        result = fake_cuda_attention(*ATTN_PAIRS[pair])
        assert (result.shape, result.device.type) == ((7, 8, 128), "cuda")
    assert chosen == ["cpu"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "lowbit"]
    assert len(warnings) == 1 and "falls back to backend 'cpu'" in warnings[0]
    assert "  - cuda/triton: needs sm_89+, not sm_80" in warnings[0]
    assert f"  - cuda/triton-16bit: {ATTN_FP8_BELOW_SM89[pair]}" in warnings[0]
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")
    dispatch.clear_cache()
    with FakeTensorMode(), pytest.raises(lowbit.UnsupportedError, match="LOWBIT_STRICT=1 refuses fallbacks"):
        fake_cuda_attention(*ATTN_PAIRS[pair])


@FAKE_DEVICE["cuda"]
def test_fake_cuda_attention_checks_shapes_like_the_real_call(sm90):
    cuda_empty = lambda *shape, dtype: torch.empty(shape, dtype=dtype, device="cuda")
    with FakeTensorMode():
        tensors, options = attention_args(make=cuda_empty)
        options["block_table"] = cuda_empty(3, 2, dtype=torch.int32)  # 2 pages of 16 < max_seqlen_k 100
        with pytest.raises(lowbit.UnsupportedError, match="fewer than max_seqlen_k=100"):
            lowbit.unified_attention(*tensors, **options)


# --- the records against the Triton compiler (marker aot: CI row compile) ------------------------------
# Each record's claims compile, ahead of time, for its lowest arch; FP8 below sm_89 does not, which is
# why there are two records. Needs the real Triton compiler (the triton wheel's ptxas), no GPU.

needs_real_triton = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1",
    reason="ahead-of-time compilation needs the real Triton compiler; TRITON_INTERPRET=1 turns @triton.jit kernels "
           "into interpreted functions (CI row compile runs without it)")
TRITON_POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", E4M3: "*fp8e4nv"}
FP8_PAIRINGS = [(torch.bfloat16, E4M3), (torch.float16, E4M3), (E4M3, E4M3)]


def _dtype_id(dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", E4M3: "fp8"}[dtype]


def compile_attention_for(arch: int, q_dtype, kv_dtype):
    """unified_attention_kernel compiled for sm_`arch` as attend() launches it on a GPU (DOT_F32 off,
    FP8_KV on with an FP8 cache, descales wherever a tensor is FP8), one split, head size 128."""
    triton = pytest.importorskip("triton")
    from lowbit.backends.triton import unified_attention as attention
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = attention.unified_attention_kernel
    out_type = TRITON_POINTER_TYPES[torch.bfloat16 if q_dtype == E4M3 else q_dtype]  # the output lowbit allocates
    pointers = {"q_ptr": TRITON_POINTER_TYPES[q_dtype], "k_ptr": TRITON_POINTER_TYPES[kv_dtype],
                "v_ptr": TRITON_POINTER_TYPES[kv_dtype], "out_ptr": out_type, "cu_seqlens_q": "*i32",
                "seqused_k": "*i32", "block_table": "*i32"}
    scalars = {"softmax_scale": "fp32", "softcap": "fp32"}
    signature = {}
    for name in fn.arg_names:  # descales, ALiBi slopes, sinks and partials: float32 tensors; the rest ints
        if name.isupper():
            signature[name] = "constexpr"
        elif name.endswith(("_ptr", "_descale")) or name.startswith("part_"):
            signature[name] = pointers.get(name, "*fp32")
        else:
            signature[name] = pointers.get(name) or scalars.get(name, "i32")
    fp8_kv = kv_dtype == E4M3
    constexprs = dict(NUM_HEADS=8, GROUP=4, HEADS=4, CHUNKS=1, HEAD=128, HEAD_PAD=128, PAGE=16, BLOCK_Q=4,
                      BLOCK_M=16, BLOCK_N=64, SPLITS=1, SOFTCAP=False, ALIBI=False, SINKS=False, HAS_LEFT=False,
                      HAS_RIGHT=True, Q_DESCALE=q_dtype == E4M3, K_DESCALE=fp8_kv, V_DESCALE=fp8_kv, FP8_KV=fp8_kv,
                      DOT_F32=False)
    assert {name for name, kind in signature.items() if kind == "constexpr"} == set(constexprs), (
        "the kernel's constexprs changed: update this test")
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    options = {"num_warps": 4, "enable_fp_fusion": True}  # as attend() launches it
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


CLAIMED_AT_LOWEST_ARCH = [
    pytest.param(cap.archs["cuda"].min, q, kv, id=f"{cap.variant}-sm_{cap.archs['cuda'].min}-{_dtype_id(q)}_q"
                                                   f"-{_dtype_id(kv)}_kv")
    for cap in attention_records() for q, kv in claimed_pairings(cap)
]


@pytest.mark.aot
@needs_real_triton
@pytest.mark.parametrize(("arch", "q_dtype", "kv_dtype"), CLAIMED_AT_LOWEST_ARCH)
def test_every_pairing_each_record_claims_compiles_for_its_lowest_arch(arch, q_dtype, kv_dtype):
    compiled = compile_attention_for(arch, q_dtype, kv_dtype)
    assert compiled.asm["cubin"], "ptxas produced no cubin"
    assert f".target sm_{arch}" in compiled.asm["ptx"]


def test_the_records_claim_every_pairing_at_some_arch():
    claimed = {(q, kv) for cap in attention_records() for q, kv in claimed_pairings(cap)}
    assert claimed == {(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), *FP8_PAIRINGS}
    assert len(CLAIMED_AT_LOWEST_ARCH) == 5 + 2  # cuda/triton's five pairings, cuda/triton-16bit's two


@pytest.mark.aot
@needs_real_triton
@pytest.mark.parametrize(("q_dtype", "kv_dtype"), FP8_PAIRINGS, ids=["bf16_q-fp8_kv", "fp16_q-fp8_kv", "fp8_q-fp8_kv"])
def test_fp8_does_not_compile_for_sm80_so_the_records_split(q_dtype, kv_dtype, capfd):
    from triton.compiler.errors import CompilationError

    assert not any(80 in cap.archs["cuda"] and (q_dtype, kv_dtype) in claimed_pairings(cap)
                   for cap in attention_records()), "a record claims an FP8 pairing on sm_80"
    try:
        with pytest.raises(CompilationError, match="fp8e4nv not supported in this architecture"):
            compile_attention_for(80, q_dtype, kv_dtype)
    finally:
        capfd.readouterr()  # Triton prints the kernel source on a compilation error: drop it


def test_bf16x2_takes_the_pair_hooks_only_for_rows_it_loads_in_16_byte_vectors():
    from lowbit.backends.cuda.mxfp4 import pairs_in_registers

    base = torch.zeros(8, 2113, dtype=torch.bfloat16)
    assert pairs_in_registers(torch.zeros(8, 128, dtype=torch.bfloat16))
    assert pairs_in_registers(torch.zeros(8, 96, dtype=torch.bfloat16))
    assert not pairs_in_registers(torch.zeros(8, 64, dtype=torch.bfloat16))  # one-block-wide tiles
    assert not pairs_in_registers(torch.zeros(0, 128, dtype=torch.bfloat16))
    assert not pairs_in_registers(base[:, :2048])  # row stride 2113: no multiple of 16
    assert not pairs_in_registers(torch.zeros(8, 160, dtype=torch.bfloat16)[:, 1:129])  # starts 2 bytes in
    assert not pairs_in_registers(torch.zeros(128, 8, dtype=torch.bfloat16).t())  # last stride 8


def test_every_mxfp4_tile_holds_pairs_from_the_smallest_k_the_pair_hooks_take():
    """pairs_in_registers lets K >= 96 through: each table tile at that K must give a thread two or more
    elements, or Triton lays the tile one element a thread and a register holds no pair."""
    from lowbit.backends.triton import mxfp4 as kernels

    k = 96
    for _, _, c in kernels.LAUNCH_TABLE:
        block_k = min(c.block_k, 1 << (k - 1).bit_length())  # as launches() clips it
        assert c.block_m * block_k >= 2 * 32 * c.num_warps, c
