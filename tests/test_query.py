"""Asking before dispatch: capabilities, supports and explain on meta and fake tensors."""

import importlib.util

import torch
from oracles import meta
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit


def test_capabilities_lists_every_op_of_every_backend():
    records = lowbit.capabilities()
    assert {(c.backend, c.op) for c in records} == {
        *((b, op) for b in ("cpu", "cuda", "xpu") for op in ("quantize_fp8_group_packed",
                                                             "dequantize_fp8_group_packed")),
        *((b, op) for b in ("cpu", "cuda", "xpu") for op in ("quantize_mxfp4", "per_token_group_quant_mxfp4",
                                                             "dequantize_mxfp4")),
        *((b, op) for b in ("cpu", "cuda", "xpu") for op in ("quantize_mxfp8", "dequantize_mxfp8")),
        ("cpu", "unified_attention"), ("xpu", "unified_attention"),
        *((b, op) for b in ("cpu", "cuda", "xpu") for op in ("quantize_nvfp4", "nvfp4_global_scale", "dequantize_nvfp4")),
        *((b, op) for b in ("cpu", "cuda", "xpu") for op in ("quantize_fp8_group", "dequantize_fp8_group",
                                                             "quantize_fp8_block", "dequantize_fp8_block")),
    } | ({("cuda", "unified_attention")} if _cuda_attention_written() else set())
    # highest priority first (cuda and xpu share 10: by name), each backend's variants in its order
    assert [c.label for c in records if c.op == "quantize_mxfp4"] == [
        "cuda/ptx", "cuda/bf16x2", "cuda/triton", "xpu/vendor", "xpu/triton", "cpu"]
    assert [c.label for c in records if c.op == "per_token_group_quant_mxfp4"] == [
        "cuda/ptx", "cuda/bf16x2", "cuda/triton", "xpu/vendor", "xpu/triton", "cpu"]
    assert [c.label for c in records if c.op == "quantize_nvfp4"] == ["cuda/ptx", "cuda/triton", "xpu/triton", "cpu"]
    assert all(c.fidelity and c.dtypes for c in records)


def test_capabilities_for_a_device_include_the_any_device_reference():
    assert {c.backend for c in lowbit.capabilities("cuda")} == {"cuda", "cpu"}
    assert {c.backend for c in lowbit.capabilities("xpu")} == {"xpu", "cpu"}
    for device in ("cuda", "xpu"):
        assert all(c.any_device or c.devices == (device,) for c in lowbit.capabilities(device))
    # no dequantize lacks an xpu kernel now: each is the xpu backend's and the any-device reference's
    for op in ("dequantize_nvfp4", "dequantize_fp8_group_packed", "dequantize_mxfp4"):
        assert {c.backend for c in lowbit.capabilities("xpu") if c.op == op} == {"xpu", "cpu"}


def test_supports_answers_for_hardware_this_machine_lacks():
    verdict = lowbit.supports("quantize_fp8_group_packed", meta(4096, 7168), device="cuda", arch="sm_90")
    assert verdict.ok and verdict.backend == "cuda" and not verdict.fallback
    older = lowbit.supports("quantize_fp8_group_packed", meta(4096, 7168), device="cuda", arch="sm_80")
    assert older.ok and older.backend == "cpu" and older.fallback
    assert verdict.call.arch == 90 and verdict.call.device_type == "cuda"


def test_supports_reports_reasons_per_backend():
    verdict = lowbit.supports("quantize_fp8_group_packed", meta(16, 200), group_size=128, device="cpu")
    assert not verdict.ok and verdict.backend is None
    assert verdict.reasons == {"cpu": ["group_size 128 does not divide the last dim 200"]}


def test_supports_on_fake_tensors_uses_their_device():
    with FakeTensorMode():
        x = torch.empty(8, 64, device="cuda")
        verdict = lowbit.supports("quantize_mxfp4", x, scale_rule="floor")
    assert verdict.call.device_type == "cuda" and verdict.call.scale_rule == "floor"
    assert verdict.ok and verdict.fallback


def test_explain_reads_as_text():
    text = lowbit.explain("quantize_mxfp4", meta(8, 48), device="cuda", arch=(10, 0))
    assert text == (
        "lowbit.quantize_mxfp4 for bfloat16 input, ndim 2, last dim 48, scale_rule 'rceil', on cuda sm_100: "
        "no backend can run it:\n"
        "  - cuda/ptx: last dim 48 is not a multiple of the block size 32\n"
        "  - cuda/bf16x2: needs {sm_90}, not sm_100\n"
        "  - cuda/bf16x2: last dim 48 is not a multiple of the block size 32\n"
        "  - cuda/triton: last dim 48 is not a multiple of the block size 32\n"
        "  - cpu: last dim 48 is not a multiple of the block size 32\n"
        "Alternative: pad the last dim with zeros to a multiple of 32"
    )


def test_explain_names_the_fidelity_of_the_choice():
    text = lowbit.explain("dequantize_mxfp4", meta(2, 16, dtype=torch.uint8), meta(2, 1, dtype=torch.uint8),
                          device="cpu")
    assert "runs on backend 'cpu'" in text and "fidelity: bit-exact" in text
    assert "Alternative" not in text  # nothing to suggest when the first choice runs


def _cuda_attention_written() -> bool:
    """The CUDA unified_attention record is being written alongside; count it once it exists."""
    return importlib.util.find_spec("lowbit.backends.cuda.unified_attention") is not None


def test_unified_attention_is_implemented():
    assert "unified_attention" in lowbit.OPS
    q, cache = meta(3, 4, 64), meta(2, 16, 2, 64)
    index = dict(cu_seqlens_q=meta(2, dtype=torch.int32), seqused_k=meta(1, dtype=torch.int32),
                 block_table=meta(1, 2, dtype=torch.int32), max_seqlen_q=3, max_seqlen_k=20)
    verdict = lowbit.supports("unified_attention", q, cache, cache, device="cpu", **index)
    assert verdict.ok and verdict.backend == "cpu"


def test_every_block_scaled_op_declares_both_scale_layouts_and_its_call_carries_the_one_asked_for():
    """The layouts column of `python -m lowbit info` and the layout check come from these records."""
    ops = ("quantize_mxfp4", "per_token_group_quant_mxfp4", "dequantize_mxfp4", "quantize_mxfp8",
           "dequantize_mxfp8", "quantize_nvfp4", "dequantize_nvfp4")
    for record in lowbit.capabilities():
        if record.op in ops and record.label != "xpu/vendor":  # the vendor op writes linear scales only
            assert record.scale_layouts == ("linear", "swizzled"), record.label
    x = meta(256, 64, dtype=torch.bfloat16)
    q8 = meta(256, 64, dtype=torch.float8_e4m3fn)
    s8 = meta(256, 4, dtype=torch.float8_e8m0fnu)
    for op, args in (("quantize_mxfp8", (x,)), ("quantize_nvfp4", (x,)), ("dequantize_mxfp8", (q8, s8))):
        verdict = lowbit.supports(op, *args, scale_layout="swizzled", device="cuda", arch="sm_100")
        assert verdict.ok and verdict.backend == "cuda" and verdict.call.scale_layout == "swizzled", op
