"""lowbit's FP8-with-float32-scales functions as an API (docs/SPEC.md, "FP8 with float32 scales"):
quantize_fp8_group, dequantize_fp8_group, quantize_fp8_block and dequantize_fp8_block. Layouts and
strides, F.scaled_mm's own stride checks, out=, refusals, capability answers, opcheck,
torch.compile and the eager fast path. The element and scale bits are the SPEC's clauses' tests.

* Returned tensors have the SPEC's shapes, dtypes and exact strides ([F8-LAYOUT], [F8-STORAGE],
  [F8-BLOCK-SCALES]), written out here independently of lowbit/fp8_group.py; fakes (FakeTensorMode,
  on fake cpu, cuda and xpu tensors) have the real CPU outputs' layout and storage size.
* [F8-SCALED-MM]: the scales go into torch's own F.scaled_mm checks as they come.
* [F8-OUT]: buffers of every layout are filled and returned. Buffers that do not fit, and every other
  refused call: tests/test_refusals.py (the real call, the fake and lowbit.supports alike).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from oracles import NO_SCHEMA_CHECK, E, bits, caught, fake_like, layout, randn, round_up, storage_u8
from preambles import DEVICES, FAKE_DEVICE
from test_refusals import REFUSALS  # the refused calls of every op
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import dispatch, registry

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
E4M3, U8 = torch.float8_e4m3fn, torch.uint8
QG, DG, QB, DB = "quantize_fp8_group", "dequantize_fp8_group", "quantize_fp8_block", "dequantize_fp8_block"
FP8_OPS = (QG, DG, QB, DB)
ROW, COL, TMA = "row_major", "column_major", "column_major_tma"
LAYOUTS = (ROW, COL, TMA)
POISON = 0xA5  # the byte every buffer holds before a call that must write nothing
NATIVE_LABEL = {"cpu": "cpu", "cuda": "cuda/triton", "xpu": "xpu/triton"}


# --- helpers --------------------------------------------------------------------------------------

def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def dense_strides(shape) -> tuple:
    strides, step = [], 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= max(n, 1)
    return tuple(strides)


def spec_scale_strides(lead: tuple, mn: int, groups: int, scale_layout: str) -> tuple:
    """[F8-LAYOUT], written out: (..., G, 1), (..., G*mn, 1, mn) or (..., G*A, 1, A)."""
    if scale_layout == ROW:
        return dense_strides((*lead, mn, groups))
    rows = round_up(mn, 4) if scale_layout == TMA else mn
    strides, batch = [1, rows], groups * rows
    for n in reversed(lead):
        strides.insert(0, batch)
        batch *= n
    return tuple(strides)


def poisoned(t: torch.Tensor) -> torch.Tensor:
    torch.empty(0, dtype=U8).set_(t.untyped_storage()).fill_(POISON)
    return t


def s_buffer(lead: tuple, mn: int, groups: int, scale_layout: str, *, storage: str = "full",
             dtype=F32) -> torch.Tensor:
    """A poisoned s_buf of [F8-OUT]: `storage` "full" (G*rows floats per batch) or "min" (just what the
    view spans: mn + (G-1)*A for the last batch of a TMA buffer, as vLLM allocates it)."""
    shape, strides = (*lead, mn, groups), spec_scale_strides(lead, mn, groups, scale_layout)
    extent = 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    rows = round_up(mn, 4) if scale_layout == TMA else mn
    numel = extent if storage == "min" else math.prod(lead) * groups * rows
    return poisoned(torch.empty(numel, dtype=dtype)).as_strided(shape, strides)


def q_buffer(lead: tuple, rows: int, k: int, dtype=E4M3) -> torch.Tensor:
    return poisoned(torch.empty((*lead, rows, k), dtype=dtype))


def expected_scales(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """[F8-SCALE] with the default eps for inputs without NaN/Inf/zero groups: fl32(amax / 448)."""
    amax = x.float().abs().unflatten(-1, (-1, group_size)).amax(-1)
    return amax / torch.tensor(448.0)


def _needs_backend(name: str) -> None:
    if registry.unavailable(name) is not None:
        pytest.skip(f"the {name} backend cannot load here: {registry.unavailable(name)}")


# --- [F8-LAYOUT, F8-STORAGE]: what quantize_fp8_group returns ------------------------------------

MNS = (1, 3, 4, 5, 128, 131)
LEADS = ((), (2,), (2, 3))


@pytest.mark.parametrize("mn", MNS)
@pytest.mark.parametrize("scale_layout", LAYOUTS)
def test_quantize_group_returns_the_spec_shapes_dtypes_and_exact_strides(scale_layout, mn):
    k = 256
    for lead in LEADS:
        for group_size, dtype in ((64, BF16), (128, F32)):
            x = randn(*lead, mn, k, dtype=dtype, seed=mn)
            q, s = lowbit.quantize_fp8_group(x, group_size, scale_layout=scale_layout)
            groups, rows = k // group_size, (round_up(mn, 4) if scale_layout == TMA else mn)
            what = (lead, group_size)
            assert (tuple(q.shape), q.dtype, q.stride(), q.storage_offset()) == (
                tuple(x.shape), E4M3, dense_strides(x.shape), 0), what
            assert (tuple(s.shape), s.dtype, s.stride(), s.storage_offset()) == (
                (*lead, mn, groups), F32, spec_scale_strides(lead, mn, groups, scale_layout), 0), what
            # [F8-STORAGE]: TMA scales own G*A floats per batch, rows mn..A-1 of it 0
            assert s.untyped_storage().nbytes() == 4 * math.prod(lead) * groups * rows, what
            storage = torch.empty(0, dtype=F32).set_(s.untyped_storage()).view(math.prod(lead), -1)
            if scale_layout == TMA:
                padding = storage.view(-1, groups, rows)[..., mn:]
                assert torch.equal(bits(padding), torch.zeros_like(bits(padding))), what
            assert torch.equal(s, expected_scales(x, group_size)), what


@pytest.mark.parametrize("name", ["contiguous-3d", "batch_transposed", "last_dim_strided", "f16-4d"])
def test_every_layout_holds_the_same_elements_and_scales(name):
    x = {"contiguous-3d": lambda: randn(2, 5, 256, dtype=BF16, seed=1),
         "batch_transposed": lambda: randn(5, 2, 256, seed=2).transpose(0, 1),
         "last_dim_strided": lambda: randn(256, 7, seed=3).t(),
         "f16-4d": lambda: randn(2, 1, 3, 128, dtype=F16, seed=4)}[name]()
    for group_size in (64, 128):
        results = {lay: lowbit.quantize_fp8_group(x, group_size, scale_layout=lay) for lay in LAYOUTS}
        q_row, s_row = results[ROW]
        assert torch.equal(s_row, expected_scales(x, group_size))
        for lay, (q, s) in results.items():
            assert q.is_contiguous() and torch.equal(bits(q), bits(q_row)), lay
            assert torch.equal(bits(s), bits(s_row)), lay  # the same logical scales through other strides


@pytest.mark.parametrize(("n", "k", "block"), [(300, 640, (128, 128)), (256, 512, (128, 128)), (5, 130, (128, 128)),
                                               (200, 96, (64, 32)), (1, 1, (128, 128))])
def test_quantize_block_returns_the_spec_shapes_dtypes_and_exact_strides(n, k, block):
    w = randn(n, k, dtype=BF16, seed=n)
    q, s = lowbit.quantize_fp8_block(w, block)
    nb, kb = ceil_div(n, block[0]), ceil_div(k, block[1])
    kb4 = round_up(kb, 4)
    assert (tuple(q.shape), q.dtype, q.stride(), q.storage_offset()) == ((n, k), E4M3, (k, 1), 0)
    assert (tuple(s.shape), s.dtype, s.stride(), s.storage_offset()) == ((kb4, nb), F32, (1, kb4), 0)
    assert s.untyped_storage().nbytes() == 4 * kb4 * nb
    assert torch.equal(bits(s[kb:]), torch.zeros_like(bits(s[kb:])))  # [F8-BLOCK-SCALES] padding rows
    # s[j, i] is block (i, j)'s: amax / 448 over the (partial) tile
    padded = F.pad(w.float().abs(), (0, kb * block[1] - k, 0, nb * block[0] - n))
    amax = padded.reshape(nb, block[0], kb, block[1]).amax((1, 3))
    assert torch.equal(s[:kb], (torch.maximum(amax, torch.tensor(1e-4)) / torch.tensor(448.0)).t())
    weight_scale_inv = s.t()[:, :kb]  # DeepSeek-V3's (Nb, Kb), row-major
    assert weight_scale_inv.stride() == (kb4, 1) and weight_scale_inv.is_contiguous() == (kb == kb4 or nb == 1)


def _fake_layout_cases():
    cases = {}
    for lay in LAYOUTS:
        for mn in (1, 5, 131):
            for lead in ((), (2,), (2, 3)):
                for group_size in (64, 128):
                    cases[f"{lay}-mn{mn}-lead{len(lead)}-g{group_size}"] = (lay, mn, lead, group_size)
    return cases


FAKE_LAYOUT_CASES = _fake_layout_cases()


@pytest.mark.parametrize("device", DEVICES)
def test_fakes_match_the_real_layouts(device, fake_arch, resolved):
    """Every quantize_fp8_group layout, both dequantizes and quantize_fp8_block: fake outputs on fake
    `device` tensors have the real CPU outputs' layout and storage size, on `device`, resolved to
    that device's native kernel (cuda taken as sm_90)."""
    if device != "cpu":
        _needs_backend(device)
    fake_arch(90)
    reals, inputs = [], []
    for lay, mn, lead, group_size in FAKE_LAYOUT_CASES.values():
        x = randn(*lead, mn, 256, dtype=BF16)
        q, s = lowbit.quantize_fp8_group(x, group_size, scale_layout=lay)
        reals.append((q, s, lowbit.dequantize_fp8_group(q, s, group_size=group_size, dtype=F16)))
        inputs.append((x, group_size, lay))
    w = randn(300, 640, dtype=F16)
    qb, sb = lowbit.quantize_fp8_block(w)
    real_block = (qb, sb, lowbit.dequantize_fp8_block(qb, sb, dtype=F32), lowbit.dequantize_fp8_block(qb, sb[:5]))
    resolved.clear()
    fakes = []
    with FakeTensorMode():
        for (x, group_size, lay), (q, s, _) in zip(inputs, reals, strict=True):
            fq, fs = lowbit.quantize_fp8_group(fake_like(x, device), group_size, scale_layout=lay)
            dq = lowbit.dequantize_fp8_group(fake_like(q, device), fake_like(s, device), group_size=group_size,
                                             dtype=F16)
            fakes.append([(layout(t), t.device.type) for t in (fq, fs, dq)])
        fqb, fsb = lowbit.quantize_fp8_block(fake_like(w, device))
        fdq = lowbit.dequantize_fp8_block(fake_like(qb, device), fake_like(sb, device), dtype=F32)
        fdq5 = lowbit.dequantize_fp8_block(fake_like(qb, device), fake_like(sb, device).narrow(0, 0, 5))
        fake_block = [(layout(t), t.device.type) for t in (fqb, fsb, fdq, fdq5)]
    for case, real, fake in zip(FAKE_LAYOUT_CASES, reals, fakes, strict=True):
        assert fake == [(layout(t), device) for t in real], case
    assert fake_block == [(layout(t), device) for t in real_block]
    assert set(resolved) == {NATIVE_LABEL[device]}


# --- [F8-SCALED-MM]: torch's own checks take the scales as they come ---------------------------------

SCALED_MM_M = (1, 3, 4, 128, 131, 4096)


@pytest.mark.parametrize("m", SCALED_MM_M)
def test_f8_scaled_mm_scale_strides_are_what_scaled_mm_demands_on_real_cpu_tensors(m):
    k, n = 640, 300  # Kb = 5: the block scales have padding rows
    x, w = randn(m, k, dtype=BF16, seed=m), randn(n, k, dtype=BF16, seed=1)
    qx, sx = lowbit.quantize_fp8_group(x, scale_layout=COL)
    assert (tuple(qx.shape), qx.dtype, qx.stride()) == ((m, k), E4M3, (k, 1))
    assert (tuple(sx.shape), sx.stride()) == ((m, k // 128), (1, m))
    qw, sw = lowbit.quantize_fp8_group(w, scale_layout=COL)
    assert (tuple(sw.shape), sw.stride()) == ((n, k // 128), (1, n))
    assert qw.t().stride() == (1, k)  # mat_b = qw.t(): column-major, as scaled_mm wants
    qb, sb = lowbit.quantize_fp8_block(w)
    kb4, nb = round_up(ceil_div(k, 128), 4), ceil_div(n, 128)
    assert (tuple(sb.shape), sb.stride()) == ((kb4, nb), (1, kb4))
    # the cuBLASLt M % 4 recipe: TMA scales of A rows, the first M of them logical
    qt, st = lowbit.quantize_fp8_group(x, scale_layout=TMA)
    assert st.stride() == (1, round_up(m, 4))


def _scaled_mm_api():
    """(F.scaled_mm, ScalingType), or a reason this torch lacks them."""
    scaled_mm, scaling = getattr(F, "scaled_mm", None), getattr(F, "ScalingType", None)
    if scaled_mm is None or scaling is None:
        return None, f"torch {torch.__version__} has no torch.nn.functional.scaled_mm / ScalingType"
    return (scaled_mm, scaling), ""


@FAKE_DEVICE["cuda"]
@pytest.mark.parametrize("m", SCALED_MM_M)
def test_f8_scaled_mm_scale_strides_are_what_scaled_mm_demands_by_torchs_own_check(m, fake_arch, resolved, caplog):
    """Fake cuda tensors through lowbit's fakes into F.scaled_mm's meta check. That check divides K
    by 128 with floor and does not know cuBLASLt's M % 4 limit (docs/SPEC.md [F8-SCALED-MM]), so K
    is a multiple of 512 here and every M is taken."""
    api, why = _scaled_mm_api()
    if api is None:
        pytest.skip(why)
    scaled_mm, scaling = api
    _needs_backend("cuda")
    fake_arch(90)
    k, n = 512, 256
    with caplog.at_level(logging.CRITICAL, logger="torch"), FakeTensorMode():  # fake_tensor logs refusals
        w = torch.empty(n, k, dtype=BF16, device="cuda")
        qw, sw = lowbit.quantize_fp8_group(w, scale_layout=COL)
        # the check is live: a row-major activation scale is refused
        qr, sr = lowbit.quantize_fp8_group(torch.empty(128, k, dtype=BF16, device="cuda"))
        refused = caught(lambda: scaled_mm(qr, qw.t(), sr, scaling.BlockWise1x128, sw, scaling.BlockWise1x128))
        if refused is None:
            pytest.skip(f"torch {torch.__version__}'s F.scaled_mm meta check no longer checks BlockWise1x128 "
                        "scale strides: nothing to hold lowbit's scales against here")
        x = torch.empty(m, k, dtype=BF16, device="cuda")
        qx, sx = lowbit.quantize_fp8_group(x, scale_layout=COL)
        qb, sb = lowbit.quantize_fp8_block(w)
        wise = scaled_mm(qx, qw.t(), sx, scaling.BlockWise1x128, sw, scaling.BlockWise1x128)
        block = scaled_mm(qx, qb.t(), sx, scaling.BlockWise1x128, sb, scaling.BlockWise128x128)
        # [F8-SCALED-MM]'s M % 4 recipe: out= buffers of A rows, the A-row tensors fed to scaled_mm
        a = round_up(m, 4)
        q_buf = torch.empty(a, k, dtype=E4M3, device="cuda")
        s_rows = torch.empty(k // 128, a, device="cuda").t()
        lowbit.quantize_fp8_group(x, scale_layout=TMA, out=(q_buf, s_rows.narrow(0, 0, m)))
        padded = scaled_mm(q_buf, qw.t(), s_rows, scaling.BlockWise1x128, sw, scaling.BlockWise1x128)
        got = [(tuple(t.shape), t.dtype, t.device.type) for t in (wise, block, padded)]
    assert isinstance(refused, RuntimeError) and "stride" in str(refused), refused
    assert got == [((m, n), BF16, "cuda"), ((m, n), BF16, "cuda"), ((a, n), BF16, "cuda")]
    assert set(resolved) == {"cuda/triton"}


# --- [F8-OUT] -------------------------------------------------------------------------------------

OUT_SHAPES = {"2d-mn5": ((), 5), "2d-mn4": ((), 4), "2d-mn1": ((), 1), "3d-mn5": ((2,), 5), "4d-mn131": ((2, 1), 131)}


# (layout, s_buf storage): only column_major_tma buffers can span less than G*rows floats
OUT_STORAGES = [(ROW, "full"), (COL, "full"), (TMA, "full"), (TMA, "min")]


@pytest.mark.parametrize("rows", ["R=mn", "mn<R<=A", "R=A"])
@pytest.mark.parametrize("shape", OUT_SHAPES)
@pytest.mark.parametrize(("scale_layout", "storage"), OUT_STORAGES, ids=[f"{a}-{b}" for a, b in OUT_STORAGES])
def test_out_buffers_of_every_layout_are_filled_and_returned(scale_layout, storage, shape, rows):
    lead, mn = OUT_SHAPES[shape]
    k, group_size = 256, 64
    groups, a = k // group_size, round_up(mn, 4)
    x = randn(*lead, mn, k, dtype=BF16, seed=mn)
    q_buf = q_buffer(lead, {"R=mn": mn, "mn<R<=A": min(mn + 1, a), "R=A": a}[rows], k)
    s_buf = s_buffer(lead, mn, groups, scale_layout, storage=storage)
    if scale_layout == TMA and storage == "min":
        assert s_buf.untyped_storage().nbytes() == 4 * ((math.prod(lead) - 1) * groups * a + mn + (groups - 1) * a)
    before = storage_u8(s_buf)
    got = lowbit.quantize_fp8_group(x, group_size, scale_layout=scale_layout, out=(q_buf, s_buf))
    assert got[0] is q_buf and got[1] is s_buf
    q, s = lowbit.quantize_fp8_group(x, group_size, scale_layout=scale_layout)
    assert torch.equal(bits(q_buf[..., :mn, :]), bits(q))
    assert not bits(q_buf[..., mn:, :]).any()  # rows >= mn written as 0
    assert torch.equal(bits(s_buf), bits(s))
    # exactly the logical scales are written: the rest of s_buf's storage keeps its bytes
    written = torch.zeros(s_buf.untyped_storage().nbytes() // 4, dtype=torch.bool)
    written.as_strided(s_buf.shape, s_buf.stride()).fill_(True)
    after = storage_u8(s_buf).view(-1, 4)
    assert torch.equal(after[~written], before.view(-1, 4)[~written])


def test_out_buffers_with_size_one_dims_are_not_held_to_their_strides():
    """[F8-OUT]: the stride of a dimension of size 1 is not compared."""
    x = randn(1, 256, seed=5)
    for lay in (ROW, COL):  # mn = 1: a contiguous (1, G) tensor is a row- and a column-major s_buf (TMA: A = 4)
        s_buf = torch.empty(1, 2)
        lowbit.quantize_fp8_group(x, scale_layout=lay, out=(torch.empty(1, 256, dtype=E4M3), s_buf))
        assert torch.equal(s_buf, lowbit.quantize_fp8_group(x)[1])
    x = randn(6, 128, seed=6)  # G = 1: a contiguous (mn, 1) tensor is a column-major one
    s_buf = torch.empty(6, 1)
    lowbit.quantize_fp8_group(x, scale_layout=COL, out=(torch.empty(6, 128, dtype=E4M3), s_buf))
    assert torch.equal(s_buf, lowbit.quantize_fp8_group(x)[1])


def test_out_accepts_a_list_pair_and_returns_the_buffers():
    x = randn(5, 256, seed=7)
    q_buf, s_buf = q_buffer((), 5, 256), s_buffer((), 5, 2, COL)
    got = lowbit.quantize_fp8_group(x, scale_layout=COL, out=[q_buf, s_buf])
    assert got[0] is q_buf and got[1] is s_buf


@pytest.mark.parametrize("device", DEVICES)
def test_fake_fills_nothing_and_returns_the_buffers(device, fake_arch, resolved):
    if device != "cpu":
        _needs_backend(device)
    fake_arch(90)
    with FakeTensorMode():
        for lay in LAYOUTS:
            x = E(2, 5, 256, dtype=BF16, d=device)
            q_buf = E(2, 8, 256, dtype=E4M3, d=device)
            s_buf = fake_like(s_buffer((2,), 5, 2, lay, storage="min"), device)
            got = lowbit.quantize_fp8_group(x, scale_layout=lay, out=(q_buf, s_buf))
            assert got[0] is q_buf and got[1] is s_buf
    assert set(resolved) == {NATIVE_LABEL[device]}


# --- capability answers without hardware ------------------------------------------------------------

def _meta_calls(group_size=128, block=(128, 128)):
    m = lambda *shape, dtype=BF16: E(*shape, dtype=dtype, d="meta")  # noqa: E731
    return {
        QG: ((m(5, 256), group_size), {"scale_layout": TMA}),
        f"{QG}-out": ((m(2, 5, 256), group_size),
                      {"scale_layout": COL, "out": (m(2, 8, 256, dtype=E4M3),
                                                    m(2, 256 // group_size, 5, dtype=F32).transpose(-1, -2))}),
        DG: ((m(5, 256, dtype=E4M3), m(5, 256 // group_size, dtype=F32)), {"group_size": group_size, "dtype": F16}),
        f"{DG}-uint8": ((m(5, 256, dtype=U8), m(5, 256 // group_size, dtype=F32)), {"group_size": group_size}),
        QB: ((m(300, 640),), {"block": block}),
        DB: ((m(300, 640, dtype=E4M3), m(round_up(ceil_div(640, block[1]), 4), ceil_div(300, block[0]), dtype=F32)),
             {"block": block, "dtype": F32}),
    }


META_CALLS = list(_meta_calls())


def _op(name):
    return name.split("-")[0]


@pytest.mark.parametrize("arch", ["sm_90", "sm_89", (10, 0), 120])
@pytest.mark.parametrize("name", META_CALLS)
def test_supports_cuda_sm89_and_up_runs_cuda_triton(name, arch):
    _needs_backend("cuda")
    args, kwargs = _meta_calls()[name]
    verdict = lowbit.supports(_op(name), *args, device="cuda", arch=arch, **kwargs)
    assert (verdict.ok, verdict.backend, verdict.variant, verdict.fallback, verdict.reasons) == (
        True, "cuda", "triton", False, {})
    text = lowbit.explain(_op(name), *args, device="cuda", arch=arch, **kwargs)
    assert text.splitlines()[0].endswith(": runs on backend 'cuda' (triton)")
    assert "fidelity: bit-exact to SPEC" in text


@pytest.mark.parametrize("name", META_CALLS)
def test_supports_cuda_sm80_falls_back_to_cpu_saying_the_record_needs_sm89(name):
    _needs_backend("cuda")
    args, kwargs = _meta_calls()[name]
    verdict = lowbit.supports(_op(name), *args, device="cuda", arch="sm_80", **kwargs)
    assert (verdict.ok, verdict.backend, verdict.fallback) == (True, "cpu", True)
    assert verdict.reasons["cuda/triton"] == ["needs sm_89+, not sm_80"]
    lines = verdict.explain().splitlines()
    assert lines[0].endswith("on cuda sm_80: falls back to backend 'cpu'")
    assert "  - cuda/triton: needs sm_89+, not sm_80" in lines
    assert lines[-1] == "Alternative: pass backend='cpu' to choose the slower backend explicitly"
    forced = lowbit.supports(_op(name), *args, device="cuda", arch="sm_80", backend="cuda", **kwargs)
    assert not forced.ok and "needs sm_89+, not sm_80" in forced.explain()
    assert forced.explain().splitlines()[-1] == "Alternative: backend='cpu' can run this call (backend='auto' picks it)"


@pytest.mark.parametrize("name", META_CALLS)
def test_supports_xpu_runs_xpu_triton(name):
    _needs_backend("xpu")
    args, kwargs = _meta_calls()[name]
    verdict = lowbit.supports(_op(name), *args, device="xpu", **kwargs)
    assert (verdict.ok, verdict.backend, verdict.variant, verdict.fallback, verdict.reasons) == (
        True, "xpu", "triton", False, {})
    assert lowbit.explain(_op(name), *args, device="xpu", **kwargs).splitlines()[0].endswith(
        "on xpu: runs on backend 'xpu' (triton)")


@pytest.mark.parametrize("name", META_CALLS)
def test_supports_cpu_runs_the_reference(name):
    args, kwargs = _meta_calls()[name]
    verdict = lowbit.supports(_op(name), *args, device="cpu", **kwargs)
    assert (verdict.ok, verdict.backend, verdict.fallback) == (True, "cpu", False)
    assert "fidelity: bit-exact (the SPEC's reference)" in verdict.explain()


@pytest.mark.parametrize("device", ["cuda", "xpu"])
@pytest.mark.parametrize("name", META_CALLS)
def test_sizes_the_triton_records_lack_run_on_cpu_and_forcing_the_gpu_names_backend_cpu(name, device):
    """group_size 32 and block 64x64: the triton records take group sizes 64/128 and 128x128 blocks."""
    _needs_backend(device)
    args, kwargs = _meta_calls(group_size=32, block=(64, 64))[name]
    op, where = _op(name), {"device": device, **({"arch": "sm_90"} if device == "cuda" else {})}
    unmet = "block 64x64 is not one of 128x128" if "block" in op else "group_size 32 is not one of 64, 128"
    label = f"{device}/triton"
    verdict = lowbit.supports(op, *args, **where, **kwargs)
    assert (verdict.ok, verdict.backend, verdict.fallback, verdict.reasons) == (True, "cpu", True, {label: [unmet]})
    assert f"  - {label}: {unmet}" in verdict.explain().splitlines()
    forced = lowbit.supports(op, *args, backend=device, **where, **kwargs)
    assert not forced.ok and forced.reasons == {label: [unmet]}
    text = forced.explain()
    assert f"backend '{device}' (forced) cannot run it" in text.splitlines()[0]
    assert text.splitlines()[-1] == "Alternative: backend='cpu' can run this call (backend='auto' picks it)"


@FAKE_DEVICE["cuda"]
def test_fake_cuda_group_size_32_falls_back_with_one_warning_and_strict_refuses(fake_arch, resolved, caplog,
                                                                              monkeypatch):
    _needs_backend("cuda")
    fake_arch(90)
    args, kwargs = _meta_calls(group_size=32)[QG]
    expected = lowbit.explain(QG, *args, device="cuda", arch="sm_90", **kwargs)
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        for _ in range(2):
            q, s = lowbit.quantize_fp8_group(E(5, 256, dtype=BF16, d="cuda"), 32, scale_layout=TMA)
            assert (s.device.type, s.stride()) == ("cuda", (1, 8))
    assert resolved == ["cpu", "cpu"]
    assert [r.getMessage() for r in caplog.records if r.name == "lowbit"] == [expected]
    monkeypatch.setenv("LOWBIT_STRICT", "1")
    with FakeTensorMode(), pytest.raises(lowbit.UnsupportedError, match="LOWBIT_STRICT=1 refuses fallbacks"):
        lowbit.quantize_fp8_group(E(5, 256, dtype=BF16, d="cuda"), 32)


def test_capability_records():
    records = {(c.op, c.label): c for c in lowbit.capabilities() if c.op in FP8_OPS}
    assert set(records) >= {(op, "cpu") for op in FP8_OPS}
    for (op, label), cap in records.items():
        assert cap.compile_safe and cap.min_ndim == 2, (op, label)
        if op in (QB, DB):
            assert cap.max_ndim == 2
        if label != "cpu":
            assert cap.group_sizes == ((64, 128) if op in (QG, DG) else None), (op, label)
            assert cap.weight_blocks == (((128, 128),) if op in (QB, DB) else None), (op, label)
            assert cap.fidelity == "bit-exact to SPEC" and cap.graph_safe
    assert set(records[(DG, "cpu")].dtypes) == set(records[(DB, "cpu")].dtypes) == {E4M3, U8}
    assert set(records[(QG, "cpu")].dtypes) == set(records[(QB, "cpu")].dtypes) == {F32, F16, BF16}
    if registry.unavailable("cuda") is None and registry.unavailable("xpu") is None:
        for op in FP8_OPS:
            assert [label for o, label in records if o == op] == ["cuda/triton", "xpu/triton", "cpu"]
        for op in FP8_OPS:
            assert records[(op, "cuda/triton")].archs == {"cuda": lowbit.ArchRange(89)}, op


# --- dequantize: every scale layout, block scales with and without padding ---------------------------

def _spec_dequantize(q: torch.Tensor, s: torch.Tensor, group_size: int, dtype) -> torch.Tensor:
    """[F8-DEQUANT] for inputs without NaN: fl32(float(q) * s), rounded to dtype."""
    return (q.view(E4M3).float().unflatten(-1, (-1, group_size)) * s.unsqueeze(-1)).flatten(-2).to(dtype)


@pytest.mark.parametrize("dtype", [BF16, F16, F32])
def test_dequantize_group_reads_every_layout_and_q_in_any_strides(dtype):
    x = randn(2, 5, 256, seed=12)
    for group_size in (64, 128):
        q, s_row = lowbit.quantize_fp8_group(x, group_size)
        want = _spec_dequantize(q, s_row, group_size, dtype)
        q_strided = torch.empty(2, 256, 5, dtype=E4M3).transpose(-1, -2)  # (2, 5, 256), not contiguous
        q_strided.view(U8).copy_(q.view(U8))
        for lay in LAYOUTS:
            q_l, s = lowbit.quantize_fp8_group(x, group_size, scale_layout=lay)
            for qq in (q_l, q_l.view(U8), q_strided, q_strided.view(U8)):
                got = lowbit.dequantize_fp8_group(qq, s, group_size=group_size, dtype=dtype)
                assert (got.dtype, tuple(got.shape), got.stride()) == (dtype, (2, 5, 256), (1280, 256, 1))
                assert torch.equal(bits(got), bits(want)), (group_size, lay, qq.dtype, qq.stride())


@pytest.mark.parametrize(("n", "k"), [(300, 640), (256, 512), (5, 130)])
def test_dequantize_block_takes_padded_unpadded_and_weight_scale_inv_scales_alike(n, k):
    w = randn(n, k, dtype=BF16, seed=13)
    q, s = lowbit.quantize_fp8_block(w)
    kb, nb = ceil_div(k, 128), ceil_div(n, 128)
    weight_scale_inv = s.t()[:, :kb].contiguous()  # DeepSeek-V3's (Nb, Kb), contiguous
    factor = s[:kb].t().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    for dtype in (BF16, F32):
        want = (q.float() * factor).to(dtype)
        for scales in (s, s[:kb], weight_scale_inv.t(), s.contiguous(), s[:kb].contiguous()):
            for qq in (q, q.view(U8)):
                got = lowbit.dequantize_fp8_block(qq, scales, dtype=dtype)
                assert (got.dtype, tuple(got.shape), got.stride()) == (dtype, (n, k), (k, 1))
                assert torch.equal(bits(got), bits(want)), (dtype, tuple(scales.shape), scales.stride(), qq.dtype)
    assert weight_scale_inv.shape == (nb, kb)


def test_dequantize_block_of_other_blocks_round_trips():
    w = randn(200, 96, seed=14)
    q, s = lowbit.quantize_fp8_block(w, (64, 32))
    assert tuple(s.shape) == (4, 4)  # Kb = 3 -> 4, Nb = ceil(200 / 64) = 4
    got = lowbit.dequantize_fp8_block(q, s, block=(64, 32), dtype=F32)
    assert torch.equal(got, lowbit.dequantize_fp8_block(q, s[:3], block=[64, 32], dtype=F32))
    factor = s[:3].t().repeat_interleave(64, 0)[:200].repeat_interleave(32, 1)[:, :96]
    assert torch.equal(got, q.float() * factor)
    assert torch.allclose(got, w, rtol=2**-4, atol=float(factor.max()) * 2**-10)  # E4M3: half an ulp, subnormals


# --- torch.library.opcheck --------------------------------------------------------------------------

def _opcheck_cases():
    ops = torch.ops.lowbit
    x3 = randn(2, 5, 256, dtype=BF16, seed=15)
    x8 = randn(8, 256, seed=16)  # mn = A: TMA buffers are dense, which opcheck's clones keep
    q, s = lowbit.quantize_fp8_group(x3, 64, scale_layout=TMA)
    w = randn(300, 640, dtype=F16, seed=17)
    qb, sb = lowbit.quantize_fp8_block(w)
    cases = {}
    for lay in LAYOUTS:
        cases[f"quantize-{lay}"] = (ops.quantize_fp8_group.default, (x3, 128, 1e-10, False, lay, "auto"), None)
        cases[f"quantize-out-{lay}"] = (ops.quantize_fp8_group_out.default,
                                        (x8, q_buffer((), 8, 256), s_buffer((), 8, 4, lay), 64, 1e-10, True, lay,
                                         "auto"), NO_SCHEMA_CHECK)
    cases.update({
        "quantize-ue8m0-last-dim-strided": (ops.quantize_fp8_group.default,
                                            (randn(128, 6, seed=18).t(), 64, 0.0, True, COL, "auto"), None),
        "dequantize-uint8-tma": (ops.dequantize_fp8_group.default, (q.view(U8), s, 64, F32, "auto"), None),
        "dequantize-e4m3": (ops.dequantize_fp8_group.default, (q, s, 64, BF16, "auto"), NO_SCHEMA_CHECK),
        "quantize-block": (ops.quantize_fp8_block.default, (w, 128, 128, 1e-4, False, "auto"), None),
        "quantize-block-64x32-ue8m0": (ops.quantize_fp8_block.default, (w, 64, 32, 1e-4, True, "auto"), None),
        "dequantize-block-uint8": (ops.dequantize_fp8_block.default, (qb.view(U8), sb, 128, 128, F16, "auto"), None),
        "dequantize-block-unpadded": (ops.dequantize_fp8_block.default, (qb, sb[:5], 128, 128, F32, "auto"),
                                      NO_SCHEMA_CHECK),
    })
    return cases


OPCHECK_CASES = _opcheck_cases()


@pytest.mark.parametrize("name", OPCHECK_CASES)
def test_opcheck(name):
    op, args, test_utils = OPCHECK_CASES[name]
    kwargs = {} if test_utils is None else {"test_utils": test_utils}
    result = torch.library.opcheck(op, args, **kwargs)
    assert result and set(result.values()) == {"SUCCESS"}, result


def test_opcheck_covers_every_op_and_the_out_op_mutates_exactly_the_buffers():
    assert {op.name() for op, _, _ in OPCHECK_CASES.values()} == {f"lowbit::{n}" for n in (*FP8_OPS, f"{QG}_out")}
    for name in FP8_OPS:
        schema = getattr(torch.ops.lowbit, name).default._schema
        assert not any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments), name
    schema = torch.ops.lowbit.quantize_fp8_group_out.default._schema
    assert [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write] == ["q_buf", "s_buf"]
    assert len(schema.returns) == 0


# --- torch.compile(fullgraph=True) on CPU --------------------------------------------------------------

def fp8_all(x, w, q_buf, s_buf):
    results = []
    for lay in LAYOUTS:
        results += lowbit.quantize_fp8_group(x, scale_layout=lay)
    q, s = lowbit.quantize_fp8_group(x, 64, scale_layout=TMA, ue8m0=True)
    lowbit.quantize_fp8_group(x, scale_layout=TMA, out=(q_buf, s_buf))
    results += [q, s, lowbit.dequantize_fp8_group(q, s, group_size=64, dtype=F32)]
    qb, sb = lowbit.quantize_fp8_block(w)
    results += [qb, sb, lowbit.dequantize_fp8_block(qb, sb), lowbit.dequantize_fp8_block(qb, sb[:5], dtype=F16)]
    return results


def _special(*shape, seed) -> torch.Tensor:
    x = randn(*shape, seed=seed)
    flat = x.view(-1)
    flat[3], flat[40], flat[77] = float("nan"), float("inf"), -0.0
    flat[128:256] = 0.0  # an all-zero group
    return x.to(BF16)


def _check_compiled(compiled, x, w):
    lead, (mn, k) = tuple(x.shape[:-2]), x.shape[-2:]
    bufs = [(q_buffer(lead, round_up(mn, 4), k), s_buffer(lead, mn, k // 128, TMA, storage="min")) for _ in range(2)]
    got, want = compiled(x, w, *bufs[0]), fp8_all(x, w, *bufs[1])
    assert len(got) == len(want)
    for i, (g, e) in enumerate(zip(got, want, strict=True)):
        assert layout(g) == layout(e), i  # TMA scales keep their padded storage through compile
        assert torch.equal(bits(g), bits(e)), f"output {i} differs from eager"
    assert torch.equal(storage_u8(bufs[0][0]), storage_u8(bufs[1][0]))
    assert torch.equal(storage_u8(bufs[0][1]), storage_u8(bufs[1][1]))  # the padding rows keep their poison


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    compiled = torch.compile(fp8_all, fullgraph=True, dynamic=False)
    _check_compiled(compiled, _special(2, 5, 256, seed=19), randn(300, 640, seed=20))


def test_compile_fullgraph_dynamic_rows_match_eager():
    torch._dynamo.reset()
    compiled = torch.compile(fp8_all, fullgraph=True, dynamic=True)
    for mn, n, seed in ((6, 300, 21), (9, 130, 22)):
        _check_compiled(compiled, _special(mn, 256, seed=seed), randn(n, 640, seed=seed))


# --- the eager fast path ---------------------------------------------------------------------------

@pytest.fixture(name="counted")
def _counted(monkeypatch):
    """Counts of the calls that make a decision: describing a call (lowbit's describe_* and
    dispatch.call_for), choosing, checking a record."""
    from collections import Counter

    from lowbit import fp8_group
    from lowbit.capability import Capability

    counts = Counter()

    def count(owner, name):
        real = getattr(owner, name)

        def counting(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)
        counting.cache_clear = getattr(real, "cache_clear", None)  # dispatch.select's, for registry.forget()
        monkeypatch.setattr(owner, name, counting)

    for name in ("describe_quantize", "describe_dequantize", "describe_quantize_block", "describe_dequantize_block"):
        count(fp8_group, name)
    count(dispatch, "call_for")
    count(dispatch, "resolve")
    count(dispatch, "select")
    count(Capability, "unmet")
    return counts


def _quantize_call(lay):
    def make(rows):
        x = randn(rows, 256, dtype=BF16)
        return lambda: lowbit.quantize_fp8_group(x, scale_layout=lay)
    return make


def _out_call(rows):
    x = randn(2, rows, 256)
    return lambda: lowbit.quantize_fp8_group(x, scale_layout=TMA, out=(
        q_buffer((2,), round_up(rows, 4), 256), s_buffer((2,), rows, 2, TMA, storage="min")))


def _dequantize_call(rows):
    q, s = lowbit.quantize_fp8_group(randn(rows, 256), 64, scale_layout=COL)
    return lambda: lowbit.dequantize_fp8_group(q, s, group_size=64)


def _block_call(rows):
    w = randn(rows, 640)
    return lambda: lowbit.quantize_fp8_block(w)


def _dequantize_block_call(rows):
    q, s = lowbit.quantize_fp8_block(randn(rows, 640))
    return lambda: lowbit.dequantize_fp8_block(q, s[:5])


FAST_PATH_CALLS = {
    **{f"{QG}-{lay}": _quantize_call(lay) for lay in LAYOUTS},
    f"{QG}-out": _out_call,
    DG: _dequantize_call,
    QB: _block_call,
    DB: _dequantize_block_call,
}


@pytest.mark.parametrize("op", FAST_PATH_CALLS)
def test_a_later_call_of_a_kind_describes_nothing_and_checks_no_record(op, counted):
    make = FAST_PATH_CALLS[op]
    first = make(3)  # (the dequantizes quantize their inputs here: not counted)
    counted.clear()
    first()
    assert counted["resolve"] == 1 and counted["unmet"] >= 1 and sum(
        v for k, v in counted.items() if k.startswith("describe_")) == 1
    later = [make(rows) for rows in (3, 5, 131)]  # the row count is not part of a kind
    counted.clear()
    for fn in later:
        fn()
    assert counted == {}


def _cold_error(fn) -> BaseException:
    dispatch.clear_cache()
    exc = caught(fn)
    assert exc is not None, "the first call did not raise"
    return exc


# (good call, bad call of the same kind): what the kind leaves open is checked per call
FAST_PATH_REFUSALS = {
    "qg-ue8m0-int-after-True": (lambda x: lowbit.quantize_fp8_group(x, ue8m0=True),
                                lambda x: lowbit.quantize_fp8_group(x, ue8m0=1)),
    "qg-ue8m0-int-0-after-False": (lambda x: lowbit.quantize_fp8_group(x, ue8m0=False),
                                   lambda x: lowbit.quantize_fp8_group(x, ue8m0=0)),
    "qg-group-size-True-after-1": (lambda x: lowbit.quantize_fp8_group(x, 1),
                                   lambda x: lowbit.quantize_fp8_group(x, True)),
    "qg-group-size-float-after-int": (lambda x: lowbit.quantize_fp8_group(x, 128),
                                      lambda x: lowbit.quantize_fp8_group(x, 128.0)),
    "qg-eps-False-after-0.0": (lambda x: lowbit.quantize_fp8_group(x, eps=0.0),
                               lambda x: lowbit.quantize_fp8_group(x, eps=False)),
    "qg-out-ue8m0-int-after-True": (
        lambda x: lowbit.quantize_fp8_group(x, ue8m0=True, out=(q_buffer((), 4, 256), s_buffer((), 4, 2, ROW))),
        lambda x: lowbit.quantize_fp8_group(x, ue8m0=1, out=(q_buffer((), 4, 256), s_buffer((), 4, 2, ROW)))),
    "qb-ue8m0-int-after-True": (lambda x: lowbit.quantize_fp8_block(x, ue8m0=True),
                                lambda x: lowbit.quantize_fp8_block(x, ue8m0=1)),
    "qb-eps-False-after-0.0": (lambda x: lowbit.quantize_fp8_block(x, eps=0.0),
                               lambda x: lowbit.quantize_fp8_block(x, eps=False)),
    "qb-block-float-after-int": (lambda x: lowbit.quantize_fp8_block(x, (128, 128)),
                                 lambda x: lowbit.quantize_fp8_block(x, (128.0, 128))),
}


@pytest.mark.parametrize("name", FAST_PATH_REFUSALS)
def test_fast_path_refuses_what_a_first_call_refuses(name):
    good, bad = FAST_PATH_REFUSALS[name]
    x = randn(4, 256)
    first = _cold_error(lambda: bad(x))
    assert type(first) is ValueError and str(first).startswith(("lowbit.quantize_fp8_group: ",
                                                                  "lowbit.quantize_fp8_block: "))
    good(x)  # remembers the kind (1 == True, 0.0 == False, 128.0 == 128: the kinds' keys are equal)
    again = caught(lambda: bad(x))
    assert (type(again), str(again)) == (type(first), str(first))
    good(x)  # the refusal left the kind usable


FAST_PATH_BAD_SCALES = {
    "dg-scales-shape": (DG, lambda q, s: (q, s[:, :1])),
    "dg-scales-rows": (DG, lambda q, s: (q, torch.cat([s, s[:1]]))),
    "dg-scales-float64": (DG, lambda q, s: (q, s.double())),
    "dg-scales-on-meta": (DG, lambda q, s: (q, s.to("meta"))),
    "db-scales-shape": (DB, lambda q, s: (q, s[:3])),
    "db-scales-transposed": (DB, lambda q, s: (q, s.t())),
    "db-scales-float64": (DB, lambda q, s: (q, s.double())),
    "db-scales-on-meta": (DB, lambda q, s: (q, s.to("meta"))),
}


@pytest.mark.parametrize("bad", FAST_PATH_BAD_SCALES)
def test_fast_path_dequantize_checks_the_scales_on_every_call(bad):
    op, make_bad = FAST_PATH_BAD_SCALES[bad]
    if op == DG:
        q, s = lowbit.quantize_fp8_group(randn(4, 256))
        run = lambda q, s: lowbit.dequantize_fp8_group(q, s)  # noqa: E731
    else:
        q, s = lowbit.quantize_fp8_block(randn(300, 640))
        run = lambda q, s: lowbit.dequantize_fp8_block(q, s)  # noqa: E731
    first = _cold_error(lambda: run(*make_bad(q, s)))
    assert type(first) is ValueError
    run(q, s)  # remembers the kind
    again = caught(lambda: run(*make_bad(q, s)))
    assert (type(again), str(again)) == (type(first), str(first))


@pytest.mark.parametrize("name", ["s-column_major-for-column_major_tma", "q-rows-below-mn", "q-non-contiguous",
                                  "s-storage-short", "s-bfloat16", "q-on-meta"])
def test_fast_path_checks_out_buffers_on_every_call_and_writes_nothing(name):
    case = REFUSALS[f"{QG}-out-{name}"]
    args, kwargs = case.build("cpu")
    first = _cold_error(lambda: lowbit.quantize_fp8_group(*args, **kwargs))
    x, lay = args[0], kwargs["scale_layout"]
    lowbit.quantize_fp8_group(x, scale_layout=lay, out=(q_buffer((), 8, 256), s_buffer((), 5, 2, lay)))  # the kind
    args, kwargs = case.build("cpu")
    buffers = [poisoned(t) for t in kwargs["out"] if not t.is_meta]
    before = [storage_u8(t) for t in buffers]
    again = caught(lambda: lowbit.quantize_fp8_group(*args, **kwargs))
    assert (type(again), str(again)) == (type(first), str(first))
    assert all(torch.equal(b, storage_u8(t)) for b, t in zip(before, buffers, strict=True))


def test_fast_path_runs_the_kernel_the_op_runs(resolved):
    x = _special(2, 5, 256, seed=23)
    w = randn(300, 640, dtype=BF16, seed=24)
    ops = torch.ops.lowbit
    for lay in LAYOUTS:
        for ue8m0 in (False, True):
            cold = lowbit.quantize_fp8_group(x, 64, ue8m0=ue8m0, scale_layout=lay)
            warm = lowbit.quantize_fp8_group(x, 64, ue8m0=ue8m0, scale_layout=lay)
            via_op = ops.quantize_fp8_group(x, 64, 1e-10, ue8m0, lay, "auto")
            for c, h, o in zip(cold, warm, via_op, strict=True):
                assert layout(c) == layout(h) == layout(o), lay
                assert torch.equal(bits(c), bits(o)) and torch.equal(bits(h), bits(o)), lay
            dq = lowbit.dequantize_fp8_group(*cold, group_size=64, dtype=F32)
            assert torch.equal(bits(dq), bits(ops.dequantize_fp8_group(cold[0].view(U8), cold[1], 64, F32, "auto")))
    qb, sb = lowbit.quantize_fp8_block(w)
    for got, want in zip((qb, sb), ops.quantize_fp8_block(w, 128, 128, 1e-4, False, "auto"), strict=True):
        assert layout(got) == layout(want) and torch.equal(bits(got), bits(want))
    assert torch.equal(bits(lowbit.dequantize_fp8_block(qb, sb)),
                       bits(ops.dequantize_fp8_block(qb, sb, 128, 128, BF16, "auto")))
    assert set(resolved) == {"cpu"}
