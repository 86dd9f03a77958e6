"""lowbit.unified_attention as an API: fakes, dispatch and capability records, argument errors,
torch.compile, opcheck, supports/explain.

* The fake (FakeTensorMode, fake cpu and cuda tensors) returns what the real call returns (shape,
  dtype, strides; the given `out` itself) and refuses what the real call refuses, with the same
  exception type and text (on fake cuda: the text `lowbit.explain` gives for cuda).
* UnsupportedError names the limit: the head-count ratio, a block table too short for
  max_seqlen_k, a KV cache dtype the query does not pair with, the cuda records' head sizes,
  page sizes and archs.
* ValueError names the malformed argument.
"""

from __future__ import annotations

import inspect
import io
import logging
import re

import pytest
import torch
from oracles import NO_SCHEMA_CHECK, E, as_fake, caught, layout
from preambles import FAKE_DEVICE, fake_tensors_unavailable
from test_refusals import FIX
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import cli, dispatch, registry
from lowbit.backend import Backend, Kernel
from lowbit.capability import ArchRange, Capability

BF16, F16, F32, E4M3, I32 = torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.int32
OP = "unified_attention"
CPU_AND_CUDA = ("cpu", pytest.param("cuda", marks=FAKE_DEVICE["cuda"]))


# --- calls ----------------------------------------------------------------------------------------

def build(d, *, q=(4, 4, 16), cache=(6, 4, 2, 16), v_cache=None, dtype=BF16, kv_dtype=None, v_dtype=None, seqs=2,
          width=3, index_dtype=I32, max_q=3, max_k=9, **extra):
    """A call on device `d` with tensors that hold no data (for refusals and queries): 2 sequences,
    4 query heads on 2 KV heads, head size 16, 6 pages of 4 tokens, 3 table columns. `extra`:
    more keyword arguments, tensors given as functions of the device."""
    kv_dtype = kv_dtype or dtype
    args = (E(*q, dtype=dtype, d=d), E(*cache, dtype=kv_dtype, d=d),
            E(*(v_cache or cache), dtype=v_dtype or kv_dtype, d=d))
    kwargs = dict(cu_seqlens_q=E(seqs + 1, dtype=index_dtype, d=d), seqused_k=E(seqs, dtype=I32, d=d),
                  block_table=E(seqs, width, dtype=I32, d=d), max_seqlen_q=max_q, max_seqlen_k=max_k)
    kwargs.update({k: v(d) if callable(v) else v for k, v in extra.items()})
    return args, kwargs


def real(dtype=BF16, kv_dtype=None, *, heads=(4, 2), d=16, seed=0, **extra):
    """A valid CPU call with values: sequences (q_len 3, kv_len 5) and (q_len 1, kv_len 9), pages of 4."""
    kv_dtype = kv_dtype or dtype
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, heads[0], d, generator=g).to(dtype)
    k = torch.randn(6, 4, heads[1], d, generator=g).to(kv_dtype)
    v = torch.randn(6, 4, heads[1], d, generator=g).to(kv_dtype)
    kwargs = dict(cu_seqlens_q=torch.tensor([0, 3, 4], dtype=I32), seqused_k=torch.tensor([5, 9], dtype=I32),
                  block_table=torch.tensor([[1, 0, 5], [2, 4, 3]], dtype=I32), max_seqlen_q=3, max_seqlen_k=9)
    if dtype == E4M3:
        kwargs["q_descale"] = torch.tensor([0.75])
    if kv_dtype == E4M3:
        kwargs.update(k_descale=torch.tensor([0.5]), v_descale=torch.tensor([0.25]))
    kwargs.update(extra)
    return (q, k, v), kwargs


# --- fakes: outputs -------------------------------------------------------------------------------

def _heads_slice():
    (q, k, v), kw = real()
    big = torch.randn(4, 8, 16).to(BF16)
    big[:, 2:6] = q
    return (big[:, 2:6], k, v), kw


def _out_slice():
    args, kw = real(F16)
    return args, dict(kw, out=torch.empty(4, 2, 4, 16, dtype=F16)[:, 1])


LAYOUT_CASES = {
    "bf16": lambda: real(BF16),
    "f16": lambda: real(F16),
    "fp8": lambda: real(E4M3),
    "fp8-out-f16": lambda: real(E4M3, out=torch.empty(4, 4, 16, dtype=F16)),
    "bf16-fp8-cache": lambda: real(BF16, E4M3),
    "q-heads-slice": _heads_slice,
    "out-slice": _out_slice,
    "mqa-sinks-alibi-window": lambda: real(BF16, heads=(4, 1), sinks=torch.zeros(4), alibi_slopes=torch.ones(4),
                                           window_size=(2, 0), softcap=3.0, causal=False),
}


@pytest.mark.parametrize("device", CPU_AND_CUDA)
@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_fake_output_matches_real(case, device):
    args, kwargs = LAYOUT_CASES[case]()
    want = lowbit.unified_attention(*args, **kwargs)
    if "out" in kwargs:
        assert want is kwargs["out"]
    with FakeTensorMode():
        fargs = tuple(as_fake(a, device) for a in args)
        fkwargs = {k: as_fake(v, device) for k, v in kwargs.items()}
        got = lowbit.unified_attention(*fargs, **fkwargs)
        if "out" in fkwargs:
            assert got is fkwargs["out"]
        got_layout, got_device = layout(got, storage=False), got.device.type
    assert got_device == device
    assert got_layout == layout(want, storage=False)


def test_fake_zero_tokens():
    with FakeTensorMode():
        args, kwargs = build("cpu", q=(0, 4, 16))
        out = lowbit.unified_attention(*args, **kwargs)
        assert (tuple(out.shape), out.dtype) == ((0, 4, 16), BF16)


# --- fakes and queries: refusals ----------------------------------------------------------------

ONE = lambda d: E(1, d=d)

ERROR_CASES = {
    # UnsupportedError: limits
    "head-ratio-6-over-4": lambda d: build(d, q=(4, 6, 16), cache=(6, 4, 4, 16)),
    "table-too-short": lambda d: build(d, width=2, max_k=9),
    "bf16-q-f16-cache": lambda d: build(d, kv_dtype=F16),
    "f16-q-bf16-cache": lambda d: build(d, dtype=F16, kv_dtype=BF16),
    "fp8-q-bf16-cache": lambda d: build(d, dtype=E4M3, kv_dtype=BF16, q_descale=ONE),
    "q-float32": lambda d: build(d, dtype=F32),
    "backend-nope": lambda d: build(d, backend="nope"),
    # ValueError: malformed arguments
    "q-descale-missing": lambda d: build(d, dtype=E4M3, k_descale=ONE, v_descale=ONE),
    "k-descale-missing": lambda d: build(d, dtype=E4M3, q_descale=ONE, v_descale=ONE),
    "q-descale-with-bf16": lambda d: build(d, q_descale=ONE),
    "v-descale-with-bf16": lambda d: build(d, v_descale=ONE),
    "descale-per-query-head": lambda d: build(d, dtype=E4M3, q_descale=lambda d: E(2, 4, d=d), k_descale=ONE,
                                              v_descale=ONE),
    "descale-float64": lambda d: build(d, kv_dtype=E4M3, k_descale=lambda d: E(1, dtype=torch.float64, d=d),
                                       v_descale=ONE),
    "descale-2-values": lambda d: build(d, kv_dtype=E4M3, k_descale=ONE, v_descale=lambda d: E(2, d=d)),
    "out-shape": lambda d: build(d, out=lambda d: E(4, 4, 8, dtype=BF16, d=d)),
    "out-dtype-differs": lambda d: build(d, out=lambda d: E(4, 4, 16, dtype=F16, d=d)),
    "out-float32-fp8-q": lambda d: build(d, dtype=E4M3, q_descale=ONE, k_descale=ONE, v_descale=ONE,
                                         out=lambda d: E(4, 4, 16, dtype=F32, d=d)),
    "cu-seqlens-int64": lambda d: build(d, index_dtype=torch.int64),
    "seqused-k-int64": lambda d: build(d, seqused_k=lambda d: E(2, dtype=torch.int64, d=d)),
    "block-table-int64": lambda d: build(d, block_table=lambda d: E(2, 3, dtype=torch.int64, d=d)),
    "block-table-1d": lambda d: build(d, block_table=lambda d: E(6, dtype=I32, d=d)),
    "block-table-rows": lambda d: build(d, block_table=lambda d: E(1, 3, dtype=I32, d=d)),
    "seqused-k-length": lambda d: build(d, seqused_k=lambda d: E(3, dtype=I32, d=d)),
    "window-triple": lambda d: build(d, window_size=(1, 2, 3)),
    "window-float": lambda d: build(d, window_size=(1.0, 2)),
    "window-int": lambda d: build(d, window_size=4),
    "window-bool": lambda d: build(d, window_size=(True, 0)),
    "window-below-minus-one": lambda d: build(d, window_size=(-2, 0)),
    "softcap-negative": lambda d: build(d, softcap=-1.0),
    "softcap-nan": lambda d: build(d, softcap=float("nan")),
    "softcap-str": lambda d: build(d, softcap="5"),
    "softmax-scale-inf": lambda d: build(d, softmax_scale=float("inf")),
    "softmax-scale-zero": lambda d: build(d, softmax_scale=0.0),
    "softmax-scale-negative": lambda d: build(d, softmax_scale=-0.125),
    "max-seqlen-q-float": lambda d: build(d, max_q=3.0),
    "max-seqlen-k-negative": lambda d: build(d, max_k=-1),
    "causal-int": lambda d: build(d, causal=1),
    "head-size-differs": lambda d: build(d, cache=(6, 4, 2, 8)),
    "v-shape-differs": lambda d: build(d, v_cache=(6, 4, 1, 16)),
    "k-v-dtypes-differ": lambda d: build(d, kv_dtype=E4M3, v_dtype=BF16, k_descale=ONE),
    "q-2d": lambda d: build(d, q=(4, 64)),
    "cache-3d": lambda d: build(d, cache=(6, 4, 32)),
    "zero-kv-heads": lambda d: build(d, cache=(6, 4, 0, 16)),
    "alibi-shape": lambda d: build(d, alibi_slopes=lambda d: E(2, d=d)),
    "sinks-int32": lambda d: build(d, sinks=lambda d: E(4, dtype=I32, d=d)),
    # TypeError: a non-tensor where a tensor goes
    "q-list": lambda d: _replace_q(build(d), [[[0.0] * 16] * 4] * 4),
    "block-table-none": lambda d: build(d, block_table=None),
    "cu-seqlens-tuple": lambda d: build(d, cu_seqlens_q=(0, 2, 3)),
    "sinks-list": lambda d: build(d, sinks=[0.0] * 4),
    "out-int": lambda d: build(d, out=3),
}
def _replace_q(call, q):
    args, kwargs = call
    return (q, *args[1:]), kwargs


MIXED_DEVICE_CASES = {  # not expressible with meta tensors for a query
    "block-table-on-meta": lambda d: build(d, block_table=lambda d: E(2, 3, dtype=I32, d="meta")),
}
TYPE_ERRORS = {"q-list", "block-table-none", "cu-seqlens-tuple", "sinks-list", "out-int"}
UNSUPPORTED = {"head-ratio-6-over-4", "table-too-short", "bf16-q-f16-cache", "f16-q-bf16-cache", "fp8-q-bf16-cache",
               "q-float32", "backend-nope"}


def _real_error(case):
    args, kwargs = {**ERROR_CASES, **MIXED_DEVICE_CASES}[case]("cpu")
    exc = caught(lambda: lowbit.unified_attention(*args, **kwargs))
    assert exc is not None, f"{case}: the real call did not raise"
    want = lowbit.UnsupportedError if case in UNSUPPORTED else TypeError if case in TYPE_ERRORS else ValueError
    assert type(exc) is want, f"{case}: {type(exc).__name__}: {exc}"
    return exc


@pytest.mark.parametrize("case", [*ERROR_CASES, *MIXED_DEVICE_CASES])
def test_fake_cpu_raises_what_real_raises(case):
    real_exc = _real_error(case)
    with FakeTensorMode():
        args, kwargs = {**ERROR_CASES, **MIXED_DEVICE_CASES}[case]("cpu")
        fake = caught(lambda: lowbit.unified_attention(*args, **kwargs))
    assert fake is not None
    assert (type(fake), str(fake)) == (type(real_exc), str(real_exc))


FAKE_ACCELERATORS = [pytest.param(d, marks=FAKE_DEVICE[d]) for d in ("cuda", "xpu")]


@pytest.mark.parametrize("device", FAKE_ACCELERATORS)
@pytest.mark.parametrize("case", ERROR_CASES)
def test_fake_accelerator_and_explain_refuse_as_the_call_does(case, device):
    """Every refused input through the three: the real CPU call, the fake call on an accelerator,
    and explain()/supports() on meta tensors for that accelerator."""
    real_exc = _real_error(case)
    with FakeTensorMode():
        args, kwargs = ERROR_CASES[case](device)
        fake = caught(lambda: lowbit.unified_attention(*args, **kwargs))
    assert fake is not None and type(fake) is type(real_exc)
    margs, mkwargs = ERROR_CASES[case]("meta")
    query = caught(lambda: lowbit.explain(OP, *margs, device=device, **mkwargs))
    if query is not None:  # refused before dispatch: the same text on every device, supports() too
        assert str(fake) == str(query) == str(real_exc)
        asked = caught(lambda: lowbit.supports(OP, *margs, device=device, **mkwargs))
        assert (type(asked), str(asked)) == (type(real_exc), str(real_exc))
    else:  # a dispatch refusal: the fake raises the decision explain() describes for the device
        expected = lowbit.explain(OP, *margs, device=device, **mkwargs)
        assert f"on {device}" in expected and str(fake) == expected
        assert not lowbit.supports(OP, *margs, device=device, **mkwargs).ok
        cpu_lines = [line for line in str(real_exc).splitlines() if line.startswith("  - ")]
        assert cpu_lines and all(line in str(fake).splitlines() for line in cpu_lines)


@pytest.mark.parametrize(("case", "needs"), [
    ("head-ratio-6-over-4", "q has 6 heads, not a multiple of k_cache's 4 KV heads"),
    ("table-too-short", "block_table has 2 pages per sequence of 4 tokens = 8 tokens, fewer than max_seqlen_k=9"),
    ("bf16-q-f16-cache", "cpu: a bfloat16 query takes a KV cache of bfloat16, float8_e4m3fn, not float16"),
    ("f16-q-bf16-cache", "cpu: a float16 query takes a KV cache of float16, float8_e4m3fn, not bfloat16"),
    ("fp8-q-bf16-cache", "cpu: a float8_e4m3fn query takes a KV cache of float8_e4m3fn, not bfloat16"),
    ("q-float32", "cpu: input dtype float32 is not one of bfloat16, float16, float8_e4m3fn"),
    ("backend-nope", "no backend is named 'nope'"),
])
def test_unsupported_error_names_the_constraint(case, needs):
    assert needs in str(_real_error(case))


@pytest.mark.parametrize(("case", "needs"), [
    ("q-descale-missing", "q_descale is required with a float8_e4m3fn q"),
    ("k-descale-missing", "k_descale is required with a float8_e4m3fn k_cache"),
    ("q-descale-with-bf16", "q_descale applies to float8_e4m3fn tensors only; this one is bfloat16"),
    ("v-descale-with-bf16", "v_descale applies to float8_e4m3fn tensors only"),
    ("descale-per-query-head", "q_descale must be float32 with one value (per tensor) or shape (2, 2)"),
    ("descale-float64", "k_descale must be float32"),
    ("descale-2-values", "not (2,) float32"),
    ("out-shape", "out has shape (4, 4, 8), needs q's (4, 4, 16)"),
    ("out-dtype-differs", "out dtype float16 differs from q's bfloat16"),
    ("out-float32-fp8-q", "out dtype float32 is not bfloat16 or float16"),
    ("cu-seqlens-int64", "cu_seqlens_q must be a 1-D int32 tensor, not 1-D int64"),
    ("seqused-k-int64", "seqused_k must be a 1-D int32 tensor"),
    ("block-table-int64", "block_table must be a 2-D int32 tensor, not 2-D int64"),
    ("block-table-1d", "block_table must be a 2-D int32 tensor, not 1-D int32"),
    ("block-table-rows", "block_table has 1 rows for 2 sequences"),
    ("seqused-k-length", "seqused_k has 3 entries, cu_seqlens_q says 2 sequences"),
    ("window-triple", "window_size=(1, 2, 3) must be a pair of ints"),
    ("window-float", "window_size=(1.0, 2) must be a pair of ints"),
    ("window-int", "window_size=4 must be a pair of ints"),
    ("window-bool", "must be a pair of ints"),
    ("window-below-minus-one", "window_size=(-2, 0) needs values >= -1"),
    ("softcap-negative", "softcap=-1.0 must be finite and >= 0"),
    ("softcap-nan", "softcap=nan must be finite and >= 0"),
    ("softcap-str", "softcap='5' is of type str"),
    ("softmax-scale-inf", "softmax_scale=inf must be finite"),
    ("softmax-scale-zero", "softmax_scale=0.0 must be finite and > 0"),
    ("softmax-scale-negative", "softmax_scale=-0.125 must be finite and > 0"),
    ("max-seqlen-q-float", "max_seqlen_q=3.0 is of type float, not int"),
    ("max-seqlen-k-negative", "max_seqlen_k=-1 must be >= 0"),
    ("causal-int", "causal=1 is of type int, not bool"),
    ("head-size-differs", "q head size 16 differs from the cache's 8"),
    ("v-shape-differs", "need one shape"),
    ("k-v-dtypes-differ", "k_cache is float8_e4m3fn and v_cache bfloat16"),
    ("q-2d", "q has shape (4, 64); needs (num_tokens, num_heads, head_size)"),
    ("cache-3d", "need one shape (num_blocks, block_size, num_kv_heads, head_size)"),
    ("zero-kv-heads", "need num_heads, num_kv_heads and block_size >= 1"),
    ("alibi-shape", "alibi_slopes must be a float tensor of shape (4,)"),
    ("sinks-int32", "sinks must be a float tensor of shape (4,)"),
    ("block-table-on-meta", "block_table is on meta, q on cpu"),
])
def test_value_error_names_the_argument(case, needs):
    exc = _real_error(case)
    assert not isinstance(exc, lowbit.UnsupportedError)
    assert str(exc).startswith("lowbit.unified_attention")
    assert needs in str(exc), str(exc)


@pytest.mark.parametrize(("case", "needs"), [
    ("q-list", "lowbit.unified_attention: q must be a tensor, not list; pass e.g. a (num_tokens, num_heads, "
               "head_size) bfloat16 tensor"),
    ("block-table-none", "block_table must be a tensor, not NoneType"),
    ("cu-seqlens-tuple", "cu_seqlens_q must be a tensor, not tuple"),
    ("sinks-list", "sinks must be a tensor, not list; pass e.g. a (num_heads,) float32 tensor, or None"),
    ("out-int", "out must be a tensor, not int"),
])
def test_type_error_names_the_argument(case, needs):
    assert needs in str(_real_error(case))


@pytest.mark.parametrize("case", [*ERROR_CASES, *MIXED_DEVICE_CASES])
def test_refusal_names_the_argument_and_a_fix(case):
    """The convention of tests/test_refusals.py: "lowbit.unified_attention: <argument> ...; pass ..."
    (or "; use ...", or an "Alternative: " line); a dispatch refusal names the call and each backend."""
    text = str(_real_error(case))
    assert FIX.search(text), f"no fix in:\n{text}"
    if not text.startswith(f"lowbit.{OP} for "):
        arguments = "|".join(inspect.signature(lowbit.unified_attention).parameters)
        assert re.match(rf"lowbit\.{OP}: (?:{arguments})\b", text), text


def test_every_error_case_has_its_message_checked():
    checked = {p[0] for p in _params(test_unsupported_error_names_the_constraint)}
    checked |= {p[0] for p in _params(test_type_error_names_the_argument)}
    checked |= {p[0] for p in _params(test_value_error_names_the_argument)}
    assert checked == set(ERROR_CASES) | set(MIXED_DEVICE_CASES)


def _params(fn):
    mark = next(m for m in fn.pytestmark if m.name == "parametrize")
    return mark.args[1]


# --- dispatch and capability records --------------------------------------------------------------

def test_supports_and_explain_for_a_cpu_call_name_the_cpu_backend():
    args, kwargs = real()
    verdict = lowbit.supports(OP, *args, **kwargs)
    assert verdict.ok and verdict.backend == "cpu" and not verdict.fallback
    text = lowbit.explain(OP, *args, **kwargs)
    assert text.splitlines()[0] == (
        "lowbit.unified_attention for bfloat16 input, ndim 3, last dim 16, bfloat16 KV cache, 4 query / 2 KV heads, "
        "page size 4, output bfloat16, on cpu: runs on backend 'cpu'")
    assert "fidelity: the SPEC's reference" in text


def test_explain_for_an_fp8_query_names_the_cache_and_output_dtypes():
    args, kwargs = real(E4M3, out=torch.empty(4, 4, 16, dtype=F16))
    kwargs.pop("out")
    assert "float8_e4m3fn input, ndim 3, last dim 16, float8_e4m3fn KV cache" in lowbit.explain(OP, *args, **kwargs)
    assert "output bfloat16" in lowbit.explain(OP, *args, **kwargs)
    assert "output float16" in lowbit.explain(OP, *args, **kwargs, out=torch.empty(4, 4, 16, dtype=F16))


def test_cpu_record():
    (record,) = [c for c in lowbit.capabilities() if c.op == OP and c.backend == "cpu"]
    assert record.any_device and not record.graph_safe and record.compile_safe
    assert set(record.dtypes) == {BF16, F16, E4M3}
    assert {q: set(kv) for q, kv in record.kv_dtypes.items()} == {BF16: {BF16, E4M3}, F16: {F16, E4M3}, E4M3: {E4M3}}


def _probe(**changes):
    fields = dict(op=OP, backend="probe", devices=("cuda",), archs={"cuda": ArchRange(90)}, dtypes=(BF16, E4M3),
                  kv_dtypes={BF16: (BF16,), E4M3: (E4M3,)}, head_sizes=(64, 128), page_size_multiple=32,
                  fidelity="test stand-in", graph_safe=True, compile_safe=True, min_ndim=3, max_ndim=3,
                  last_dim_contiguous=True)
    fields.update(changes)
    return Backend(name="probe", priority=50, summary="test stand-in",
                   kernels=(Kernel(Capability(**fields), lambda *a, **k: None),))


@pytest.mark.parametrize(("head_size", "page_size", "kv_dtype", "arch", "unmet"), [
    (64, 32, BF16, "sm_90", []),
    (128, 64, BF16, "sm_100", []),
    (32, 32, BF16, "sm_90", ["head size 32 is outside 64..128"]),
    (192, 32, BF16, "sm_90", ["head size 192 is outside 64..128"]),
    (64, 16, BF16, "sm_90", ["page size 16 is not a multiple of 32"]),
    (64, 32, E4M3, "sm_90", ["a bfloat16 query takes a KV cache of bfloat16, not float8_e4m3fn"]),
    (64, 32, BF16, "sm_80", ["needs sm_90+, not sm_80"]),
    (256, 48, E4M3, "sm_80", ["needs sm_90+, not sm_80", "a bfloat16 query takes a KV cache of bfloat16, not "
                              "float8_e4m3fn", "head size 256 is outside 64..128", "page size 48 is not a multiple of 32"]),
])
def test_capability_fields_of_attention_refuse_with_reasons(head_size, page_size, kv_dtype, arch, unmet):
    """A stand-in record exercises the attention fields of the capability model (kv_dtypes,
    head_sizes, page_size_multiple) through lowbit.supports on meta tensors."""
    registry.register(_probe())
    margs, mkwargs = build("meta", q=(4, 4, head_size), cache=(6, page_size, 2, head_size), kv_dtype=kv_dtype,
                           max_k=3 * page_size, **({"k_descale": ONE, "v_descale": ONE} if kv_dtype == E4M3 else {}))
    verdict = lowbit.supports(OP, *margs, device="cuda", arch=arch, **mkwargs)
    reasons = verdict.reasons
    if not unmet:
        assert verdict.ok and verdict.backend == "probe" and "probe" not in reasons
    else:
        assert reasons["probe"] == unmet
        assert verdict.ok and verdict.backend != "probe"  # another backend (cuda, or the reference) takes it
        assert all(f"  - probe: {u}" in verdict.explain() for u in unmet)
    row = verdict.kernel.capability.as_row() if verdict.backend == "probe" else _probe().kernels[0].capability.as_row()
    assert row["sizes"] == "head 64..128, page size x32"
    assert row["dtypes"] == "bfloat16/float8_e4m3fn (KV cache: bfloat16 with bfloat16; float8_e4m3fn with float8_e4m3fn)"


def test_capability_needs_a_contiguous_head_dim_when_declared():
    registry.register(_probe())
    margs, mkwargs = build("meta", q=(4, 4, 64), cache=(6, 32, 2, 64), max_k=96)
    strided_q = E(4, 64, 4, dtype=BF16, d="meta").transpose(1, 2)
    verdict = lowbit.supports(OP, strided_q, *margs[1:], device="cuda", arch="sm_90", **mkwargs)
    assert verdict.reasons["probe"] == ["needs stride 1 along the last dim"]


def _cuda_records():
    """The cuda unified_attention records, in the order auto dispatch tries them: "triton" (every
    pairing, sm_89+) and "triton-16bit" (bfloat16/float16 only, sm_80+), one Triton kernel."""
    module = pytest.importorskip("lowbit.backends.cuda.unified_attention")
    return tuple(kernel.capability for kernel in module.KERNELS)


def _cuda_limits():
    """(head sizes, page size multiple): the same in every cuda record."""
    records = _cuda_records()
    assert len({(cap.head_sizes, cap.page_size_multiple) for cap in records}) == 1
    return records[0].head_sizes, records[0].page_size_multiple


def _cuda_reasons(verdict):
    return [r for label, rs in verdict.reasons.items() if label.startswith("cuda") for r in rs]


def test_cuda_record_declares_its_limits():
    fp8, sixteen = _cuda_records()
    assert (fp8.variant, sixteen.variant) == ("triton", "triton-16bit")
    for cap in (fp8, sixteen):
        assert (cap.backend, cap.op, cap.devices) == ("cuda", OP, ("cuda",))
        assert cap.head_sizes == (32, 256) and cap.page_size_multiple == 16
        assert cap.graph_safe and cap.compile_safe
    assert set(fp8.dtypes) == {BF16, F16, E4M3} and fp8.archs["cuda"] == ArchRange(89)
    assert set(sixteen.dtypes) == {BF16, F16} and sixteen.archs["cuda"] == ArchRange(80)


@pytest.mark.parametrize("head_size", [16, 31, 32, 64, 80, 128, 256, 257, 512])
def test_cuda_head_sizes(head_size):
    (low, high), _ = _cuda_limits()
    margs, mkwargs = build("meta", q=(4, 4, head_size), cache=(6, 16, 2, head_size), max_k=48)
    verdict = lowbit.supports(OP, *margs, device="cuda", arch="sm_90", **mkwargs)
    cuda_reasons = _cuda_reasons(verdict)
    outside = f"head size {head_size} is outside {low}..{high}"
    if low <= head_size <= high:
        assert outside not in cuda_reasons
        if registry.unavailable("cuda") is None:
            assert verdict.backend == "cuda" and not verdict.fallback
    else:
        assert cuda_reasons.count(outside) == 2  # each cuda variant names it
        assert verdict.backend == "cpu" and verdict.fallback
        forced = lowbit.supports(OP, *margs, device="cuda", arch="sm_90", backend="cuda", **mkwargs)
        assert not forced.ok
        assert outside in str(forced.error())


@pytest.mark.parametrize(("page_size", "ok"), [(8, False), (16, True), (24, False), (32, True), (48, True)])
def test_cuda_page_sizes(page_size, ok):
    _, multiple = _cuda_limits()
    margs, mkwargs = build("meta", q=(4, 4, 64), cache=(6, page_size, 2, 64), max_k=2 * page_size)
    verdict = lowbit.supports(OP, *margs, device="cuda", arch="sm_90", **mkwargs)
    message = f"page size {page_size} is not a multiple of {multiple}"
    assert (message in _cuda_reasons(verdict)) is not ok


@pytest.mark.parametrize(("arch", "variant"), [("sm_75", None), ("sm_80", "triton-16bit"), ("sm_86", "triton-16bit"),
                                               ("sm_89", "triton"), ("sm_90", "triton"), ("sm_100", "triton")])
def test_cuda_archs(arch, variant):
    _cuda_records()
    margs, mkwargs = build("meta", q=(4, 4, 64), cache=(6, 16, 2, 64), max_k=48)
    verdict = lowbit.supports(OP, *margs, device="cuda", arch=arch, **mkwargs)
    cuda_reasons = _cuda_reasons(verdict)
    assert (f"needs sm_80+, not {arch}" in cuda_reasons) is (variant is None)
    assert (f"needs sm_89+, not {arch}" in cuda_reasons) is (variant != "triton")
    if registry.unavailable("cuda") is None:  # trying "triton" then "triton-16bit" is no fallback
        if variant is None:
            assert (verdict.backend, verdict.fallback) == ("cpu", True)
        else:
            assert (verdict.backend, verdict.variant, verdict.fallback) == ("cuda", variant, False)


def test_cuda_kv_dtype_pairs():
    _cuda_records()
    margs, mkwargs = build("meta", q=(4, 4, 64), cache=(6, 16, 2, 64), max_k=48, kv_dtype=F16)
    verdict = lowbit.supports(OP, *margs, device="cuda", arch="sm_90", **mkwargs)
    assert not verdict.ok
    assert verdict.reasons["cuda/triton"] == ["a bfloat16 query takes a KV cache of bfloat16, float8_e4m3fn, not float16"]
    assert verdict.reasons["cuda/triton-16bit"] == ["a bfloat16 query takes a KV cache of bfloat16, not float16"]


def test_cuda_fp8_cache_below_sm89_falls_back():
    _cuda_records()
    margs, mkwargs = build("meta", q=(4, 4, 64), cache=(6, 16, 2, 64), max_k=48, kv_dtype=E4M3, k_descale=ONE,
                           v_descale=ONE)
    verdict = lowbit.supports(OP, *margs, device="cuda", arch="sm_80", **mkwargs)
    assert verdict.reasons["cuda/triton"] == ["needs sm_89+, not sm_80"]
    assert verdict.reasons["cuda/triton-16bit"] == ["a bfloat16 query takes a KV cache of bfloat16, not float8_e4m3fn"]
    assert (verdict.backend, verdict.fallback) == ("cpu", True)


def test_fake_cuda_head_size_outside_the_record_falls_back_or_refuses_under_strict(monkeypatch, caplog):
    (_, high), _ = _cuda_limits()
    if fake_tensors_unavailable("cuda"):
        pytest.skip(fake_tensors_unavailable("cuda"))
    head_size = high * 2
    dispatch.clear_cache()
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        args, kwargs = build("cuda", q=(4, 4, head_size), cache=(6, 16, 2, head_size), max_k=48)
        out = lowbit.unified_attention(*args, **kwargs)
        assert out.shape == (4, 4, head_size)
    warnings = [r.getMessage() for r in caplog.records if r.name == "lowbit"]
    assert len(warnings) == 1 and "falls back to backend 'cpu'" in warnings[0]
    assert f"head size {head_size} is outside" in warnings[0]
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    with FakeTensorMode():
        args, kwargs = build("cuda", q=(4, 4, head_size), cache=(6, 16, 2, head_size), max_k=48)
        with pytest.raises(lowbit.UnsupportedError, match=f"head size {head_size} is outside"):
            lowbit.unified_attention(*args, **kwargs)


def test_info_lists_the_attention_backends():
    out = io.StringIO()
    cli.info(out)
    text = out.getvalue()
    section = text[text.index("\nunified_attention: "):]
    assert "no installed backend implements it" not in section
    assert "\n  cpu " in section and "the SPEC's reference (float32, one sequence at a time)" in section
    assert "\n  on cpu: cpu" in section


# --- torch.compile and opcheck --------------------------------------------------------------------

def _attention(q, k, v, cu, used, table, sinks):
    return lowbit.unified_attention(q, k, v, cu_seqlens_q=cu, seqused_k=used, block_table=table, max_seqlen_q=3,
                                    max_seqlen_k=9, sinks=sinks, window_size=(4, 0), softcap=5.0)


def _attention_out(q, k, v, cu, used, table, out, q_descale, k_descale, v_descale):
    return lowbit.unified_attention(q, k, v, cu_seqlens_q=cu, seqused_k=used, block_table=table, max_seqlen_q=3,
                                    max_seqlen_k=9, causal=False, q_descale=q_descale, k_descale=k_descale,
                                    v_descale=v_descale, out=out)


def _tensors(args, kwargs):
    return (*args, kwargs["cu_seqlens_q"], kwargs["seqused_k"], kwargs["block_table"])


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    args, kwargs = real()
    sinks = torch.randn(4, generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(_attention, fullgraph=True)
    got, want = compiled(*_tensors(args, kwargs), sinks), _attention(*_tensors(args, kwargs), sinks)
    assert got.dtype == BF16 and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [F16, E4M3])
def test_compile_fullgraph_with_out_matches_eager(dtype):
    torch._dynamo.reset()
    args, kwargs = real(dtype)
    descales = (kwargs.get("q_descale"), kwargs.get("k_descale"), kwargs.get("v_descale"))
    out_dtype = F16
    out, eager_out = (torch.full((4, 4, 16), 3.0, dtype=out_dtype) for _ in range(2))
    compiled = torch.compile(_attention_out, fullgraph=True)
    got = compiled(*_tensors(args, kwargs), out, *descales)
    want = _attention_out(*_tensors(args, kwargs), eager_out, *descales)
    assert torch.equal(got, want) and torch.equal(out, eager_out)
    assert not (out == 3.0).all()  # written in place


def _op_args(args, kwargs, out, *, scale=0.25, causal=True, window=(-1, -1), softcap=0.0, alibi=None, sinks=None):
    return (*args, out, kwargs["cu_seqlens_q"], kwargs["seqused_k"], kwargs["block_table"], kwargs["max_seqlen_q"],
            kwargs["max_seqlen_k"], scale, causal, *window, softcap, alibi, sinks, kwargs.get("q_descale"),
            kwargs.get("k_descale"), kwargs.get("v_descale"), "auto")


def _opcheck_cases():
    bf16_args, bf16_kw = real()
    f16_args, f16_kw = real(F16, heads=(4, 1))
    fp8_args, fp8_kw = real(E4M3)
    return {
        "bf16": (_op_args(bf16_args, bf16_kw, torch.empty(4, 4, 16, dtype=BF16)), None),
        "f16-mqa-alibi-sinks-window": (_op_args(
            f16_args, f16_kw, torch.empty(4, 4, 16, dtype=F16), causal=False, window=(3, 1), softcap=2.0,
            alibi=torch.full((4,), 0.5), sinks=torch.zeros(4)), None),
        "fp8": (_op_args(fp8_args, fp8_kw, torch.empty(4, 4, 16, dtype=F16)), NO_SCHEMA_CHECK),
    }


@pytest.mark.parametrize("name", ["bf16", "f16-mqa-alibi-sinks-window", "fp8"])
def test_opcheck(name):
    op_args, test_utils = _opcheck_cases()[name]
    kwargs = {} if test_utils is None else {"test_utils": test_utils}
    result = torch.library.opcheck(torch.ops.lowbit.unified_attention.default, op_args, **kwargs)
    assert result and set(result.values()) == {"SUCCESS"}, result


def test_op_schema_mutates_exactly_out():
    schema = torch.ops.lowbit.unified_attention.default._schema
    written = [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    assert written == ["out"] and len(schema.returns) == 0
