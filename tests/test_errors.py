"""Bad input through the public API, on CPU ([ERR-UNSUPPORTED], [ERR-OVERLAP], [FP8-OUT]): what the
refusal table (tests/test_refusals.py) does not say by itself.

Every refused call raises lowbit.UnsupportedError (no backend can take it: the message names each
unmet constraint per backend and an "Alternative:") or ValueError (malformed: mismatched shapes or
buffers) - never AssertionError, RuntimeError or IndexError. Nothing is written before the checks
pass. Here: the exact text of one dispatch refusal, the out= buffers that are taken, a q_buf whose
storage is too small (in a child process), and lowbit.supports answering for hardware this machine lacks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from oracles import packed_strides

import lowbit

Unsupported = lowbit.UnsupportedError
E4M3, E2M1, E8M0 = torch.float8_e4m3fn, torch.float4_e2m1fn_x2, torch.float8_e8m0fnu


# --- helpers ------------------------------------------------------------------------------------

def randn(*shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def q_buf(*shape, dtype=E4M3) -> torch.Tensor:
    """A q buffer prefilled with the byte 0xA5."""
    t = torch.empty(shape, dtype=dtype)
    t.view(torch.uint8).fill_(0xA5)
    return t


def s_buf(*shape, strides=None, dtype=torch.int32, offset=0, extra=0) -> torch.Tensor:
    """A scale buffer of `shape` with `strides` (default: the packed [FP8-PACK] ones), over a
    storage of exactly the words it spans (+ `extra`), prefilled with the bytes 0x5A."""
    *lead, mn, words = shape
    strides = packed_strides(tuple(lead), mn, words) if strides is None else strides
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
    base = torch.empty(offset + span + extra, dtype=dtype)
    base.view(torch.uint8).fill_(0x5A)
    return base.as_strided(shape, strides, offset)


def _shrunk(t: torch.Tensor, nbytes: int) -> torch.Tensor:
    t.untyped_storage().resize_(nbytes)
    return t


def test_unsupported_error_is_a_value_error():
    assert issubclass(Unsupported, ValueError)


# --- out= buffers that fit are taken ----------------------------------------------------------------

@pytest.mark.parametrize("rows", ("mn", "A"))
@pytest.mark.parametrize("shape", ((5, 256), (2, 5, 256)), ids=("2d", "3d"))
def test_out_accepts_the_spec_buffers(shape, rows):
    x = randn(*shape, seed=5)
    *lead, mn, k = shape
    r = mn if rows == "mn" else 8
    q = q_buf(*lead, r, k)
    s = s_buf(*lead, mn, 2)  # exactly vLLM's minimal storage
    got = lowbit.quantize_fp8_group_packed(x, group_size=32, out=(q, s))
    assert got[0] is q and got[1] is s
    want_q, want_s = lowbit.quantize_fp8_group_packed(x, group_size=32)
    assert torch.equal(q[..., :mn, :].view(torch.uint8), want_q.view(torch.uint8))
    assert not q[..., mn:, :].view(torch.uint8).any()  # [FP8-OUT]: rows >= mn written as 0
    assert torch.equal(s, want_s)


def test_out_accepts_exactly_enough_storage_after_an_offset():
    x = randn(5, 256, seed=6)
    s = _shrunk(s_buf(5, 2, offset=4, extra=3), 17 * 4)  # 4 + 13 words
    lowbit.quantize_fp8_group_packed(x, group_size=32, out=(q_buf(5, 256), s))
    assert torch.equal(s, lowbit.quantize_fp8_group_packed(x, group_size=32)[1])


@pytest.mark.parametrize("rows", (5, 8), ids=("R=mn", "R=A"))
def test_out_q_buf_storage_too_small_is_refused(rows):
    """[FP8-OUT]: "storage too small" raises before anything is written - for q_buf as for s_buf.
    Run in a child process: without the check the kernel writes past the end of q_buf's storage."""
    script = textwrap.dedent(f"""
        import json, torch, lowbit
        x = torch.randn(5, 256)
        q = torch.empty({rows}, 256, dtype=torch.float8_e4m3fn)
        q.view(torch.uint8).fill_(0xA5)
        q.untyped_storage().resize_(256)       # 1 row of the 8 the buffer claims
        s = torch.empty_strided((5, 2), (1, 8), dtype=torch.int32)
        s.fill_(0x5A5A5A5A)
        left = torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage())
        try:
            lowbit.quantize_fp8_group_packed(x, group_size=32, out=(q, s))
            result = {{"raised": None}}
        except Exception as exc:
            result = {{"raised": type(exc).__name__, "message": str(exc)}}
        result["q_untouched"] = bool((left == 0xA5).all())
        result["s_untouched"] = bool((s == 0x5A5A5A5A).all())
        print("RESULT " + json.dumps(result))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"the child process died (rc {proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["raised"] == "ValueError", result
    assert "q_buf" in result["message"] and "storage" in result["message"], result
    assert result["q_untouched"] and result["s_untouched"], result


# --- lowbit.supports on meta tensors, for a device this machine lacks ----------------------------------

def test_supports_meta_cuda_without_an_arch_falls_back_to_cpu():
    x = torch.empty(8, 64, device="meta")
    v = lowbit.supports("quantize_mxfp4", x, device="cuda")  # this machine cannot tell the arch
    assert (v.ok, v.backend, v.fallback) == (True, "cpu", True)
    assert v.reasons == {"cuda/ptx": ["needs {sm_100, sm_103, sm_110, sm_120, sm_121} and cannot tell this cuda "
                                      "device's arch"],
                         "cuda/bf16x2": ["needs {sm_90} and cannot tell this cuda device's arch",
                                         "input dtype float32 is not one of bfloat16"],
                         "cuda/triton": ["needs sm_80+ and cannot tell this cuda device's arch"]}
    for arch, variant in (("sm_90", "triton"), ((10, 0), "ptx")):
        v = lowbit.supports("quantize_mxfp4", x, device="cuda", arch=arch)
        assert (v.ok, v.backend, v.variant, v.fallback) == (True, "cuda", variant, False)
    v = lowbit.supports("quantize_mxfp4", x.bfloat16(), device="cuda", arch="sm_90")
    assert (v.ok, v.backend, v.variant, v.fallback) == (True, "cuda", "bf16x2", False)


def test_supports_meta_cuda_refusal_names_the_constraint():
    v = lowbit.supports("quantize_mxfp4", torch.empty(8, 60, device="meta"), device="cuda", arch="sm_90")
    assert (v.ok, v.backend) == (False, None)
    assert v.reasons == {"cuda/ptx": ["needs {sm_100, sm_103, sm_110, sm_120, sm_121}, not sm_90",
                                      "last dim 60 is not a multiple of the block size 32"],
                         "cuda/bf16x2": ["input dtype float32 is not one of bfloat16",
                                         "last dim 60 is not a multiple of the block size 32"],
                         "cuda/triton": ["last dim 60 is not a multiple of the block size 32"],
                         "cpu": ["last dim 60 is not a multiple of the block size 32"]}
    assert "on cuda" in v.explain() and "Alternative: pad the last dim" in v.explain()


def test_supports_meta_xpu_fp8_group_size():
    v = lowbit.supports("quantize_fp8_group_packed", torch.empty(4, 96, device="meta", dtype=torch.bfloat16),
                        group_size=64, device="xpu")
    assert (v.ok, v.backend) == (False, None)
    # the xpu record (group 128 only) and the reference both name the group that does not divide K
    assert v.reasons == {"xpu/triton": ["group_size 64 does not divide the last dim 96"],
                         "cpu": ["group_size 64 does not divide the last dim 96"]}


def test_supports_meta_dequantize_dtypes():
    q = torch.empty(4, 128, dtype=torch.bfloat16, device="meta")
    s = torch.empty_strided((4, 1), (1, 4), dtype=torch.int32, device="meta")
    v = lowbit.supports("dequantize_fp8_group_packed", q, s, dtype=torch.float64, device="cuda")
    assert not v.ok
    dtypes = ["input dtype bfloat16 is not one of float8_e4m3fn, uint8",
              "output dtype float64 is not one of bfloat16, float16, float32"]
    assert v.reasons == {"cuda/triton": ["needs sm_89+ and cannot tell this cuda device's arch", *dtypes],
                         "cpu": dtypes}


def test_supports_meta_forced_unknown_backend():
    v = lowbit.supports("quantize_mxfp4", torch.empty(8, 64, device="meta"), device="cuda", backend="nope")
    assert (v.ok, v.backend) == (False, None)
    assert v.reasons == {"nope": ["no backend is named 'nope' (known: cuda, xpu, cpu)"]}


# --------------------------------------------------------------------------------------------
# [ERR-UNSUPPORTED]
# --------------------------------------------------------------------------------------------


def test_err_unsupported_names_every_unmet_constraint_per_backend_and_an_alternative():
    x = torch.zeros(40, dtype=torch.int32)  # wrong dtype and K = 40 not a multiple of 32, at once
    with pytest.raises(lowbit.UnsupportedError) as error:
        lowbit.quantize_mxfp4(x)
    assert isinstance(error.value, ValueError)
    assert str(error.value).splitlines() == [
        "lowbit.quantize_mxfp4 for int32 input, ndim 1, last dim 40, scale_rule 'rceil', on cpu: no backend can run it:",
        "  - cpu: input dtype int32 is not one of float32, float16, bfloat16",
        "  - cpu: last dim 40 is not a multiple of the block size 32",
        "Alternative: cast the input to float32; or pad the last dim with zeros to a multiple of 32",
    ]


def test_err_unsupported_is_raised_before_anything_is_written():
    x = torch.randn(4, 256, dtype=torch.float64)  # float64: refused
    q_buf = torch.full((4, 256), 0x11, dtype=torch.uint8).view(torch.float8_e4m3fn)
    s_buf = torch.full((8,), 0x22222222, dtype=torch.int32).as_strided((4, 2), (1, 4))
    with pytest.raises(lowbit.UnsupportedError, match="input dtype float64"):
        lowbit.quantize_fp8_group_packed(x, group_size=32, out=(q_buf, s_buf))
    assert (q_buf.view(torch.uint8) == 0x11).all() and (s_buf == 0x22222222).all()


# --- [ERR-OVERLAP]: buffers that share storage bytes with each other or the input are refused
# (tests/test_refusals.py: *-overlap, *-over-x); disjoint views of one workspace are taken --------------

def _workspace_buffers(op):
    """(x, buffers carved from one uint8 workspace) for `op`: the scale buffer right after the element one."""
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(1))
    q_bytes = 4 * 128 if op == "per_token_group_quant_mxfp4" else 4 * 256
    s_shape, s_dtype = {"per_token_group_quant_mxfp4": ((4, 8), torch.float32),
                        "quantize_fp8_group": ((4, 2), torch.float32)}.get(op, ((1, 4), torch.int32))
    s_bytes = 4 * s_shape[0] * s_shape[1]
    work = torch.full((q_bytes + s_bytes,), 0x5A, dtype=torch.uint8)
    start = q_bytes
    q = work[:q_bytes]
    q = q.view(4, 128) if op == "per_token_group_quant_mxfp4" else q.view(torch.float8_e4m3fn).view(4, 256)
    s = work[start:start + s_bytes].view(s_dtype).view(s_shape)
    return x, work, q, s.t() if op == "quantize_fp8_group_packed" else s


def _call_with_buffers(op, x, q, s):
    if op == "per_token_group_quant_mxfp4":
        return lambda: lowbit.per_token_group_quant_mxfp4(x, q, s)
    return lambda: getattr(lowbit, op)(x, out=(q, s))


OVERLAP_OPS = ["per_token_group_quant_mxfp4", "quantize_fp8_group_packed", "quantize_fp8_group"]


@pytest.mark.parametrize("op", OVERLAP_OPS)
def test_err_overlap_disjoint_buffers_of_one_workspace_are_taken(op):
    x, _, q, s = _workspace_buffers(op)
    _call_with_buffers(op, x, q, s)()
    x2, _, q2, s2 = _workspace_buffers(op)
    q2, s2 = torch.empty_like(q2), torch.empty_strided(s2.shape, s2.stride(), dtype=s2.dtype)
    _call_with_buffers(op, x2, q2, s2)()
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)
