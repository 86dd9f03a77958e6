"""Routing tests of lowbit's own code: the vendor op here is a stand-in that records its arguments.
Nothing here runs or tests an Intel kernel.

What is injected, and why each injection can still catch a bug in lowbit:

* The vendor library: stand-in modules `vllm_xpu_kernels` and `vllm_xpu_kernels._C` in sys.modules
  and a recorder as `torch.ops._C.per_token_group_quant_mxfp4` (the op the real module registers).
  The recorder keeps the tensors it is given, so the tests see the shapes, dtypes and storage the
  wrapper hands to the vendor, and it writes chosen bytes, so the tests see what the wrapper does
  with the vendor's output. "Absent" is an import finder that says the package does not exist.
* The device probe: torch.xpu.is_available and torch.xpu.get_device_name, as on a B580.
* The xpu backend's own availability (its Triton): a copy of the backend that answers "available"
  is registered in its place. The routing between its variants is the subject here, so these
  tests do not depend on this machine having Triton.

Expected choices come from a decision table written here from the records' declared fields, never
from lowbit's answer; expected bytes are written out by hand.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.abc
import importlib.util
import io
import logging
import sys
import types
from dataclasses import dataclass

import pytest
import torch
from lowbit.backends import xpu as xpu_backend
from lowbit.backends.xpu import mxfp4 as xpu_mxfp4
from oracles import f32_bits_tensor, meta, u8
from preambles import FAKE_DEVICE
from torch._subclasses.fake_tensor import FakeTensorMode

import lowbit
from lowbit import devices, dispatch, registry
from lowbit import mxfp4 as mx_op
from lowbit.cli import info

MX, GROUP = "quantize_mxfp4", "per_token_group_quant_mxfp4"
SETTING = "LOWBIT_XPU_PROVIDER"
PACKAGE, MODULE, OP_NAME = "vllm_xpu_kernels", "vllm_xpu_kernels._C", "per_token_group_quant_mxfp4"
B580 = "Intel(R) Arc(TM) B580 Graphics"
OPT_IN_REFUSAL = "auto-dispatch uses it only with LOWBIT_XPU_PROVIDER=vendor (fidelity: ties toward zero, not " \
                 "bit-exact to SPEC)"
NOT_INSTALLED = "cannot load here: vllm-xpu-kernels is not installed (pip install vllm-xpu-kernels)"


# --- the stand-ins --------------------------------------------------------------------------------

@dataclass
class Recorded:
    x: torch.Tensor
    q: torch.Tensor
    s: torch.Tensor
    group_size: int
    eps: float


class StandInOp:
    """Takes the place of torch.ops._C.per_token_group_quant_mxfp4(x, q, s, group_size, eps): records
    each call's arguments (the tensors themselves) and writes `q_bytes` / `scales` when they are set."""

    def __init__(self):
        self.calls: list[Recorded] = []
        self.q_bytes: torch.Tensor | None = None
        self.scales: torch.Tensor | None = None

    def __call__(self, x, q, s, group_size, eps):
        self.calls.append(Recorded(x, q, s, group_size, eps))
        if self.q_bytes is not None:
            q.copy_(self.q_bytes.reshape(q.shape))
        if self.scales is not None:
            s.copy_(self.scales.reshape(s.shape))


def install_stand_in(mp: pytest.MonkeyPatch) -> StandInOp:
    """The stand-in vendor library, as if `import vllm_xpu_kernels._C` had registered its op."""
    package = types.ModuleType(PACKAGE)
    package.__path__ = []  # a package, as the real one is
    mp.setitem(sys.modules, PACKAGE, package)
    mp.setitem(sys.modules, MODULE, types.ModuleType(MODULE))
    op = StandInOp()
    mp.setattr(torch.ops._C, OP_NAME, op, raising=False)
    registry.forget()  # availability is cached per process: ask again
    return op


class VendorFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import finder for the vendor package: `missing` says it does not exist (as Python does when
    it is not installed); otherwise the package imports and its `_C` raises `fail_with`."""

    def __init__(self, missing: bool = True, fail_with: BaseException | None = None):
        self.missing, self.fail_with = missing, fail_with

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] != PACKAGE:
            return None
        if self.missing:
            top = fullname.split(".")[0]
            raise ModuleNotFoundError(f"No module named {top!r}", name=top)
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == PACKAGE)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if module.__name__ == MODULE and self.fail_with is not None:
            raise self.fail_with
        if module.__name__ == PACKAGE:
            module.__path__ = []


@pytest.fixture
def vendor_finder(monkeypatch):
    """Imports of the vendor package go through a VendorFinder (the package missing, by default)."""
    for name in (PACKAGE, MODULE):
        monkeypatch.delitem(sys.modules, name, raising=False)
    finder = VendorFinder()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    registry.forget()
    yield finder
    for name in (PACKAGE, MODULE):  # what the finder's imports left; monkeypatch restores the originals
        sys.modules.pop(name, None)


@pytest.fixture
def stand_in(monkeypatch) -> StandInOp:
    return install_stand_in(monkeypatch)


@pytest.fixture(autouse=True)
def xpu_backend_loads():
    """The xpu backend as a machine with Triton sees it: registered in its place, its own probe
    answering "available"; its kernels' hooks (the vendor's) are still asked."""
    registry.register(dataclasses.replace(xpu_backend.BACKEND, unavailable=lambda: None))


@pytest.fixture
def intel_gpu(monkeypatch):
    """torch sees one Intel Arc B580."""
    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    monkeypatch.setattr(torch.xpu, "get_device_name", lambda device=None: B580)
    devices.probed_arch.cache_clear()
    registry.forget()
    yield
    devices.probed_arch.cache_clear()  # nothing learned under the stand-in probe outlives the test


# --- the injections themselves ----------------------------------------------------------------------

def test_the_stand_in_is_what_the_wrapper_finds_and_is_gone_afterwards():
    before = (hasattr(torch.ops._C, OP_NAME), sys.modules.get(PACKAGE), sys.modules.get(MODULE))
    with pytest.MonkeyPatch.context() as mp:
        op = install_stand_in(mp)
        assert xpu_mxfp4.vendor_op() is op
        assert xpu_mxfp4.vendor_unavailable() is None
    after = (hasattr(torch.ops._C, OP_NAME), sys.modules.get(PACKAGE), sys.modules.get(MODULE))
    assert after[0] == before[0] and after[1] is before[1] and after[2] is before[2]
    if not before[0]:
        with pytest.raises(AttributeError):
            getattr(torch.ops._C, OP_NAME)


def test_the_device_probe_gives_the_lowered_device_name(intel_gpu):
    assert devices.device_arch(torch.device("xpu")) == "intel(r) arc(tm) b580 graphics"
    assert devices.present_device_types() == ("cpu", "xpu")


def info_text() -> str:
    out = io.StringIO()
    info(out=out)
    return out.getvalue()


def section(text: str, op: str) -> str:
    """The lines `python -m lowbit info` prints for `op`."""
    start = text.index(f"\n{op}: ")
    end = text.find("\n\n", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_info_lists_xpu_as_present_and_auto_picks_xpu_triton(intel_gpu):
    text = info_text()
    assert "devices here: cpu, xpu (intel(r) arc(tm) b580 graphics)" in text.splitlines()[0]
    for op in (MX, GROUP, "quantize_fp8_group_packed", "unified_attention"):
        assert "  on xpu: xpu/triton" in section(text, op).splitlines(), op
    for op in (MX, GROUP):
        vendor_row = next(line for line in section(text, op).splitlines() if line.startswith("  xpu/vendor "))
        assert "not probed (opt-in)" in vendor_row and "only with LOWBIT_XPU_PROVIDER=vendor" in vendor_row


def test_info_with_the_vendor_opted_in_and_present_picks_xpu_vendor(intel_gpu, stand_in, monkeypatch):
    monkeypatch.setenv(SETTING, "vendor")
    text = info_text()
    for op in (MX, GROUP):
        lines = section(text, op).splitlines()
        assert "  on xpu: xpu/vendor" in lines, op
        vendor_row = next(line for line in lines if line.startswith("  xpu/vendor "))
        assert vendor_row.split()[1] == "yes", vendor_row
    assert "  on xpu: xpu/triton" in section(text, "quantize_fp8_group_packed").splitlines()


def test_info_with_the_vendor_opted_in_but_missing_says_why_and_picks_xpu_triton(intel_gpu, vendor_finder,
                                                                                  monkeypatch):
    monkeypatch.setenv(SETTING, "vendor")
    text = info_text()
    for op in (MX, GROUP):
        lines = section(text, op).splitlines()
        assert "  on xpu: xpu/triton" in lines, op
        vendor_row = next(line for line in lines if line.startswith("  xpu/vendor "))
        assert "no: vllm-xpu-kernels is not installed" in vendor_row


# --- (a) dispatch picks exactly as the records declare --------------------------------------------

# name: (a view builder over meta tensors of last dim 64, whole input contiguous?)
LAYOUTS = {
    "2d": (lambda dtype: meta(6, 64, dtype=dtype), True),
    "3d": (lambda dtype: meta(2, 3, 64, dtype=dtype), True),
    "transposed": (lambda dtype: meta(64, 6, dtype=dtype).t(), False),  # last dim strided
    "rows_strided": (lambda dtype: meta(6, 128, dtype=dtype)[:, :64], False),  # stride 1, gaps between rows
}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def group_args(x: torch.Tensor, x_s_dtype=torch.float32) -> tuple:
    """(x, x_q, x_s) for per_token_group_quant_mxfp4, the buffers contiguous on x's device."""
    *lead, k = x.shape
    return (x, torch.empty((*lead, k // 2), dtype=torch.uint8, device=x.device),
            torch.empty((*lead, k // 32), dtype=x_s_dtype, device=x.device))


def ask(op: str, x: torch.Tensor, rule: str, backend: str = "auto"):
    if op == MX:
        return lowbit.supports(MX, x, scale_rule=rule, device="xpu", backend=backend)
    return lowbit.supports(GROUP, *group_args(x), device="xpu", backend=backend)


def decide(setting: str | None, vendor_present: bool, contiguous: bool, rule: str) -> tuple[str, set[str]]:
    """The decision table, from the records as declared (vendor first: opt_in LOWBIT_XPU_PROVIDER=vendor,
    contiguous input, rule rceil only; triton: everything): (label auto-dispatch picks, the vendor's
    refusals). per_token_group_quant_mxfp4 always uses rule rceil."""
    refusals = set()
    if setting != "vendor":
        refusals.add(OPT_IN_REFUSAL)  # its library is not even asked
    elif not vendor_present:
        refusals.add(NOT_INSTALLED)
    if not contiguous:
        refusals.add("needs a contiguous input")
    if rule != "rceil":
        refusals.add("scale_rule 'floor' is not one of 'rceil'")
    return ("xpu/triton" if refusals else "xpu/vendor"), refusals


@pytest.mark.parametrize("vendor", ["present", "absent"])
@pytest.mark.parametrize("setting", [None, "triton", "vendor"], ids=["unset", "triton", "vendor"])
@pytest.mark.parametrize("op", [MX, GROUP])
def test_auto_dispatch_on_xpu_picks_what_the_decision_table_says(op, setting, vendor, monkeypatch, request):
    request.getfixturevalue("stand_in" if vendor == "present" else "vendor_finder")
    if setting is not None:
        monkeypatch.setenv(SETTING, setting)
    for dtype in DTYPES:
        for layout, (make, contiguous) in LAYOUTS.items():
            for rule in (("rceil", "floor") if op == MX else ("rceil",)):
                label, refusals = decide(setting, vendor == "present", contiguous, rule)
                verdict = ask(op, make(dtype), rule)
                where = f"{dtype} {layout} {rule}"
                assert verdict.ok and not verdict.fallback, where
                assert verdict.kernel.capability.label == label, f"{where}: {verdict.explain()}"
                assert set(verdict.reasons.get("xpu/vendor", [])) == refusals, where
                assert set(verdict.reasons) <= {"xpu/vendor"}, where  # nothing else was tried before
                # an opt-in that could not be honoured is reported, and only then
                assert verdict.opt_in_passed_over == (setting == "vendor" and label == "xpu/triton"), where


def test_naming_the_vendor_variant_runs_it_without_the_setting(stand_in):
    for op in (MX, GROUP):
        verdict = ask(op, meta(4, 3, 64), "rceil", backend="xpu/vendor")
        assert (verdict.backend, verdict.variant, verdict.fallback, verdict.rejected) == ("xpu", "vendor", False, ())


def test_naming_the_vendor_variant_still_checks_its_record(stand_in):
    verdict = ask(MX, meta(4, 64), "floor", backend="xpu/vendor")
    assert not verdict.ok and verdict.reasons == {"xpu/vendor": ["scale_rule 'floor' is not one of 'rceil'"]}
    verdict = ask(GROUP, meta(64, 4).t(), "rceil", backend="xpu/vendor")
    assert not verdict.ok and verdict.reasons == {"xpu/vendor": ["needs a contiguous input"]}


def test_naming_the_vendor_variant_when_it_is_missing_says_so(vendor_finder):
    verdict = ask(MX, meta(4, 64), "rceil", backend="xpu/vendor")
    assert not verdict.ok and verdict.reasons == {"xpu/vendor": [NOT_INSTALLED]}
    assert "backend='xpu' can run this call" in verdict.explain()


def test_forcing_the_xpu_backend_by_name_honours_the_setting(stand_in, monkeypatch):
    assert ask(MX, meta(4, 64), "rceil", backend="xpu").variant == "triton"
    monkeypatch.setenv(SETTING, "vendor")
    assert ask(MX, meta(4, 64), "rceil", backend="xpu").variant == "vendor"


def test_the_vendor_library_is_imported_only_once_opted_in(stand_in, monkeypatch):
    """Without the setting, dispatch and `info` never import vllm_xpu_kernels._C (an opt-in's import
    may be slow or have side effects); with it, once per process."""
    imported = []
    real_import = importlib.import_module

    def recording_import(name, package=None):
        if name.startswith(PACKAGE):
            imported.append(name)
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", recording_import)
    for setting in (None, "triton"):
        if setting:
            monkeypatch.setenv(SETTING, setting)
        ask(MX, meta(4, 64), "rceil")
        ask(GROUP, meta(4, 64), "rceil")
        info_text()
    assert imported == []
    monkeypatch.setenv(SETTING, "vendor")
    ask(MX, meta(4, 64), "rceil")
    ask(MX, meta(8, 3, 64), "rceil")
    assert imported == [MODULE]


# --- (b) the wrapper hands the vendor 2-D views of the caller's tensors --------------------------------

def vendor_kernel_for(call: lowbit.Call):
    """The kernel dispatch resolves for `call` moved to an xpu device (asserted: the vendor's)."""
    kernel = dispatch.resolve(dataclasses.replace(call, device_type="xpu"))
    assert kernel.capability.label == "xpu/vendor"
    return kernel


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


SHAPES = [(2, 3, 64), (5, 96), (64,)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quantize_mxfp4_gives_the_vendor_2d_views_and_the_rceil_eps(shape, stand_in, monkeypatch):
    monkeypatch.setenv(SETTING, "vendor")
    x = torch.randn(shape).bfloat16()
    rows, k = x.numel() // shape[-1], shape[-1]
    kernel = vendor_kernel_for(mx_op.describe_quantize(x, "rceil"))
    q, s = mx_op.quantize_outputs(x)
    kernel.run(x, q, s, scale_rule="rceil", swizzled=False)
    assert len(stand_in.calls) == 1
    call = stand_in.calls[0]
    assert (tuple(call.x.shape), call.x.dtype) == ((rows, k), torch.bfloat16)
    assert call.x.data_ptr() == x.data_ptr() and same_storage(call.x, x)  # a view of x: no copy
    assert (tuple(call.q.shape), call.q.dtype) == ((rows, k // 2), torch.uint8)
    assert call.q.data_ptr() == q.data_ptr() and same_storage(call.q, q)  # written in place
    assert (tuple(call.s.shape), call.s.dtype) == ((rows, k // 32), torch.float32)
    assert not same_storage(call.s, s)  # E8M0 wanted: a float32 temporary, converted afterwards
    assert call.group_size == 32
    assert call.eps == 2.0**-126  # [MX-RCEIL]'s floor on d, not the group-quant default 1e-10


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("q_dtype", [torch.uint8, torch.float4_e2m1fn_x2], ids=["uint8", "float4"])
def test_group_quant_gives_the_vendor_the_callers_buffers_and_eps(shape, q_dtype, stand_in, monkeypatch):
    monkeypatch.setenv(SETTING, "vendor")
    x = torch.randn(shape, dtype=torch.float16)
    rows, k = x.numel() // shape[-1], shape[-1]
    _, x_q, x_s = group_args(x)
    x_q = x_q.view(q_dtype)
    scales = torch.tensor([3.0, -1.5, 1e-3, 0.1], dtype=torch.float32)  # no power of two: nothing converts them
    stand_in.scales = scales.repeat(rows * k // 32)[: rows * k // 32]
    kernel = vendor_kernel_for(mx_op.describe_group_quant(x, x_q, x_s, 32, 1e-6))
    kernel.run(x, x_q, x_s, eps=1e-6, swizzled=False)
    assert len(stand_in.calls) == 1
    call = stand_in.calls[0]
    assert (tuple(call.x.shape), call.x.dtype) == ((rows, k), torch.float16)
    assert call.x.data_ptr() == x.data_ptr() and same_storage(call.x, x)
    assert (tuple(call.q.shape), call.q.dtype) == ((rows, k // 2), torch.uint8)
    assert call.q.data_ptr() == x_q.data_ptr() and same_storage(call.q, x_q)
    assert (tuple(call.s.shape), call.s.dtype) == ((rows, k // 32), torch.float32)
    assert call.s.data_ptr() == x_s.data_ptr() and same_storage(call.s, x_s)  # float32 x_s: written directly
    assert (call.group_size, call.eps) == (32, 1e-6)
    assert torch.equal(x_s.reshape(-1).view(torch.int32), stand_in.scales.view(torch.int32))  # bits untouched


def test_an_empty_input_does_not_call_the_vendor(stand_in, monkeypatch):
    monkeypatch.setenv(SETTING, "vendor")
    x = torch.empty(0, 64, dtype=torch.bfloat16)
    kernel = vendor_kernel_for(mx_op.describe_quantize(x, "rceil"))
    kernel.run(x, *mx_op.quantize_outputs(x), scale_rule="rceil", swizzled=False)
    assert stand_in.calls == []


# --- (c) float32 scales to E8M0 bytes: the exponent field -------------------------------------------

# float32 scale the vendor writes (bits), and the E8M0 byte it must become: its exponent field
F32_TO_E8M0 = [
    (0x00400000, 0),  # 2^-127, a float32 subnormal: the smallest E8M0 value
    (0x00800000, 1),  # 2^-126
    (0x2F000000, 94),  # 2^-33: the scale of tiny blocks under eps = 1e-10
    (0x3F000000, 126),  # 0.5
    (0x3F800000, 127),  # 1
    (0x7F000000, 254),  # 2^127
    (0x7F800000, 255),  # +Inf: E8M0's NaN
    (0x7FC00000, 255),  # NaN
    (0x00000000, 0),  # 0.0
    (0x00080000, 0),  # 2^-130, deeper subnormal
]
TABLE_SHAPE = (5, 1, 64)  # 5 rows of 2 blocks: the table's 10 scales, N-D
TABLE_Q = torch.arange(5 * 32, dtype=torch.int64).mul(37).add(11).remainder(256).to(torch.uint8)  # any fixed bytes


def vendor_writes_the_table(stand_in: StandInOp) -> None:
    stand_in.scales = f32_bits_tensor([bits for bits, _ in F32_TO_E8M0])
    stand_in.q_bytes = TABLE_Q


def test_quantize_mxfp4_turns_the_vendors_float32_scales_into_their_exponent_fields(stand_in, monkeypatch):
    monkeypatch.setenv(SETTING, "vendor")
    vendor_writes_the_table(stand_in)
    x = torch.randn(TABLE_SHAPE)
    q, s = mx_op.quantize_outputs(x)
    vendor_kernel_for(mx_op.describe_quantize(x, "rceil")).run(x, q, s, scale_rule="rceil", swizzled=False)
    assert s.dtype == torch.float8_e8m0fnu and s.shape == (5, 1, 2)
    assert torch.equal(s.view(torch.uint8), u8([byte for _, byte in F32_TO_E8M0]).reshape(5, 1, 2))
    assert torch.equal(q.view(torch.uint8), TABLE_Q.reshape(5, 1, 32))


@pytest.mark.parametrize("x_s_dtype", [torch.float8_e8m0fnu, torch.uint8], ids=["e8m0", "uint8"])
def test_group_quant_turns_the_vendors_float32_scales_into_their_exponent_fields(x_s_dtype, stand_in,
                                                                                 monkeypatch):
    monkeypatch.setenv(SETTING, "vendor")
    vendor_writes_the_table(stand_in)
    x, x_q, x_s = group_args(torch.randn(TABLE_SHAPE), x_s_dtype)
    vendor_kernel_for(mx_op.describe_group_quant(x, x_q, x_s, 32, 1e-10)).run(x, x_q, x_s, eps=1e-10, swizzled=False)
    assert not same_storage(stand_in.calls[0].s, x_s)
    assert torch.equal(x_s.view(torch.uint8), u8([byte for _, byte in F32_TO_E8M0]).reshape(5, 1, 2))
    assert torch.equal(x_q, TABLE_Q.reshape(5, 1, 32))


def test_group_quant_passes_float32_scales_through_bit_for_bit(stand_in, monkeypatch):
    monkeypatch.setenv(SETTING, "vendor")
    vendor_writes_the_table(stand_in)
    x, x_q, x_s = group_args(torch.randn(TABLE_SHAPE), torch.float32)
    vendor_kernel_for(mx_op.describe_group_quant(x, x_q, x_s, 32, 1e-10)).run(x, x_q, x_s, eps=1e-10, swizzled=False)
    assert torch.equal(x_s.view(torch.int32).reshape(-1),
                       torch.tensor([bits for bits, _ in F32_TO_E8M0], dtype=torch.int64).to(torch.int32))


# --- (d) why the vendor variant cannot load -----------------------------------------------------------

def test_a_missing_package_reads_not_installed(vendor_finder):
    assert xpu_mxfp4.vendor_unavailable() == "vllm-xpu-kernels is not installed (pip install vllm-xpu-kernels)"


def test_a_package_without_the_op_says_which_op_is_missing(monkeypatch):
    install_stand_in(monkeypatch)
    monkeypatch.setattr(torch.ops, "_C", types.SimpleNamespace())  # a namespace holding no vendor op
    reason = xpu_mxfp4.vendor_unavailable()
    assert reason is not None and "has no torch.ops._C.per_token_group_quant_mxfp4" in reason


@pytest.mark.parametrize(("error", "text"), [
    (RuntimeError("built for torch 2.9.0+xpu"), "RuntimeError: built for torch 2.9.0+xpu"),
    (ImportError("libsycl.so.8: cannot open shared object file"), "ImportError: libsycl.so.8: cannot open"),
    (OSError("undefined symbol: _ZN3c10"), "OSError: undefined symbol: _ZN3c10"),
    (ModuleNotFoundError("No module named 'intel_sycl_rt'", name="intel_sycl_rt"), "No module named 'intel_sycl_rt'"),
], ids=["RuntimeError", "ImportError", "OSError", "a_missing_dependency"])
def test_a_module_that_fails_to_import_is_named_with_the_error(error, text, vendor_finder):
    vendor_finder.missing, vendor_finder.fail_with = False, error
    reason = xpu_mxfp4.vendor_unavailable()
    assert reason is not None and reason.startswith("vllm_xpu_kernels._C did not import: ") and text in reason
    assert "not installed" not in reason  # a dependency of the package is missing, not the package


def test_a_vendor_that_fails_to_import_leaves_dispatch_on_xpu_triton(vendor_finder, monkeypatch):
    vendor_finder.missing, vendor_finder.fail_with = False, RuntimeError("built for torch 2.9.0+xpu")
    monkeypatch.setenv(SETTING, "vendor")
    verdict = ask(MX, meta(4, 64), "rceil")
    assert (verdict.kernel.capability.label, verdict.fallback, verdict.opt_in_passed_over) == ("xpu/triton", False,
                                                                                              True)
    assert verdict.reasons == {"xpu/vendor": ["cannot load here: vllm_xpu_kernels._C did not import: RuntimeError: "
                                              "built for torch 2.9.0+xpu"]}


# --- (e) a setting lowbit does not know is an error -------------------------------------------------

def test_an_unknown_provider_setting_raises_value_error(monkeypatch):
    monkeypatch.setenv(SETTING, "bogus")
    message = r"LOWBIT_XPU_PROVIDER='bogus' is not one of 'triton', 'vendor'"
    with pytest.raises(ValueError, match=message):
        ask(MX, meta(4, 64), "rceil")
    with pytest.raises(ValueError, match=message):  # read on every call, on every device
        lowbit.quantize_mxfp4(torch.zeros(2, 32))


# --- (f) an opt-in that cannot be honoured: one warning, then xpu/triton ------------------------------

def xpu_call(x: torch.Tensor, rule: str) -> lowbit.Call:
    return dataclasses.replace(mx_op.describe_quantize(x, rule), device_type="xpu")


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_floor_with_the_vendor_opted_in_warns_once_and_runs_xpu_triton(strict, stand_in, monkeypatch, caplog):
    monkeypatch.setenv(SETTING, "vendor")
    if strict:  # not a fallback (same backend, the SPEC's bits): strict mode lets it run
        monkeypatch.setenv(dispatch.ENV_STRICT, "1")
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        kernels = [dispatch.resolve(xpu_call(torch.empty(rows, 64), "floor")) for rows in (4, 9, 4)]
    assert [k.capability.label for k in kernels] == ["xpu/triton"] * 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "lowbit"]
    assert len(warnings) == 1
    assert "runs on backend 'xpu' (triton)" in warnings[0]
    assert "  - xpu/vendor: scale_rule 'floor' is not one of 'rceil'" in warnings[0]
    assert stand_in.calls == []


def test_rceil_with_the_vendor_opted_in_warns_nothing(stand_in, monkeypatch, caplog):
    monkeypatch.setenv(SETTING, "vendor")
    with caplog.at_level(logging.WARNING, logger="lowbit"):
        kernel = dispatch.resolve(xpu_call(torch.empty(4, 64), "rceil"))
    assert kernel.capability.label == "xpu/vendor" and not caplog.records


@FAKE_DEVICE["xpu"]
def test_the_public_op_on_fake_xpu_tensors_warns_once_and_resolves_to_xpu_triton(stand_in, monkeypatch, caplog,
                                                                                  resolved):
    monkeypatch.setenv(SETTING, "vendor")
    chosen = resolved
    with caplog.at_level(logging.WARNING, logger="lowbit"), FakeTensorMode():
        for rows in (4, 7):
            q, s = lowbit.quantize_mxfp4(torch.empty(rows, 3, 64, device="xpu"), scale_rule="floor")
            assert (q.shape, s.shape, q.device.type) == ((rows, 3, 32), (rows, 3, 2), "xpu")
        lowbit.quantize_mxfp4(torch.empty(4, 64, device="xpu"), scale_rule="rceil")
    assert chosen == ["xpu/triton", "xpu/triton", "xpu/vendor"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "lowbit"]
    assert len(warnings) == 1 and "scale_rule 'floor' is not one of 'rceil'" in warnings[0]
    assert stand_in.calls == []  # a fake call runs no kernel
