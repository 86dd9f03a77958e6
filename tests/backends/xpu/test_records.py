"""The XPU backend's capability records as data, and what `supports` / `explain` say from them on
any machine (meta tensors with device="xpu").

The vendor library, where a test needs it, is a stand-in (modules in sys.modules and a recorder as
`torch.ops._C.per_token_group_quant_mxfp4`); the xpu backend's own probe (Triton) is replaced so
that these tests do not depend on this machine having Triton. Nothing here runs an Intel kernel."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch
from lowbit.backends import xpu
from oracles import meta

import lowbit
from lowbit import registry

MX, GROUP, FP8, ATTN = "quantize_mxfp4", "per_token_group_quant_mxfp4", "quantize_fp8_group_packed", "unified_attention"
E4M3 = torch.float8_e4m3fn
SETTING = "LOWBIT_XPU_PROVIDER"


@pytest.fixture(autouse=True)
def xpu_backend_loads():
    """The xpu backend as a machine with Triton sees it: registered in its place, its own probe
    answering "available"; its kernels' hooks (the vendor's) are still asked."""
    registry.register(dataclasses.replace(xpu.BACKEND, unavailable=lambda: None))


@pytest.fixture
def stand_in(monkeypatch):
    """vllm_xpu_kernels._C as if imported: its op registered as torch.ops._C.per_token_group_quant_mxfp4."""
    package = types.ModuleType("vllm_xpu_kernels")
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "vllm_xpu_kernels", package)
    monkeypatch.setitem(sys.modules, "vllm_xpu_kernels._C", types.ModuleType("vllm_xpu_kernels._C"))
    monkeypatch.setattr(torch.ops._C, "per_token_group_quant_mxfp4", lambda *args: None, raising=False)
    registry.forget()


def records(op):
    return [k.capability for k in xpu.BACKEND.kernels_for(op)]


# --- the records ----------------------------------------------------------------------------------

def test_the_backend_is_xpu_of_priority_10_on_xpu_devices_only():
    assert (xpu.BACKEND.name, xpu.BACKEND.priority) == ("xpu", 10)
    assert dict(xpu.BACKEND.settings) == {SETTING: ("triton", "vendor")}
    for kernel in xpu.BACKEND.kernels:
        cap = kernel.capability
        assert (cap.backend, cap.devices, cap.any_device, dict(cap.archs)) == ("xpu", ("xpu",), False, {}), cap.label
    assert {k.op for k in xpu.BACKEND.kernels} == {MX, GROUP, "dequantize_mxfp4", FP8, ATTN, "quantize_mxfp8",
                                                 "dequantize_mxfp8", "quantize_nvfp4", "nvfp4_global_scale",
                                                 "dequantize_nvfp4", "quantize_fp8_group", "dequantize_fp8_group",
                                                 "quantize_fp8_block", "dequantize_fp8_block",
                                                 "dequantize_fp8_group_packed"}


@pytest.mark.parametrize("op", [MX, GROUP])
def test_both_mxfp4_ops_have_the_vendor_variant_before_the_triton_one(op):
    assert [cap.variant for cap in records(op)] == ["vendor", "triton"]


@pytest.mark.parametrize("op", [MX, GROUP])
def test_the_vendor_variant_declares_its_deviation_and_needs_the_opt_in(op):
    vendor = records(op)[0]
    assert "ties toward zero" in vendor.fidelity and "not bit-exact" in vendor.fidelity
    assert vendor.opt_in == "LOWBIT_XPU_PROVIDER=vendor"
    assert vendor.contiguous and not vendor.graph_safe and vendor.compile_safe
    assert (vendor.min_ndim, vendor.max_ndim, vendor.block_size) == (1, None, 32)
    assert vendor.dtypes == (torch.float32, torch.float16, torch.bfloat16)
    assert xpu.BACKEND.kernels_for(op)[0].unavailable is not None  # its library is asked, lazily
    row = vendor.as_row()
    assert (row["auto"], row["strides"], row["graph-safe"]) == ("only with LOWBIT_XPU_PROVIDER=vendor", "contiguous",
                                                                  "no")
    assert str(vendor).endswith("; auto-dispatch only with LOWBIT_XPU_PROVIDER=vendor")


def test_the_vendor_quantize_mxfp4_takes_rule_rceil_only():
    vendor, triton = records(MX)
    assert vendor.scale_rules == ("rceil",)
    assert triton.scale_rules == ("rceil", "floor")


@pytest.mark.parametrize("op", [MX, GROUP])
def test_the_triton_variant_is_bit_exact_graph_safe_any_strides_and_always_tried(op):
    triton = records(op)[1]
    assert triton.fidelity == "bit-exact to SPEC"
    assert triton.opt_in == "" and triton.graph_safe and triton.compile_safe
    assert not triton.contiguous and not triton.last_dim_contiguous
    assert (triton.min_ndim, triton.max_ndim, triton.block_size) == (1, None, 32)
    assert triton.dtypes == (torch.float32, torch.float16, torch.bfloat16)
    assert xpu.BACKEND.kernels_for(op)[1].unavailable is None
    assert triton.as_row()["auto"] == "yes"


def test_fp8_declares_group_128_and_two_dims_or_more():
    (cap,) = records(FP8)
    assert (cap.variant, cap.group_sizes, cap.min_ndim, cap.max_ndim) == ("triton", (128,), 2, None)
    assert cap.fidelity == "bit-exact to SPEC" and cap.graph_safe and cap.compile_safe and cap.opt_in == ""
    assert cap.dtypes == (torch.float32, torch.float16, torch.bfloat16)


def test_attention_declares_every_dtype_pairing_head_sizes_and_pages():
    (cap,) = records(ATTN)
    assert cap.variant == "triton" and cap.opt_in == ""
    assert set(cap.dtypes) == {torch.bfloat16, torch.float16, E4M3}
    assert {q: set(kv) for q, kv in cap.kv_dtypes.items()} == {
        torch.bfloat16: {torch.bfloat16, E4M3}, torch.float16: {torch.float16, E4M3}, E4M3: {E4M3}}
    assert set(cap.out_dtypes) == {torch.bfloat16, torch.float16}
    assert (cap.head_sizes, cap.page_size_multiple, cap.min_ndim, cap.max_ndim) == ((32, 256), 16, 3, 3)
    assert cap.last_dim_contiguous and cap.graph_safe and cap.compile_safe
    assert "tolerance" in cap.fidelity and "bit-exact" not in cap.fidelity


# --- supports / explain on xpu -------------------------------------------------------------------

def attention_args():
    """(q, k_cache, v_cache) and the keyword arguments of a bfloat16 unified_attention call, on meta."""
    seqs, page, kv_heads = 3, 16, 2
    tensors = (meta(7, 8, 128), meta(12, page, kv_heads, 128), meta(12, page, kv_heads, 128))
    kwargs = dict(cu_seqlens_q=meta(seqs + 1, dtype=torch.int32), seqused_k=meta(seqs, dtype=torch.int32),
                  block_table=meta(seqs, 7, dtype=torch.int32), max_seqlen_q=4, max_seqlen_k=100)
    return tensors, kwargs


def public_calls():
    tensors, kwargs = attention_args()
    x = meta(4, 3, 256)
    return {
        MX: ((x,), {}),
        GROUP: ((x, meta(4, 3, 128, dtype=torch.uint8), meta(4, 3, 8, dtype=torch.float32)), {}),
        FP8: ((x,), {}),
        ATTN: (tensors, kwargs),
    }


@pytest.mark.parametrize("op", [MX, GROUP, FP8, ATTN])
def test_supports_on_xpu_picks_the_xpu_backend_for_each_public_op(op):
    args, kwargs = public_calls()[op]
    verdict = lowbit.supports(op, *args, device="xpu", **kwargs)
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("xpu", "triton", False), verdict.explain()


def test_opted_in_vendor_leaves_swizzled_scales_to_triton(monkeypatch):
    monkeypatch.setenv(SETTING, "vendor")
    verdict = lowbit.supports(MX, meta(4, 64), device="xpu", scale_layout="swizzled")
    assert (verdict.backend, verdict.variant) == ("xpu", "triton")
    assert "scale_layout 'swizzled' is not one of 'linear'" in verdict.reasons["xpu/vendor"]


def test_dequantize_mxfp4_on_xpu_runs_the_triton_kernel():
    q, scales = meta(4, 128, dtype=torch.uint8), meta(4, 8, dtype=torch.uint8)
    verdict = lowbit.supports("dequantize_mxfp4", q, scales, device="xpu")
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("xpu", "triton", False)


@pytest.mark.parametrize("group_size", [64, 128])
def test_dequantize_fp8_group_packed_on_xpu_picks_the_xpu_kernel(group_size):
    q, scales = meta(4, 256, dtype=E4M3), meta(4, 1, dtype=torch.int32)
    verdict = lowbit.supports("dequantize_fp8_group_packed", q, scales, group_size=group_size, device="xpu")
    assert (verdict.backend, verdict.variant, verdict.fallback) == ("xpu", "triton", False), verdict.explain()


def test_explain_on_xpu_says_the_vendor_needs_the_setting_and_triton_is_bit_exact():
    text = lowbit.explain(MX, meta(4, 64), device="xpu")
    assert text.splitlines()[0].endswith("runs on backend 'xpu' (triton)")
    assert ("  - xpu/vendor: auto-dispatch uses it only with LOWBIT_XPU_PROVIDER=vendor (fidelity: ties toward "
            "zero, not bit-exact to SPEC)") in text.splitlines()
    assert "  fidelity: bit-exact to SPEC" in text.splitlines()


def test_explain_with_the_setting_and_the_vendor_present_names_the_vendor_and_its_rounding(stand_in, monkeypatch):
    monkeypatch.setenv(SETTING, "vendor")
    text = lowbit.explain(MX, meta(4, 64), device="xpu")
    assert text.splitlines()[0].endswith("runs on backend 'xpu' (vendor)")
    assert "  fidelity: ties toward zero, not bit-exact to SPEC" in text.splitlines()
    assert "xpu/vendor:" not in text  # nothing was refused


def test_explain_with_the_setting_but_a_strided_input_says_why_the_vendor_was_passed_over(stand_in, monkeypatch):
    monkeypatch.setenv(SETTING, "vendor")
    text = lowbit.explain(MX, meta(64, 4).t(), device="xpu")
    assert text.splitlines()[0].endswith("runs on backend 'xpu' (triton)")
    assert "  - xpu/vendor: needs a contiguous input" in text.splitlines()
    assert "  fidelity: bit-exact to SPEC" in text.splitlines()
