"""intel_extension_for_pytorch (IPEX) on old Intel stacks (lowbit/backends/xpu/legacy_stack.py):
`decide` imports an installed XPU build of IPEX only next to the torch of its major.minor; `enable` does what
`decide` says, once, and survives an IPEX that fails to import; importing lowbit never imports it.

IPEX is never really imported here: its version and the import are stand-ins."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from lowbit.backends.xpu import legacy_stack

import lowbit
from lowbit import registry

IPEX = "intel_extension_for_pytorch"


@pytest.fixture(autouse=True)
def _fresh_enable():
    """enable() is cached per process: each test starts and ends without its answer."""
    legacy_stack.enable.cache_clear()
    yield
    legacy_stack.enable.cache_clear()


# --- decide ---------------------------------------------------------------------------------------

def test_not_installed_is_not_imported():
    do_import, why = legacy_stack.decide(None, "2.8.0+xpu")
    assert not do_import and "not installed" in why


@pytest.mark.parametrize(("ipex", "torch_version"), [("2.8.10+xpu", "2.8.0+xpu"), ("2.8.10+xpu", "2.8.1"),
                                                     ("2.7.10+xpu", "2.7.0+xpu")])
def test_an_xpu_build_next_to_the_torch_of_its_major_minor_is_imported(ipex, torch_version):
    do_import, why = legacy_stack.decide(ipex, torch_version)
    assert do_import and "imported" in why and "not imported" not in why
    assert ipex in why and torch_version in why


def test_ipex_2_8_next_to_torch_2_11_is_not_imported_and_says_it_supports_2_8_only():
    do_import, why = legacy_stack.decide("2.8.10+xpu", "2.11.0")
    assert not do_import
    assert "supports torch 2.8 only" in why and "2.11.0" in why and "not imported" in why


@pytest.mark.parametrize(("ipex", "torch_version"), [("2.7.10+xpu", "2.8.0+xpu"), ("2.8.10+xpu", "2.9.0+xpu"),
                                                     ("2.8.10+xpu", "2.13.0+cpu"), ("2.1.40+xpu", "2.11.0")])
def test_ipex_next_to_another_torch_is_not_imported(ipex, torch_version):
    do_import, why = legacy_stack.decide(ipex, torch_version)
    assert not do_import and "not imported" in why


@pytest.mark.parametrize("ipex", ["2.8.10", "2.8.0+cpu"])
def test_a_cpu_build_of_ipex_is_not_imported_even_next_to_its_torch(ipex):
    do_import, why = legacy_stack.decide(ipex, "2.8.0+xpu")
    assert not do_import and "not imported" in why


# --- enable ---------------------------------------------------------------------------------------

@pytest.fixture
def stack(monkeypatch):
    """A stand-in stack: set `stack.ipex` (the installed version, or None); imports of IPEX are recorded in `stack.imported`, and raise `stack.error` when it is set."""

    class Stack:
        ipex: str | None = None
        error: BaseException | None = None
        imported: list[str] = []

    real_import = importlib.import_module

    def recording_import(name, package=None):
        if name == IPEX:
            Stack.imported.append(name)
            if Stack.error is not None:
                raise Stack.error
            return object()
        return real_import(name, package)

    Stack.imported = []
    monkeypatch.setattr(legacy_stack, "installed_version", lambda: Stack.ipex)
    monkeypatch.setattr(importlib, "import_module", recording_import)
    return Stack


def enable_with(stack, monkeypatch, ipex, torch_version) -> str:
    stack.ipex = ipex
    monkeypatch.setattr(torch, "__version__", torch_version)
    legacy_stack.enable.cache_clear()
    return legacy_stack.enable()


@pytest.mark.parametrize(("ipex", "torch_version", "imports"), [
    (None, "2.8.0+xpu", False),
    ("2.8.10+xpu", "2.8.0+xpu", True),
    ("2.8.10+xpu", "2.11.0", False),
    ("2.7.10+xpu", "2.8.0+xpu", False),
    ("2.8.10", "2.8.0", False),
])
def test_enable_imports_exactly_when_decide_says_so(ipex, torch_version, imports, stack, monkeypatch):
    why = enable_with(stack, monkeypatch, ipex, torch_version)
    assert stack.imported == ([IPEX] if imports else [])
    assert why == legacy_stack.decide(ipex, torch_version)[1]


def test_enable_imports_once_per_process(stack, monkeypatch):
    enable_with(stack, monkeypatch, "2.8.10+xpu", "2.8.0+xpu")
    legacy_stack.enable()
    legacy_stack.enable()
    assert stack.imported == [IPEX]


@pytest.mark.parametrize("error", [RuntimeError("Intel GPU driver not found"),
                                   ImportError("libze_loader.so.1: cannot open shared object file"),
                                   AttributeError("module 'torch' has no attribute 'xpu'")],
                         ids=["RuntimeError", "ImportError", "AttributeError"])
def test_enable_survives_an_ipex_that_fails_to_import(error, stack, monkeypatch):
    stack.error = error
    why = enable_with(stack, monkeypatch, "2.8.10+xpu", "2.8.0+xpu")
    assert stack.imported == [IPEX]
    assert why == f"{IPEX} did not import: {type(error).__name__}: {error}"


def test_the_xpu_backend_enables_the_legacy_stack_on_its_first_use_and_still_loads(stack, monkeypatch):
    """registry asks the xpu backend once; that is when IPEX is imported, and a failing IPEX does
    not make the backend unavailable."""
    stack.error = RuntimeError("Intel GPU driver not found")
    stack.ipex = "2.8.10+xpu"
    monkeypatch.setattr(torch, "__version__", "2.8.0+xpu")
    registry.forget()
    assert stack.imported == []
    verdict = lowbit.supports("quantize_fp8_group_packed", torch.empty(4, 128, device="meta"), device="xpu")
    assert stack.imported == [IPEX]
    lowbit.supports("quantize_mxfp4", torch.empty(4, 64, device="meta"), device="xpu")
    assert stack.imported == [IPEX]
    if registry.unavailable("xpu") is None:  # where Triton is installed, the backend runs the call
        assert verdict.backend == "xpu"


# --- import lowbit imports no IPEX -----------------------------------------------------------------

def test_importing_lowbit_never_imports_ipex_and_the_first_xpu_query_does_when_it_matches(tmp_path):
    """A stand-in IPEX (package metadata of torch's major.minor) that writes a file when imported:
    `import lowbit` and `import lowbit.backends.xpu` leave it alone; the first xpu query imports it,
    as the legacy stack wants (which shows the stand-in would have been noticed)."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    version = f"{major}.{minor}.10+xpu"
    marker = tmp_path / "imported"
    package = tmp_path / IPEX
    package.mkdir()
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    info = tmp_path / f"{IPEX}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {IPEX}\nVersion: {version}\n")
    code = textwrap.dedent(f"""
        import os, sys, torch
        import lowbit, lowbit.backends.xpu
        from lowbit.backends.xpu import legacy_stack
        assert legacy_stack.installed_version() == {version!r}, legacy_stack.installed_version()
        print({IPEX!r} in sys.modules, os.path.exists({str(marker)!r}))
        lowbit.supports("quantize_mxfp4", torch.empty(4, 64, device="meta"), device="xpu")
        print({IPEX!r} in sys.modules, os.path.exists({str(marker)!r}))
    """)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["False False", "True True"]


def test_a_query_on_xpu_without_ipex_imports_nothing(monkeypatch):
    monkeypatch.setattr(legacy_stack, "installed_version", lambda: None)
    monkeypatch.delitem(sys.modules, IPEX, raising=False)
    registry.forget()
    lowbit.supports("quantize_mxfp4", torch.empty(4, 64, device="meta"), device="xpu")
    assert IPEX not in sys.modules
    assert "not installed" in legacy_stack.enable()
